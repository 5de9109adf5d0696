"""The CPU fast path of the random convolutional features: the kernel in ``_rcf.cpp``.

:func:`rcf_features` computes exactly what :class:`imgcate.encoders.RandomConvNet` computes
after the per-band normalization (the same features, in float32, summed in another order), in
one pass per chip on every core. The library is the optional extension
``imgcate.encoders._rcf``, built at install time; it runs only where it was built, the CPU has
AVX-512 and JAX computes on the CPU. Whether an encoder uses it is decided at each call by
:func:`use_kernel`, from the encoder's ``native`` argument and the environment variable
``IMGCATE_NATIVE``; otherwise the encoder runs its JAX forward pass. The kernel runs on
:func:`threads` threads (``IMGCATE_NATIVE_THREADS``) of a pool created on first use.
"""

from __future__ import annotations

import ctypes
import importlib
import os
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
def library() -> ctypes.CDLL | None:
    """The kernel's shared library, or None where it is not built, not loadable, from another
    version of the source, or this CPU lacks AVX-512 (loaded once per process)."""
    try:
        lib = ctypes.CDLL(importlib.import_module("imgcate.encoders._rcf").__file__)
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


@cache
def thread_pool() -> ThreadPoolExecutor:
    """The kernel's worker threads, created on first use (with :func:`threads` threads).

    A forked child has none of its parent's threads, so the fork hook registered here makes it
    create its own pool on its first use.
    """
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=thread_pool.cache_clear)
    return ThreadPoolExecutor(threads(), thread_name_prefix="imgcate-rcf")


def enabled() -> bool:
    """False when the environment variable ``IMGCATE_NATIVE`` is ``0`` (read at each call)."""
    return os.environ.get("IMGCATE_NATIVE", "1").strip() != "0"


def available() -> bool:
    """Whether the kernel is built, this CPU runs it and JAX computes on the CPU."""
    return library() is not None and jax.default_backend() == "cpu"


def unavailable_reason(n_bands: int, float32: bool = True) -> str | None:
    """Why the kernel cannot compute the features of ``n_bands``-band chips here, or None."""
    if library() is None:
        return (
            "the native kernel is not built here or this CPU lacks AVX-512 (reinstall with a "
            "C++ compiler on an AVX-512 CPU)"
        )
    if jax.default_backend() != "cpu":
        return f"JAX computes on {jax.default_backend()!r}, not the CPU"
    if not 1 <= n_bands <= MAX_BANDS:
        return f"the chips have {n_bands} bands and the kernel takes 1 to {MAX_BANDS}"
    if not float32:
        return "the encoder computes in float64 (jax.enable_x64) and the kernel in float32"
    return None


def supports(n_bands: int) -> bool:
    """Whether :func:`rcf_features` can take chips of ``n_bands`` bands here."""
    return unavailable_reason(n_bands) is None


def use_kernel(native: bool | None, n_bands: int, *, float32: bool = True) -> bool:
    """Whether the kernel computes the features, given an encoder's ``native`` argument.

    ``False``: never. ``None``: where it runs here (:func:`unavailable_reason`), unless
    ``IMGCATE_NATIVE=0``. ``True``: always; an :class:`~imgcate.errors.InputError` says why
    where it cannot run (the argument wins over the environment variable).
    """
    if native is False or (native is None and not enabled()):
        return False
    reason = unavailable_reason(n_bands, float32)
    if reason is not None and native:
        raise InputError(f"native=True, but {reason}; pass native=None or native=False.")
    return reason is None


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
    lib = library()
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

    bad = [i for i in thread_pool().map(task, range(0, n, CHIPS_PER_TASK)) if i >= 0]
    return min(bad) if bad else out
