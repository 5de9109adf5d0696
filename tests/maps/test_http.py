"""Imagery over HTTP: a Cloud-Optimized GeoTIFF served by a real HTTP server on 127.0.0.1
(tests/maps/conftest.py: range requests, and failures on request) is mapped, chipped and
embedded exactly as the same file read from disk; read errors are retried, then reported with
how to resume, and the resumed map is the local one."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil
import xarray as xr

from imgcate.errors import RasterError
from imgcate.maps import predict_map
from imgcate.maps.tiles import READ_RETRY_DELAYS
from imgcate.raster import HTTP_GDAL_OPTIONS, gdal_options, open_raster

#: The Landsat scene's band descriptions (data/landsat/README.md)
LANDSAT_BANDS = ("blue", "green", "red", "nir", "swir1", "swir2")
TILE = 32  # the chip size of the fit (MAP_TILE in tests/conftest.py)
#: A part of the map scene: 6 x 6 tiles of 32 px every 32 px (in 4 blocks of 9)
OPTS = {"tile_size": TILE, "stride": TILE, "max_draws": 50, "progress": False, "seed": 1}


def served(server, path, name=None):
    """Put ``path`` in the server's folder (under ``name``); its URL."""
    name = name or path.name
    shutil.copy(path, server.root / name)
    return server.url(name)


def uncached(server, monkeypatch):
    """Keep GDAL from reusing one open's downloads in the next (CPL_VSIL_CURL_NON_CACHED): the
    test scene is so small that the map's check of its band statistics downloads all of it,
    so without this no block would need the server, as every block of a large COG does."""
    monkeypatch.setenv("CPL_VSIL_CURL_NON_CACHED", "/vsicurl/" + server.url(""))


@pytest.fixture(scope="module")
def region(map_inputs):
    """Bounds of the scene's top-left 192 x 192 px."""
    with rasterio.open(map_inputs[0]) as ds:
        t = ds.transform
    return (t.c, t.f + 192 * t.e, t.c + 192 * t.a, t.f)


@pytest.fixture(scope="module")
def local_map(inputs, map_cog, region):
    """The map of the region, read from the COG on disk."""
    return predict_map(inputs[1], map_cog, region, block_tiles=9, **OPTS)


def same_pixels(a: xr.Dataset, b: xr.Dataset) -> None:
    """The same map: every layer, coordinate and grid; only where it was read from differs."""
    xr.testing.assert_equal(a, b)
    assert a.attrs["transform"] == b.attrs["transform"] and a.attrs["crs"] == b.attrs["crs"]


def stopped_at_block_2_and_resumed(
    error: BaseException, url: str, checkpoints: Path, server, resume, local_map
) -> None:
    """A map of 4 blocks stopped at block 2, whose read failed every try: the error names the
    block and says how to resume, blocks 0 and 1 are saved; ``resume(on_block)`` (once the
    server is back) computes only blocks 2 and 3 and gives the local map."""
    message = str(error)
    n_tries = len(READ_RETRY_DELAYS) + 1
    assert f"reading block 2 of raster {url!r} (pixel rows 96-160, columns 0-192)" in message
    assert f"failed {n_tries} times" in message and "server" in message
    assert f"2 of 4 blocks are finished and saved in {str(checkpoints)!r}" in message
    assert "--resume-dir" in message and "checkpoint_dir=" in message
    assert len(list(checkpoints.glob("block-*.npz"))) == 2
    server.fail(0)  # the server is back
    calls = []
    resumed = resume(lambda done, total: calls.append(done))
    assert calls == [3, 4]  # only the two blocks that were not finished
    same_pixels(resumed, local_map)


def test_map_of_a_cog_over_http_equals_the_map_of_the_file(
    inputs, map_cog, region, local_map, http_server
):
    url = served(http_server, map_cog)
    remote = predict_map(inputs[1], url, region, block_tiles=9, **OPTS)
    same_pixels(remote, local_map)
    assert remote.attrs["raster"] == url and url in remote.attrs["provenance"]
    gets = [r for r in http_server.requests if r[0] == "GET"]
    assert gets and all(r[2] is not None and r[3] == 206 for r in gets)  # range requests only


