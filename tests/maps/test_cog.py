"""Writing maps: a valid COG with named bands and tags, and its preview."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import rasterio

from imgcate.errors import InputError, OutputExistsError
from imgcate.maps import band_names, write_cog

TILE = 32  # the chip size of the fit (MAP_TILE in tests/conftest.py)
MAP_OPTS = {"tile_size": TILE, "max_draws": 100, "progress": False, "seed": 1}


def test_write_cog_is_a_valid_cog_with_named_bands(full_map, tmp_path, caplog):
    from rio_cogeo.cogeo import cog_validate

    with caplog.at_level(logging.WARNING):
        path = write_cog(full_map, tmp_path / "effect.tif")
    # Small maps get blocks under 128 px on purpose (so they have overviews); GDAL's warning
    # about that is dropped during the write, and only then.
    assert not [r for r in caplog.records if "BLOCKSIZE" in r.getMessage()]
    assert not logging.getLogger("rasterio._env").filters
    valid, errors, _ = cog_validate(path)
    assert valid, errors
    with rasterio.open(path) as src:
        assert src.block_shapes[0][0] < 128
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert src.profile["tiled"] and src.overviews(1)
        assert src.descriptions == (
            "mean",
            "sd",
            "lower_5",
            "upper_95",
            "prob_positive",
            "cluster_prob_0",
            "cluster_prob_1",
            "extrapolation",
            "outside_support",
        )
        assert list(src.descriptions) == band_names(full_map)
        assert src.crs == rasterio.crs.CRS.from_wkt(full_map.attrs["crs"])
        assert list(src.transform)[:6] == full_map.attrs["transform"]
        assert np.isnan(src.nodata)
        tags = src.tags()
        assert (tags["prob"], tags["seed"], tags["max_draws"]) == ("0.9", "1", "100")
        assert "imgcate_version" in tags
        np.testing.assert_array_equal(src.read(1), full_map["mean"].values)
        np.testing.assert_array_equal(src.read(7), full_map["cluster_prob"].values[1])
        # the layer the ExtrapolationWarning points to: 1 beyond the support limit, NaN off the map
        outside = src.read(9)
        np.testing.assert_array_equal(outside, full_map["outside_support"].values)
        extrapolation = src.read(8)
        mapped = np.isfinite(extrapolation)
        assert set(np.unique(outside[mapped])) <= {0.0, 1.0}
        np.testing.assert_array_equal(
            outside[mapped] == 1, extrapolation[mapped] > float(tags["support_limit"])
        )
    assert (tmp_path / "effect.png").stat().st_size > 10_000
    before = path.read_bytes()
    with pytest.raises(OutputExistsError, match="overwrite"):
        write_cog(full_map, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["effect.png", "effect.tif"]
    write_cog(full_map, path, overwrite=True, preview=False, co={"compress": "zstd"})
    with rasterio.open(path) as src:
        assert src.compression.name.lower() == "zstd"
    after = path.read_bytes()
    for bad in ("abc", 7, -16):  # GDAL aborts the process on some BLOCKSIZE values
        with pytest.raises(InputError, match="multiple of 16"):
            write_cog(full_map, path, overwrite=True, preview=False, co={"blocksize": bad})
    assert path.read_bytes() == after
    assert sorted(p.name for p in tmp_path.iterdir()) == ["effect.png", "effect.tif"]


def test_preview_axes_are_labelled_with_the_crs_units(monkeypatch, tmp_path):
    import matplotlib.pyplot as plt
    import xarray as xr

    from imgcate.maps.cog import axis_labels, write_preview

    assert axis_labels("EPSG:32636") == ("easting (m), EPSG:32636", "northing (m)")
    assert axis_labels("EPSG:4326") == ("longitude (°)", "latitude (°)")
    assert axis_labels("not a crs") == ("x", "y")
    # the preview's panels carry them (figure kept open to read its axes)
    shown = []
    monkeypatch.setattr(plt, "close", shown.append)
    values = np.arange(12, dtype=np.float32).reshape(3, 4) - 5
    crs = rasterio.crs.CRS.from_epsg(32636).to_wkt()
    dataset = xr.Dataset(
        {
            "mean": (("y", "x"), values),
            "prob_positive": (("y", "x"), (values > 0).astype(np.float32)),
            "extrapolation": (("y", "x"), np.abs(values)),
            "outside_support": (("y", "x"), (np.abs(values) > 4).astype(np.float32)),
        },
        coords={"y": [150.0, 90.0, 30.0], "x": [30.0, 90.0, 150.0, 210.0]},
        attrs={"crs": crs, "transform": [60.0, 0, 0, 0, -60.0, 180.0], "support_limit": 4.0},
    )
    write_preview(dataset, tmp_path / "preview.png")
    (fig,) = shown
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_xlabel() for ax in panels] == ["easting (m), EPSG:32636"] * 3
    assert panels[0].get_ylabel() == "northing (m)"
    bars = [ax.get_ylabel() for ax in fig.axes if not ax.get_title()]  # colour bars say units
    assert bars == [
        "CATE (outcome units)",
        "posterior probability",
        "Mahalanobis distance to the trial",
    ]
    assert (tmp_path / "preview.png").stat().st_size > 1000
    # one far tile does not set the extrapolation scale: its 99th percentile does
    far = dataset.assign(extrapolation=dataset["extrapolation"].where(dataset["mean"] != 6, 500.0))
    shown.clear()
    write_preview(far, tmp_path / "far.png")
    (fig,) = shown
    panel = [ax for ax in fig.axes if ax.get_title() == "extrapolation"][0]
    vmax = panel.images[0].get_clim()[1]
    assert vmax == pytest.approx(np.nanpercentile(far["extrapolation"].values, 99)) and vmax < 500
