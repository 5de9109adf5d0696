"""Pictures and files of segment sensitivity (imgcate.plots): figures and GeoTIFF maps."""

from __future__ import annotations

from dataclasses import replace

import matplotlib
import numpy as np
import pandas as pd
import pytest
import rasterio

from imgcate.chips import chips_from_array, extract_chips
from imgcate.errors import InputError, OutputExistsError, RasterError
from imgcate.plots import (
    CATE_CHANGE_LABEL,
    LOGODDS_CHANGE_LABEL,
    plot_chip,
    plot_cluster_gallery,
    plot_segment_sensitivity,
    write_sensitivity_geotiff,
)
from imgcate.segments import (
    segment_chips,
    segment_sensitivity,
    sensitivity_map,
)
from imgcate.units import read_units

matplotlib.use("Agg")


def test_figures_are_written(grid_result, setting, tmp_path):
    import matplotlib.pyplot as plt
    from PIL import Image

    chips, fitted = setting[:2]
    ax = plot_chip(chips, 0, bands=(3, 2, 1))
    assert ax.images and ax.images[0].get_array().shape == (32, 32, 3)
    plt.close(ax.figure)
    fig, axes = plt.subplots(1, 2, figsize=(6, 3))
    plot_segment_sensitivity(chips, grid_result, 1, ax=axes[0])
    plot_chip(chips.values[:, :1], 1, bands=(0,), ax=axes[1])
    assert CATE_CHANGE_LABEL in [a.get_ylabel() for a in fig.axes]  # the overlay's colour bar
    path = tmp_path / "overlay.png"
    fig.savefig(path, dpi=50)
    plt.close(fig)
    assert Image.open(path).size == (300, 150)
    gallery = tmp_path / "gallery.png"
    # By default the gallery shows what moves an image between clusters (the log-odds of its
    # own cluster), which changes even where P(cluster) sits at 1.00 and the CATE does not.
    fig = plot_cluster_gallery(fitted, chips, grid_result, n=3, path=gallery, dpi=50)
    _check_gallery(fig, grid_result, "logodds_change_mean", LOGODDS_CHANGE_LABEL)
    plt.close(fig)
    assert Image.open(gallery).size == (330, 220)  # n and K panels of 2.2 in at 50 dpi
    fig = plot_cluster_gallery(fitted, chips, grid_result, n=3, var="cate_change_mean")
    _check_gallery(fig, grid_result, "cate_change_mean", CATE_CHANGE_LABEL)
    plt.close(fig)
    with pytest.raises(OutputExistsError, match="overwrite"):
        plot_cluster_gallery(fitted, chips, n=3, path=gallery)
    other = chips_from_array(chips.values[:3])
    with pytest.raises(InputError, match="different images"):
        plot_segment_sensitivity(other, grid_result, 0)
    with pytest.raises(InputError, match="chip position"):
        plot_chip(chips, 1000)


def _check_gallery(fig, result, var, label):
    """One colour scale for every overlay, one colour bar worded as the overlay (wrapped to
    fit beside the figure), a caption, and every title inside the frame."""
    overlays = [ax.images[1] for ax in fig.axes if len(ax.images) > 1]
    assert len(overlays) == 2 * 3 and len({im.get_clim() for im in overlays}) == 1  # one scale
    bar_axes = [ax for ax in fig.axes if "hidden" in ax.get_ylabel()]
    assert len(bar_axes) == 1 and fig.get_suptitle()  # one colour bar, and a caption
    assert " ".join(bar_axes[0].get_ylabel().split()) == label
    limit = overlays[0].get_clim()[1]
    shown = sensitivity_map(result, var).values
    assert 0 < limit <= np.nanmax(np.abs(shown)) + 1e-12
    renderer = fig.canvas.get_renderer()
    frame = fig.bbox
    for text in [ax.title for ax in fig.axes] + list(fig.texts):  # fig.texts: the caption
        if text is not None and text.get_text():
            box = text.get_window_extent(renderer)
            assert frame.x0 - 1 <= box.x0 and box.x1 <= frame.x1 + 1, text.get_text()
            assert frame.y0 - 1 <= box.y0 and box.y1 <= frame.y1 + 1, text.get_text()


def test_geotiff_keeps_crs_and_transform(setting, tmp_path):
    from imgcate.simulate import synthetic_scene

    _, fitted = setting[:2]
    scene = tmp_path / "scene.tif"
    synthetic_scene(scene, seed=0, width=128, height=128)
    with rasterio.open(scene) as ds:
        crs = ds.crs
        xs = ds.bounds.left + np.array([40.0, 70.0]) * 30
        ys = ds.bounds.top - np.array([40.0, 90.0]) * 30
    table = pd.DataFrame(
        {"id": ["a", "b"], "lon": xs, "lat": ys, "treatment": [0, 1], "outcome": [0.0, 1.0]}
    )
    trial = read_units(table, crs=crs)
    chips = extract_chips(trial, scene, 32)
    scaled = chips_from_array(chips.values / 1000.0, chips.image_ids)
    chips = replace(chips, values=scaled.values)  # same georeferencing, trial-like scale
    result = segment_sensitivity(fitted, chips, segment_chips(chips, "grid"), seed=0)
    path = tmp_path / "sens.tif"
    write_sensitivity_geotiff(result, chips, 1, path)
    with rasterio.open(path) as ds:
        assert ds.crs == crs
        assert ds.transform.almost_equals(chips.transforms[1])
        assert ds.count == 3 and ds.descriptions == (
            "cate_change_mean",
            "cate_change_lower",
            "cate_change_upper",
        )
        assert ds.tags()["prob"] == "0.9"
        band = ds.read(1)
    assert np.allclose(band, sensitivity_map(result).values[1], atol=1e-6)
    with pytest.raises(OutputExistsError, match="overwrite"):
        write_sensitivity_geotiff(result, chips, 1, path)
    write_sensitivity_geotiff(result, chips, 0, path, overwrite=True)
    assert not list(tmp_path.glob(".sens.tif*"))  # no temporary file left behind
    mem = chips_from_array(chips.values)
    mem_result = segment_sensitivity(fitted, mem, segment_chips(mem, "grid"), seed=0)
    with pytest.raises(RasterError, match="extract_chips"):
        write_sensitivity_geotiff(mem_result, mem, 0, tmp_path / "x.tif")
