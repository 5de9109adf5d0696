"""The Gaussian processes' basis: a squared-exponential kernel's leading eigenfunctions over
the trial's units (Nystrom), evaluated for any model-scale embeddings (:mod:`imgcate.model`
uses it; :func:`imgcate.config.kernel_basis` builds its arrays)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def basis_features(embedding, landmarks, transform, coef):
    """Gaussian-process basis of model-scale embeddings (unit, basis).

    The squared-exponential kernel (lengthscale ``sqrt(feature)``) between each embedding and
    the trial's landmark units, times ``transform``: the kernel's leading eigenfunctions over
    the trial (Nystrom), so that ``basis @ basis.T`` approximates the kernel matrix as well as
    any basis of that width can. Minus their least-squares fit on ``[1, z]`` over the trial
    (``coef``), so they hold only what the intercept and the linear terms cannot. Pure JAX
    (differentiable); see :func:`imgcate.config.kernel_basis`.
    """
    if transform.shape[-1] == 0:
        return jnp.zeros(embedding.shape[:-1] + (0,), embedding.dtype)
    kernel = squared_exponential(embedding, landmarks)
    return kernel @ transform - coef[0] - embedding @ coef[1:]


def basis_in_chunks(embedding, arrays, chunk: int = 16_384) -> np.ndarray:
    """:func:`basis_features` (unit, basis) in float32 of model-scale embeddings, ``chunk``
    rows at a time (the kernel against the landmarks is chunk x landmark floats); ``arrays``
    are its (landmarks, transform, coef) as float32 JAX arrays."""
    embedding = np.asarray(embedding, np.float32)
    out = np.empty((len(embedding), arrays[1].shape[-1]), np.float32)
    for start in range(0, len(embedding), chunk):
        rows = jnp.asarray(embedding[start : start + chunk])
        out[start : start + chunk] = np.asarray(basis_features(rows, *arrays))
    return out


def squared_exponential(a, b, xp=jnp):
    """Kernel ``exp(-|a - b|^2 / (2 feature))`` (lengthscale ``sqrt(feature)``) between the
    rows of ``a`` and ``b``; ``xp`` is ``numpy`` where the basis is built (float64) and
    ``jax.numpy`` where it is evaluated."""
    sq = (a**2).sum(-1)[:, None] + (b**2).sum(-1)[None, :] - 2.0 * a @ b.T
    return xp.exp(-0.5 * xp.maximum(sq, 0.0) / max(a.shape[-1], 1))
