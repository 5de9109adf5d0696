"""Posterior effect maps: tiles read from real GeoTIFFs, checked against EffectFit.predict;
regions, nodata, cut and band checks, resuming, Dask workers."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import xarray as xr
from rasterio.windows import Window
from shapely.geometry import box

from imgcate.chips import chips_from_array
from imgcate.errors import ExtrapolationWarning, InputError, RasterError
from imgcate.maps import predict_map, tile_grid

TILE = 32  # the chip size of the fit (MAP_TILE in tests/conftest.py)
MAP_OPTS = {"tile_size": TILE, "max_draws": 100, "progress": False, "seed": 1}


def assert_same_map(a, b):
    """Identical maps, made at different times: every value and attr, the provenance's time of
    creation aside (it is when the map was made, not what it holds)."""
    from imgcate.provenance import loads

    def timeless(ds):
        record = loads(ds.attrs.get("provenance"))
        record.pop("created_utc", None)
        return ds.assign_attrs(provenance=record)

    xr.testing.assert_identical(timeless(a), timeless(b))


def test_map_equals_predict_on_the_same_tiles(inputs, full_map):
    """Each map pixel equals EffectFit.predict on the tile read directly (slow, obvious)."""
    scene, fit = inputs
    ds = full_map
    assert ds.sizes == {"y": 23, "x": 23, "cluster": 2}
    picks = [(0, 0), (3, 17), (22, 22), (11, 5)]
    with rasterio.open(scene) as src:
        tiles = np.stack([src.read(window=Window(j * 16, i * 16, TILE, TILE)) for i, j in picks])
        # the output pixel is a 16 px cell centred on its tile
        assert (
            ds.attrs["transform"] == list(src.transform @ rasterio.Affine(16, 0, 8, 0, 16, 8))[:6]
        )
        assert rasterio.crs.CRS.from_wkt(ds.attrs["crs"]) == src.crs
    pred = fit.predict(chips_from_array(tiles.astype(np.float32)), max_draws=100, seed=1)
    table = pred.to_frame(0.9)
    rows, cols = np.array(picks).T
    got = {v: ds[v].values[rows, cols] for v in ds.data_vars if v != "cluster_prob"}
    # float32 in other batch shapes: a CATE near 0.1 sums terms of order 1, so a few 1e-6 apart
    np.testing.assert_allclose(got["mean"], table["tau_mean"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["sd"], table["tau_sd"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got["lower"], table["tau_5%"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["upper"], table["tau_95%"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["prob_positive"], table["prob_positive"], atol=1e-6)
    np.testing.assert_allclose(got["extrapolation"], table["extrapolation"], rtol=1e-4)
    np.testing.assert_array_equal(got["outside_support"], table["outside_support"])
    np.testing.assert_allclose(
        ds["cluster_prob"].values[:, rows, cols].T,
        table[["cluster_prob_0", "cluster_prob_1"]],
        atol=1e-5,
    )
    # the centre coordinate of a pixel is its tile's centre
    with rasterio.open(scene) as src:
        cx, cy = src.xy(3 * 16 + 16, 17 * 16 + 16, offset="ul")
    assert (float(ds.x[17]), float(ds.y[3])) == pytest.approx((cx, cy))
    assert ds.attrs["n_draws"] == 100 and ds["lower"].attrs["quantile"] == pytest.approx(0.05)


def test_the_map_shows_the_known_effect_pattern(inputs, full_map):
    """Built-up tiles (cluster 1, tau = 2) get larger effects than rural ones (tau = 0)."""
    scene, _ = inputs
    from imgcate.simulate import BUILT, ROAD, land_cover_path

    with rasterio.open(land_cover_path(scene)) as src:
        cover = src.read(1)
    built = np.isin(cover, (BUILT, ROAD)).astype(float)
    share = np.array(
        [
            [built[i * 16 : i * 16 + TILE, j * 16 : j * 16 + TILE].mean() for j in range(23)]
            for i in range(23)
        ]
    )
    mean = full_map["mean"].values
    assert np.corrcoef(share.ravel(), mean.ravel())[0, 1] > 0.5
    assert mean[share > 0.4].mean() > mean[share < 0.1].mean() + 1.0


def test_bounds_region_and_nodata_tiles(inputs, tmp_path, write_variant):
    scene, fit = inputs
    holed = write_variant(scene, tmp_path / "holed.tif", nodata_box=(100, 104, 200, 204))
    ds = predict_map(fit, holed, **MAP_OPTS)
    assert ds.sizes["y"] == ds.sizes["x"] == 12
    nan = np.isnan(ds["mean"].values)
    assert nan.sum() == 1 and nan[3, 6]  # rows 100-103 / cols 200-203 lie in tile (3, 6)
    with rasterio.open(scene) as src:
        x0, y0 = src.xy(64, 96, offset="ul")
        x1, y1 = src.xy(128, 160, offset="ul")
    part = predict_map(fit, scene, (x0, y1, x1, y0), **MAP_OPTS)
    assert part.sizes["y"] == part.sizes["x"] == 2
    assert np.isfinite(part["mean"].values).all()


def test_clear_errors(inputs, tmp_path, write_variant):
    scene, fit = inputs
    with rasterio.open(scene) as src:
        b = src.bounds
    with pytest.raises(RasterError, match=r"bounds \(1000000.0, .*does not overlap.*raster"):
        predict_map(fit, scene, (1e6, 1e6, 1.1e6, 1.1e6), **MAP_OPTS)
    with pytest.raises(RasterError, match=r"extent \(these look like degrees; the raster's CRS"):
        predict_map(fit, scene, (32.1, 0.2, 32.3, 0.4), **MAP_OPTS)  # lon/lat, not metres
    far = gpd.GeoDataFrame(geometry=[box(0, 0, 1, 1)], crs=4326)
    with pytest.raises(RasterError, match="region of 1 polygon.*does not overlap"):
        predict_map(fit, scene, far, **MAP_OPTS)
    three = write_variant(scene, tmp_path / "three.tif", count=3)
    with pytest.raises(RasterError, match=r"3 band\(s\).*fitted on 6-band"):
        predict_map(fit, three, **MAP_OPTS)
    with pytest.raises(InputError, match="tile_size"):
        predict_map(fit, scene, tile_size=0)
    with pytest.raises(InputError, match="workers"):
        predict_map(fit, scene, workers=0)
    for bad in (0, float("nan"), "x"):  # refused before the band check scales by it
        with pytest.raises(InputError, match="must be a number above 0"):
            predict_map(fit, scene, scale=bad, **MAP_OPTS)
    assert tile_grid(scene, (b.left, b.bottom, b.right, b.top)).shape == (12, 12)


def test_tiles_are_cut_as_the_trial_chips_were(inputs, tmp_path):
    """The fit's encoder records the chips' cut (saved and loaded with the fit); the map uses
    it by default and refuses a tile size that would embed another footprint."""
    import copy
    import dataclasses

    scene, fit = inputs
    spec = fit.encoder.chip_spec  # fit was loaded from its file
    with rasterio.open(scene) as src:
        assert spec["size_px"] == [TILE, TILE]
        assert spec["pixel_size"] == pytest.approx(list(np.abs(src.res)))
        assert rasterio.crs.CRS.from_string(spec["crs"]) == src.crs
        assert spec["band_names"] == [d or f"band_{i + 1}" for i, d in enumerate(src.descriptions)]
        x0, y0 = src.xy(64, 96, offset="ul")
        x1, y1 = src.xy(128, 160, offset="ul")
    area = (x0, y1, x1, y0)
    opts = {k: v for k, v in MAP_OPTS.items() if k != "tile_size"}
    default = predict_map(fit, scene, area, **opts)
    assert default.attrs["tile_size"] == TILE
    assert_same_map(default, predict_map(fit, scene, area, **MAP_OPTS))
    with pytest.raises(InputError, match=rf"tile_size=64 px, but the trial's chips were {TILE}x"):
        predict_map(fit, scene, area, tile_size=64)
    # the chips' scale is the default scale of the map
    encoder = copy.copy(fit.encoder)
    encoder.chip_spec = {**spec, "scale": [0.5]}
    scaled = dataclasses.replace(fit, encoder=encoder)
    with pytest.warns(ExtrapolationWarning, match="outside the trial's support"):
        halved = predict_map(scaled, scene, area, **opts)  # half the values: off the support
    with pytest.warns(ExtrapolationWarning, match="outside the trial's support"):
        xr.testing.assert_allclose(halved, predict_map(fit, scene, area, scale=0.5, **opts))
    assert not np.allclose(halved["mean"], default["mean"])


def test_a_raster_at_another_resolution_or_with_other_bands_is_flagged(inputs, tmp_path):
    scene, fit = inputs
    with rasterio.open(scene) as src:
        data, profile = src.read(), dict(src.profile)
    coarse = tmp_path / "coarse.tif"
    doubled = {**profile, "transform": profile["transform"] * rasterio.Affine.scale(2)}
    with rasterio.open(coarse, "w", **doubled) as dst:
        dst.write(data)
    with pytest.warns(ExtrapolationWarning, match="another ground footprint"):
        predict_map(fit, coarse, max_draws=20, progress=False, stride=64)
    renamed = tmp_path / "renamed.tif"
    with rasterio.open(renamed, "w", **profile) as dst:
        dst.write(data)
        for i in range(1, data.shape[0] + 1):
            dst.set_band_description(i, f"other_{i}")
    with rasterio.open(scene) as src:  # the fit's bands are named as the scene names them
        assert fit.encoder.chip_spec["band_names"] == list(src.descriptions)
    with pytest.raises(RasterError, match=r"the trial's chips had bands"):
        predict_map(fit, renamed, max_draws=20, progress=False)


def test_interrupted_job_resumes_to_the_same_map(inputs, tmp_path, monkeypatch):
    import imgcate.maps.blocks as blocks
    import imgcate.maps.resume as resume
    from imgcate.maps.resume import fingerprint

    scene, fit = inputs
    opts = dict(MAP_OPTS, stride=16, block_tiles=50)
    digests = []  # the real fingerprint, counted: a pass over the whole posterior each time

    def counted(f):
        digests.append(fingerprint(f))
        return digests[-1]

    monkeypatch.setattr(blocks, "fingerprint", counted)
    monkeypatch.setattr(resume, "fingerprint", counted)
    whole = predict_map(fit, scene, checkpoint_dir=tmp_path / "first", **opts)
    assert digests == [whole.attrs["fit_digest"]]  # once for the job's key and the map's attrs
    calls = []

    def kill_after_three(done, total):
        calls.append(done)
        if done == 3:
            raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        predict_map(fit, scene, checkpoint_dir=tmp_path / "ckpt", on_block=kill_after_three, **opts)
    assert len(list((tmp_path / "ckpt").glob("block-*.npz"))) == 3
    calls.clear()
    resumed = predict_map(
        fit,
        scene,
        checkpoint_dir=tmp_path / "ckpt",
        on_block=lambda d, t: calls.append((d, t)),
        **opts,
    )
    assert calls[0] == (4, 11) and len(calls) == 8  # only the 8 missing blocks were computed
    assert_same_map(resumed, whole)
    # a folder of another job is refused, naming what differs
    seed = opts.get("seed", 0)
    with pytest.raises(InputError, match=rf"another map job \(seed \(saved {seed}, now 7\)\)"):
        predict_map(fit, scene, checkpoint_dir=tmp_path / "ckpt", **dict(opts, seed=7))
    with pytest.raises(InputError, match=r"another map job \(the region\)"):
        with rasterio.open(scene) as src:
            b = src.bounds
        half = (b.left, b.bottom, (b.left + b.right) / 2, b.top)
        predict_map(fit, scene, half, checkpoint_dir=tmp_path / "ckpt", **opts)
    with pytest.raises(InputError, match=r"another map job \(stride \(saved 16, now 8\)\)"):
        predict_map(fit, scene, checkpoint_dir=tmp_path / "ckpt", **dict(opts, stride=8))
    twin = tmp_path / "twin.tif"  # the same pixels in another file
    shutil.copy(scene, twin)
    with pytest.raises(InputError, match=r"another map job \(the raster \(saved '.*', now '.*twin"):
        predict_map(fit, twin, checkpoint_dir=tmp_path / "ckpt", **opts)
    calls.clear()  # the same file by another path (relative, from its folder): the same job
    monkeypatch.chdir(Path(scene).parent)
    predict_map(
        fit,
        Path(scene).name,
        checkpoint_dir=tmp_path / "ckpt",
        on_block=lambda d, t: calls.append(d),
        **opts,
    )
    assert calls == []
    manifest = tmp_path / "ckpt" / resume.MANIFEST  # a job file written before the record
    manifest.write_text(json.dumps({"job": json.loads(manifest.read_text())["job"], "format": 1}))
    with pytest.raises(InputError, match=r"another map job \(other fit, raster, region or opt"):
        predict_map(fit, scene, checkpoint_dir=tmp_path / "ckpt", **dict(opts, stride=8))
    mine = tmp_path / "mine"  # a folder of the user's own files, not a job's: refused, kept
    mine.mkdir()
    (mine / "notes.csv").write_text("a,b\n")
    with pytest.raises(InputError, match=r"holds files that are not a map job's \(\['notes.csv"):
        predict_map(fit, scene, checkpoint_dir=mine, **opts)
    assert [f.name for f in mine.iterdir()] == ["notes.csv"]
    calls.clear()  # the same job still resumes from such a folder: every block read back
    again = predict_map(
        fit, scene, checkpoint_dir=tmp_path / "ckpt", on_block=lambda d, t: calls.append(d), **opts
    )
    assert calls == []
    assert_same_map(again, whole)


@pytest.mark.slow
def test_two_dask_workers_give_the_same_map(inputs, full_map, tmp_path):
    """The same map on two workers; while it runs, Dask keeps few messages of its traffic."""
    import dask

    from imgcate.maps.runners import DASK_MESSAGE_LOG

    scene, fit = inputs
    kept = []
    ds = predict_map(
        fit,
        scene,
        stride=16,
        workers=2,
        block_tiles=100,
        checkpoint_dir=tmp_path / "ckpt",
        on_block=lambda d, t: kept.append(
            dask.config.get("distributed.admin.low-level-log-length")
        ),
        **MAP_OPTS,
    )
    # other blocks (100 tiles) are other float32 sums: interval ends differ by up to ~5e-6
    xr.testing.assert_allclose(ds, full_map, rtol=1e-5, atol=1e-5)
    assert len(list((tmp_path / "ckpt").glob("block-*.npz"))) == 6
    assert kept == [DASK_MESSAGE_LOG] * 6
    assert dask.config.get("distributed.admin.low-level-log-length") != DASK_MESSAGE_LOG


def _worker_threads(dask_worker=None) -> dict:
    """The worker's kernel threads: the native pool's, JAX's devices, XLA's compute pool
    (threads named XLAEigen, after a computation) and the cores it may run on."""
    import os

    import jax
    import jax.numpy as jnp

    from imgcate.encoders.native import threads

    jnp.ones((64, 64)).sum().block_until_ready()
    names = []
    for tid in os.listdir("/proc/self/task"):
        try:
            names.append(open(f"/proc/self/task/{tid}/comm").read().strip())
        except OSError:  # a thread that ended meanwhile
            pass
    import dask

    from imgcate.maps.runners import QUIET_CLUSTER

    return {
        "profiling": "profile" in dask_worker.periodic_callbacks,
        "native": threads(),
        "jax_devices": jax.device_count(),
        "xla": sum("XLAEigen" in n for n in names),
        "cores": sorted(os.sched_getaffinity(0)),
        "quiet": all(dask.config.get(k) == v for k, v in QUIET_CLUSTER.items()),
    }


@pytest.mark.slow  # about 25 s: three worker processes start and import JAX
def test_local_dask_workers_kernels_follow_the_workers_threads():
    """Each worker of the map's local cluster runs the native kernel and XLA on as many
    threads as it has, one JAX device, pinned to cores of its own: two single-threaded
    workers share two cores instead of each using both, and a worker of two threads uses
    two. Its scheduler's connections keep few messages (a map's carry its tiles' indices),
    and its scheduler, nannies and workers space out their periodic checks (QUIET_CLUSTER),
    workers restarted by their nannies too, which run no sampling profiler."""
    from distributed import Client

    from imgcate.maps.runners import DASK_MESSAGE_LOG, local_cluster

    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        pytest.skip("needs two cores")
    with local_cluster(2) as cluster, Client(cluster) as client:
        client.wait_for_workers(2)
        found = list(client.run(_worker_threads).values())
        streams = list(cluster.scheduler.stream_comms.values())
        assert len(streams) == 2
        assert all(s.recent_message_log.maxlen == DASK_MESSAGE_LOG for s in streams)
        assert "stealing" not in cluster.scheduler.extensions
        assert {n.memory_manager.memory_monitor_interval for n in cluster.workers.values()} == {1.0}
        client.restart()  # as a nanny restarts a worker over its memory limit
        restarted = list(client.run(_worker_threads).values())
        # a second cluster beside it (another map's): its scheduler's HTTP server takes
        # another port without a warning
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with local_cluster(1, threads=2) as second, Client(second) as client2:
                client2.wait_for_workers(1)
                [info] = client2.run(_worker_threads).values()
    assert not [str(w.message) for w in caught if "already in use" in str(w.message)]
    assert (info["native"], info["jax_devices"], info["xla"]) == (2, 1, 2), info
    assert info["cores"] == cores[:2], info
    assert [(i["quiet"], i["profiling"]) for i in restarted] == [(True, False)] * 2, restarted
    assert len(found) == 2
    for info in found:
        assert (info["native"], info["jax_devices"], info["xla"]) == (1, 1, 1), found
        assert info["quiet"] and not info["profiling"], found
        assert len(info["cores"]) == 1, found
    assert found[0]["cores"] != found[1]["cores"], found


@pytest.mark.parametrize(
    ("environ", "name", "threads", "want"),
    [
        ({"IMGCATE_WORKER_CORES": "0-2,5"}, "tcp://x", 1, {0, 1, 2, 5}),
        ({"IMGCATE_PIN_WORKERS": "1", "IMGCATE_WORKERS": "2"}, 1, 1, "second"),
        ({"IMGCATE_PIN_WORKERS": "1", "IMGCATE_WORKERS": "2"}, "tcp://x", 1, None),
        ({"IMGCATE_PIN_WORKERS": "1", "IMGCATE_WORKERS": "64"}, 0, 64, None),
        ({}, 0, 1, None),
    ],
)
def test_which_cores_a_map_worker_is_pinned_to(environ, name, threads, want):
    """A local cluster's worker i gets the i-th of the cores (none when too few for every
    worker); a worker started elsewhere is pinned only to the cores its environment names."""
    from imgcate.maps.worker import worker_cores

    cores = sorted(os.sched_getaffinity(0))
    if want == "second":
        if len(cores) < 2:
            pytest.skip("needs two cores")
        want = {cores[1]}
    assert worker_cores(name, threads, environ) == want


def test_bad_worker_cores_are_a_clear_error():
    from imgcate.maps.worker import pin, worker_cores

    with pytest.raises(InputError, match="IMGCATE_WORKER_CORES='a-b'.*0-3"):
        worker_cores(0, 1, {"IMGCATE_WORKER_CORES": "a-b"})
    before = os.sched_getaffinity(0)
    with pytest.raises(InputError, match=r"cannot pin this Dask worker to cores \[4096\]"):
        pin({4096})
    assert os.sched_getaffinity(0) == before


def _worker_models(dask_worker, mark: str | None = None) -> dict:
    """The worker's map models by key, each with the mark it was given (None: not yet)."""
    models = dask_worker.__dict__.get("_imgcate_map_models", {})
    if mark is not None:
        for model in models.values():
            model.test_mark = mark
    return {str(k): getattr(m, "test_mark", None) for k, m in models.items()}


