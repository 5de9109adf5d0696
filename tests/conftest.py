"""Shared fixtures: paths to the real Landsat scene and small simulated trials."""

from __future__ import annotations

from pathlib import Path

import pytest

LANDSAT_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "landsat"


@pytest.fixture(scope="session")
def landsat_path() -> Path:
    """The real 6-band Landsat 7 scene; skips when ../shared/data/landsat is absent."""
    path = LANDSAT_DIR / "L7_ETMs.tif"
    if not path.exists():
        pytest.skip(f"real Landsat scene not found at {path} (needs ../shared/data/landsat)")
    return path


@pytest.fixture(scope="session")
def dem_path() -> Path:
    """The elevation model over the Landsat scene; skips when absent."""
    path = LANDSAT_DIR / "olinda_dem_utm25s.tif"
    if not path.exists():
        pytest.skip(f"elevation model not found at {path} (needs ../shared/data/landsat)")
    return path
