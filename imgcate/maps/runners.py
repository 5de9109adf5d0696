"""Where a map's blocks run: in this process, or on a Dask cluster (a local one, or one at a
scheduler's address) with the fit sent to each worker once as the bytes of its saved file.

Either way tiles are read by a :class:`~imgcate.maps.tiles.TileReader`: a raster given by URL
is opened with imgcate's GDAL settings for HTTP on the worker too, and a failed read is tried
again before the map stops."""

from __future__ import annotations

import contextlib
import logging
import re
import tempfile
import threading
import uuid
import warnings
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from imgcate.errors import InputError, RasterError
from imgcate.maps.tiles import (
    TileJob,
    TileModel,
    TileReader,
    compute_block,
    compute_piece,
    merge_pieces,
    pieces,
)
from imgcate.maps.worker import CORES_VARIABLE, PIN_VARIABLE, WORKERS_VARIABLE, check_setup
from imgcate.optional import require
from imgcate.results import EffectFit, load_fit


def worker_env(workers: int, threads: int = 1) -> dict[str, str]:
    """Environment of each local Dask worker process: ``threads`` threads for the native
    encoder's pool and BLAS, one JAX device, each worker pinned to its own cores
    (:mod:`imgcate.maps.worker`, which also sizes XLA's pool that way; an
    ``IMGCATE_WORKER_CORES`` of this process is not passed on, or every worker would share
    its cores). Their Dask settings (:data:`QUIET_CLUSTER`) come with the nannies' config,
    not the environment: a nanny sets its own config in the worker process over what the
    environment gave. Workers of a cluster started elsewhere get the kernel threads and the
    pinning from ``--preload imgcate.maps.worker`` (docs/maps.md); the rest is their own
    environment's."""
    n = str(threads)
    return {
        "IMGCATE_NATIVE_THREADS": n,
        "OMP_NUM_THREADS": n,
        "OPENBLAS_NUM_THREADS": n,
        "MKL_NUM_THREADS": n,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
        PIN_VARIABLE: "1",
        WORKERS_VARIABLE: str(workers),
        CORES_VARIABLE: "",
    }


#: Dask settings of the local clusters' scheduler, nannies and workers
#: (:func:`local_cluster`): their periodic work spaced out or off. By default an idle local
#: cluster of 2 workers took 3.9 % of a core in the mapping process and 2.7 % in each worker,
#: on the cores the workers compute on; with the first four, 1.0 % and 2.5 %. The settings:
#: the event loops' responsiveness check (every 20 ms; only for a warning), the system
#: monitor (500 ms; the dashboard's figures), the nannies' memory limit (100 ms; a worker over
#: its limit is still restarted, within a second), work stealing (100 ms; a map's pieces go to
#: the workers as they free up, and 10 pieces on 2 workers split 5 and 5 in 24 maps of 24
#: without it) and the workers' sampling profiler (every 10 ms; it serves the dashboard,
#: which local clusters do not start).
QUIET_CLUSTER = {
    "distributed.admin.tick.interval": "500ms",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.worker.memory.monitor-interval": "1s",
    "distributed.scheduler.work-stealing": False,
    "distributed.worker.profile.enabled": False,
}


#: One worker's threads build its map model one at a time (:func:`worker_model`).
_MODEL_LOCK = threading.Lock()


#: Messages Dask keeps of each connection's recent traffic for debugging
#: (``distributed.admin.low-level-log-length``, 1,000 by default): a map's messages carry its
#: pieces' tile indices, and the 1,000 a connection kept (with the memory they pinned) made the
#: mapping process grow with the region until 10^6 tiles or more.
DASK_MESSAGE_LOG = 16


def few_dask_messages() -> Any:
    """A context in which the Dask connections made keep :data:`DASK_MESSAGE_LOG` messages
    (the setting also bounds a scheduler's transition and event logs)."""
    import dask

    # distributed's defaults first: leaving the context deletes what it found missing, and
    # defaults loaded within it (the whole "distributed" section) would go with it
    require("distributed", "dask", "predict_map with workers > 1 or a scheduler")
    return dask.config.set({"distributed.admin.low-level-log-length": DASK_MESSAGE_LOG})