def _one_worker_here():
    """A Dask cluster of one single-threaded worker in this process."""
    from distributed import LocalCluster

    return LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None)


def _count_scatters(monkeypatch) -> list:
    """The sizes of what ``Client.scatter`` sends from now on (the real method, counted)."""
    from distributed import Client

    scattered, scatter = [], Client.scatter

    def counted_scatter(self, data, *args, **kwargs):
        scattered.append(len(data[0]))
        return scatter(self, data, *args, **kwargs)

    monkeypatch.setattr(Client, "scatter", counted_scatter)
    return scattered


def test_a_dask_worker_keeps_its_model_for_the_maps_that_follow(inputs, full_map, monkeypatch):
    """The fit is rebuilt and compiled once per worker, not once per map: a map of another
    region with the same settings reuses the worker's model, and is not sent the fit again;
    other settings build a new one. The client saves the part of the fit it sends once for
    the three maps, not once each."""
    from distributed import Client

    from imgcate.maps import runners

    saved = []

    def counted_map_part(fit):
        saved.append(fit)
        return map_part(fit)

    map_part = runners.map_part
    monkeypatch.setattr(runners, "map_part", counted_map_part)
    scattered = _count_scatters(monkeypatch)
    monkeypatch.setattr(runners, "_SENT", {})
    scene, fit = inputs
    with rasterio.open(scene) as src:
        x0, y0 = src.xy(64, 96, offset="ul")
        x1, y1 = src.xy(128, 160, offset="ul")
    with _one_worker_here() as cluster, Client(cluster) as client:
        address = cluster.scheduler_address
        whole = predict_map(fit, scene, stride=16, scheduler=address, **MAP_OPTS)
        [first] = client.run(_worker_models, mark="first map").values()
        assert len(scattered) == 1
        part = predict_map(fit, scene, (x0, y1, x1, y0), scheduler=address, **MAP_OPTS)
        [second] = client.run(_worker_models).values()
        assert len(scattered) == 1  # the worker held the fit's model: nothing sent
        other = predict_map(fit, scene, stride=16, scheduler=address, **dict(MAP_OPTS, seed=2))
        [third] = client.run(_worker_models).values()
    assert list(first.values()) == ["first map"]
    assert second == first  # the same model object, not one rebuilt for the second map
    assert len(third) == 1 and list(third.values()) == [None]  # another seed: a new model
    xr.testing.assert_allclose(whole, full_map, rtol=1e-5, atol=1e-5)
    assert part.sizes["y"] == part.sizes["x"] == 2 and np.isfinite(part["mean"].values).all()
    assert not np.array_equal(other["mean"].values, whole["mean"].values)
    assert len(saved) == 1 and saved[0] is fit
    assert len(scattered) == 2  # the new settings' model is built from the fit sent again


