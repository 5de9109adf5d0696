"""Random convolutional features: the fused Flax body against its definition, the pure-JAX
forward pass and its gradients, batching."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imgcate.chips import chips_from_array
from imgcate.embeddings import embed
from imgcate.encoders import RandomConvFeatures, RandomConvNet


@pytest.fixture(scope="module")
def chips():
    rng = np.random.default_rng(0)
    x = rng.gamma(2.0, 50.0, size=(60, 5, 12, 12)).astype(np.float32)
    x[:30, 2] += 80.0  # two kinds of images
    return chips_from_array(x, [f"img{i}" for i in range(60)])


@pytest.mark.parametrize("k", [1, 3, 5])
def test_random_conv_net_equals_a_direct_loop(k):
    """The fused one-reduction form (with the mean response from window means) against the
    definition, window by window in NumPy, on a non-square chip and biases of both signs."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3, 2, 7, 6)).astype(np.float32)
    filters = rng.normal(size=(4, 2, k, k)).astype(np.float32)
    bias = np.array([0.5, 0.0, -0.3, 1.2], dtype=np.float32)
    params = {"params": {"filters": jnp.asarray(filters), "bias": jnp.asarray(bias)}}
    got = np.asarray(RandomConvNet(n_filters=4, kernel_size=k).apply(params, jnp.asarray(x)))
    want = np.zeros((3, 8))
    for i in range(3):
        for f in range(4):
            conv = np.array(
                [
                    [np.sum(x[i, :, r : r + k, c : c + k] * filters[f]) for c in range(6 - k + 1)]
                    for r in range(7 - k + 1)
                ]
            )
            want[i, f] = np.maximum(conv - bias[f], 0).mean()
            want[i, 4 + f] = np.maximum(-conv - bias[f], 0).mean()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_apply_jax_equals_transform_and_is_differentiable(chips):
    enc = embed(chips, n_features=64, n_components=8, seed=0).encoder
    x = jnp.asarray(chips.values[:7])
    np.testing.assert_allclose(
        np.asarray(enc.apply_jax(x)), enc.transform(chips.values[:7]), atol=1e-5
    )
    grad = jax.grad(lambda v: enc.apply_jax(v)[:, 0].sum())(x)
    assert grad.shape == x.shape
    assert np.isfinite(grad).all() and np.abs(grad).max() > 0
    per_image = jax.vmap(lambda v: enc.apply_jax(v[None])[0])(x)  # vmap composes
    np.testing.assert_allclose(per_image, enc.apply_jax(x), atol=1e-5)


def test_batching_gives_same_result(chips, encoder_path):
    enc = RandomConvFeatures(32, n_components=4).fit(chips, seed=0)
    full = enc.transform(chips, batch_size=1000, pooled_per_call=2**40)  # every chip in one call
    # Other call sizes sum in another order. In float32 the pooled max(conv, +-b) - (b or the
    # mean response) keeps ~6 digits of the larger term, fewer of a rarely active filter's mean:
    # differences of ~1e-5 on components of sd ~1, far below any statistical use.
    tol = dict(rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(enc.transform(chips, batch_size=7), full, **tol)
    # float64 values: the native path converts them batch by batch
    np.testing.assert_allclose(
        enc.transform(chips.values.astype(np.float64), batch_size=7), full, **tol
    )
    one_per_call = enc.transform(chips, batch_size=1000, pooled_per_call=1)  # the call cap
    np.testing.assert_allclose(one_per_call, full, **tol)