def test_a_stack_of_band_urls_maps_and_resumes_like_the_file(
    inputs, map_cog, region, local_map, http_server, tmp_path
):
    """The scene's bands as single-band files served by URL, stacked by name: the map (with
    checkpoints, keyed on each URL's version) is the map of the file."""
    with rasterio.open(map_cog) as src:
        profile = {**src.profile, "count": 1, "driver": "GTiff"}
        urls = {}
        for band, name in enumerate(src.descriptions, start=1):
            with rasterio.open(http_server.root / f"{name}.tif", "w", **profile) as dst:
                dst.write(src.read(band), 1)
            urls[name] = http_server.url(f"{name}.tif")
    opts = dict(OPTS, block_tiles=9, checkpoint_dir=tmp_path / "blocks")
    same_pixels(predict_map(inputs[1], urls, region, **opts), local_map)
    calls = []
    again = predict_map(inputs[1], urls, region, on_block=lambda d, t: calls.append(d), **opts)
    assert calls == [] and len(list((tmp_path / "blocks").glob("block-*.npz"))) == 4
    same_pixels(again, local_map)


def test_gdal_settings_are_set_for_urls_and_yield_to_the_users(monkeypatch, tmp_path):
    url = "https://example.org/scenes/a.tif?signature=x"
    options = gdal_options(url)
    assert options == {**HTTP_GDAL_OPTIONS, "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.vrt"}
    assert gdal_options("/vsicurl/" + url) == options
    assert gdal_options(tmp_path / "a.tif") == {} and gdal_options(str(tmp_path)) == {}
    # an address without a raster's extension: GDAL is not told which extensions exist
    assert "CPL_VSIL_CURL_ALLOWED_EXTENSIONS" not in gdal_options("https://example.org/get?id=1")
    assert gdal_options({"red": url, "nir": url.replace("a.tif", "b.tif")}) == options
    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "0")  # the user's own settings win
    with rasterio.Env(VSI_CACHE="FALSE"):
        mine = gdal_options(url)
    assert "GDAL_HTTP_MAX_RETRY" not in mine and "VSI_CACHE" not in mine
    assert mine["GDAL_HTTP_TIMEOUT"] == HTTP_GDAL_OPTIONS["GDAL_HTTP_TIMEOUT"]


def test_gdal_retries_http_errors_with_imgcates_settings(map_cog, http_server, monkeypatch, caplog):
    """Two 503 answers are retried by GDAL itself (imgcate asks for 3 retries; the user's
    shorter delay is kept), so no read fails and imgcate does not try again."""
    monkeypatch.setenv("GDAL_HTTP_RETRY_DELAY", "0.05")
    url = served(http_server, map_cog)
    with rasterio.open(map_cog) as ds:
        want = ds.read(window=rasterio.windows.Window(64, 64, 128, 128))
    ds, _ = open_raster(url)
    with ds:
        http_server.fail(2, "503")
        got = ds.read(window=rasterio.windows.Window(64, 64, 128, 128))
    np.testing.assert_array_equal(got, want)
    assert http_server.statuses().count(503) == 2 and http_server.statuses()[-1] == 206


class _BackOnRetry(logging.Handler):
    """Ends the server's outage when imgcate reports a failed read (an outage shorter than
    imgcate's first wait), and keeps the reports."""

    def __init__(self, server) -> None:
        super().__init__(logging.WARNING)
        self.server, self.messages = server, []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        self.server.fail(0)


def test_a_read_error_mid_map_is_tried_again(
    inputs, map_cog, region, local_map, http_server, monkeypatch
):
    """After the first block the server drops every connection (GDAL's own retries and
    fallbacks fail too) until imgcate reports the failed read; its next try reads the block,
    and the map is the local one."""
    uncached(http_server, monkeypatch)
    url = served(http_server, map_cog)
    handler = _BackOnRetry(http_server)

    def outage_after_first(done, total):
        if done == 1:
            http_server.fail(10**6, "drop")

    logger = logging.getLogger("imgcate")
    logger.addHandler(handler)
    try:
        remote = predict_map(
            inputs[1], url, region, block_tiles=9, on_block=outage_after_first, **OPTS
        )
    finally:
        logger.removeHandler(handler)
    same_pixels(remote, local_map)
    assert http_server.statuses().count("dropped") >= 1
    [report] = handler.messages
    assert report.startswith(f"reading block 1 of raster {url!r} (pixel rows 32-96, columns")
    assert "failed on try 1 of 4 (RasterioIOError" in report
    assert report.endswith(f"trying again in {READ_RETRY_DELAYS[0]:g} s")