def test_a_worker_that_lost_the_fit_is_sent_it(inputs, full_map, monkeypatch):
    """A map that found the fit's model on every worker sends no fit; a worker that lost it
    since (restarted, or a new one) answers ``FIT_NOT_HELD`` for its pieces, and the map sends
    the fit and those pieces again: the same map. A worker that cannot answer whether it
    holds the model counts as not holding it: the fit is sent before the pieces."""
    from distributed import Client

    from imgcate.maps import runners

    submitted, submit = [], Client.submit

    def counted_submit(self, fn, *args, **kwargs):  # pieces: with the fit's bytes or without
        submitted.append(args[0] is not None)
        return submit(self, fn, *args, **kwargs)

    def cannot_answer(digest, key, dask_worker=None):
        raise OSError("worker closing")

    scattered = _count_scatters(monkeypatch)
    monkeypatch.setattr(Client, "submit", counted_submit)
    scene, fit = inputs
    with _one_worker_here() as cluster, Client(cluster) as client:
        address = cluster.scheduler_address
        monkeypatch.setattr(runners, "holds_model", lambda digest, key, dask_worker=None: True)
        got = predict_map(fit, scene, stride=16, scheduler=address, **MAP_OPTS)
        [models] = client.run(_worker_models).values()
        first, sent_first = list(submitted), len(scattered)
        submitted.clear()
        client.run(lambda dask_worker: dask_worker.__dict__.pop("_imgcate_map_models", None))
        monkeypatch.setattr(runners, "holds_model", cannot_answer)
        again = predict_map(fit, scene, stride=16, scheduler=address, **MAP_OPTS)
    assert len(models) == 1 and sent_first == 1
    assert not first[0]  # sent without the fit; answered "not held", then sent again with it
    # every piece reached the worker once with the fit, as in the second map, which sent
    # the fit first and no piece bare
    assert first.count(False) > 0 and first.count(True) == len(submitted) and all(submitted)
    assert len(scattered) == 2
    xr.testing.assert_allclose(got, full_map, rtol=1e-5, atol=1e-5)
    xr.testing.assert_allclose(again, full_map, rtol=1e-5, atol=1e-5)


