"""The native random-convolution kernel (imgcate/_rcf.cpp) against the definition and JAX.

The kernel is the CPU fast path of RandomConvFeatures; the JAX forward pass is the reference.
Tests of the kernel itself skip, with the reason, where it is not built or the CPU lacks
AVX-512; the fallback tests run everywhere.
"""

from __future__ import annotations

import copy
import importlib
import shutil

import jax
import numpy as np
import pytest

from imgcate import _native
from imgcate.embed import RandomConvFeatures
from imgcate.errors import InputError

embed_module = importlib.import_module("imgcate.embed")

needs_kernel = pytest.mark.skipif(
    not _native.available(),
    reason="native kernel not built, CPU without AVX-512, or IMGCATE_NATIVE=0",
)


def _direct(x, mean, std, filters, bias):
    """The features by definition, window by window in float64."""
    z = (x.astype(np.float64) - mean[None, :, None, None]) / std[None, :, None, None]
    n, _, h, w = z.shape
    f, _, k, _ = filters.shape
    windows = np.lib.stride_tricks.sliding_window_view(z, (k, k), axis=(2, 3))
    conv = np.einsum("ncyxij,fcij->nfyx", windows, filters.astype(np.float64))
    b = bias[None, :, None, None]
    return np.concatenate(
        [np.maximum(conv - b, 0).mean((2, 3)), np.maximum(-conv - b, 0).mean((2, 3))], axis=1
    )


@needs_kernel
@pytest.mark.parametrize(
    ("bands", "k", "n_filters"),
    [(1, 3, 4), (6, 3, 128), (4, 1, 70), (13, 5, 65), (16, 3, 64), (3, 2, 200)],
)
def test_kernel_equals_the_definition(bands, k, n_filters):
    """Every tile remainder (output widths k .. k + 11 cover width mod 6 = 0 .. 5), filter counts
    that do not fill a 64-filter block, band counts from 1 to the compiled maximum, biases of
    both signs, and more chips than one thread task (the tasks' offsets)."""
    rng = np.random.default_rng(bands * 100 + k)
    mean = rng.normal(50, 10, bands).astype(np.float32)
    std = rng.uniform(5, 20, bands).astype(np.float32)
    filters = rng.normal(size=(n_filters, bands, k, k)).astype(np.float32)
    bias = rng.normal(0, 1, n_filters).astype(np.float32)
    for width in range(k, k + 12):
        x = rng.normal(50, 15, size=(_native.CHIPS_PER_TASK + 5, bands, k + 3, width))
        x = x.astype(np.float32)
        got = _native.rcf_features(x, mean, std, filters, bias)
        want = _direct(x, mean, std, filters, bias)
        # float32 sums of <= 100 terms of size ~ sqrt(bands * k * k): relative error ~1e-6
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@needs_kernel
def test_kernel_sums_a_large_chip_accurately():
    """One 1,024 x 1,024 chip (over a million positions): rows are summed in float32 and added in
    double, so the mean does not drift as one float32 running sum over the chip would (3e-5
    relative at this size, 3e-4 at 2,048^2, measured before the change)."""
    rng = np.random.default_rng(7)
    x = rng.normal(3.0, 1.0, size=(1, 1, 1024, 1024)).astype(np.float32)
    filters = rng.normal(size=(4, 1, 1, 1)).astype(np.float32)
    bias = np.array([0.1, -0.2, 0.5, 0.0], np.float32)
    ones = np.ones(1, np.float32)
    got = _native.rcf_features(x, ones * 0, ones, filters, bias)
    want = _direct(x, ones * 0, ones, filters, bias)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_kernel_is_built_where_this_cpu_runs_it():
    """Guard against the kernel tests silently skipping: the extension is optional at install,
    so a compile error would otherwise leave every kernel test skipped and the suite green."""
    try:
        with open("/proc/cpuinfo") as fh:
            avx512 = " avx512f " in fh.read().replace("\n", " ")
    except OSError:
        pytest.skip("no /proc/cpuinfo: cannot tell whether this CPU runs the kernel")
    if not avx512:
        pytest.skip("this CPU has no AVX-512: the JAX path is expected")
    if not any(shutil.which(cxx) for cxx in ("c++", "g++", "clang++")):
        pytest.skip("no C++ compiler here: the extension could not be built at install")
    assert _native._library() is not None, (
        "imgcate._rcf is not built or not loadable on an AVX-512 CPU; rebuild with "
        "`pip install -e .` and look for the compiler's error"
    )


def test_library_is_not_used_when_missing_or_from_another_version(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "imgcate._rcf", None)  # import raises ImportError
    _native._library.cache_clear()
    assert _native._library() is None and not _native.available()
    monkeypatch.undo()
    monkeypatch.setattr(_native, "ABI_VERSION", _native.ABI_VERSION + 1)
    _native._library.cache_clear()
    assert _native._library() is None
    monkeypatch.undo()
    _native._library.cache_clear()


