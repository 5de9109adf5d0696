"""Random convolutional features (MOSAIKS-style), seeded, for any band count.

:class:`RandomConvNet` is the Flax body; :class:`RandomConvFeatures` fits its whitened random
filters on the trial's chips and computes the features with the native kernel
(:mod:`imgcate.encoders.native`) where it runs, else with JAX.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from imgcate.encoders import native as native_kernel
from imgcate.encoders.base import DEFAULT_POOLED_PER_CALL, Combine, Encoder
from imgcate.errors import InputError


class RandomConvNet(nn.Module):
    """MOSAIKS-style random convolutional features as a Flax module.

    Input: per-band normalized chips (image, band, y, x). Output: (image, 2 * n_filters),
    ``[mean_pool(relu(conv - bias)), mean_pool(relu(-conv - bias))]``. The parameters
    ``filters`` (n_filters, band, k, k) and ``bias`` (n_filters,) are fitted (not trained) by
    :class:`RandomConvFeatures`.
    """

    n_filters: int
    kernel_size: int = 3

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        filters = self.param(
            "filters", nn.initializers.normal(1.0), (self.n_filters, x.shape[1], k, k)
        )
        bias = self.param("bias", nn.initializers.zeros, (self.n_filters,))
        conv = jax.lax.conv_general_dilated(
            x, filters, (1, 1), "VALID", dimension_numbers=("NCHW", "OIHW", "NHWC")
        )
        # Both signs in one expression with one reduction: XLA:CPU then fuses the convolution,
        # the max and the pooling into a single kernel, and the (image, y, x, filter)
        # activations are never written out (two separate reductions of `conv` would
        # materialize them and run 2-4x slower). With m = mean(conv), for any b:
        #   mean relu(conv - b)  = mean max(conv, b) - b
        #   mean relu(-conv - b) = mean max(conv, -b) - m        (max(-c, b) = max(c, -b) - c + b)
        # so the kernel takes one max per activation and sign, and no sign multiply: 1.05-1.15x
        # faster than max(s * conv, b) (benchmarks/embed_speed.py). m is linear in the chip
        # and comes from its k x k window means (_mean_conv), a negligible extra pass.
        pair = jnp.maximum(conv[..., None, :], jnp.stack([bias, -bias])).mean(axis=(1, 2))
        pos = pair[:, 0] - bias
        neg = pair[:, 1] - _mean_conv(x, filters)
        return jnp.concatenate([pos, neg], axis=1)  # [pos filters, neg filters]


def _mean_conv(x: jax.Array, filters: jax.Array) -> jax.Array:
    """Mean over the valid positions of ``conv(x, filters)``, shape (image, filter).

    Linear in ``x``: the filters applied to the chip's k x k window means (``means[c, i, j]`` is
    the mean of band c over the rows i .. i + H - k and columns j .. j + W - k).
    """
    k = filters.shape[-1]

    def box(n: int) -> jax.Array:  # (k, n): row i averages input positions i .. i + n - k
        offset = jnp.arange(n)[None, :] - jnp.arange(k)[:, None]
        return ((offset >= 0) & (offset <= n - k)).astype(x.dtype) / (n - k + 1)

    means = jnp.einsum("ih,nchw,jw->ncij", box(x.shape[2]), x, box(x.shape[3]))
    return jnp.einsum("ncij,fcij->nf", means, filters)


def _sample_patches(x: np.ndarray, n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """n random k x k patches, flattened: shape (n, band * k * k)."""
    n_img, n_band, h, w = x.shape
    img = rng.integers(n_img, size=n)
    r = rng.integers(h - k + 1, size=n)
    c = rng.integers(w - k + 1, size=n)
    dr, dc = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
    rows = r[:, None, None] + dr[None]
    cols = c[:, None, None] + dc[None]
    patches = x[
        img[:, None, None, None],
        np.arange(n_band)[None, :, None, None],
        rows[:, None],
        cols[:, None],
    ]
    return patches.reshape(n, -1).astype(np.float64)


class RandomConvFeatures(Encoder):
    """Random convolutional features (MOSAIKS), seeded, for any band count.

    Fitting (:meth:`fit`) on the trial's own chips: per-band normalization; ``n_features / 2``
    k x k patches sampled at random from the chips and ZCA-whitened (whitening fitted on a
    larger random sample of patches) become unit-norm conv filters; each filter's bias is the
    median absolute response over the sampled patches. Features are
    ``mean_pool(relu(conv - bias))`` and ``mean_pool(relu(-conv - bias))``
    (:class:`RandomConvNet`), then standardized and reduced by PCA to ``n_components``.

    :meth:`transform` computes the features with the native kernel
    (``imgcate/encoders/_rcf.cpp``; its ``native`` argument and the ``IMGCATE_NATIVE``
    environment variable switch it) where it runs, else with the JAX forward pass;
    :meth:`apply_jax` is always JAX (differentiable). Both give the same features to float32
    rounding.

    Parameters
    ----------
    n_features : int
        Number of random features (even: two per filter).
    kernel_size : int
        Filter size k in pixels.
    n_components : int or None
        PCA components kept (None keeps all standardized features).
    combine : {"concat", "mean", "difference"}
        How per-date embeddings of a sequence are combined (difference = last - first).
    batch_size : int
        Chips per batch in :meth:`transform`.
    zca_eps : float
        Whitening regularization, relative to the mean eigenvalue of the patch covariance.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(40, 3, 16, 16)).astype("float32")
    >>> enc = RandomConvFeatures(n_features=32, n_components=4).fit(x, seed=0)
    >>> enc.transform(x).shape
    (40, 4)
    """

    name = "rcf"

    def __init__(
        self,
        n_features: int = 256,
        *,
        kernel_size: int = 3,
        n_components: int | None = 16,
        combine: Combine = "concat",
        batch_size: int = 1024,
        zca_eps: float = 0.01,
    ) -> None:
        super().__init__(n_components=n_components, combine=combine, batch_size=batch_size)
        if n_features < 2 or n_features % 2:
            raise InputError(f"n_features={n_features} must be an even number >= 2.")
        if kernel_size < 1:
            raise InputError(f"kernel_size={kernel_size} must be >= 1.")
        self.n_features = int(n_features)
        self.kernel_size = int(kernel_size)
        self.zca_eps = float(zca_eps)

    def _module(self) -> nn.Module:
        return RandomConvNet(n_filters=self.n_features // 2, kernel_size=self.kernel_size)

    def _chips_per_call(self, pooled_per_call: int | None) -> int | None:
        if pooled_per_call is None:
            pooled_per_call = DEFAULT_POOLED_PER_CALL
        elif pooled_per_call < 1:
            raise InputError(f"pooled_per_call={pooled_per_call} must be >= 1.")
        return max(1, pooled_per_call // (self.n_features // 2))

    def _uses_native(self, n_bands: int, native: bool | None) -> bool:
        # The kernel computes in float32; an encoder cast to float64 (under jax.enable_x64)
        # keeps its precision on the JAX path.
        float32 = self.params["body"]["filters"].dtype == np.float32
        return native_kernel.use_kernel(native, n_bands, float32=float32)

    def _native_body(self, x: np.ndarray, head: bool) -> np.ndarray | int:
        norm, body = self.params["norm"], self.params["body"]
        return native_kernel.rcf_features(
            x,
            norm["band_mean"],
            norm["band_std"],
            body["filters"],
            body["bias"],
            head=self._apply_head if head else None,
            n_outputs=self.params["head"]["components"].shape[0] if head else None,
        )

    def _config(self) -> dict:
        return {
            "n_features": self.n_features,
            "kernel_size": self.kernel_size,
            "zca_eps": self.zca_eps,
        }

    def _min_size(self) -> int:
        return self.kernel_size

    def _fit_body(self, x: np.ndarray, rng: np.random.Generator) -> dict:
        n_filters, k = self.n_features // 2, self.kernel_size
        sample = _sample_patches(x, max(10_000, 4 * n_filters), k, rng)
        mu = sample.mean(axis=0)
        cov = np.cov(sample - mu, rowvar=False).reshape(sample.shape[1], sample.shape[1])
        eigval, eigvec = np.linalg.eigh(cov)
        eigval = np.clip(eigval, 0, None)
        eps = self.zca_eps * max(eigval.mean(), 1e-12)
        zca = eigvec @ np.diag(1.0 / np.sqrt(eigval + eps)) @ eigvec.T
        chosen = _sample_patches(x, n_filters, k, rng)
        filters = (chosen - mu) @ zca
        norms = np.linalg.norm(filters, axis=1, keepdims=True)
        filters = filters / np.where(norms > 0, norms, 1.0)
        bias = np.median(np.abs(sample @ filters.T), axis=0)
        return {
            "filters": filters.reshape(n_filters, x.shape[1], k, k).astype(np.float32),
            "bias": bias.astype(np.float32),
        }
