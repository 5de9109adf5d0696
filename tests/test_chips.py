"""Chips: windowed reads centred on units (via imgcate.raster), edges, nodata, sequences."""

from __future__ import annotations

import warnings

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
from rasterio.transform import Affine, from_origin
from rasterio.windows import Window

from imgcate.chips import Chips, chips_from_array, extract_chips
from imgcate.errors import InputError, RasterError
from imgcate.simulate import synthetic_scene
from imgcate.units import read_units

CRS = "EPSG:32636"


def _trial_at(path, rows, cols, *, crs=None, image_id=None):
    """A trial with units at the centres of pixels (rows, cols) of raster ``path``."""
    with rasterio.open(path) as ds:
        xs, ys = rasterio.transform.xy(ds.transform, rows, cols, offset="center")
        raster_crs = ds.crs
    n = len(rows)
    df = pd.DataFrame(
        {
            "id": [f"u{i}" for i in range(n)],
            "x": xs,
            "y": ys,
            "treatment": np.arange(n) % 2,
            "outcome": np.zeros(n),
        }
    )
    if image_id is not None:
        df["img"] = image_id
    trial = read_units(
        df, lon="x", lat="y", crs=raster_crs, image_id="img" if image_id is not None else None
    )
    if crs is not None:
        from dataclasses import replace

        trial = replace(trial, data=trial.data.to_crs(crs))
    return trial


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    path = tmp_path_factory.mktemp("scene") / "scene.tif"
    synthetic_scene(path, seed=3, width=128, height=96, bands=4)
    return path


@pytest.fixture(scope="module")
def nodata_raster(tmp_path_factory):
    """A small float raster with nodata=-9999 in a 3 x 3 block at rows 20..22, cols 20..22."""
    path = tmp_path_factory.mktemp("nd") / "nodata.tif"
    data = np.arange(2 * 50 * 60, dtype=np.float32).reshape(2, 50, 60)
    data[:, 20:23, 20:23] = -9999
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=60,
        height=50,
        count=2,
        dtype="float32",
        crs=CRS,
        transform=from_origin(500000, 100000, 10, 10),
        nodata=-9999,
    ) as dst:
        dst.write(data)
    return path


def test_chip_equals_direct_read_landsat(landsat_path):
    rows, cols = np.array([100, 200, 37]), np.array([150, 60, 300])
    trial = _trial_at(landsat_path, rows, cols)
    chips = extract_chips(trial, landsat_path, 16)
    assert chips.values.shape == (3, 6, 16, 16) and chips.values.dtype == np.float32
    with rasterio.open(landsat_path) as ds:
        for i, (r, c) in enumerate(zip(rows, cols, strict=True)):
            direct = ds.read(window=Window(c - 8, r - 8, 16, 16))
            np.testing.assert_array_equal(chips.values[i], direct.astype(np.float32))
            assert chips.transforms[i] == ds.window_transform(Window(c - 8, r - 8, 16, 16))
        assert chips.crs == ds.crs


def test_a_map_cells_centre_cuts_the_maps_own_tile(landsat_path):
    """A unit placed at a map cell's centre (a pixel corner for an even tile size) gets the
    cell's tile whatever the rounding of the corner's coordinates: on the Landsat grid
    (28.5 m pixels) ``rasterio.transform.rowcol`` put many of these a pixel up or left."""
    from imgcate.maps.grid import tile_grid
    from imgcate.windows import pixel_of

    grid = tile_grid(landsat_path, tile_size=16, stride=8, stacklevel=None)
    ys, xs = grid.coords()
    rows, cols = np.meshgrid(np.arange(len(ys)), np.arange(len(xs)), indexing="ij")
    rows, cols = rows.ravel()[::97], cols.ravel()[::97]  # 1 cell in 97, spread over the scene
    x, y = xs[cols], ys[rows]
    with rasterio.open(landsat_path) as ds:
        inverse = ~ds.transform
        got = pixel_of(ds.transform, x, y)
    want = (grid.row0 + rows * 8 + 8, grid.col0 + cols * 8 + 8)  # the tiles' centre pixels
    floored = np.floor(inverse.a * x + inverse.c)  # the column without a tolerance
    assert (floored != want[1]).any()  # the rounding this guards against occurs here
    np.testing.assert_array_equal(got, want)
    df = pd.DataFrame({"id": np.arange(len(x)), "x": x, "y": y, "treatment": np.arange(len(x)) % 2})
    df["outcome"] = 0.0
    with rasterio.open(landsat_path) as ds:
        trial = read_units(df, lon="x", lat="y", crs=ds.crs)
        chips = extract_chips(trial, ds, 16)
        for i in range(len(x)):
            tile = Window(grid.col0 + cols[i] * 8, grid.row0 + rows[i] * 8, 16, 16)
            assert chips.transforms[i] == ds.window_transform(tile)
            if i % 20 == 0:
                np.testing.assert_array_equal(chips.values[i], ds.read(window=tile))


