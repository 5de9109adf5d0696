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
import weakref
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
from imgcate.maps.worker import PIN_VARIABLE, WORKERS_VARIABLE, check_setup
from imgcate.optional import require
from imgcate.results import EffectFit, load_fit


def worker_env(workers: int, threads: int = 1) -> dict[str, str]:
    """Environment of each local Dask worker process: ``threads`` threads for the native
    encoder's pool and BLAS, one JAX device, each worker pinned to its own cores
    (:mod:`imgcate.maps.worker`, which also sizes XLA's pool that way), and Dask's sampling
    profiler off (it serves the dashboard, which local clusters do not start, and cost 5-7 %
    of a single-threaded worker's time). Workers of a cluster started elsewhere get the same
    from ``--preload imgcate.maps.worker`` (docs/maps.md)."""
    n = str(threads)
    return {
        "IMGCATE_NATIVE_THREADS": n,
        "OMP_NUM_THREADS": n,
        "OPENBLAS_NUM_THREADS": n,
        "MKL_NUM_THREADS": n,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
        "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": "False",
        PIN_VARIABLE: "1",
        WORKERS_VARIABLE: str(workers),
    }


#: One worker's threads build its map model one at a time (:func:`worker_model`).
_MODEL_LOCK = threading.Lock()


def local_cluster(workers: int, threads: int = 1):
    """A ``dask.distributed.LocalCluster`` of ``workers`` worker processes of ``threads``
    threads each (:func:`worker_env`, :mod:`imgcate.maps.worker`), quiet and without a
    dashboard."""
    distributed = require("distributed", "dask", "predict_map with workers > 1")
    return distributed.LocalCluster(
        n_workers=workers,
        threads_per_worker=threads,
        processes=True,
        dashboard_address=None,
        silence_logs=logging.ERROR,
        env=worker_env(workers, threads),
        preload=["imgcate.maps.worker"],
    )


def map_part(fit: EffectFit) -> EffectFit:
    """The part of a fit a map's model (:class:`~imgcate.maps.tiles.TileModel`) reads: the
    posterior draws of the model's parameters and the trial's constant data, with the
    standardizer, encoder and settings. Left out: the per-unit and derived draws, the
    pointwise log-likelihood, the replicated outcomes, the sampler's statistics and the
    basis features (a fit of 2,000 units and 4 x 1,000 draws: 7 MB instead of its 96 MB
    file)."""
    import arviz as az

    from imgcate.posterior import site_names

    const = fit.idata.constant_data.drop_vars("basis_features", errors="ignore")
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


def worker_model(payload: bytes, digest: str, job: TileJob) -> TileModel:
    """The map model of the fit ``digest`` on this Dask worker, built once per set of map
    settings (:attr:`TileJob.model_key`) and kept on the worker for the maps that follow,
    whatever their region or raster. Only the model is kept (the fit rebuilt from
    ``payload`` to make it is dropped: its posterior draws and replicated outcomes are not
    needed), one at a time; a worker's threads build it once, not once each."""
    from distributed import get_worker

    models = get_worker().__dict__.setdefault("_imgcate_map_models", {})
    key = (digest, job.model_key)
    with _MODEL_LOCK:
        if key not in models:
            models.clear()
            models[key] = TileModel(_fit_from_bytes(payload), job)
        return models[key]


#: Each worker thread's raster reader: (map run, job) and the open reader (:func:`_reader`).
_READERS = threading.local()


def _reader(run: str, job: TileJob) -> TileReader:
    """This thread's reader of the map ``run``: kept open from piece to piece, so that GDAL's
    block cache serves the blocks a piece shares with the one before (opened for each piece,
    every piece decompressed its blocks again: 24 % of a million-tile map's time). A new map
    (another ``run``) closes it and opens its own, so a raster rewritten between two maps is
    read afresh."""
    held = getattr(_READERS, "held", None)
    if held is None or held[0] != (run, job):
        if held is not None:
            held[1].close()
        _READERS.held = held = ((run, job), TileReader(job))
    return held[1]


