"""Where a map's blocks run: in this process, or on a Dask cluster (a local one, or one at a
scheduler's address) with the fit sent to each worker once as the bytes of its saved file.

Either way tiles are read by a :class:`~imgcate.maps.tiles.TileReader`: a raster given by URL
is opened with imgcate's GDAL settings for HTTP on the worker too, and a failed read is tried
again before the map stops."""

from __future__ import annotations

import contextlib
import logging
import tempfile
import threading
import weakref
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from imgcate.errors import InputError
from imgcate.maps.tiles import TileJob, TileModel, TileReader, compute_block
from imgcate.optional import require
from imgcate.results import EffectFit, load_fit

#: Environment of each local Dask worker process: one thread for the native encoder's pool
#: and BLAS, and one JAX device, so that N single-threaded workers share N cores instead of
#: each spreading over all of them. Workers of a cluster started elsewhere
#: get the same effect from ``IMGCATE_NATIVE_THREADS=1`` in their environment (docs/maps.md).
WORKER_ENV = {
    "IMGCATE_NATIVE_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
}


#: One worker's threads build its map model one at a time (:func:`worker_model`).
_MODEL_LOCK = threading.Lock()


def local_cluster(workers: int):
    """A ``dask.distributed.LocalCluster`` of ``workers`` single-threaded worker processes
    (:data:`WORKER_ENV`), quiet and without a dashboard."""
    distributed = require("distributed", "dask", "predict_map with workers > 1")
    return distributed.LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        silence_logs=logging.ERROR,
        env=WORKER_ENV,
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


def _dask_block(payload: bytes, digest: str, job: TileJob, index: int, flat: np.ndarray) -> dict:
    """A block on a Dask worker (:func:`worker_model`)."""
    model = worker_model(payload, digest, job)
    with TileReader(job) as reader:
        return compute_block(model, reader, index, flat)


def run_local(fit: EffectFit, job: TileJob, todo: list[tuple[int, np.ndarray]]):
    """Blocks in this process, in order: (index, result) pairs."""
    model = TileModel(fit, job)
    with TileReader(job) as reader:
        for index, flat in todo:
            yield index, compute_block(model, reader, index, flat)


def run_dask(
    fit: EffectFit,
    job: TileJob,
    todo: list[tuple[int, np.ndarray]],
    workers: int,
    scheduler: str | None,
    digest: str,
):
    """Blocks on a Dask cluster, at most two in flight per worker (flat memory)."""
    distributed = require("distributed", "dask", "predict_map with workers > 1 or a scheduler")
    Client, as_completed = distributed.Client, distributed.as_completed

    cluster = None
    if scheduler is None:
        cluster = local_cluster(workers)
        client = Client(cluster)
    else:
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
        pending = iter(todo)
        futures = {}
        queue = as_completed()

        def submit() -> None:
            item = next(pending, None)
            if item is not None:
                fut = client.submit(_dask_block, payload, digest, job, item[0], item[1], pure=False)
                futures[fut] = item[0]
                queue.add(fut)

        for _ in range(2 * n_workers):
            submit()
        for fut in queue:
            index = futures.pop(fut)
            result = fut.result()
            fut.release()
            submit()
            yield index, result
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
