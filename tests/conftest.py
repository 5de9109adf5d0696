"""Shared fixtures: paths to the real Landsat scene and small simulated trials."""

from __future__ import annotations

from pathlib import Path

import pytest

LANDSAT_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "landsat"


@pytest.fixture(params=["native", "jax"])
def encoder_path(request, monkeypatch):
    """Run a test through the native kernel (where it runs here) and through the JAX path,
    switched by the environment variable the library reads at each call."""
    from imgcate.encoders import native

    if request.param == "native":
        if not native.available():
            pytest.skip("native kernel not built, CPU without AVX-512, or JAX not on the CPU")
        monkeypatch.delenv("IMGCATE_NATIVE", raising=False)
    else:
        monkeypatch.setenv("IMGCATE_NATIVE", "0")
    return request.param


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