def local_cluster(workers: int, threads: int = 1):
    """A ``dask.distributed.LocalCluster`` of ``workers`` worker processes of ``threads``
    threads each (:func:`worker_env`, :mod:`imgcate.maps.worker`), quiet, without a
    dashboard, its scheduler keeping few messages (:func:`few_dask_messages`) and its
    periodic checks spaced out (:data:`QUIET_CLUSTER`)."""
    import copy

    import dask

    distributed = require("distributed", "dask", "predict_map with workers > 1")
    with few_dask_messages(), dask.config.set(QUIET_CLUSTER), warnings.catch_warnings():
        # the scheduler's HTTP server (health and metrics; no dashboard without bokeh) moves
        # to a free port when 8787 is taken, by a dashboard or another map's cluster, and says
        # so in a UserWarning that is no concern of a map's
        warnings.filterwarnings("ignore", message=r"Port \d+ is already in use")
        # each nanny keeps this config and sets it in its worker process, at every (re)start
        # (a nanny's own copy is shallow: the settings would leave it with the context)
        config = copy.deepcopy(dask.config.config)
        try:
            return distributed.LocalCluster(
                n_workers=workers,
                threads_per_worker=threads,
                processes=True,
                dashboard_address=None,
                silence_logs=logging.ERROR,
                env=worker_env(workers, threads),
                preload=["imgcate.maps.worker"],
                config=config,
            )
        except RuntimeError as exc:
            if "Nanny failed to start" not in str(exc):
                raise
            raise InputError(
                f"the local Dask cluster of {workers} workers could not start its worker "
                f"processes ({exc}). Each worker process imports the script that asked for "
                'the map: a script must make its maps under `if __name__ == "__main__":` '
                "(the errors above that mention the bootstrapping phase say that it does "
                "not; docs/maps.md), or map with workers=1."
            ) from exc


def map_part(fit: EffectFit) -> EffectFit:
    """The part of a fit a map's model (:class:`~imgcate.maps.tiles.TileModel`) reads: the
    posterior draws of the model's parameters and the trial's constant data, with the
    standardizer, encoder and settings. Left out: the per-unit and derived draws, the
    pointwise log-likelihood, the replicated outcomes, the sampler's statistics and, in fits
    saved before format 5, the basis features (a fit of 2,000 units and 4 x 1,000 draws:
    7 MB instead of its 96 MB file)."""
    import arviz as az

    from imgcate.ates import EQUATION_ARRAYS
    from imgcate.posterior import site_names

    drop = ["basis_features", *EQUATION_ARRAYS]  # the propensity model's: ate() reads them
    const = fit.idata.constant_data.drop_vars(drop, errors="ignore")
    idata = az.InferenceData(posterior=fit.idata.posterior[site_names(fit)], constant_data=const)
    return replace(fit, idata=idata)


#: The fit last sent to Dask workers (a weak reference), its digest and its bytes
#: (:func:`_fit_bytes`): the maps that follow send the same bytes without saving the fit again.
_SENT: dict[str, Any] = {}


def _fit_bytes(fit: EffectFit, digest: str | None = None) -> bytes:
    """:func:`map_part` of the fit as :meth:`EffectFit.save` bytes (rebuilt on Dask workers).

    With the fit's ``digest`` the bytes are kept for the next map of the same fit (object and
    digest), as long as the fit itself lives: saving takes 0.3-0.8 s a map."""
    held = _SENT.get("fit")
    if digest is not None and held is not None and held() is fit and _SENT["digest"] == digest:
        return _SENT["bytes"]
    with tempfile.TemporaryDirectory() as workdir:
        data = map_part(fit).save(Path(workdir) / "fit.imgcate").read_bytes()
    if digest is not None:
        _SENT.clear()
        _SENT.update(fit=weakref.ref(fit, lambda _: _SENT.clear()), digest=digest, bytes=data)
    return data


def _fit_from_bytes(data: bytes) -> Any:
    with tempfile.TemporaryDirectory() as workdir:
        path = Path(workdir) / "fit.imgcate"
        path.write_bytes(data)
        return load_fit(path)