@needs_kernel
def test_kernel_reports_the_first_non_finite_chip():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 3, 8, 8)).astype(np.float32)
    filters, bias = rng.normal(size=(8, 3, 3, 3)), np.zeros(8)
    ones = np.ones(3, np.float32)
    assert isinstance(_native.rcf_features(x, ones * 0, ones, filters, bias), np.ndarray)
    x[70, 1, 4, 4], x[90, 0, 0, 7] = np.inf, np.nan
    assert _native.rcf_features(x, ones * 0, ones, filters, bias) == 70
    x[3, 2, 7, 0] = -np.inf
    assert _native.rcf_features(x, ones * 0, ones, filters, bias) == 3


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(1)
    x = rng.gamma(2.0, 50.0, size=(150, 6, 20, 20)).astype(np.float32)
    x[:75, 3] += 60.0
    return x, RandomConvFeatures(128, n_components=8, batch_size=64).fit(x, seed=0)


@needs_kernel
def test_transform_native_equals_jax(fitted, monkeypatch):
    """The same fitted encoder through both paths, with and without the head, for float32 and
    float64 (batched conversion) input: the same embeddings to float32 rounding."""
    x, enc = fitted
    native = enc.transform(x)
    native64 = enc.transform(x.astype(np.float64), batch_size=7)
    body = enc._features(x)
    monkeypatch.setattr(embed_module, "USE_NATIVE", False)
    jax_out, jax_body = enc.transform(x), enc._features(x)
    # embeddings have sd ~1-3; float32 sums in another order differ by ~1e-5 (the JAX max
    # form itself loses a few digits on rarely active filters: tests/test_embed.py)
    np.testing.assert_allclose(native, jax_out, atol=1e-4)
    np.testing.assert_allclose(native64, native, atol=1e-5)
    np.testing.assert_allclose(body, jax_body, rtol=1e-4, atol=1e-5)
    assert np.abs(native - jax_out).max() > 0  # two computations, not one path twice


@needs_kernel
def test_a_chip_embeds_the_same_whatever_it_is_embedded_with(fitted):
    """Maps embed blocks of any size: one chip's embedding may not depend on the call's other
    chips (a float32 head did, by ~3e-6, through the BLAS kernel chosen by the row count)."""
    x, enc = fitted
    together = enc.transform(x)
    alone = np.concatenate([enc.transform(x[i : i + 1]) for i in range(0, 40, 3)])
    np.testing.assert_allclose(alone, together[0:40:3], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(enc._features(x[5:9]), enc._features(x)[5:9])


@needs_kernel
def test_transform_error_names_the_chip(fitted):
    x, enc = fitted
    bad = x.copy()
    bad[41, 2, 5, 5] = np.nan
    with pytest.raises(InputError, match=r"NaN or infinite pixels \(chip 41\)"):
        enc.transform(bad)
    with pytest.raises(InputError, match=r"\(chip 41\)"):  # batches of 7: offset kept
        enc.transform(bad.astype(np.float64), batch_size=7)
    bad[97, 0, 0, 0] = -np.inf  # every bad chip counted, as on the JAX path
    with pytest.raises(InputError, match=r"\(2 chips \(first: 41\)\)"):
        enc.transform(bad)


def test_jax_path_is_used_where_the_kernel_does_not_apply(fitted, monkeypatch):
    """IMGCATE_NATIVE=0 switches the kernel off; 17 bands (more than compiled) and an encoder
    cast to float64 (the kernel computes in float32) use JAX."""
    monkeypatch.setenv("IMGCATE_NATIVE", "0")
    assert not _native.available() and not _native.supports(6)
    x, enc = fitted
    calls = []
    monkeypatch.setattr(_native, "rcf_features", lambda *a, **k: calls.append(1))
    out = enc.transform(x[:10])
    assert out.shape == (10, 8) and np.isfinite(out).all() and not calls
    with pytest.raises(InputError, match=r"NaN or infinite pixels \(chip 2\)"):
        bad = x[:10].copy()
        bad[2, 0, 0, 0] = np.inf
        enc.transform(bad)
    monkeypatch.delenv("IMGCATE_NATIVE")
    assert not _native.supports(_native.MAX_BANDS + 1)
    many = np.random.default_rng(2).normal(size=(30, _native.MAX_BANDS + 1, 8, 8))
    wide = RandomConvFeatures(16, n_components=3).fit(many.astype(np.float32), seed=0)
    assert wide.transform(many).shape == (30, 3) and not calls
    as64 = copy.copy(enc)
    as64.params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), enc.params)
    as64._jit_cache = {}
    with jax.enable_x64(True):
        assert as64.transform(x[:10]).shape == (10, 8) and not calls


def test_thread_count_setting(monkeypatch):
    monkeypatch.setenv("IMGCATE_NATIVE_THREADS", "3")
    assert _native.threads() == 3
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("IMGCATE_NATIVE_THREADS", bad)
        with pytest.raises(InputError, match="IMGCATE_NATIVE_THREADS"):
            _native.threads()
    monkeypatch.delenv("IMGCATE_NATIVE_THREADS")
    assert _native.threads() >= 1
