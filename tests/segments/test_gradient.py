"""Gradient saliency against finite differences; SmoothGrad and the cluster target."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import pytest
from patch_trial import float64_fit

from imgcate.errors import InputError
from imgcate.segments import (
    saliency,
)

matplotlib.use("Agg")


def _posterior_mean_cate(fitted, x, max_draws, seed):
    f = fitted.effect_function(max_draws=max_draws, seed=seed)
    cate, _ = f(fitted.encoder.apply_jax(x))
    return np.asarray(cate.mean(0), np.float64)


def test_saliency_matches_finite_differences(setting):
    """jax.grad through encoder and posterior == central differences (float64, h = 1e-6).

    The encoder is piecewise linear (ReLU): a step of 1e-4 along a random direction over all
    pixels already crosses kinks (the difference quotient moves by ~2%), 1e-5 and below do not.
    In float64 the rounding error of the quotient (~1e-16 / h) is still negligible at 1e-6, so
    the tolerance is tight (0.1%).
    """
    chips, fitted = setting[:2]
    x = chips.values[:2].astype(np.float64)
    with jax.enable_x64(True):
        fit64 = float64_fit(fitted)
        grad = saliency(fit64, x, "cate", max_draws=50, seed=1)
        assert grad.dims == ("image", "band", "y", "x") and grad.shape == x.shape

        def cate(z):
            return _posterior_mean_cate(fit64, jnp.asarray(z), 50, 1)

        h = 1e-6
        # directional derivative along a random direction over all pixels
        v = np.random.default_rng(2).normal(size=x.shape)
        fd = (cate(x + h * v) - cate(x - h * v)) / (2 * h)
        assert np.allclose(fd, (grad.values * v).sum(axis=(1, 2, 3)), rtol=1e-3, atol=1e-8)
        # single pixels with the largest gradients
        flat = np.abs(grad.values[0]).ravel()
        for pos in np.argsort(flat)[-3:]:
            e = np.zeros_like(x)
            e[(0, *np.unravel_index(pos, x.shape[1:]))] = 1.0
            fd = (cate(x + h * e)[0] - cate(x - h * e)[0]) / (2 * h)
            assert fd == pytest.approx(grad.values[0].ravel()[pos], rel=1e-3, abs=1e-8)
    # float32 (the default) agrees with the float64 gradient
    grad32 = saliency(fitted, x, "cate", max_draws=50, seed=1)
    assert np.allclose(grad32.values, grad.values, rtol=1e-2, atol=1e-4 * flat.max())


def test_smoothgrad_and_cluster_target(setting):
    chips, fitted, has, masks = setting
    i = int(np.flatnonzero(has)[0])
    x = chips.values[[i]]
    a = saliency(fitted, x, "cluster_prob", cluster=1, smoothgrad=8, noise=0.1, seed=0)
    b = saliency(fitted, x, "cluster_prob", cluster=1, smoothgrad=8, noise=0.1, seed=0)
    assert np.array_equal(a.values, b.values)  # same seed, same result
    assert a.attrs["smoothgrad"] == 8 and a.attrs["cluster"] == 1
    # mass of |gradient| per pixel is larger on the patch than off it, on average over the
    # first eight chips with a patch (per chip it held 8 of 8 with the half-normal membership
    # scale of before 2026-12-05, 5 of 8 with the half-t: its sparser memberships read the
    # patch through fewer embedding components, so single chips are noisier)
    idx = np.flatnonzero(has)[:8]
    many = saliency(
        fitted, chips.values[idx], "cluster_prob", cluster=1, smoothgrad=8, noise=0.1, seed=0
    )
    mass = np.abs(many.values).sum(1)
    on = np.mean([mass[j][masks[u]].mean() for j, u in enumerate(idx)])
    off = np.mean([mass[j][~masks[u]].mean() for j, u in enumerate(idx)])
    assert on > 1.1 * off
    with pytest.raises(InputError, match="cluster=5"):
        saliency(fitted, x, "cluster_prob", cluster=5)