#: What a piece sent without the fit's bytes returns from a worker that does not hold the
#: fit's map model (one started or restarted since the map asked, :func:`holds_model`): the
#: map sends the piece again with them (:func:`run_dask`). A value, not an exception, so
#: that the worker does not log it as a failed task.
FIT_NOT_HELD = "imgcate: the fit's map model is not held here"


def worker_model(payload: bytes | None, digest: str, job: TileJob) -> TileModel | None:
    """The map model of the fit ``digest`` on this Dask worker, built once per set of map
    settings (:attr:`TileJob.model_key`) and kept on the worker for the maps that follow,
    whatever their region or raster. Only the model is kept (the fit rebuilt from
    ``payload`` to make it is dropped: its posterior draws and replicated outcomes are not
    needed), one at a time; a worker's threads build it once, not once each. Without
    ``payload`` (the map found the model on every worker: :func:`holds_model`) a worker
    without it returns None."""
    from distributed import get_worker

    models = get_worker().__dict__.setdefault("_imgcate_map_models", {})
    key = (digest, job.model_key)
    with _MODEL_LOCK:
        if key not in models:
            if payload is None:
                return None
            models.clear()
            models[key] = TileModel(_fit_from_bytes(payload), job)
        return models[key]


def holds_model(digest: str, model_key: tuple, dask_worker: Any = None) -> bool:
    """Whether the Dask worker ``dask_worker`` holds the map model of the fit ``digest`` with
    the settings ``model_key`` (:func:`worker_model`): run on every worker as a map starts
    (``Client.run`` passes the worker), so that a fit is sent to a cluster's workers once,
    not once per map."""
    return (digest, model_key) in dask_worker.__dict__.get("_imgcate_map_models", {})


#: The raster readers of this worker's threads: thread id -> ((map run, job), reader)
#: (:func:`_reader`, :func:`close_readers`).
_READERS: dict[int, tuple[tuple, TileReader]] = {}
_READERS_LOCK = threading.Lock()


def _reader(run: str, job: TileJob) -> TileReader:
    """This thread's reader of the map ``run``: kept open from piece to piece, so that GDAL's
    block cache serves the blocks a piece shares with the one before (opened for each piece,
    every piece decompressed its blocks again: 24 % of a million-tile map's time). The map
    closes it when it ends (:func:`close_readers`); another map opens its own."""
    thread = threading.get_ident()
    with _READERS_LOCK:
        held = _READERS.get(thread)
        if held is not None and held[0] == (run, job):
            return held[1]
        reader = TileReader(job)
        _READERS[thread] = ((run, job), reader)
    if held is not None:
        held[1].close()
    return reader


def close_readers(run: str) -> int:
    """Close this worker's readers of the map ``run`` (run on each worker as the map ends, so
    that no file or connection stays open, nor GDAL's cache of it); how many it closed."""
    with _READERS_LOCK:
        done = [t for t, (key, _) in _READERS.items() if key[0] == run]
        readers = [_READERS.pop(t)[1] for t in done]
    for reader in readers:
        reader.close()
    return len(readers)


def _dask_piece(
    payload: bytes | None, digest: str, run: str, job: TileJob, index: int, flat: np.ndarray
) -> dict | str:
    """A piece of a block of the map ``run`` on a Dask worker (:func:`worker_model`,
    :func:`_reader`); :data:`FIT_NOT_HELD` where it came without the fit's bytes to a worker
    that does not hold the fit's model.

    A read that failed for good raises a :class:`~imgcate.errors.RasterError` of its message
    alone: the GDAL errors chained to it do not survive pickling to the client (rasterio's
    ``CPLE_*`` errors cannot be rebuilt), which would get a bare ``Exception`` instead of
    the error ``predict_map`` adds how to resume to."""
    check_setup()
    model = worker_model(payload, digest, job)
    if model is None:
        return FIT_NOT_HELD
    try:
        return compute_piece(model, _reader(run, job), index, flat)
    except RasterError as exc:
        message = str(exc)
    raise RasterError(message)  # outside the handler: no chained errors to pickle


