"""Observational studies confounded by what the images show: the spatial-pattern mosaic and the
built-up share of synthetic-scene chips."""

from __future__ import annotations

import numpy as np
import pytest

from imgcate.chips import extract_chips
from imgcate.errors import InputError
from imgcate.simulate import (
    BARE,
    BUILT,
    VEGETATION,
    ConfoundedTruth,
    land_cover_path,
    simulate_pattern_confounded,
    simulate_scene_confounded,
    write_scene,
)
from imgcate.simulate.patterns import fragmentation


def _tiles(cover: np.ndarray, size: int, n: int) -> np.ndarray:
    n_cols = cover.shape[1] // size
    return np.stack(
        [
            cover[(i // n_cols) * size : (i // n_cols + 1) * size, (i % n_cols) * size :][:, :size]
            for i in range(n)
        ]
    )


@pytest.mark.parametrize("pattern", ["clustering", "orientation", "position"])
def test_every_chip_has_the_same_composition(tmp_path, pattern):
    """The confounder is the arrangement, not the mix of land cover: every tile holds the
    same number of pixels of each class (up to the rasterization of the stripes)."""
    sim = simulate_pattern_confounded(tmp_path / "m.tif", seed=1, n_units=60, pattern=pattern)
    tiles = _tiles(sim.land_cover, 32, 60)
    built = (tiles == BUILT).mean(axis=(1, 2))
    if pattern == "clustering":
        assert np.all(built == 0.25)
    elif pattern == "position":
        assert np.all(built == round(0.12 * 1024) / 1024)
    else:
        veg = (tiles == VEGETATION).mean(axis=(1, 2))
        assert np.all(np.abs(veg - 0.5) < 0.05) and np.all((tiles == BARE) | (tiles == VEGETATION))
    assert isinstance(sim.truth, ConfoundedTruth)
    assert land_cover_path(sim.scene).exists()


def test_chips_are_the_tiles_and_the_confounder_drives_targeting(tmp_path):
    sim = simulate_pattern_confounded(tmp_path / "m.tif", seed=2, n_units=300)
    chips = extract_chips(sim.trial, sim.scene, 32)
    assert chips.values.shape[0] == 300 and chips.values.shape[-2:] == (32, 32)
    tiles = _tiles(sim.land_cover, 32, 300)
    # built pixels are brighter in the first band than vegetation: the chip is the tile
    b1 = chips.values[:, 0]
    assert b1[tiles == BUILT].mean() > b1[tiles == VEGETATION].mean() + 300
    frag = np.array([fragmentation(tile) for tile in tiles])
    np.testing.assert_allclose(sim.truth.latent, frag)
    z = (frag - frag.mean()) / frag.std()
    np.testing.assert_allclose(sim.truth.propensity, 1 / (1 + np.exp(-z)))
    t = sim.treatment
    assert sim.truth.latent[t == 1].mean() > sim.truth.latent[t == 0].mean()
    again = simulate_pattern_confounded(tmp_path / "m2.tif", seed=2, n_units=300)
    np.testing.assert_array_equal(again.outcome, sim.outcome)


def test_fragmentation_follows_its_definition():
    cover = np.array([[1, 1, 3], [1, 3, 3]])
    # pairs across: (1,1) (1,3) (1,3) (3,3) -> 2 differ; down: (1,1) (1,3) (3,3) -> 1 differs
    assert fragmentation(cover) == pytest.approx(3 / 7)


def test_pattern_errors_name_the_fix(tmp_path):
    with pytest.raises(InputError, match="pattern='stripes' is not allowed"):
        simulate_pattern_confounded(tmp_path / "m.tif", seed=0, pattern="stripes")
    with pytest.raises(InputError, match="n_units=5 must be at least 20"):
        simulate_pattern_confounded(tmp_path / "m.tif", seed=0, n_units=5)
    with pytest.raises(InputError, match="cover must be a \\(y, x\\) array of land-cover"):
        write_scene(tmp_path / "w.tif", np.full((8, 8), 9), seed=0)


def test_scene_confounded_targets_the_chip_built_share(tmp_path):
    sim = simulate_scene_confounded(tmp_path / "s.tif", seed=3, n_units=200, scene_size=256)
    share = sim.truth.latent
    z = (share - share.mean()) / share.std()
    np.testing.assert_allclose(sim.truth.propensity, 1 / (1 + np.exp(-z)))
    np.testing.assert_allclose(sim.truth.mu0, 1 + 2 * z)
    assert sim.truth.ate == 2.0
    resid = sim.outcome - sim.truth.mu0 - 2.0 * sim.treatment
    assert abs(resid.mean()) < 0.25 and 0.8 < resid.std() < 1.2
    chips = extract_chips(sim.trial, sim.scene, 32)
    assert chips.values.shape[0] == 200
