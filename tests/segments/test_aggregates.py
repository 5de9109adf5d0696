"""Segment sensitivity per cluster; the most typical images."""

from __future__ import annotations

import matplotlib
import numpy as np
from patch_trial import fit_patch_trial, synthetic_patch_trial

from imgcate.chips import chips_from_array
from imgcate.plots import plot_cluster_gallery
from imgcate.segments import (
    cluster_sensitivity,
    grid_labels,
    segment_chips,
    segment_sensitivity,
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


def test_with_one_cluster_the_gallery_spans_the_cate(setting):
    """K = 1 (the smooth-effect model): every image has P = 1, so the 'typical' images are
    chosen from the lowest CATE to the highest, and the overlay is the CATE change (a single
    cluster's log-odds cannot move)."""
    chips, _, _, _ = setting
    trial = synthetic_patch_trial(0)[1]
    one = fit_patch_trial(chips, trial, n_clusters=1, num_warmup=100, num_samples=100, num_chains=1)
    table = typical_images(one, chips, n=4)
    assert (table["cluster"] == 0).all() and len(table) == 4
    cate = one.predict(one.encoder.transform(chips)).cate.mean(0)
    assert np.all(np.diff(table["cate"].to_numpy()) >= 0)
    np.testing.assert_allclose(table["cate"].iloc[[0, -1]], [cate.min(), cate.max()], rtol=1e-5)
    rows = table["index"].to_numpy()
    picked = chips_from_array(chips.values[rows], image_ids=chips.image_ids[rows])
    result = segment_sensitivity(one, picked, segment_chips(picked, "grid", n_segments=4), seed=0)
    fig = plot_cluster_gallery(one, picked, result, n=4)
    assert "lowest CATE" in fig._suptitle.get_text()
    assert "CATE change" in fig.axes[-1].get_ylabel()  # the colour bar: the CATE, not log-odds
    titles = [ax.get_title() for ax in fig.axes[:4]]
    assert all("CATE" in t and "P=" not in t for t in titles), titles