#: The map model last built in this process: the fit (a weak reference), its digest, the
#: settings (:attr:`TileJob.model_key`) and the model (:func:`local_model`).
_LOCAL: dict[str, Any] = {}


def local_model(fit: EffectFit, job: TileJob, digest: str) -> TileModel:
    """The map model of ``fit`` in this process, kept for the maps that follow with the same
    fit (object and digest) and settings, as a Dask worker keeps its own
    (:func:`worker_model`): a map of another region skips rebuilding it and tracing its
    jitted effect function again (0.1 s a map)."""
    key = (digest, job.model_key)
    with _MODEL_LOCK:
        held = _LOCAL.get("fit")
        if held is not None and held() is fit and _LOCAL["key"] == key:
            return _LOCAL["model"]
        _LOCAL.clear()
        model = TileModel(fit, job)
        _LOCAL.update(fit=weakref.ref(fit, lambda _: _LOCAL.clear()), key=key, model=model)
        return model


def run_local(fit: EffectFit, job: TileJob, todo: Iterable[tuple[int, np.ndarray]], digest: str):
    """Blocks in this process, in order: (index, result) pairs."""
    model = local_model(fit, job, digest)
    with TileReader(job) as reader:
        for index, flat in todo:
            yield index, compute_block(model, reader, index, flat)


#: Protocols of Dask's communication layer.
DASK_PROTOCOLS = ("tcp", "tls", "inproc", "ucx", "ws", "wss")


def check_address(scheduler: Any) -> Any:
    """A Dask scheduler's address, checked (surrounding spaces removed), or what else
    ``Client`` takes (a cluster object) unchanged. What cannot be an address is refused at
    once; Dask would try to reach it for 20 s or fail with a bare error.

    Raises
    ------
    InputError
        If ``scheduler`` is not ``protocol://host:port`` (tcp, tls, inproc, ucx, ws, wss) or
        ``host:port``: a ``//`` without its ``:``, another protocol (``http://``: the
        dashboard's address, not the scheduler's), an empty host or a port that is not a
        number.
    """
    if not isinstance(scheduler, str):
        return scheduler
    text = scheduler.strip()
    protocol, sep, rest = text.partition("://")
    if not sep:
        protocol, rest = "tcp", text
    problem = None
    if not rest or re.search(r"\s", rest) or (not sep and "/" in rest):
        problem = "it is not protocol://host:port"
    elif protocol.lower() not in DASK_PROTOCOLS:
        problem = f"Dask has no protocol {protocol!r}" + (
            " (http:// is the dashboard's address, not the scheduler's)"
            if protocol.lower().startswith("http")
            else ""
        )
    elif protocol.lower() != "inproc":
        host, colon, port = rest.rstrip("/").rpartition(":")
        if colon and (not host or not port.isdigit()):
            problem = "its host is empty or its port is not a number"
    if problem:
        raise InputError(
            f"scheduler={scheduler!r} is not the address of a Dask scheduler: {problem}; give "
            "it as printed by `dask scheduler`, e.g. tcp://10.0.0.5:8786 (or 10.0.0.5:8786)."
        )
    return text


#: Seconds a map on a scheduler with no worker waits for one to join before it stops.
WORKER_WAIT_S = 30.0


def wait_for_a_worker(client: Any, scheduler: str) -> None:
    """Wait up to :data:`WORKER_WAIT_S` for a worker of the scheduler at ``scheduler`` (workers
    started with it may still be registering); none: an :class:`InputError` saying how to
    start one (Dask's own error was a ``TimeoutError`` from sending the fit)."""
    if client.scheduler_info().get("workers"):
        return
    try:
        client.wait_for_workers(1, timeout=WORKER_WAIT_S)
    except TimeoutError:
        raise InputError(
            f"the Dask scheduler at {scheduler!r} has no worker (none joined in "
            f"{WORKER_WAIT_S:g} s); start one with `dask worker {scheduler} --nthreads 1 "
            "--preload imgcate.maps.worker` (docs/maps.md), or map on this machine, without a "
            "scheduler."
        ) from None