def test_dask_workers_get_the_part_of_the_fit_a_map_reads(inputs, tmp_path):
    """Workers are sent the fit without its per-unit draws, log-likelihood and replicated
    outcomes: fewer bytes, and the same effect draws, support and encoder once rebuilt."""
    from imgcate.maps.runners import _fit_bytes, _fit_from_bytes

    scene, fit = inputs
    sent = _fit_bytes(fit)
    whole = fit.save(tmp_path / "whole.imgcate").read_bytes()
    assert len(sent) < 0.6 * len(whole)
    rebuilt = _fit_from_bytes(sent)
    assert "tau_unit" in fit.idata.posterior and "tau_unit" not in rebuilt.idata.posterior
    assert "log_likelihood" not in rebuilt.idata.groups()
    raw = np.random.default_rng(0).normal(size=(7, len(fit.standardizer.embedding_mean)))
    for a, b in zip(
        fit.effect_function(max_draws=50, seed=3)(raw.astype(np.float32)),
        rebuilt.effect_function(max_draws=50, seed=3)(raw.astype(np.float32)),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(fit.trial_support(), rebuilt.trial_support(), strict=True):
        np.testing.assert_array_equal(a, b)
    (config, arrays), (config_b, arrays_b) = fit.encoder.get_state(), rebuilt.encoder.get_state()
    assert config == config_b and arrays.keys() == arrays_b.keys()
    for name in arrays:
        np.testing.assert_array_equal(arrays[name], arrays_b[name])


def test_a_malformed_scheduler_address_is_refused_at_once(inputs):
    """At once: Dask would try to reach it for 20 s, or fail with a bare error. The
    dashboard's address (http://) is named as such."""
    from imgcate.maps.runners import check_address

    assert check_address(" tcp://10.0.0.5:8786\n") == "tcp://10.0.0.5:8786"
    for good in ("10.0.0.5:8786", "tls://host.example.org:8786", "tcp://[::1]:8786"):
        assert check_address(good) == good
    with pytest.raises(InputError, match="dashboard"):
        check_address("http://127.0.0.1:8787")
    scene, fit = inputs
    bad = ("tcp//127.0.0.1:8786", "tcp://", "tcp:/127.0.0.1:8786", "tcp://host:abc")
    for address in (*bad, "http://127.0.0.1:8787"):
        with pytest.raises(InputError, match="not the address of a Dask scheduler.*tcp://"):
            predict_map(fit, scene, scheduler=address, **MAP_OPTS)


def test_a_scheduler_without_workers_is_named_after_a_wait(inputs, monkeypatch):
    """A scheduler no worker has joined: the map waits (workers may still be registering),
    then says how to start one (Dask's own error was a TimeoutError from sending the fit)."""
    from distributed import LocalCluster

    from imgcate.maps import runners

    monkeypatch.setattr(runners, "WORKER_WAIT_S", 1.0)
    scene, fit = inputs
    with LocalCluster(n_workers=0, processes=False, dashboard_address=None) as cluster:
        address = cluster.scheduler_address
        with pytest.raises(InputError, match=r"has no worker .*1 s.*`dask worker "):
            predict_map(fit, scene, scheduler=address, **MAP_OPTS)


def test_a_worker_whose_set_up_failed_stops_the_map_with_its_error(inputs, monkeypatch):
    """Dask logs a preload's error and starts the worker anyway: the map run on it raises
    the error instead of running unpinned without a word."""
    from distributed import Client, LocalCluster

    from imgcate.maps import worker

    monkeypatch.setattr(worker, "SETUP_ERROR", None)
    monkeypatch.setenv("IMGCATE_WORKER_CORES", "abc")
    # the in-process worker's preload sets it when unset: set here, it is unset again after
    monkeypatch.setenv("IMGCATE_NATIVE_THREADS", str(len(os.sched_getaffinity(0))))
    monkeypatch.setenv("GDAL_CACHEMAX", os.environ.get("GDAL_CACHEMAX", "256"))
    scene, fit = inputs
    with (
        LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            processes=False,
            dashboard_address=None,
            preload=["imgcate.maps.worker"],
        ) as cluster,
        Client(cluster),
    ):
        with pytest.raises(InputError, match="Dask worker .*IMGCATE_WORKER_CORES='abc'.*0-3"):
            predict_map(fit, scene, scheduler=cluster.scheduler_address, **MAP_OPTS)


