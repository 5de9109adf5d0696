"""Segment sensitivity per cluster; the most typical images."""

from __future__ import annotations

import matplotlib
import numpy as np

from imgcate.segments import (
    cluster_sensitivity,
    grid_labels,
    typical_images,
)

matplotlib.use("Agg")


def test_cluster_sensitivity_and_typical_images(grid_result, setting):
    chips, fitted, has, _ = setting
    agg = cluster_sensitivity(grid_result)
    assert agg.sensitivity.dims == ("cluster", "y", "x")
    assert agg.segment_sensitivity.dims == ("cluster", "segment")
    assert np.isclose(float(agg.weight.sum()), 240, atol=1e-3)
    # patches sit anywhere, so the high-effect cluster's average change is negative everywhere
    assert float(agg.segment_sensitivity.sel(cluster=1).max()) < 0
    # the grid average equals the per-pixel average on each block
    labels = grid_labels(32, 32, 16)
    assert np.allclose(agg.sensitivity.values[1][labels == 5], float(agg.segment_sensitivity[1, 5]))
    hard = cluster_sensitivity(grid_result, weight="hard")
    assert float(hard.weight.sum()) == 240
    table = typical_images(fitted, chips, n=3)
    assert list(table.columns) == ["cluster", "rank", "image", "index", "cluster_prob", "cate"]
    assert len(table) == 6
    assert has[table[table.cluster == 1]["index"]].all()
    assert not has[table[table.cluster == 0]["index"]].any()