def run_dask(
    fit: EffectFit,
    job: TileJob,
    todo: Iterable[tuple[int, np.ndarray]],
    workers: int,
    scheduler: str | None,
    digest: str,
):
    """Blocks on a Dask cluster, sent as their pieces (:func:`~imgcate.maps.tiles.pieces`, one
    encoder batch each: a map of a few blocks still keeps every worker busy to its end), at
    most three in flight per worker thread (flat memory); a block is yielded once all its
    pieces are back. The workers' readers of the map are closed as it ends."""
    with few_dask_messages():  # while the map runs: for the connections made as it goes too
        yield from _run_dask(fit, job, todo, workers, scheduler, digest)


def _run_dask(
    fit: EffectFit,
    job: TileJob,
    todo: Iterable[tuple[int, np.ndarray]],
    workers: int,
    scheduler: str | None,
    digest: str,
):
    distributed = require("distributed", "dask", "predict_map with workers > 1 or a scheduler")
    Client, as_completed = distributed.Client, distributed.as_completed

    cluster = None
    if scheduler is None:
        cluster = local_cluster(workers)
        client = Client(cluster)
    else:
        scheduler = check_address(scheduler)
        try:
            client = Client(scheduler, timeout="20s")
        except OSError as exc:
            raise InputError(
                f"no Dask scheduler answers at {scheduler!r} ({exc}); start one "
                "(dask scheduler) or leave scheduler out."
            ) from exc
    run = None
    try:
        if scheduler is not None:
            wait_for_a_worker(client, scheduler)
        found = client.scheduler_info().get("workers", {}).values()
        n_threads = max(1, sum(int(w.get("nthreads", 1)) for w in found))
        holding = client.run(holds_model, digest, job.model_key, on_error="return")
        sent: list = []  # the fit's bytes on the workers, once sent (none while every
        # worker holds the fit's model from an earlier map)

        def send_fit() -> None:
            if not sent:
                sent.extend(client.scatter([_fit_bytes(fit, digest)], broadcast=True, hash=False))

        if not (holding and all(held is True for held in holding.values())):
            send_fit()
        run = uuid.uuid4().hex  # this map: the workers' readers are kept within it
        counts: dict[int, int] = {}  # pieces of each block in flight
        back: dict[int, dict[int, dict]] = {}  # their pieces back

        def split() -> Iterator[tuple[int, int, np.ndarray]]:  # blocks made as they are sent
            for index, flat in todo:
                parts = pieces(flat, job.batch_size)
                counts[index], back[index] = len(parts), {}
                yield from ((index, k, piece) for k, piece in enumerate(parts))

        pending = split()
        futures = {}
        queue = as_completed()

        def submit(item: tuple[int, int, np.ndarray] | None) -> None:
            if item is not None:
                index, _, piece = item
                fut = client.submit(
                    _dask_piece,
                    sent[0] if sent else None,
                    digest,
                    run,
                    job,
                    index,
                    piece,
                    pure=False,
                )
                futures[fut] = item
                queue.add(fut)

        for _ in range(3 * n_threads):
            submit(next(pending, None))
        for fut in queue:
            item = futures.pop(fut)
            result = fut.result()
            fut.release()
            if isinstance(result, str) and result == FIT_NOT_HELD:  # a worker new since
                send_fit()  # the map asked: send the fit, and the piece again
                submit(item)
                continue
            index, k = item[0], item[1]
            back[index][k] = result
            submit(next(pending, None))
            if len(back[index]) == counts[index]:
                done, _ = back.pop(index), counts.pop(index)
                yield index, merge_pieces([done[k] for k in sorted(done)])
    finally:
        if run is not None:
            with contextlib.suppress(Exception):  # workers gone: nothing left open
                client.run(close_readers, run)
        with _quiet_shutdown():
            client.close()
            if cluster is not None:
                cluster.close()


@contextlib.contextmanager
def _quiet_shutdown():
    """Closing a local Dask cluster makes its nannies warn that they kill workers still busy
    tearing JAX down ("Worker process still alive after 4.0 seconds, killing"): expected at
    shutdown, so silenced (errors still pass)."""
    loggers = [logging.getLogger(n) for n in ("distributed", "distributed.nanny")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