def test_a_persistent_read_error_stops_the_map_and_resume_completes_it(
    inputs, map_cog, region, local_map, http_server, monkeypatch, tmp_path
):
    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "0")
    uncached(http_server, monkeypatch)
    url = served(http_server, map_cog)
    checkpoints = tmp_path / "blocks"

    def server_fails_after_two(done, total):
        if done == 2:
            http_server.fail(10**6, "drop")

    with pytest.raises(RasterError) as info:
        predict_map(
            inputs[1],
            url,
            region,
            block_tiles=9,
            checkpoint_dir=checkpoints,
            on_block=server_fails_after_two,
            **OPTS,
        )
    stopped_at_block_2_and_resumed(
        info.value,
        url,
        checkpoints,
        http_server,
        lambda on_block: predict_map(
            inputs[1],
            url,
            region,
            block_tiles=9,
            checkpoint_dir=checkpoints,
            on_block=on_block,
            **OPTS,
        ),
        local_map,
    )


def test_an_unreadable_url_is_a_clear_error(http_server, map_cog):
    missing = http_server.url("missing.tif")
    with pytest.raises(RasterError, match="could not be read over HTTP") as info:
        open_raster(missing)
    assert missing in str(info.value) and "range requests" in str(info.value)
    with pytest.raises(RasterError, match="pass the URL as text"):
        open_raster(Path(served(http_server, map_cog)))  # pathlib merges the '//'


def test_chips_and_embeddings_over_http_equal_those_of_the_files(
    landsat_path, http_server, tmp_path
):
    """The Landsat scene as a COG, and as single-band files stacked by URL."""
    import pandas as pd

    from imgcate.chips import extract_chips
    from imgcate.datasets import landsat_band_files
    from imgcate.embeddings import embed
    from imgcate.raster import stack_bands
    from imgcate.units import read_units

    cog = tmp_path / "landsat.tif"
    rasterio.shutil.copy(landsat_path, cog, driver="COG", BLOCKSIZE=64)
    with rasterio.open(cog) as ds:
        rows, cols = np.meshgrid(np.arange(40, 320, 40), np.arange(40, 320, 70))
        xs, ys = rasterio.transform.xy(ds.transform, rows.ravel(), cols.ravel())
        crs = ds.crs
    n = len(xs)
    table = pd.DataFrame(
        {"id": range(n), "x": xs, "y": ys, "treatment": np.arange(n) % 2, "outcome": 0.0}
    )
    trial = read_units(table, lon="x", lat="y", crs=crs)
    local = extract_chips(trial, cog, 16)
    remote = extract_chips(trial, served(http_server, cog), 16)
    np.testing.assert_array_equal(remote.values, local.values)
    assert remote.band_names == local.band_names == LANDSAT_BANDS
    a = embed(local, "rcf", n_features=32, n_components=4, seed=0)
    b = embed(remote, "rcf", n_features=32, n_components=4, seed=0)
    np.testing.assert_array_equal(a.values, b.values)
    files = landsat_band_files(tmp_path / "bands")
    urls = {f.stem: served(http_server, f) for f in files}
    stacked = extract_chips(trial, urls, 16)
    np.testing.assert_array_equal(stacked.values, local.values)
    assert stacked.band_names == tuple(urls)
    vrt = stack_bands(list(urls.values()), tmp_path / "stack.vrt")  # names from the URLs
    from_file = extract_chips(trial, vrt, 16)
    np.testing.assert_array_equal(from_file.values, local.values)
    assert from_file.band_names == tuple(urls) and gdal_options(vrt)


def test_imgcate_chips_of_band_urls_equals_the_chips_of_the_scene(
    landsat_path, http_server, tmp_path
):
    """The command line's first step takes URLs: single-band files stacked by URL, named by
    the URLs' file names."""
    from click.testing import CliRunner

    from imgcate import datasets
    from imgcate.chipfile import load_chips
    from imgcate.cli import main
    from imgcate.datasets import landsat_band_files

    urls = [served(http_server, f) for f in landsat_band_files(tmp_path / "bands")]
    units, out = datasets.villages_path(), {}
    for name, raster in (("remote", urls), ("local", [str(landsat_path)])):
        out[name] = tmp_path / f"{name}.npz"
        args = ["chips", str(units), *raster, str(out[name]), "--id-column", "village", "-q"]
        result = CliRunner().invoke(main, [*args, "--size", "16"])
        assert result.exit_code == 0, result.output
    remote, local = load_chips(out["remote"]), load_chips(out["local"])
    np.testing.assert_array_equal(remote.values, local.values)
    assert remote.band_names == ("B1", "B2", "B3", "B4", "B5", "B7")
    assert local.band_names == LANDSAT_BANDS


