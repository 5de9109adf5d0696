"""``imgcate map --scheduler``: a map run on a Dask scheduler and worker started as separate
processes (``dask scheduler``, ``dask worker``, on 127.0.0.1) equals the map run in this
process, for a raster on disk and for the same COG read by the worker over HTTP."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from imgcate.cli import main

#: Seconds to wait for the scheduler's address and the worker's registration.
START_TIMEOUT = 120


def _stop(process: subprocess.Popen) -> None:
    """Stop a process this test started, and the processes it started (its own session)."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=20)


def _log(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:] if path.exists() else ""


@pytest.fixture
def dask_cluster(tmp_path):
    """The address of a ``dask scheduler`` with one ``dask worker`` (one process, one thread),
    both started here as subprocesses on 127.0.0.1 and stopped at teardown."""
    distributed = pytest.importorskip(
        "distributed", reason="dask.distributed is not installed (pip install 'imgcate[dask]')"
    )
    dask = Path(sys.executable).with_name("dask")
    if not dask.exists():
        pytest.skip(f"no dask command next to {sys.executable} (install dask[distributed])")
    info = tmp_path / "scheduler.json"
    logs = {name: tmp_path / f"{name}.log" for name in ("scheduler", "worker")}
    started: list[subprocess.Popen] = []

    # the worker's threads come from --nthreads, through the preload, not from this process
    env = {k: v for k, v in os.environ.items() if k != "IMGCATE_NATIVE_THREADS"}

    def start(name: str, *args: str) -> None:
        with open(logs[name], "wb") as log:
            started.append(
                subprocess.Popen(
                    [str(dask), name, *args],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group, stopped as one
                )
            )

    try:
        start(
            "scheduler",
            *("--host", "127.0.0.1", "--port", "0", "--no-dashboard"),
            *("--scheduler-file", str(info)),
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not info.exists() and time.monotonic() < deadline:
            assert started[0].poll() is None, f"dask scheduler exited:\n{_log(logs['scheduler'])}"
            time.sleep(0.2)
        assert info.exists(), f"dask scheduler gave no address:\n{_log(logs['scheduler'])}"
        address = json.loads(info.read_text())["address"]
        start(
            "worker",
            address,
            *("--nworkers", "1", "--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard"),
            *("--local-directory", str(tmp_path / "worker-space")),
            *("--preload", "imgcate.maps.worker"),
        )
        with distributed.Client(address, timeout="30s") as client:
            try:
                client.wait_for_workers(1, timeout=START_TIMEOUT)
            except TimeoutError:
                pytest.fail(f"no dask worker registered:\n{_log(logs['worker'])}")
        yield address
    finally:
        for process in reversed(started):
            _stop(process)


def _map(args: list[str]) -> None:
    result = CliRunner().invoke(main, ["map", *args, "--no-preview", "-q"])
    assert result.exit_code == 0, result.output


def _read(path: Path) -> tuple:
    with rasterio.open(path) as ds:
        return ds.read(), ds.descriptions, ds.transform, ds.crs, ds.tags()


def _encoded_tiles(path: Path) -> list[tuple]:
    """Every image of a GeoTIFF (the map and its overviews): shape, type, compression and the
    bytes of each of its tiles as stored in the file."""
    tifffile = pytest.importorskip("tifffile")
    images = []
    with tifffile.TiffFile(path) as tif:
        fh = tif.filehandle
        for page in tif.pages:
            tiles = []
            for offset, count in zip(page.dataoffsets, page.databytecounts, strict=True):
                fh.seek(offset)
                tiles.append(fh.read(count))
            images.append((page.shape, page.dtype.str, int(page.compression), tiles))
    return images


@pytest.mark.slow  # about 50 s on 2 busy cores: the worker process imports JAX and compiles
def test_a_map_on_a_separate_scheduler_and_worker_equals_the_local_run(
    map_inputs, map_cog, http_server, dask_cluster, tmp_path
):
    import distributed

    from imgcate.encoders.native import threads

    with distributed.Client(dask_cluster, timeout="30s") as client:
        assert list(client.run(threads).values()) == [1]  # --nthreads 1, by the preload
    _, fit_path = map_inputs
    with rasterio.open(map_cog) as ds:
        t = ds.transform
    bounds = [str(v) for v in (t.c, t.f + 192 * t.e, t.c + 192 * t.a, t.f)]
    shutil.copy(map_cog, http_server.root / "scene.tif")
    url = http_server.url("scene.tif")
    common = ["--bounds", *bounds, "--max-draws", "50", "--block-tiles", "9"]
    _map([str(fit_path), str(map_cog), str(tmp_path / "local.tif"), *common])
    runs = {
        "file": [str(fit_path), str(map_cog), str(tmp_path / "file.tif")],
        "url": [str(fit_path), url, str(tmp_path / "url.tif")],
    }
    for args in runs.values():
        _map([*args, *common, "--scheduler", dask_cluster])
    local = _read(tmp_path / "local.tif")
    local_tiles = _encoded_tiles(tmp_path / "local.tif")
    assert len(local_tiles) >= 1 and all(image[3] for image in local_tiles)
    for name in runs:
        remote = _read(tmp_path / f"{name}.tif")
        np.testing.assert_array_equal(remote[0], local[0], err_msg=name)
        assert remote[1:4] == local[1:4]
        assert remote[4]["tile_size"] == local[4]["tile_size"] == "32"
        # the same bytes: only the tags (provenance: time, command) may differ
        assert _encoded_tiles(tmp_path / f"{name}.tif") == local_tiles, name