def test_a_dask_worker_opens_the_raster_once_a_map(inputs, full_map, monkeypatch):
    """A worker thread keeps its reader from piece to piece of a map (GDAL's block cache
    then serves the blocks pieces share), closes it as the map ends, and opens the raster
    again for the next map."""
    from distributed import Client, LocalCluster

    from imgcate.maps import runners, tiles

    def tiles_readers():
        return [reader for _, reader in runners._READERS.values() if reader._ds is not None]

    opened = []
    real_open = tiles.open_raster

    def counted_open(raster):
        opened.append(raster)
        return real_open(raster)

    monkeypatch.setattr(tiles, "open_raster", counted_open)
    scene, fit = inputs
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        Client(cluster),
    ):
        options = dict(MAP_OPTS, stride=16, block_tiles=40, scheduler=cluster.scheduler_address)
        first = predict_map(fit, scene, **options)
        assert len(opened) == 1  # 5 blocks of 40 tiles, each a piece: one open
        assert not tiles_readers()  # closed as the map ended
        second = predict_map(fit, scene, **options)
        assert len(opened) == 2
    xr.testing.assert_equal(first, second)
    # batches of 40 tiles, not the encoder's 1,024: other float32 roundings (docs/maps.md)
    xr.testing.assert_allclose(first, full_map, rtol=1e-4, atol=1e-4)