def test_imgcate_map_of_a_url_writes_the_map_of_the_file(
    map_inputs, map_cog, region, local_map, http_server, tmp_path
):
    from click.testing import CliRunner

    from imgcate.cli import main
    from imgcate.maps import write_cog

    url = served(http_server, map_cog)
    out = tmp_path / "remote.tif"
    options = ["--bounds", *map(str, region), "--stride", "32", "--max-draws", "50"]
    options += ["--seed", "1", "--block-tiles", "9", "--no-preview", "-q"]
    result = CliRunner().invoke(main, ["map", str(map_inputs[1]), url, str(out), *options])
    assert result.exit_code == 0, result.output
    write_cog(local_map, tmp_path / "local.tif")
    with rasterio.open(out) as remote, rasterio.open(tmp_path / "local.tif") as local:
        np.testing.assert_array_equal(remote.read(), local.read())
        assert remote.descriptions == local.descriptions
        assert url in remote.tags()["imgcate_provenance"]
    missing = http_server.url("missing.tif")
    again = [str(map_inputs[1]), missing, str(tmp_path / "none.tif")]
    result = CliRunner().invoke(main, ["map", *again, *options])
    assert result.exit_code != 0 and missing in result.output
    assert "range requests" in result.output


def test_on_dask_workers_a_persistent_read_error_stops_the_map_and_resume_completes_it(
    inputs, map_cog, region, local_map, http_server, monkeypatch, tmp_path
):
    """The same through ``scheduler=`` (a Dask worker, here one thread of this process, reads
    the blocks in order): the server fails as block 2 starts (its reader closed, so that
    GDAL must ask the server again); the worker tries again, then the map stops with what to
    do; blocks 0 and 1 are saved, and the resumed map, also on Dask, is the local one."""
    distributed = pytest.importorskip("distributed")
    from imgcate.maps import runners

    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "0")
    uncached(http_server, monkeypatch)
    url = served(http_server, map_cog)
    checkpoints = tmp_path / "blocks"
    real_piece, outage = runners.compute_piece, []

    def server_fails_at_block_2(model, reader, index, flat):
        if index == 2 and not outage:
            outage.append(index)
            http_server.fail(10**6, "drop")
            reader.close()  # its blocks cached by GDAL would spare the server
        return real_piece(model, reader, index, flat)

    monkeypatch.setattr(runners, "compute_piece", server_fails_at_block_2)
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster),
    ):
        options = dict(OPTS, block_tiles=9, checkpoint_dir=checkpoints)
        address = cluster.scheduler_address
        with pytest.raises(RasterError) as info:
            predict_map(inputs[1], url, region, scheduler=address, **options)
        stopped_at_block_2_and_resumed(
            info.value,
            url,
            checkpoints,
            http_server,
            lambda on_block: predict_map(
                inputs[1], url, region, scheduler=address, on_block=on_block, **options
            ),
            local_map,
        )


def test_imgcate_embed_raster_of_a_url_writes_the_embeddings_of_the_file(
    landsat_path, http_server, tmp_path
):
    """``imgcate embed-raster`` streams chips from a COG by URL (range requests), chunk by
    chunk: the same embeddings and encoder as from the file on disk."""
    import pyarrow.parquet as pq
    from click.testing import CliRunner

    from imgcate import datasets, load_embeddings
    from imgcate.cli import main

    cog = tmp_path / "landsat.tif"
    rasterio.shutil.copy(landsat_path, cog, driver="COG", BLOCKSIZE=64)
    units = str(datasets.villages_path())
    settings = ["--id-column", "village", "--size", "16", "--n-features", "32"]
    settings += ["--n-components", "4", "--seed", "0", "--chunk-images", "128", "-q"]
    out = {}
    for name, raster in (("remote", served(http_server, cog)), ("local", str(cog))):
        out[name] = tmp_path / f"{name}.parquet"
        result = CliRunner().invoke(
            main, ["embed-raster", units, raster, str(out[name]), *settings]
        )
        assert result.exit_code == 0, result.output
    remote, local = load_embeddings(out["remote"]), load_embeddings(out["local"])
    np.testing.assert_array_equal(remote.image_ids, local.image_ids)
    np.testing.assert_array_equal(remote.values, local.values)
    (config, arrays), (config2, arrays2) = remote.encoder.get_state(), local.encoder.get_state()
    assert config == config2
    for key in arrays:
        np.testing.assert_array_equal(np.asarray(arrays[key]), np.asarray(arrays2[key]))
    assert pq.ParquetFile(out["remote"]).metadata.num_row_groups == 3  # 300 images in chunks
    ranged = [r for r in http_server.requests if r[0] == "GET" and r[2] is not None]
    assert ranged and all(r[3] == 206 for r in ranged)  # read by range requests
