"""The native random-convolution kernel (imgcate/encoders/_rcf.cpp) against the definition
and JAX, and the switches that choose it (``native=``, ``IMGCATE_NATIVE``).

The kernel is the CPU fast path of RandomConvFeatures; the JAX forward pass is the reference.
Tests of the kernel itself skip, with the reason, where it is not built or the CPU lacks
AVX-512; the fallback tests run everywhere.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imgcate.embeddings import embed
from imgcate.encoders import RandomConvFeatures, native
from imgcate.errors import InputError

needs_kernel = pytest.mark.skipif(
    not native.available(),
    reason="native kernel not built, CPU without AVX-512, or JAX not on the CPU",
)


def assert_jax_path(actual, reference):
    """The JAX forward pass's output: bit for bit where the kernel can run (there exactness is
    what tells the two paths apart); on a CPU without AVX-512 XLA may sum float32 in another
    order for another batch shape, so there to float32 rounding."""
    if native.available():
        np.testing.assert_array_equal(actual, reference)
    else:
        np.testing.assert_allclose(actual, reference, rtol=1e-5, atol=1e-5)


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
        x = rng.normal(50, 15, size=(native.CHIPS_PER_TASK + 5, bands, k + 3, width))
        x = x.astype(np.float32)
        got = native.rcf_features(x, mean, std, filters, bias)
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
    got = native.rcf_features(x, ones * 0, ones, filters, bias)
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
    assert native.library() is not None, (
        "imgcate._rcf is not built or not loadable on an AVX-512 CPU; rebuild with "
        "`pip install -e .` and look for the compiler's error"
    )


def test_library_is_not_used_when_missing_or_from_another_version(monkeypatch):
    monkeypatch.setitem(sys.modules, "imgcate.encoders._rcf", None)  # import raises ImportError
    native.library.cache_clear()
    assert native.library() is None and not native.available()
    monkeypatch.undo()
    monkeypatch.setattr(native, "ABI_VERSION", native.ABI_VERSION + 1)
    native.library.cache_clear()
    assert native.library() is None
    monkeypatch.undo()
    native.library.cache_clear()


@needs_kernel
def test_kernel_reports_the_first_non_finite_chip():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 3, 8, 8)).astype(np.float32)
    filters, bias = rng.normal(size=(8, 3, 3, 3)), np.zeros(8)
    ones = np.ones(3, np.float32)
    assert isinstance(native.rcf_features(x, ones * 0, ones, filters, bias), np.ndarray)
    x[70, 1, 4, 4], x[90, 0, 0, 7] = np.inf, np.nan
    assert native.rcf_features(x, ones * 0, ones, filters, bias) == 70
    x[3, 2, 7, 0] = -np.inf
    assert native.rcf_features(x, ones * 0, ones, filters, bias) == 3


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(1)
    x = rng.gamma(2.0, 50.0, size=(150, 6, 20, 20)).astype(np.float32)
    x[:75, 3] += 60.0
    return x, RandomConvFeatures(128, n_components=8, batch_size=64).fit(x, seed=0)


@needs_kernel
def test_transform_native_equals_jax(fitted):
    """The same fitted encoder through both paths, with and without the head, for float32 and
    float64 (batched conversion) input: the same embeddings to float32 rounding."""
    x, enc = fitted
    native = enc.transform(x)
    native64 = enc.transform(x.astype(np.float64), batch_size=7)
    body = enc._features(x)
    jax_out, jax_body = enc.transform(x, native=False), enc._features(x, native=False)
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


def _jax_forward(enc, x):
    """The JAX forward pass, jitted as transform's JAX path runs it (one batch)."""
    return np.asarray(jax.jit(enc.apply_jax)(jnp.asarray(x, jnp.float32))).astype(np.float64)


def test_native_switches_really_choose_the_jax_path(fitted, monkeypatch):
    """native=False and IMGCATE_NATIVE=0 give exactly (bit for bit) the jitted JAX forward
    pass, which the kernel does not (it sums in another order), with no mocks: what runs is
    read off the numbers. The argument wins over the environment variable."""
    x, enc = fitted
    x = x[:40]
    reference = _jax_forward(enc, x)
    assert_jax_path(enc.transform(x, native=False), reference)
    assert_jax_path(embed(x, enc, native=False).values, reference)
    monkeypatch.setenv("IMGCATE_NATIVE", "0")
    assert not native.enabled() and not native.use_kernel(None, 6)
    assert_jax_path(enc.transform(x), reference)
    assert_jax_path(embed(x, enc).values, reference)
    if not native.available():
        pytest.skip("native kernel not built here: only the JAX path could be checked")
    forced = enc.transform(x, native=True)  # the argument wins over IMGCATE_NATIVE=0
    monkeypatch.delenv("IMGCATE_NATIVE")
    default = enc.transform(x)
    np.testing.assert_array_equal(forced, default)
    assert not np.array_equal(default, reference)  # the kernel really ran by default
    np.testing.assert_allclose(default, reference, atol=1e-4)


def test_jax_path_is_used_where_the_kernel_does_not_apply(fitted):
    """17 bands (more than compiled) and an encoder cast to float64 (the kernel computes in
    float32) use JAX (bit for bit); native=True there says why it cannot run; the JAX path
    names a bad chip as the kernel does."""
    x, enc = fitted
    with pytest.raises(InputError, match=r"NaN or infinite pixels \(chip 2\)"):
        bad = x[:10].copy()
        bad[2, 0, 0, 0] = np.inf
        enc.transform(bad, native=False)
    assert not native.supports(native.MAX_BANDS + 1)
    many = np.random.default_rng(2).normal(size=(30, native.MAX_BANDS + 1, 8, 8))
    wide = RandomConvFeatures(16, n_components=3).fit(many.astype(np.float32), seed=0)
    assert_jax_path(wide.transform(many), _jax_forward(wide, many))
    with pytest.raises(InputError, match="native=True, but .*(17 bands|not built)"):
        wide.transform(many, native=True)
    as64 = copy.copy(enc)
    as64.params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), enc.params)
    as64._jit_cache = {}
    with jax.enable_x64(True):
        out = as64.transform(x[:10])
        assert out.shape == (10, 8)
        assert_jax_path(out, _jax_forward(as64, x[:10]))


def test_thread_pool_is_made_on_first_use():
    """Importing starts no thread and registers no fork hook; the first kernel call makes the
    pool (in a fresh interpreter, so other tests' calls do not count)."""
    code = (
        "import threading, numpy as np\n"
        "from imgcate.encoders import native\n"
        "assert native.thread_pool.cache_info().currsize == 0\n"
        "assert not [t for t in threading.enumerate() if t.name.startswith('imgcate-rcf')]\n"
        "if native.available():\n"
        "    x = np.ones((40, 1, 4, 4), np.float32)\n"
        "    f, b, one = np.ones((2, 1, 3, 3)), np.zeros(2), np.ones(1)\n"
        "    native.rcf_features(x, one * 0, one, f, b)\n"
        "    assert native.thread_pool.cache_info().currsize == 1\n"
        "print('ok')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]


def test_thread_count_setting(monkeypatch):
    monkeypatch.setenv("IMGCATE_NATIVE_THREADS", "3")
    assert native.threads() == 3
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("IMGCATE_NATIVE_THREADS", bad)
        with pytest.raises(InputError, match="IMGCATE_NATIVE_THREADS"):
            native.threads()
    monkeypatch.delenv("IMGCATE_NATIVE_THREADS")
    assert native.threads() >= 1
