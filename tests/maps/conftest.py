"""Fixtures of the map tests: the fit of tests/conftest.py's ``map_inputs`` and its map."""

from __future__ import annotations

import pytest

from imgcate.maps import predict_map
from imgcate.results import load_fit

MAP_OPTS = {"tile_size": 32, "max_draws": 100, "progress": False, "seed": 1}


@pytest.fixture(scope="session")
def inputs(map_inputs):
    """(scene path, EffectFit)."""
    scene, fit_path = map_inputs
    return scene, load_fit(fit_path)


@pytest.fixture(scope="session")
def full_map(inputs):
    """The map of the whole scene, tiles every 16 px."""
    scene, fit = inputs
    return predict_map(fit, scene, stride=16, **MAP_OPTS)