def _dask_piece(
    payload: bytes, digest: str, run: str, job: TileJob, index: int, flat: np.ndarray
) -> dict:
    """A piece of a block of the map ``run`` on a Dask worker (:func:`worker_model`,
    :func:`_reader`).

    A read that failed for good raises a :class:`~imgcate.errors.RasterError` of its message
    alone: the GDAL errors chained to it do not survive pickling to the client (rasterio's
    ``CPLE_*`` errors cannot be rebuilt), which would get a bare ``Exception`` instead of
    the error ``predict_map`` adds how to resume to."""
    check_setup()
    model = worker_model(payload, digest, job)
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
    held = _LOCAL.get("fit")
    key = (digest, job.model_key)
    if held is None or held() is not fit or _LOCAL["key"] != key:
        _LOCAL.clear()
        model = TileModel(fit, job)
        _LOCAL.update(fit=weakref.ref(fit, lambda _: _LOCAL.clear()), key=key, model=model)
    return _LOCAL["model"]


def run_local(fit: EffectFit, job: TileJob, todo: list[tuple[int, np.ndarray]], digest: str):
    """Blocks in this process, in order: (index, result) pairs."""
    model = local_model(fit, job, digest)
    with TileReader(job) as reader:
        for index, flat in todo:
            yield index, compute_block(model, reader, index, flat)


def check_address(scheduler: str) -> None:
    """Refuse at once what cannot be a Dask scheduler's address (``tcp://10.0.0.5:8786``,
    ``10.0.0.5:8786``), which Dask would try to reach for 20 s: a ``//`` without its
    protocol's ``:``, a protocol that is not a word, nothing after it, or spaces.

    Raises
    ------
    InputError
        If ``scheduler`` is malformed.
    """
    text = scheduler if isinstance(scheduler, str) else ""
    protocol, sep, rest = text.partition("://")
    ok = bool(text) and not re.search(r"\s", text)
    if sep:
        ok = ok and bool(re.fullmatch(r"[a-z][a-z0-9+.-]*", protocol, re.I)) and bool(rest)
    else:
        ok = ok and "/" not in text
    if not ok:
        raise InputError(
            f"scheduler={scheduler!r} is not the address of a Dask scheduler; give it as "
            "printed by `dask scheduler`, e.g. tcp://10.0.0.5:8786 (or 10.0.0.5:8786)."
        )


def run_dask(
    fit: EffectFit,
    job: TileJob,
    todo: list[tuple[int, np.ndarray]],
    workers: int,
    scheduler: str | None,
    digest: str,
):
    """Blocks on a Dask cluster, sent as their pieces (:func:`~imgcate.maps.tiles.pieces`, one
    encoder batch each: a map of a few blocks still keeps every worker busy to its end), at
    most three in flight per worker (flat memory); a block is yielded once all its pieces
    are back."""
    distributed = require("distributed", "dask", "predict_map with workers > 1 or a scheduler")
    Client, as_completed = distributed.Client, distributed.as_completed

    cluster = None
    if scheduler is None:
        cluster = local_cluster(workers)
        client = Client(cluster)
    else:
        check_address(scheduler)
        try:
            client = Client(scheduler, timeout="20s")
        except OSError as exc:
            raise InputError(
                f"no Dask scheduler answers at {scheduler!r} ({exc}); start one "
                "(dask scheduler) or leave scheduler out."
            ) from exc
    try:
        n_workers = max(1, len(client.scheduler_info().get("workers", {})))
        [payload] = client.scatter([_fit_bytes(fit, digest)], broadcast=True)
        run = uuid.uuid4().hex  # this map: the workers' readers are kept within it
        pending = (
            (index, k, part)
            for index, flat in todo
            for k, part in enumerate(pieces(flat, job.batch_size))
        )
        count = {index: len(pieces(flat, job.batch_size)) for index, flat in todo}
        parts: dict[int, dict[int, dict]] = {index: {} for index, _ in todo}
        futures = {}
        queue = as_completed()

        def submit() -> None:
            item = next(pending, None)
            if item is not None:
                index, k, part = item
                fut = client.submit(_dask_piece, payload, digest, run, job, index, part, pure=False)
                futures[fut] = (index, k)
                queue.add(fut)

        for _ in range(3 * n_workers):
            submit()
        for fut in queue:
            index, k = futures.pop(fut)
            parts[index][k] = fut.result()
            fut.release()
            submit()
            if len(parts[index]) == count[index]:
                done = parts.pop(index)
                yield index, merge_pieces([done[j] for j in range(count[index])])
    finally:
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
