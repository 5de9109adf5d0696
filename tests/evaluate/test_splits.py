"""Spatial blocks, folds and train/test splits."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from imgcate.errors import InputError  # noqa: E402
from imgcate.evaluate import (  # noqa: E402
    spatial_blocks,
    spatial_folds,
    train_test_split_spatial,
)
from imgcate.units import read_units  # noqa: E402


def test_spatial_blocks_follow_the_grid():
    blocks = spatial_blocks([0.0, 9.9, 10.0, 0.0, 25.0], [0.0, 9.9, 0.0, 10.0, 25.0], 10.0)
    assert blocks[0] == blocks[1]
    assert len({blocks[0], blocks[2], blocks[3], blocks[4]}) == 4
    with pytest.raises(InputError, match="block_size"):
        spatial_blocks([0.0], [0.0], 0.0)


def test_spatial_folds_keep_blocks_whole_and_balanced():
    rng = np.random.default_rng(20)
    xy = rng.uniform(0, 1000, size=(3000, 2))
    folds = spatial_folds(xy[:, 0], xy[:, 1], 5, 100.0, seed=1)
    blocks = spatial_blocks(xy[:, 0], xy[:, 1], 100.0)
    for b in np.unique(blocks):
        assert len(np.unique(folds[blocks == b])) == 1
    counts = np.bincount(folds, minlength=5)
    assert counts.min() > 0.9 * counts.max()
    assert np.array_equal(folds, spatial_folds(xy[:, 0], xy[:, 1], 5, 100.0, seed=1))
    assert not np.array_equal(folds, spatial_folds(xy[:, 0], xy[:, 1], 5, 100.0, seed=2))
    with pytest.raises(InputError, match="n_folds=200"):
        spatial_folds(xy[:, 0], xy[:, 1], 200, 100.0, seed=1)


def test_train_test_split_spatial_on_a_trial():
    rng = np.random.default_rng(21)
    n = 800
    df = pd.DataFrame(
        {
            "id": range(n),
            "lon": rng.uniform(0, 50_000, n),
            "lat": rng.uniform(0, 50_000, n),
            "treatment": rng.integers(0, 2, n),
            "outcome": rng.normal(size=n),
        }
    )
    trial = read_units(df, crs="EPSG:32636")
    train, test = train_test_split_spatial(trial, 0.25, 5_000.0, seed=3)
    assert np.array_equal(np.sort(np.r_[train, test]), np.arange(n))
    blocks = spatial_blocks(df["lon"], df["lat"], 5_000.0)
    assert not set(blocks[train]) & set(blocks[test])
    assert abs(len(test) / n - 0.25) < 0.03  # blocks hold ~8 units: within half a block
    again = train_test_split_spatial(trial, 0.25, 5_000.0, seed=3)
    assert np.array_equal(again[1], test)
    with pytest.raises(InputError, match="test_fraction=1.5"):
        train_test_split_spatial(trial, 1.5, 5_000.0, seed=3)
