"""Encoders: seeded RCF, pure-JAX forward pass, gradients, batching, serialization, loading."""

from __future__ import annotations

import importlib
import json

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from imgcate import _native
from imgcate.embed import (
    CNNEncoder,
    Embeddings,
    RandomConvFeatures,
    RandomConvNet,
    embed,
    encoder_from_state,
    load_embeddings,
)
from imgcate.errors import FitError, InputError
from imgcate.raster import chips_from_array

# the module (imgcate.embed, the attribute, is the embed function)
embed_module = importlib.import_module("imgcate.embed")


@pytest.fixture(scope="module")
def chips():
    rng = np.random.default_rng(0)
    x = rng.gamma(2.0, 50.0, size=(60, 5, 12, 12)).astype(np.float32)
    x[:30, 2] += 80.0  # two kinds of images
    return chips_from_array(x, [f"img{i}" for i in range(60)])


def test_same_seed_same_embeddings_different_seed_different(chips):
    a = embed(chips, n_features=64, n_components=8, seed=1)
    b = embed(chips, n_features=64, n_components=8, seed=1)
    c = embed(chips, n_features=64, n_components=8, seed=2)
    assert isinstance(a, Embeddings) and a.values.shape == (60, 8)
    np.testing.assert_array_equal(a.values, b.values)
    assert not np.allclose(a.values, c.values, atol=1e-3)
    assert a.image_ids.tolist() == list(chips.image_ids)
    assert isinstance(a.encoder, RandomConvFeatures) and a.encoder.is_fitted


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


@pytest.fixture(params=["native", "jax"])
def path(request, monkeypatch):
    """Run a test through the native kernel (where it runs here) and through the JAX path."""
    if request.param == "native" and not _native.available():
        pytest.skip("native kernel not built, CPU without AVX-512, or IMGCATE_NATIVE=0")
    monkeypatch.setattr(embed_module, "USE_NATIVE", request.param == "native")
    return request.param


def test_batching_gives_same_result(chips, monkeypatch, path):
    enc = RandomConvFeatures(32, n_components=4).fit(chips, seed=0)
    monkeypatch.setattr(embed_module, "POOLED_PER_CALL", 2**40)  # every chip in one call
    full = enc.transform(chips, batch_size=1000)
    # Other call sizes sum in another order. In float32 the pooled max(conv, +-b) - (b or the
    # mean response) keeps ~6 digits of the larger term, fewer of a rarely active filter's mean:
    # differences of ~1e-5 on components of sd ~1, far below any statistical use.
    tol = dict(rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(enc.transform(chips, batch_size=7), full, **tol)
    # float64 values: the native path converts them batch by batch
    np.testing.assert_allclose(
        enc.transform(chips.values.astype(np.float64), batch_size=7), full, **tol
    )
    monkeypatch.setattr(embed_module, "POOLED_PER_CALL", 1)  # the call cap: one chip per call
    np.testing.assert_allclose(enc.transform(chips, batch_size=1000), full, **tol)


def test_save_load_transform_new_chips(chips, tmp_path, path):
    enc = embed(chips, n_features=64, n_components=8, seed=0).encoder
    config, arrays = enc.get_state()
    (tmp_path / "enc.json").write_text(json.dumps(config))
    np.savez(tmp_path / "enc.npz", **arrays)
    with np.load(tmp_path / "enc.npz") as data:
        loaded = encoder_from_state(json.loads((tmp_path / "enc.json").read_text()), dict(data))
    new = np.random.default_rng(5).gamma(2.0, 50.0, size=(9, 5, 12, 12)).astype(np.float32)
    np.testing.assert_allclose(loaded.transform(new), enc.transform(new), atol=1e-6)
    again = embed(chips_from_array(new), loaded)  # a fitted encoder is only applied
    np.testing.assert_allclose(again.values, enc.transform(new), atol=1e-6)


def test_cnn_encoder_trains_and_round_trips(chips, tmp_path):
    emb = embed(chips, CNNEncoder(16, n_steps=30, n_components=4), seed=0)
    assert emb.values.shape == (60, 4) and np.isfinite(emb.values).all()
    enc = emb.encoder
    config, arrays = enc.get_state()
    json.dumps(config)
    loaded = encoder_from_state(config, arrays)
    np.testing.assert_allclose(loaded.transform(chips), enc.transform(chips), atol=1e-6)
    grad = jax.grad(lambda v: enc.apply_jax(v).sum())(jnp.asarray(chips.values[:3]))
    assert np.isfinite(grad).all()
    again = embed(chips, CNNEncoder(16, n_steps=30, n_components=4), seed=0)
    np.testing.assert_array_equal(again.values, emb.values)


def test_sequences_combine(chips):
    seq = chips_from_array(
        np.stack([chips.values, chips.values * 1.1]), chips.image_ids, dates=["t0", "t1"]
    )
    concat = embed(seq, n_features=32, n_components=4, seed=0)
    assert concat.values.shape == (60, 8)
    for combine in ("mean", "difference"):
        out = embed(seq, n_features=32, n_components=4, combine=combine, seed=0)
        assert out.values.shape == (60, 4)
    diff = embed(seq, n_features=32, n_components=4, combine="difference", seed=0)
    np.testing.assert_allclose(diff.values, concat.values[:, 4:] - concat.values[:, :4], atol=1e-5)
    jax_out = diff.encoder.apply_jax(jnp.asarray(seq.values))
    np.testing.assert_allclose(np.asarray(jax_out), diff.values, atol=1e-5)


def test_errors(chips):
    with pytest.raises(InputError, match="encoder='vit' is not allowed"):
        embed(chips, "vit", seed=0)
    with pytest.raises(InputError, match="seed is required"):
        embed(chips)
    with pytest.raises(FitError, match="not fitted"):
        RandomConvFeatures().transform(chips)
    enc = RandomConvFeatures(16, n_components=2).fit(chips, seed=0)
    with pytest.raises(InputError, match="fitted on 5"):
        enc.transform(np.zeros((2, 3, 12, 12)))
    with pytest.raises(InputError, match="n_components=100 exceeds"):
        embed(chips, n_features=16, n_components=100, seed=0)
    with pytest.raises(InputError, match="combine='sum' is not allowed"):
        embed(chips, combine="sum", seed=0)


def test_load_embeddings(tmp_path):
    values = np.arange(12.0).reshape(4, 3)
    df = pd.DataFrame(values, columns=["f0", "f1", "f2"]).assign(image_id=list("abcd"))
    df.to_parquet(tmp_path / "e.parquet")
    emb = load_embeddings(tmp_path / "e.parquet")
    np.testing.assert_array_equal(emb.for_keys(np.array(["c", "a"])), values[[2, 0]])
    assert emb.feature_names == ("f0", "f1", "f2")  # for membership_weights(names=...)
    with pytest.raises(InputError, match="2 names for 3 features"):
        Embeddings(values=values, image_ids=np.arange(4), feature_names=["a", "b"])
    np.savez(tmp_path / "e.npz", key=np.array([5, 6, 7, 8]), values=values)
    assert load_embeddings(tmp_path / "e.npz", id_column="key").image_ids.tolist() == [5, 6, 7, 8]
    np.save(tmp_path / "e.npy", values)
    assert load_embeddings(tmp_path / "e.npy").values.shape == (4, 3)
    with pytest.raises(InputError, match="no id column 'tile'"):
        load_embeddings(tmp_path / "e.parquet", id_column="tile")
    with pytest.raises(InputError, match="does not exist"):
        load_embeddings(tmp_path / "nope.parquet")
