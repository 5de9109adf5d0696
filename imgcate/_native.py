"""The CPU fast path of the random convolutional features: the kernel in ``_rcf.cpp``.

:func:`rcf_features` computes exactly what :class:`imgcate.embed.RandomConvNet` computes after
the per-band normalization (the same features, in float32, summed in another order), in one
pass per chip on every core. The library is the optional extension ``imgcate._rcf``, built at
install time; it is used only where it was built, the CPU has AVX-512, JAX computes on the CPU,
and ``IMGCATE_NATIVE`` is not ``0``. Otherwise the encoder runs its JAX forward pass.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache

import jax
import numpy as np

#: Filters per block of the kernel (filter counts are padded up to a multiple).
BLOCK = 64
#: Band counts the kernel was compiled for.
MAX_BANDS = 16
#: Chips per task handed to a thread: small enough to balance two cores, large enough that
#: the call overhead (microseconds) is negligible.
CHIPS_PER_TASK = 32


@cache
def _library() -> ctypes.CDLL | None:
    try:
        from imgcate import _rcf
    except ImportError:
        return None
    lib = ctypes.CDLL(_rcf.__file__)
    if not lib.rcf_supported():
        return None
    ptr, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.rcf_pool.restype = i64
    lib.rcf_pool.argtypes = [ptr, i64, i64, i64, i64, i64, ptr, ptr, ptr, ptr, i64, ptr]
    return lib


@cache
def _pool() -> ThreadPoolExecutor:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return ThreadPoolExecutor(cores or 1, thread_name_prefix="imgcate-rcf")


if hasattr(os, "register_at_fork"):  # a forked child has none of the parent's pool threads
    os.register_at_fork(after_in_child=_pool.cache_clear)


def available() -> bool:
    """Whether the native kernel is built, supported by this CPU and switched on."""
    return (os.environ.get("IMGCATE_NATIVE", "1") != "0" and _library() is not None
            and jax.default_backend() == "cpu")


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
    padded[:n_filters] = np.asarray(filters, np.float32).transpose(0, 2, 3, 1).reshape(
        n_filters, k, k * bands)
    packed = np.ascontiguousarray(
        padded.reshape(n_blocks, BLOCK, k, k * bands).transpose(0, 2, 3, 1))
    padded_bias = np.zeros(n_blocks * BLOCK, np.float32)
    padded_bias[:n_filters] = bias
    return packed, padded_bias


def rcf_features(x: np.ndarray, band_mean: np.ndarray, band_std: np.ndarray,
                 filters: np.ndarray, bias: np.ndarray,
                 head: Callable[[np.ndarray], np.ndarray] | None = None,
                 n_outputs: int | None = None) -> np.ndarray | int:
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
    packed, padded_bias = pack_filters(filters, bias)
    mean = np.ascontiguousarray(band_mean, np.float32)
    std = np.ascontiguousarray(band_std, np.float32)
    if head is None:
        out = np.empty((n, 2 * n_filters), np.float32)
    else:  # each task holds its own features only: memory is the output
        out = np.empty((n, n_outputs), np.float64)

    def task(start: int) -> int:
        stop = min(start + CHIPS_PER_TASK, n)
        feats = out[start:stop] if head is None else np.empty((stop - start, 2 * n_filters),
                                                              np.float32)
        status = lib.rcf_pool(
            x[start:stop].ctypes.data, stop - start, bands, height, width, k,
            mean.ctypes.data, std.ctypes.data, packed.ctypes.data, padded_bias.ctypes.data,
            n_filters, feats.ctypes.data)
        if status in (-2, -3):
            raise RuntimeError(f"imgcate's native kernel failed (status {status})")
        if status >= 0:
            return start + int(status)
        if head is not None:
            out[start:stop] = head(feats)
        return -1

    bad = [i for i in _pool().map(task, range(0, n, CHIPS_PER_TASK)) if i >= 0]
    return min(bad) if bad else out
