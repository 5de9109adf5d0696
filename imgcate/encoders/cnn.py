"""A small trainable CNN encoder, fitted as an autoencoder with optax (Adam; the ``cnn`` extra)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from imgcate.encoders.base import Combine, Encoder
from imgcate.errors import InputError
from imgcate.optional import require


class ConvNet(nn.Module):
    """A small CNN body: two stride-2 3x3 convolutions (16, 32 channels), mean pool, dense.

    Input (image, band, y, x) normalized; output (image, n_features).
    """

    n_features: int = 32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = jnp.transpose(x, (0, 2, 3, 1))
        h = jax.nn.relu(nn.Conv(16, (3, 3), strides=(2, 2))(h))
        h = jax.nn.relu(nn.Conv(32, (3, 3), strides=(2, 2))(h))
        return nn.Dense(self.n_features)(h.mean(axis=(1, 2)))


class _Decoder(nn.Module):
    """Predicts the chip downsampled to 4 x 4 per band (the autoencoder's target)."""

    n_out: int

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        return nn.Dense(self.n_out)(jax.nn.relu(nn.Dense(64)(z)))


class CNNEncoder(Encoder):
    """A small trainable CNN (:class:`ConvNet`) fitted as an autoencoder with optax (Adam).

    The network maps a normalized chip to ``n_features`` latent values; a small decoder is
    trained jointly to reconstruct the chip downsampled to 4 x 4 pixels per band (mean squared
    error), so the latent summarizes the chip's coarse spectral layout. The decoder is dropped
    after training; the latent is standardized and reduced by PCA to ``n_components``.

    Parameters
    ----------
    n_features : int
        Latent size.
    n_steps : int
        Adam steps (minibatches of ``train_batch`` chips).
    learning_rate : float
    train_batch : int
    n_components, combine, batch_size
        As in :class:`RandomConvFeatures`.
    """

    name = "cnn"

    def __init__(
        self,
        n_features: int = 32,
        *,
        n_steps: int = 300,
        learning_rate: float = 3e-3,
        train_batch: int = 64,
        n_components: int | None = 16,
        combine: Combine = "concat",
        batch_size: int = 1024,
    ) -> None:
        super().__init__(n_components=n_components, combine=combine, batch_size=batch_size)
        if n_features < 1 or n_steps < 0 or train_batch < 1:
            raise InputError("n_features and train_batch must be >= 1 and n_steps >= 0.")
        self.n_features = int(n_features)
        self.n_steps = int(n_steps)
        self.learning_rate = float(learning_rate)
        self.train_batch = int(train_batch)

    def _module(self) -> nn.Module:
        return ConvNet(n_features=self.n_features)

    def _config(self) -> dict:
        return {
            "n_features": self.n_features,
            "n_steps": self.n_steps,
            "learning_rate": self.learning_rate,
            "train_batch": self.train_batch,
        }

    def _min_size(self) -> int:
        return 4

    def _fit_body(self, x: np.ndarray, rng: np.random.Generator) -> dict:
        optax = require("optax", "cnn", "training the CNN encoder (CNNEncoder)")

        n_img, n_band = x.shape[:2]
        net, dec = ConvNet(self.n_features), _Decoder(n_band * 16)
        key = jax.random.PRNGKey(int(rng.integers(2**31 - 1)))
        k1, k2 = jax.random.split(key)
        sample = jnp.asarray(x[:1])
        params = {
            "enc": net.init(k1, sample)["params"],
            "dec": dec.init(k2, jnp.zeros((1, self.n_features)))["params"],
        }
        opt = optax.adam(self.learning_rate)
        state = opt.init(params)

        def loss(p, batch):
            target = jax.image.resize(batch, (*batch.shape[:2], 4, 4), "linear")
            recon = dec.apply({"params": p["dec"]}, net.apply({"params": p["enc"]}, batch))
            return jnp.mean((recon - target.reshape(batch.shape[0], -1)) ** 2)

        @jax.jit
        def step(p, s, batch):
            value, grads = jax.value_and_grad(loss)(p, batch)
            updates, s = opt.update(grads, s, p)
            return optax.apply_updates(p, updates), s, value

        size = min(self.train_batch, n_img)
        for _ in range(self.n_steps):
            idx = rng.choice(n_img, size=size, replace=False)
            params, state, _ = step(params, state, jnp.asarray(x[idx]))
        return jax.tree_util.tree_map(np.asarray, params["enc"])
