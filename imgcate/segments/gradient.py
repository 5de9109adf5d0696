"""Gradient saliency: d (posterior-mean effect) / d pixel through the differentiable encoder."""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from imgcate.chips import Chips, as_chips
from imgcate.errors import InputError
from imgcate.results import EffectFit
from imgcate.segments.occlusion import fit_encoder
from imgcate.validation import check_choice, check_positive_int

Target = Literal["cate", "cluster_prob"]


TARGETS = ("cate", "cluster_prob")


def saliency(
    fit: EffectFit,
    chips: Chips | np.ndarray,
    target: Target = "cate",
    *,
    cluster: int | None = None,
    smoothgrad: int = 0,
    noise: float = 0.1,
    max_draws: int | None = None,
    seed: int = 0,
    batch_size: int = 64,
) -> xr.DataArray:
    """Gradient of an image's posterior-mean effect with respect to its pixels.

    ``jax.grad`` runs through the fit's encoder (:meth:`apply_jax`) and the posterior
    (:meth:`~imgcate.results.EffectFit.effect_function`), so the gradient is exact for the
    fitted model. SmoothGrad averages the gradient over ``smoothgrad`` copies of each chip with
    Gaussian noise (sd ``noise`` x the chip's per-band sd), which removes much of the pixel-level
    speckle of raw gradients.

    Parameters
    ----------
    fit : EffectFit
        A fit that carries its encoder.
    chips : Chips or array_like
        Single-date chips (image, band, y, x).
    target : {"cate", "cluster_prob"}
        Differentiate the posterior mean CATE (outcome scale) or the posterior mean
        P(cluster = ``cluster``).
    cluster : int, optional
        Cluster for ``target="cluster_prob"`` (default: the last, highest-effect cluster).
    smoothgrad : int
        Number of noisy copies (0: the plain gradient).
    noise : float
        SmoothGrad noise sd relative to each chip's per-band sd.
    max_draws : int, optional
        Use a random subset of this many posterior draws.
    seed : int
        Seeds the draw subset and the SmoothGrad noise.
    batch_size : int
        Chips per call.

    Returns
    -------
    xarray.DataArray
        float64, dims (image, band, y, x): d target / d pixel (outcome units per pixel unit for
        ``"cate"``). Sum ``abs()`` over ``band`` for a one-layer map.

    Raises
    ------
    FitError
        If the fit has no encoder.
    InputError
        For bad options.

    Examples
    --------
    >>> grad = saliency(fit, chips, "cate", smoothgrad=16, seed=0)  # doctest: +SKIP
    >>> grad.sel(image=chips.image_ids[0]).sum("band")  # doctest: +SKIP
    """
    check_choice("target", target, TARGETS)
    chips = as_chips(chips)
    encoder = fit_encoder(fit, chips)
    batch_size = check_positive_int("batch_size", batch_size)
    if int(smoothgrad) != smoothgrad or smoothgrad < 0:
        raise InputError(f"smoothgrad={smoothgrad!r} must be 0 (plain gradient) or a count >= 1.")
    if noise < 0:
        raise InputError(f"noise={noise} must be >= 0 (a fraction of each band's sd).")
    if target == "cluster_prob":
        cluster = fit.n_clusters - 1 if cluster is None else cluster
        check_choice("cluster", cluster, tuple(range(fit.n_clusters)))
    grad_fn = _gradient_fn(fit, encoder, target, cluster, max_draws, seed)
    values = chips.values
    scale = values.std(axis=(2, 3), keepdims=True) * noise
    key = jax.random.PRNGKey(seed)
    out = np.empty(values.shape, np.float64)
    for start in range(0, len(values), batch_size):
        x = jnp.asarray(values[start : start + batch_size])
        if not smoothgrad:
            out[start : start + len(x)] = np.asarray(grad_fn(x))
            continue
        total = jnp.zeros_like(x)
        for _ in range(int(smoothgrad)):
            key, sub = jax.random.split(key)
            eps = jax.random.normal(sub, x.shape) * scale[start : start + len(x)]
            total = total + grad_fn(x + eps)
        out[start : start + len(x)] = np.asarray(total) / smoothgrad
    return xr.DataArray(
        out,
        dims=("image", "band", "y", "x"),
        coords={"image": chips.image_ids, "band": list(chips.band_names)},
        name="saliency",
        attrs={
            "target": target,
            "cluster": -1 if cluster is None else int(cluster),
            "smoothgrad": int(smoothgrad),
            "noise": float(noise),
        },
    )


def _gradient_fn(
    fit: EffectFit, encoder: Any, target: str, cluster: int | None, max_draws: int | None, seed: int
):
    effect = fit.effect_function(max_draws=max_draws, seed=seed)

    def objective(x):
        cate, prob = effect(encoder.apply_jax(x))
        per_image = cate.mean(0) if target == "cate" else prob[..., cluster].mean(0)
        return per_image.sum()  # images are independent: the gradient is per image

    return jax.jit(jax.grad(objective))
