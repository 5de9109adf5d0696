"""Maps written block by block (write_map): the same GeoTIFF and preview as write_cog of
predict_map, from blocks placed in any order, resumed after an interruption, and nothing left
behind when a map fails."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import xarray as xr
from shapely.geometry import Polygon

from imgcate.errors import OutputExistsError, RasterError
from imgcate.maps import predict_map, write_cog, write_map, write_preview
from imgcate.maps.cog import preview_dataset, staging_profile
from imgcate.maps.grid import TileBlocks
from imgcate.maps.written import RowWriter
from imgcate.provenance import collect

TILE = 32  # the chip size of the fit (MAP_TILE in tests/conftest.py)
OPTS = {"tile_size": TILE, "stride": 16, "max_draws": 100, "progress": False, "seed": 1}


def _masks():
    rng = np.random.default_rng(3)
    sparse = rng.random((40, 23)) < 0.3
    sparse[:5] = sparse[17:21] = sparse[-3:] = False  # rows without tiles, first and last too
    yield sparse
    yield np.ones((7, 9), bool)
    yield np.zeros((4, 5), bool)
    one = np.zeros((6, 6), bool)
    one[4, 2] = True
    yield one


@pytest.mark.parametrize("size", [1, 7, 23, 50, 10_000])
def test_blocks_are_the_region_tiles_split_in_order(size):
    """TileBlocks, made a block at a time from the rows' counts, against the obvious split of
    every flat index."""
    for mask in _masks():
        flat = np.flatnonzero(mask.ravel())
        expected = [flat[i : i + size] for i in range(0, len(flat), size)]
        blocks = TileBlocks(mask, size)
        assert len(blocks) == len(expected)
        for i, want in enumerate(expected):
            assert blocks.size_of(i) == len(want)
            np.testing.assert_array_equal(blocks[i], want)
        assert [len(b) for b in blocks] == [len(b) for b in expected]  # iteration stops
        if expected:
            np.testing.assert_array_equal(blocks[-1], expected[-1])
        with pytest.raises(IndexError):
            blocks[len(expected)]


def _region(scene):
    """Two triangles over the scene, one above the other: rows cut part-way, and rows between
    them without tiles."""
    with rasterio.open(scene) as src:
        b, crs = src.bounds, src.crs

    def at(x, y):  # fractions of the width and height
        return (b.left + x * (b.right - b.left), b.bottom + y * (b.top - b.bottom))

    top = [at(0.1, 0.6), at(0.9, 0.65), at(0.4, 0.95)]
    low = [at(0.05, 0.05), at(0.85, 0.1), at(0.3, 0.3)]
    return gpd.GeoSeries([Polygon(top), Polygon(low)], crs=crs)


def test_row_writer_places_blocks_in_any_order(tmp_path):
    """Blocks finished in a shuffled order (as Dask returns them) give the grids that placing
    every tile in one array gives; the counts of tiles are those of the grids."""
    rng = np.random.default_rng(0)
    mask = next(_masks())
    h, w = mask.shape
    n_clusters, limit = 3, 1.5
    flat = np.flatnonzero(mask.ravel())
    values = {
        v: rng.normal(size=len(flat)).astype(np.float32)
        for v in ("mean", "sd", "lower", "upper", "prob_positive")
    }
    values["mean"][::9] = np.nan  # tiles holding nodata
    values["extrapolation"] = np.abs(rng.normal(1.2, 0.5, size=len(flat))).astype(np.float32)
    values["extrapolation"][::9] = np.nan
    values["cluster_prob"] = rng.dirichlet(np.ones(n_clusters), size=len(flat)).astype(np.float32)
    blocks = TileBlocks(mask, 11)
    order = rng.permutation(len(blocks))
    wkt = rasterio.crs.CRS.from_epsg(32636).to_wkt()
    profile = staging_profile(wkt, (30, 0, 5e5, 0, -30, 6e6), (h, w), 7 + n_clusters)
    with rasterio.open(tmp_path / "rows.tif", "w", **profile) as dst:
        writer = RowWriter(dst, mask_grid(mask), limit, profile["count"])
        for i in order:
            part = slice(i * 11, i * 11 + blocks.size_of(i))
            writer.place(blocks[i], {k: v[part] for k, v in values.items()})
        writer.check_complete()
    expected = np.full((profile["count"], h * w), np.nan, np.float32)
    for b, v in enumerate(("mean", "sd", "lower", "upper", "prob_positive")):
        expected[b, flat] = values[v]
    expected[5 : 5 + n_clusters, flat] = values["cluster_prob"].T
    extrapolation = values["extrapolation"]
    expected[-2, flat] = extrapolation
    expected[-1, flat] = np.where(np.isnan(extrapolation), np.nan, extrapolation > limit)
    with rasterio.open(tmp_path / "rows.tif") as src:
        np.testing.assert_array_equal(src.read(), expected.reshape(-1, h, w))
    assert writer.tiles == int(np.isfinite(values["mean"]).sum())
    assert writer.outside == int((extrapolation > limit).sum())
    assert writer.scored == int(np.isfinite(extrapolation).sum())


def mask_grid(mask):
    """A TileGrid of ``mask`` (RowWriter reads its shape and mask)."""
    from affine import Affine

    from imgcate.maps.grid import TileGrid

    return TileGrid("none", TILE, 16, 0, 0, mask, Affine.identity(), "", "test")


def test_write_map_is_write_cog_of_predict_map_byte_for_byte(inputs, tmp_path):
    """The map written block by block (blocks of 37 tiles spanning rows unevenly, rows without
    tiles) is the same file, preview included, as the map made in memory and written."""
    scene, fit = inputs
    region = _region(scene)
    record = collect({"raster": scene}, seeds={"map": 1})  # one time of creation for both
    opts = dict(OPTS, block_tiles=37, provenance=record)
    ds = predict_map(fit, scene, region, **opts)
    write_cog(ds, tmp_path / "memory.tif")
    written = write_map(fit, scene, tmp_path / "blocks.tif", region, **opts)
    assert written.path == tmp_path / "blocks.tif"
    assert written.preview == tmp_path / "blocks.png"
    for suffix in (".tif", ".png"):
        memory = (tmp_path / "memory").with_suffix(suffix).read_bytes()
        assert (tmp_path / "blocks").with_suffix(suffix).read_bytes() == memory, suffix
    # a small map's preview, drawn from the written file, is the map's own drawing
    write_preview(ds, tmp_path / "direct.png")
    assert (tmp_path / "direct.png").read_bytes() == (tmp_path / "blocks.png").read_bytes()
    mean = ds["mean"].values
    assert np.isnan(mean).all(axis=1).sum() >= 3  # rows without tiles
    assert written.shape == mean.shape
    assert written.tiles == int(np.isfinite(mean).sum()) > 100
    assert written.outside == int((ds["outside_support"].values == 1).sum())
    assert not list(tmp_path.glob(".*"))  # no staging folder left


@pytest.mark.parametrize("strip", ["row", "column"])
def test_a_map_one_tile_high_or_wide_is_written_with_its_preview(inputs, tmp_path, strip):
    """A region one tile-row high (or one column wide) is mapped, and so is its preview:
    matplotlib draws no contour on fewer than two rows and columns, which raised a TypeError
    after every tile was computed, and the map was lost with the preview."""
    scene, fit = inputs
    with rasterio.open(scene) as src:
        b, res = src.bounds, src.res[0]
    band = res / 2  # half a pixel: one row (column) of the output grid
    mid_y, mid_x = (b.bottom + b.top) / 2, (b.left + b.right) / 2
    region = (
        (b.left, mid_y, b.right, mid_y + band)
        if strip == "row"
        else (mid_x, b.bottom, mid_x + band, b.top)
    )
    written = write_map(fit, scene, tmp_path / "strip.tif", region, **OPTS)
    assert (written.shape[0] == 1) if strip == "row" else (written.shape[1] == 1)
    assert max(written.shape) > 10 and written.tiles == max(written.shape)
    assert written.preview.stat().st_size > 1000
    with rasterio.open(written.path) as src:
        assert np.isfinite(src.read(1)).sum() == written.tiles


def test_an_interrupted_write_leaves_nothing_and_resumes(inputs, tmp_path, monkeypatch):
    from imgcate.errors import MapInterrupted
    from imgcate.maps import written

    scene, fit = inputs
    record = collect({"raster": scene}, seeds={"map": 1})
    opts = dict(OPTS, block_tiles=60, provenance=record)
    whole = write_map(fit, scene, tmp_path / "whole.tif", preview=False, **opts)
    out = tmp_path / "part" / "map.tif"

    def stop_after_three(done, total):
        if done == 3:
            raise KeyboardInterrupt("killed")

    saying = r"map interrupted\. 3 of 9 blocks are finished and saved in .*ckpt"
    with pytest.raises(MapInterrupted, match=saying):  # a KeyboardInterrupt
        write_map(
            fit, scene, out, checkpoint_dir=tmp_path / "ckpt", on_block=stop_after_three, **opts
        )
    assert list(out.parent.iterdir()) == []  # no map, no preview, no staging folder
    calls = []
    resumed = write_map(
        fit,
        scene,
        out,
        checkpoint_dir=tmp_path / "ckpt",
        on_block=lambda done, total: calls.append(done),
        preview=False,
        **opts,
    )
    assert calls[0] == 4 and len(calls) == 6  # 9 blocks, 3 saved
    assert out.read_bytes() == whole.path.read_bytes()
    assert resumed.tiles == whole.tiles

    def stopped_copy(*args, **kwargs):  # Ctrl-C while the finished map is written out
        raise KeyboardInterrupt

    again = tmp_path / "again" / "map.tif"
    with monkeypatch.context() as patch:
        patch.setattr(written, "copy_to_cog", stopped_copy)
        with pytest.raises(MapInterrupted, match="while its COG was written. Every block is"):
            write_map(fit, scene, again, checkpoint_dir=tmp_path / "ckpt", **opts)
    assert list(again.parent.iterdir()) == []


def test_write_map_errors_leave_nothing(inputs, tmp_path, write_variant):
    scene, fit = inputs
    out = tmp_path / "map.tif"
    out.write_bytes(b"earlier")
    calls = []
    with pytest.raises(OutputExistsError, match="overwrite"):
        write_map(fit, scene, out, on_block=lambda d, t: calls.append(d), **OPTS)
    assert calls == [] and out.read_bytes() == b"earlier"  # refused before any tile
    out.unlink()

    def dropped(done, total):  # a connection lost mid-map is the map's error, not the disk's
        raise ConnectionResetError("connection to the scheduler lost")

    with pytest.raises(ConnectionResetError, match="scheduler lost"):
        write_map(fit, scene, out, on_block=dropped, **OPTS)
    blank = write_variant(scene, tmp_path / "blank.tif", nodata_box=(0, 384, 0, 384))
    with pytest.raises(RasterError, match="every tile.*nodata"):
        write_map(fit, blank, out, **OPTS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blank.tif"]


def test_a_large_map_is_previewed_from_a_decimated_read(inputs, tmp_path):
    """A map over ``side`` cells a side is read for its preview at a power-of-two fraction of
    its size, over the same extent: each preview cell the mean of the cells it covers."""
    scene, fit = inputs
    written = write_map(fit, scene, tmp_path / "map.tif", preview=False, **OPTS)
    with rasterio.open(written.path) as src:
        full, bounds = src.read(1), src.bounds
        attrs = {"crs": src.crs.to_wkt(), "support_limit": 1.0}
    assert written.shape == (23, 23) and np.isfinite(full).all()
    for side, factor in ((12, 2), (8, 4), (3, 8)):
        small = preview_dataset(written.path, attrs, side=side)
        cells = -(-23 // factor)
        assert small.sizes == {"y": cells, "x": cells}, side
        t = small.attrs["transform"]
        assert t[0] * cells == pytest.approx(bounds.right - bounds.left)
        assert (t[2], t[5]) == pytest.approx((bounds.left, bounds.top))
        assert set(np.unique(small["outside_support"].values)) <= {0.0, 1.0}
    # a map of 22 x 22 cells (an even side): each of the 11 x 11 cells is a 2 x 2 mean
    px = 30.0  # the scene's pixels; cells of 16 px centred 8 px in
    inner = (400000 + 8 * px + 1, 60000 - 360 * px + 1, 400000 + 360 * px - 1, 60000 - 8 * px - 1)
    even = write_map(fit, scene, tmp_path / "even.tif", inner, preview=False, **OPTS)
    with rasterio.open(even.path) as src:
        cells = src.read(1)
    assert even.shape == (22, 22)
    small = preview_dataset(even.path, attrs, side=12)
    means = cells.reshape(11, 2, 11, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(small["mean"].values, means, rtol=1e-5, atol=1e-6)
    whole = preview_dataset(written.path, attrs)
    np.testing.assert_array_equal(whole["mean"].values, full)


@pytest.mark.filterwarnings("ignore::imgcate.errors.ExtrapolationWarning")
def test_map_warnings_point_at_the_callers_line(inputs, tmp_path):
    """A raster without band descriptions warns (the order is assumed), at the line that
    called predict_map or write_map, not inside imgcate."""
    from imgcate.errors import BandWarning

    scene, fit = inputs
    with rasterio.open(scene) as src:
        data, profile = src.read(), src.profile
    plain = tmp_path / "plain.tif"
    with rasterio.open(plain, "w", **profile) as dst:
        dst.write(data)
    bounds = (400000.0, 58000.0, 402000.0, 60000.0)
    for run in (
        lambda: predict_map(fit, plain, bounds, **OPTS),
        lambda: write_map(fit, plain, tmp_path / "map.tif", bounds, preview=False, **OPTS),
    ):
        with pytest.warns(BandWarning, match="no band descriptions") as caught:
            run()
        assert {w.filename for w in caught if w.category is BandWarning} == {__file__}


def test_dask_keeps_its_settings_after_a_map():
    """The short message log of a map's Dask connections leaves Dask's other settings as they
    were, when distributed is first imported for the map (a second map in the same process
    failed with KeyError: 'comm' once the whole "distributed" section had gone)."""
    import subprocess
    import sys

    code = (
        "import dask\n"
        "from imgcate.maps.runners import DASK_MESSAGE_LOG, few_dask_messages\n"
        "with few_dask_messages():\n"
        "    assert dask.config.get('distributed.admin.low-level-log-length') == DASK_MESSAGE_LOG\n"
        "print(dask.config.get('distributed.comm.timeouts.connect'),\n"
        "      dask.config.get('distributed.admin.low-level-log-length'))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["30s", "1000"]


def test_bad_outputs_are_refused_before_mapping(inputs, tmp_path):
    from imgcate.errors import InputError

    scene, fit = inputs
    calls = []
    with pytest.raises(InputError, match=r"ends in \.png.*map\.tif"):
        write_map(fit, scene, tmp_path / "map.png", on_block=lambda d, t: calls.append(d), **OPTS)
    with pytest.raises(InputError, match=r"co='COMPRESS=ZSTD' must be a dict"):
        write_map(fit, scene, tmp_path / "map.tif", co="COMPRESS=ZSTD", **OPTS)
    assert calls == [] and list(tmp_path.iterdir()) == []
    with pytest.raises(InputError, match=r"ends in \.png"):
        write_cog(xr.Dataset(), tmp_path / "map.png")