def test_chip_equals_direct_read_synthetic_and_open_dataset(scene):
    rows, cols = np.array([30, 50]), np.array([40, 90])
    trial = _trial_at(scene, rows, cols)
    with rasterio.open(scene) as ds:
        chips = extract_chips(trial, ds, 9, bands=[2, "B4"])
        assert not ds.closed  # an open dataset passed in is left open
        for i, (r, c) in enumerate(zip(rows, cols, strict=True)):
            direct = ds.read([2, 4], window=Window(c - 4, r - 4, 9, 9))
            np.testing.assert_array_equal(chips.values[i], direct.astype(np.float32))
    assert chips.band_names == ("B2", "B4")


def test_lonlat_coordinates_land_on_same_pixels(landsat_path, scene):
    for path, size in ((landsat_path, 12), (scene, 10)):
        rows, cols = np.array([40, 60]), np.array([30, 70])
        native = extract_chips(_trial_at(path, rows, cols), path, size)
        lonlat = extract_chips(_trial_at(path, rows, cols, crs="EPSG:4326"), path, size)
        np.testing.assert_array_equal(native.values, lonlat.values)
        assert native.transforms == lonlat.transforms


def test_size_in_metres_and_scale(scene):
    trial = _trial_at(scene, [40, 50], [40, 50])
    px = extract_chips(trial, scene, 8)
    m = extract_chips(trial, scene, 240.0, size_unit="m", scale=0.5)  # 30 m pixels
    np.testing.assert_allclose(m.values, px.values * 0.5)
    for bad in (0, -1.0, float("nan"), [1.0, 0.0, 1.0, 1.0], "x", "0.5", True):  # 0: blank
        with pytest.raises(InputError, match="must be a number above 0"):
            extract_chips(trial, scene, 8, scale=bad)


