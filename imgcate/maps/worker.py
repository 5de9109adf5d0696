"""Set-up of a Dask worker process for maps, run once when it starts: ``dask worker ...
--preload imgcate.maps.worker`` (the workers of :func:`~imgcate.maps.runners.local_cluster`
load it themselves).

The native encoder's pool then has as many threads as the worker (``--nthreads``;
``IMGCATE_NATIVE_THREADS``, unless set already). XLA's pool has as many as the cores the process
may run on when JAX starts its backend, at the first map: so that workers sharing a machine do
not each spread over every core, the workers of a local cluster are each pinned to their own
``nthreads`` cores before then, and a worker started elsewhere is pinned when its environment
names its cores (``IMGCATE_WORKER_CORES=0-3``; or start it under ``taskset``). Unpinned, XLA
uses every core the worker may run on, whatever its ``--nthreads``.
The modules a map runs are imported here, so that a worker's first map does not pay for it."""

from __future__ import annotations

import logging
import os
from typing import Any

from imgcate.errors import InputError

log = logging.getLogger("imgcate")

#: Environment of a local cluster's workers: pin worker ``i`` of ``IMGCATE_WORKERS`` to its
#: own cores (:func:`worker_cores`).
PIN_VARIABLE, WORKERS_VARIABLE = "IMGCATE_PIN_WORKERS", "IMGCATE_WORKERS"
#: Cores for a worker started elsewhere, as ``taskset -c`` takes them (``0-3``, ``0,2``).
CORES_VARIABLE = "IMGCATE_WORKER_CORES"
#: GDAL's block cache of a worker, in MB (``GDAL_CACHEMAX``, unless set): a worker keeps its
#: raster open through a map, and GDAL's default (5 % of the machine's memory, per process)
#: let two workers' caches add 1.5 GB to a million-tile map. A row of 256-px blocks of a
#: 6-band uint16 raster 8,000 px wide is 25 MB.
GDAL_CACHE_MB = 256


def parse_cores(text: str) -> set[int]:
    """Cores written as ``taskset -c`` takes them: ``"0-3,6"`` is {0, 1, 2, 3, 6}."""
    cores: set[int] = set()
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        first, _, last = part.partition("-")
        if not first.isdigit() or (last and not last.isdigit()):
            raise InputError(f"{CORES_VARIABLE}={text!r}: give cores as 0-3 or 0,2,5.")
        cores.update(range(int(first), int(last or first) + 1))
    return cores


def worker_cores(name: Any, threads: int, environ: dict[str, str] | None = None) -> set[int] | None:
    """The cores a worker is pinned to, or None to leave it where it is.

    ``IMGCATE_WORKER_CORES`` names them; otherwise a local cluster's worker ``name`` (its
    index ``i``) of ``IMGCATE_WORKERS`` gets the ``i``-th ``threads`` of the cores this
    process may run on, when there are enough of them for every worker (with fewer, pinning
    would only crowd them)."""
    environ = os.environ if environ is None else environ
    if environ.get(CORES_VARIABLE, "").strip():
        return parse_cores(environ[CORES_VARIABLE])
    if environ.get(PIN_VARIABLE) != "1" or not hasattr(os, "sched_getaffinity"):
        return None
    try:
        index, workers = int(name), int(environ.get(WORKERS_VARIABLE, "0"))
    except (TypeError, ValueError):
        return None
    cores = sorted(os.sched_getaffinity(0))
    if workers < 1 or not 0 <= index < workers or workers * threads > len(cores):
        return None
    return set(cores[index * threads : (index + 1) * threads])


def pin(cores: set[int]) -> None:
    """Pin every thread of this process (and the threads they start) to ``cores``.

    Raises
    ------
    InputError
        If this process may not run on those cores (they do not exist, or lie outside its
        own affinity or container).
    """
    try:
        os.sched_setaffinity(0, cores)
    except OSError as exc:
        allowed = sorted(os.sched_getaffinity(0))
        raise InputError(
            f"cannot pin this Dask worker to cores {sorted(cores)} ({exc.strerror}); it may run "
            f"on {allowed}: name some of those ({CORES_VARIABLE}=...) or leave it unset."
        ) from None
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cores)
        except (ProcessLookupError, PermissionError):  # a thread that ended meanwhile
            pass


#: Why this worker's set-up failed, or None: Dask logs a preload's error and starts the
#: worker anyway, so the first map run on it raises it instead (:func:`check_setup`).
SETUP_ERROR: str | None = None


def check_setup() -> None:
    """Raise the error of this worker's set-up, if it failed (called by each map task).

    Raises
    ------
    InputError
        The set-up's error (a bad ``IMGCATE_WORKER_CORES``), naming the worker's setting.
    """
    if SETUP_ERROR is not None:
        raise InputError(SETUP_ERROR)


def dask_setup(worker: Any) -> None:
    """Dask's preload hook: threads and cores of this worker's kernels, and the imports a map
    needs (:mod:`imgcate.maps.worker`)."""
    global SETUP_ERROR
    threads = int(worker.state.nthreads)
    os.environ.setdefault("IMGCATE_NATIVE_THREADS", str(threads))
    os.environ.setdefault("GDAL_CACHEMAX", str(GDAL_CACHE_MB))
    try:
        cores = worker_cores(worker.name, threads)
        if cores and hasattr(os, "sched_setaffinity"):
            pin(cores)
    except InputError as exc:
        SETUP_ERROR = f"Dask worker {worker.address}: {exc}"
        log.error("imgcate map worker set-up failed: %s", SETUP_ERROR)
        return
    log.info(
        "imgcate map worker %s: %d thread(s), cores %s",
        worker.name,
        threads,
        sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "all",
    )
    import imgcate.maps.runners  # noqa: F401  (the first map's imports, paid here)
