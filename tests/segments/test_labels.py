"""Segments of chips: regular grids, SLIC superpixels, fills."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest

from imgcate.errors import InputError
from imgcate.segments import (
    fill_values,
    grid_labels,
    segment_chips,
)

matplotlib.use("Agg")


def test_grid_labels_are_regular_blocks():
    labels = grid_labels(32, 32, 16)
    assert labels.shape == (32, 32)
    assert np.array_equal(np.bincount(labels.ravel()), np.full(16, 64))
    assert labels[0, 0] == 0 and labels[0, 8] == 1 and labels[8, 0] == 4
    assert grid_labels(30, 40, 12).max() == 11  # 3 x 4 blocks on a wide chip


def test_slic_segments_cover_each_chip(setting):
    chips = setting[0]
    labels = segment_chips(chips.values[:3], "slic", n_segments=16)
    assert labels.shape == (3, 32, 32) and labels.dtype == np.int32
    for lab in labels:
        n = lab.max() + 1
        assert set(np.unique(lab)) == set(range(n)) and 4 <= n <= 40


def test_segment_options_are_validated(setting):
    chips = setting[0]
    with pytest.raises(InputError, match="method='quad'.*'slic', 'grid'"):
        segment_chips(chips, "quad")
    with pytest.raises(InputError, match="n_segments"):
        segment_chips(chips, "grid", n_segments=0)
    with pytest.raises(InputError, match="finer than"):
        segment_chips(chips, "grid", n_segments=37 * 2)
    with pytest.raises(InputError, match="bands"):
        segment_chips(chips.values[:2], "slic", bands=(0, 1, 9))


def test_fill_values():
    x = np.random.default_rng(1).normal(size=(2, 3, 16, 16))
    mean = fill_values(x, "mean")
    assert np.allclose(mean[:, :, 5, 7], x.mean(axis=(2, 3)), atol=1e-6)
    blur = fill_values(x, "blur", blur_sigma=2.0)
    assert blur.shape == x.shape and blur.std() < x.std()
    with pytest.raises(InputError, match="fill='zero'"):
        fill_values(x, "zero")