def _write_bands(path: Path, values: np.ndarray) -> None:
    from rasterio.transform import from_origin

    profile = {
        "driver": "GTiff",
        "height": values.shape[1],
        "width": values.shape[2],
        "count": values.shape[0],
        "dtype": "float32",
        "crs": "EPSG:32636",
        "transform": from_origin(500000, 100000, 30, 30),
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(values.astype(np.float32))


def test_band_statistics_are_sampled_once_per_file_until_it_changes(tmp_path, monkeypatch):
    """The band check's statistics of a local file are kept for the next map of it once the
    file has settled (unchanged for SETTLED_S), and sampled again once it is rewritten or a
    sidecar (a .aux.xml with a nodata value) appears; a file changed just now is sampled every
    time."""
    from imgcate import provenance
    from imgcate.maps.compute import _sample_stats, raster_band_stats

    rng = np.random.default_rng(0)
    values = rng.normal([[[1.0]], [[5.0]]], 0.5, (2, 600, 700))
    values[:, :300] = -9.0  # a nodata value to come
    path = tmp_path / "scene.tif"
    _write_bands(path, values)
    monkeypatch.setattr(provenance, "SETTLED_S", 1e9)  # every file counts as changed just now
    with rasterio.open(path) as ds:
        first = raster_band_stats(ds, (1, 2))
        direct = _sample_stats(ds, (1, 2))
        fresh = raster_band_stats(ds, (1, 2))
    np.testing.assert_array_equal(first[0], direct[0])
    np.testing.assert_array_equal(first[1], direct[1])
    assert fresh[0] is not first[0]
    assert not first[0].flags.writeable
    monkeypatch.setattr(provenance, "SETTLED_S", -1.0)  # every file counts as settled
    with rasterio.open(path) as ds:
        kept = raster_band_stats(ds, (1, 2))
    with rasterio.open(path) as ds:
        again = raster_band_stats(ds, (1, 2))
    assert again[0] is kept[0] and again[1] is kept[1]
    bands_xml = "".join(
        f'<PAMRasterBand band="{b}"><NoDataValue>-9</NoDataValue></PAMRasterBand>' for b in (1, 2)
    )
    Path(f"{path}.aux.xml").write_text(f"<PAMDataset>{bands_xml}</PAMDataset>")  # a sidecar
    with rasterio.open(path) as ds:
        assert ds.nodata == -9.0 and len(ds.files) == 2
        masked = raster_band_stats(ds, (1, 2))
    np.testing.assert_allclose(masked[0], [1.0, 5.0], atol=0.02)  # the -9 rows left out
    _write_bands(path, 3 * values)  # the same size: new times
    with rasterio.open(path) as ds:
        rewritten = raster_band_stats(ds, (1, 2))
    np.testing.assert_allclose(rewritten[0], 3 * first[0], rtol=1e-6)


@pytest.mark.slow
def test_a_script_without_a_main_guard_is_told_to_add_one(tmp_path):
    """workers > 1 starts worker processes that import the calling script (spawn): a script
    that maps at its top level makes every worker fail to start; the map then names the
    guard to add instead of Dask's "Nanny failed to start"."""
    import subprocess
    import sys

    script = tmp_path / "unguarded.py"
    script.write_text(
        "from imgcate.errors import InputError\n"
        "from imgcate.maps.runners import local_cluster\n"
        "try:\n"
        "    local_cluster(2).close()\n"
        "except InputError as exc:\n"
        "    print('INPUT ERROR:', exc)\n"
    )
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert "INPUT ERROR: the local Dask cluster of 2 workers could not start" in out.stdout, (
        out.stdout[-2000:] + out.stderr[-2000:]
    )
    assert 'if __name__ == "__main__":' in out.stdout
