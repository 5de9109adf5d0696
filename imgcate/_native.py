"""The CPU fast path of the random convolutional features: the kernel in ``_rcf.cpp``.

:func:`rcf_features` computes exactly what :class:`imgcate.embed.RandomConvNet` computes after
the per-band normalization (the same features, in float32, summed in another order), in one
pass per chip on every core. The library is the optional extension ``imgcate._rcf``, built at
install time; it is used only where it was built, the CPU has AVX-512, JAX computes on the CPU,
and ``IMGCATE_NATIVE`` is not ``0``. Otherwise the encoder runs its JAX forward pass. It runs on
:func:`threads` threads (``IMGCATE_NATIVE_THREADS``), fixed when it is first used.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache

import jax
import numpy as np

from imgcate.errors import InputError

#: Filters per block of the kernel (filter counts are padded up to a multiple).
BLOCK = 64
#: Band counts the kernel was compiled for.
MAX_BANDS = 16
#: Chips per task handed to a thread: small enough to balance two cores, large enough that
#: the call overhead (microseconds) is negligible.
CHIPS_PER_TASK = 32


#: The ``rcf_abi_version()`` of the library this module calls (see ``_rcf.cpp``): a library
#: left over from another version of the source (an old in-place build) is not used.
ABI_VERSION = 2


@cache
def _library() -> ctypes.CDLL | None:
    try:
        lib = ctypes.CDLL(importlib.import_module("imgcate._rcf").__file__)
        if lib.rcf_abi_version() != ABI_VERSION or not lib.rcf_supported():
            return None
        rcf_pool = lib.rcf_pool
    except (ImportError, OSError, AttributeError):  # not built, not loadable, or too old
        return None
    ptr, i64 = ctypes.c_void_p, ctypes.c_int64
    rcf_pool.restype = i64
    rcf_pool.argtypes = [ptr, i64, i64, i64, i64, i64, ptr, ptr, ptr, ptr, i64, ptr]
    return lib


def threads() -> int:
    """Threads the kernel runs on: ``IMGCATE_NATIVE_THREADS`` if set (for a container whose CPU
    quota is below its visible cores, or several processes sharing a machine), else the cores
    this process may run on."""
    value = os.environ.get("IMGCATE_NATIVE_THREADS", "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise InputError(f"IMGCATE_NATIVE_THREADS={value!r} must be a whole number >= 1.")
        return int(value)
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


_pool_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _executor
    with _pool_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(threads(), thread_name_prefix="imgcate-rcf")
        return _executor


def _forget_pool() -> None:
    global _executor, _pool_lock
    _executor, _pool_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):  # a forked child has none of the parent's pool threads
    os.register_at_fork(after_in_child=_forget_pool)


def available() -> bool:
    """Whether the native kernel is built, supported by this CPU and switched on."""
    return (
        os.environ.get("IMGCATE_NATIVE", "1") != "0"
        and _library() is not None
        and jax.default_backend() == "cpu"
    )


def supports(n_bands: int) -> bool:
    """Whether :func:`rcf_features` can take chips of ``n_bands`` bands here."""
    return available() and 1 <= n_bands <= MAX_BANDS


def pack_filters(filters: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Filters (filter, band, k, k) and bias in the kernel's layout, padded to whole blocks.

    Returns (packed, bias): packed is (block, dy, dx * band + band, 64), float32, C order.
    """
    n_filters, bands, k, _ = filters.shape
    n_blocks = -(-n_filters // BLOCK)
    padded = np.zeros((n_blocks * BLOCK, k, k * bands), np.float32)
    padded[:n_filters] = (
        np.asarray(filters, np.float32).transpose(0, 2, 3, 1).reshape(n_filters, k, k * bands)
    )
    packed = np.ascontiguousarray(
        padded.reshape(n_blocks, BLOCK, k, k * bands).transpose(0, 2, 3, 1)
    )
    padded_bias = np.zeros(n_blocks * BLOCK, np.float32)
    padded_bias[:n_filters] = bias
    return packed, padded_bias


def rcf_features(
    x: np.ndarray,
    band_mean: np.ndarray,
    band_std: np.ndarray,
    filters: np.ndarray,
    bias: np.ndarray,
    head: Callable[[np.ndarray], np.ndarray] | None = None,
    n_outputs: int | None = None,
) -> np.ndarray | int:
    """Pooled features of raw chips x (image, band, y, x) with the fitted normalization.

    Computes the (image, 2 * filter) float32 features ``[mean relu(conv - b), mean
    relu(-conv - b)]`` of ``(x - band_mean) / band_std``, in tasks of :data:`CHIPS_PER_TASK`
    chips spread over the cores. ``head``, if given, maps each task's features to its rows of
    the (image, n_outputs) float64 result inside the task (so it overlaps with the kernel).
    Returns the result, or, when a chip holds a NaN or infinite pixel, the index of one such
    chip. Call only where :func:`supports` is true.
    """
    lib = _library()
    x = np.ascontiguousarray(x, np.float32)
    n, bands, height, width = x.shape
    k, n_filters = filters.shape[-1], filters.shape[0]
    if (
        filters.shape[1:] != (bands, k, k)
        or np.shape(bias) != (n_filters,)
        or np.shape(band_mean) != (bands,)
        or np.shape(band_std) != (bands,)
        or not k <= min(height, width)
    ):
        raise ValueError(
            f"rcf_features: chips {x.shape}, filters {filters.shape}, bias {np.shape(bias)}, "
            f"band_mean {np.shape(band_mean)}, band_std {np.shape(band_std)} do not fit"
        )
    packed, padded_bias = pack_filters(filters, bias)
    mean = np.ascontiguousarray(band_mean, np.float32)
    std = np.ascontiguousarray(band_std, np.float32)
    if head is None:
        out = np.empty((n, 2 * n_filters), np.float32)
    else:  # each task holds its own features only: memory is the output
        out = np.empty((n, n_outputs), np.float64)

    def task(start: int) -> int:
        stop = min(start + CHIPS_PER_TASK, n)
        feats = (
            out[start:stop] if head is None else np.empty((stop - start, 2 * n_filters), np.float32)
        )
        status = lib.rcf_pool(
            x[start:stop].ctypes.data,
            stop - start,
            bands,
            height,
            width,
            k,
            mean.ctypes.data,
            std.ctypes.data,
            packed.ctypes.data,
            padded_bias.ctypes.data,
            n_filters,
            feats.ctypes.data,
        )
        if status in (-2, -3):
            raise RuntimeError(f"imgcate's native kernel failed (status {status})")
        if status >= 0:
            return start + int(status)
        if head is not None:
            out[start:stop] = head(feats)
        return -1

    bad = [i for i in _pool().map(task, range(0, n, CHIPS_PER_TASK)) if i >= 0]
    return min(bad) if bad else out
