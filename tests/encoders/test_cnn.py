"""The trainable CNN encoder: seeded training, JAX gradients, serialization."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imgcate.chips import chips_from_array
from imgcate.embeddings import embed, encoder_from_state
from imgcate.encoders import CNNEncoder


@pytest.fixture(scope="module")
def chips():
    rng = np.random.default_rng(0)
    x = rng.gamma(2.0, 50.0, size=(60, 5, 12, 12)).astype(np.float32)
    x[:30, 2] += 80.0  # two kinds of images
    return chips_from_array(x, [f"img{i}" for i in range(60)])


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