def test_units_sharing_image_id_share_one_chip(scene):
    trial = _trial_at(scene, [30, 31, 60, 30], [30, 31, 70, 30], image_id=["a", "a", "b", "c"])
    chips = extract_chips(trial, scene, 8)
    # "a" (two units) is one chip; "c" sits where "a"'s first unit does but "a"'s centre is the
    # mean of its units, so only identical centres share: a, b, c → 3 chips
    assert chips.n_images == 3
    assert chips.unit_image[0] == chips.unit_image[1]
    assert list(chips.image_ids) == ["a", "b", "c"]
    same_place = _trial_at(scene, [30, 30, 60], [30, 30, 70])  # two units, one location
    with pytest.warns(UserWarning, match=r"2 units \(\['u0', 'u1'\]\) sit at the same location"):
        shared = extract_chips(same_place, scene, 8)
    assert shared.n_images == 2 and shared.unit_image[0] == shared.unit_image[1]
    np.testing.assert_array_equal(shared.for_units()[0], shared.for_units()[1])
    said = _trial_at(scene, [30, 30, 60], [30, 30, 70], image_id=["a", "a", "b"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # one image_id for both: nothing to warn
        assert extract_chips(said, scene, 8).n_images == 2


def test_edge_policies(scene):
    trial = _trial_at(scene, [2, 40, 94], [2, 40, 64])  # u0 and u2 cross the edge
    with pytest.raises(RasterError, match=r"units \['u0', 'u2'\].*on_edge='pad'.*on_edge='drop'"):
        extract_chips(trial, scene, 10)
    padded = extract_chips(trial, scene, 10, on_edge="pad")
    assert padded.padded.tolist() == [True, False, True]
    with rasterio.open(scene) as ds:
        inside = ds.read(1, window=Window(0, 0, 7, 7)).astype(np.float32)
    chip0 = padded.values[0, 0]  # window rows/cols -3..6: the first 3 are off the raster
    np.testing.assert_array_equal(chip0[3:, 3:], inside)
    np.testing.assert_allclose(chip0[0, 0], chip0[3:, 3:].mean(), rtol=1e-5)
    dropped = extract_chips(trial, scene, 10, on_edge="drop")
    assert dropped.n_images == 1 and dropped.dropped_units.tolist() == ["u0", "u2"]
    assert dropped.kept.tolist() == [False, True, False]
    assert trial.subset(dropped.kept).ids.tolist() == dropped.unit_ids.tolist() == ["u1"]
    assert dropped.unit_image.tolist() == [0]
    assert dropped.transforms == (padded.transforms[1],)


def test_nodata_policies(nodata_raster):
    trial = _trial_at(nodata_raster, [21, 10], [21, 40])
    with pytest.raises(RasterError, match=r"units \['u0'\].*nodata"):
        extract_chips(trial, nodata_raster, 6)
    padded = extract_chips(trial, nodata_raster, 6, on_edge="pad")
    chip = padded.values[0]
    with rasterio.open(nodata_raster) as ds:
        raw = ds.read(window=Window(18, 18, 6, 6))
    valid = raw[0] != -9999
    for b in range(2):
        np.testing.assert_array_equal(chip[b][valid], raw[b][valid])
        np.testing.assert_allclose(chip[b][~valid], raw[b][valid].mean(), rtol=1e-6)
    dropped = extract_chips(trial, nodata_raster, 6, on_edge="drop")
    assert dropped.unit_ids.tolist() == ["u1"]
    with pytest.warns(UserWarning, match=r"units \['u0'\] hold no valid pixel"):
        blank = extract_chips(trial, nodata_raster, 3, on_edge="pad")  # inside the 3 x 3 block
    assert (blank.values[0] == 0).all() and blank.padded.tolist() == [True, False]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a partly valid chip: padded, no warning
        extract_chips(trial, nodata_raster, 6, on_edge="pad")


def test_points_outside_raster_error(scene):
    trial = _trial_at(scene, [10, 40], [10, 40])
    far = trial.data.copy()
    far.loc[0, "geometry"] = far.geometry.iloc[0].__class__(0.0, 0.0)
    from dataclasses import replace

    with pytest.raises(RasterError, match=r"units \['u0'\] lie outside raster.*CRS"):
        extract_chips(replace(trial, data=far), scene, 4)
    lonlat = _trial_at(scene, [10, 40], [10, 40], crs="EPSG:4326")
    x, y = lonlat.xy()
    swapped = lonlat.data.set_geometry(gpd.points_from_xy(y, x, crs="EPSG:4326"))
    with pytest.raises(RasterError, match="lon and lat look swapped"):
        extract_chips(replace(lonlat, data=swapped), scene, 4)


def test_unreadable_and_missing_raster(tmp_path, scene):
    trial = _trial_at(scene, [10, 20], [10, 20])
    bad = tmp_path / "corrupt.tif"
    bad.write_bytes(b"this is not a tiff" * 100)
    with pytest.raises(RasterError, match="corrupt.tif.*could not be opened"):
        extract_chips(trial, bad, 4)
    with pytest.raises(RasterError, match="missing.tif.*does not exist"):
        extract_chips(trial, tmp_path / "missing.tif", 4)


def test_invalid_options(scene):
    trial = _trial_at(scene, [10, 20], [10, 20])
    with pytest.raises(InputError, match="on_edge='clip' is not allowed"):
        extract_chips(trial, scene, 4, on_edge="clip")
    with pytest.raises(InputError, match="band 9 is not a band"):
        extract_chips(trial, scene, 4, bands=[9])
    with pytest.raises(InputError, match="scale has 2 values for 4 bands"):
        extract_chips(trial, scene, 4, scale=[1, 2])
    with pytest.raises(InputError, match="larger than raster"):  # not a 100 GB allocation
        extract_chips(trial, scene, 100_000, on_edge="drop")
    one = extract_chips(trial, scene, 4, scale=0.5).values
    np.testing.assert_allclose(one * 2, extract_chips(trial, scene, 4).values)


def test_sequence_of_dates(scene, tmp_path):
    second = tmp_path / "later.tif"
    with rasterio.open(scene) as ds:
        profile, data = ds.profile, ds.read()
    with rasterio.open(second, "w", **profile) as dst:
        dst.write(data // 2)
    trial = _trial_at(scene, [30, 50], [30, 60])
    seq = extract_chips(trial, [scene, second], 8, dates=["2020", "2021"])
    assert seq.values.shape == (2, 2, 4, 8, 8) and seq.dates == ("2020", "2021")
    np.testing.assert_array_equal(seq.date(1).values, np.floor(seq.date(0).values / 2))


def test_chips_from_array():
    chips = chips_from_array(np.ones((3, 2, 5, 5)), ["a", "b", "c"], band_names=["r", "n"])
    assert isinstance(chips, Chips) and chips.transforms is None and chips.crs is None
    assert chips.unit_image.tolist() == [0, 1, 2] and chips.band_names == ("r", "n")
    with pytest.raises(InputError, match="image_ids has duplicates"):
        chips_from_array(np.ones((2, 1, 4, 4)), ["a", "a"])
    with pytest.raises(InputError, match="dates="):
        chips_from_array(np.ones((2, 2, 1, 4, 4)))


def test_encoder_refuses_chips_cut_another_way(scene, tmp_path):
    from imgcate.encoders import RandomConvFeatures
    from imgcate.errors import ExtrapolationWarning

    rows, cols = list(range(20, 76, 4)), list(range(20, 104, 6))
    trial = _trial_at(scene, rows, cols)
    chips = extract_chips(trial, scene, 8)
    enc = RandomConvFeatures(16, n_components=4).fit(chips, seed=0)
    new = extract_chips(_trial_at(scene, [30, 60], [90, 25]), scene, 8)
    np.testing.assert_allclose(enc.transform(new), enc.transform(new.values))  # same cut: fine
    with pytest.raises(InputError, match=r"fitted on 8x8 px chips.*size=8"):
        enc.transform(extract_chips(trial, scene, 12))
    with pytest.raises(InputError, match=r"scale=\[0.5\].*same scale"):
        enc.transform(extract_chips(trial, scene, 8, scale=0.5))
    with rasterio.open(scene) as src:
        data, profile = src.read(), dict(src.profile)
    renamed, coarse = tmp_path / "renamed.tif", tmp_path / "coarse.tif"
    with rasterio.open(renamed, "w", **profile) as dst:
        dst.write(data)
        for i in range(1, data.shape[0] + 1):
            dst.set_band_description(i, f"other_{i}")
    with pytest.raises(InputError, match=r"the trial's chips had bands \['B1'"):
        enc.transform(extract_chips(trial, renamed, 8))
    with rasterio.open(
        coarse, "w", **{**profile, "transform": profile["transform"] * Affine.scale(2)}
    ) as d:
        d.write(data)
    coarse_trial = _trial_at(coarse, [30, 40], [30, 40])
    with pytest.warns(ExtrapolationWarning, match="another ground footprint"):
        enc.transform(extract_chips(coarse_trial, coarse, 8))
