"""Occlusion: the change of each image's effect when one of its segments is hidden, per
posterior draw, with credible intervals (one jitted, vmapped pass per batch of chips)."""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from imgcate.chips import Chips, as_chips
from imgcate.errors import FitError, InputError
from imgcate.intervals import interval_names, quantiles
from imgcate.maps.tiles import draw_count
from imgcate.output import progress_bar
from imgcate.results import EffectFit
from imgcate.segments.labels import grid_labels, segment_chips
from imgcate.validation import check_choice, check_positive_int, check_prob

Fill = Literal["mean", "blur"]


FILLS = ("mean", "blur")


def fit_encoder(fit: EffectFit, chips: Chips) -> Any:
    """The fit's encoder, checked against the chips."""
    encoder = getattr(fit, "encoder", None)
    if encoder is None:
        raise FitError(
            "this fit has no encoder, so occlusion and saliency cannot re-embed pixels; fit it "
            "on chips embedded with imgcate's encoder (emb = imgcate.embed(chips, 'rcf', "
            "seed=0); imgcate.fit(trial, emb, ...)), not on precomputed embeddings."
        )
    if encoder.n_bands != chips.n_bands:
        raise InputError(
            f"chips have {chips.n_bands} bands but the fit's encoder was fitted on "
            f"{encoder.n_bands}; extract the same bands the trial's chips had."
        )
    return encoder


def fill_values(
    chips: Chips | np.ndarray, fill: Fill = "mean", *, blur_sigma: float | None = None
) -> np.ndarray:
    """The neutral image that replaces an occluded segment, per chip: (image, band, y, x).

    Parameters
    ----------
    chips : Chips or array_like
    fill : {"mean", "blur"}
        ``"mean"``: every pixel takes the chip's band mean. ``"blur"``: a Gaussian blur of the
        chip (keeps the segment's average colour, removes its texture and shapes).
    blur_sigma : float, optional
        Blur sd in pixels (default: chip size / 8).

    Returns
    -------
    numpy.ndarray
        float32, the same shape as the chips.
    """
    check_choice("fill", fill, FILLS)
    values = as_chips(chips).values
    if fill == "mean":
        means = values.mean(axis=(2, 3), dtype=np.float64, keepdims=True)
        return np.broadcast_to(means, values.shape).astype(np.float32)
    from scipy.ndimage import gaussian_filter

    sigma = min(values.shape[2:]) / 8 if blur_sigma is None else float(blur_sigma)
    if sigma <= 0:
        raise InputError(f"blur_sigma={blur_sigma} must be > 0 pixels.")
    return gaussian_filter(
        values.astype(np.float64), sigma=(0, 0, sigma, sigma), mode="reflect"
    ).astype(np.float32)


def _occlusion_fn(fit: EffectFit, encoder: Any, n_segments: int, max_draws: int | None, seed: int):
    """(x, fill, labels) -> (cate0, prob0 mean, cate change draws, prob change mean).

    The encoder runs jitted and ``jax.vmap``-ed over segments (the costly part); the posterior
    map then runs once on all embeddings of the batch, un-jitted, exactly as
    :meth:`~imgcate.results.EffectFit.predict` runs it, so that both give the same float32
    numbers.
    """
    effect = fit.effect_function(max_draws=max_draws, seed=seed)

    @jax.jit
    def embed_occluded(x, fillv, labels):
        def occlude(segment):
            mask = (labels == segment)[:, None]  # (B, 1, y, x)
            return encoder.apply_jax(jnp.where(mask, fillv, x))

        return encoder.apply_jax(x), jax.vmap(occlude)(jnp.arange(n_segments))

    def run(x, fillv, labels):
        emb0, emb_s = embed_occluded(x, fillv, labels)  # (B, F), (S, B, F)
        n_img = emb0.shape[0]
        cate, prob = effect(jnp.concatenate([emb0, emb_s.reshape(-1, emb0.shape[1])]))
        cate0, prob0 = cate[:, :n_img], prob[:, :n_img]  # (draw, B), (draw, B, K)
        cate_s = cate[:, n_img:].reshape(cate.shape[0], n_segments, n_img)
        prob_s = prob[:, n_img:].reshape(prob.shape[0], n_segments, n_img, -1)
        top = prob0.mean(0).argmax(-1)  # (B,): each image's own cluster
        odds0 = _log_odds(jnp.take_along_axis(prob0, top[None, :, None], -1)[..., 0])
        odds_s = _log_odds(jnp.take_along_axis(prob_s, top[None, None, :, None], -1)[..., 0])
        return (
            cate0,
            prob0.mean(0),
            jnp.moveaxis(cate_s - cate0[:, None], 1, 0),
            (prob_s - prob0[:, None]).mean(0),
            jnp.moveaxis((odds_s - odds0[:, None]).mean(0), 0, 1),  # (B, S)
            top,
        )

    return run


def _log_odds(p):
    """log(p / (1 - p)), p clipped to float32's resolution near 0 and 1."""
    p = jnp.clip(p, 1e-7, 1 - 1e-7)
    return jnp.log(p) - jnp.log1p(-p)


def _summaries(cate0, prob0, dcate, dprob, dodds, top, prob: float):
    """numpy summaries of one batch: per (image, segment) mean/sd/interval of the change."""
    draws = np.moveaxis(np.asarray(dcate, dtype=np.float64), 2, 0)  # (B, S, draw)
    lo, hi = quantiles(draws, prob, axis=-1)
    return {
        "logodds_change_mean": np.asarray(dodds, np.float64),
        "own_cluster": np.asarray(top, np.int64),
        "cate": np.asarray(cate0, np.float64).mean(0),
        "cluster_prob": np.asarray(prob0, np.float64),
        "cate_change_mean": draws.mean(-1),
        "cate_change_sd": draws.std(-1),
        "cate_change_lower": lo,
        "cate_change_upper": hi,
        "prob_change_positive": (draws > 0).mean(-1),
        "cluster_prob_change": np.moveaxis(np.asarray(dprob, np.float64), 0, 1),  # (B, S, K)
    }


def segment_sensitivity(
    fit: EffectFit,
    chips: Chips | np.ndarray,
    segments: np.ndarray | None = None,
    *,
    fill: Fill = "mean",
    prob: float = 0.9,
    max_draws: int | None = None,
    seed: int = 0,
    batch_size: int = 16,
    blur_sigma: float | None = None,
    progress: bool = False,
) -> xr.Dataset:
    """Occlusion sensitivity of each image's effect to each of its segments, with intervals.

    For each chip and segment, the segment is replaced by a neutral fill, the chip is re-embedded
    with ``fit.encoder`` and the CATE and every cluster probability are recomputed under each
    posterior draw (:meth:`~imgcate.results.EffectFit.effect_function`). The change
    (occluded - original) is computed per draw, so its interval is a credible interval for the
    change itself, not a difference of two intervals. All segments of a batch of chips go through
    one ``jax.vmap``-ed, jitted call.

    Parameters
    ----------
    fit : EffectFit
        A fit on embeddings made by :func:`imgcate.embed` (it carries the encoder).
    chips : Chips or array_like
        Single-date chips (image, band, y, x) with the bands the encoder was fitted on.
    segments : numpy.ndarray, optional
        int labels (image, y, x) or one (y, x) map for all chips; default
        ``segment_chips(chips, "slic")``.
    fill : {"mean", "blur"}
        Neutral fill (see :func:`fill_values`).
    prob : float
        Probability of the central credible interval.
    max_draws : int, optional
        Use a random subset of this many posterior draws (faster).
    seed : int
        Seed of that subset.
    batch_size : int
        Chips per vectorized call; memory grows with ``batch_size * n_segments``.
    blur_sigma : float, optional
        Blur sd in pixels for ``fill="blur"``.
    progress : bool
        Show a progress bar over batches.

    Returns
    -------
    xarray.Dataset
        Coordinates ``image`` (chip ids), ``segment`` (0..S-1, S the most segments in a chip),
        ``cluster``, ``y``, ``x``. Variables:

        - ``cate_change_mean``, ``cate_change_sd`` (image, segment): posterior mean and sd of
          CATE(occluded) - CATE(original), outcome scale;
        - ``cate_change_lower``, ``cate_change_upper`` (image, segment): central interval; their
          attrs hold ``prob`` and ``quantile``;
        - ``prob_change_positive`` (image, segment): posterior P(change > 0);
        - ``cluster_prob_change`` (image, segment, cluster): posterior mean change of P(cluster);
        - ``logodds_change_mean`` (image, segment): posterior mean change of the log-odds of
          the image's own cluster (``own_cluster``, its most probable): what moves even where
          P(cluster) sits at 1.00 and the CATE barely changes (negative: hiding the segment
          pulls the image out of its cluster);
        - ``cate`` (image), ``cluster_prob`` (image, cluster): posterior means for the original
          chips;
        - ``segment_size`` (image, segment): pixels per segment;
        - ``segments`` (image, y, x): the label maps.

        Segments a chip does not have are NaN. Attrs: ``fill``, ``prob``, ``n_draws``,
        ``segment_method`` ("grid" when the labels are a regular grid, else "custom"/"slic").

    Raises
    ------
    FitError
        If the fit has no encoder.
    InputError
        For bad options or labels whose shape does not match the chips.

    Examples
    --------
    >>> labels = segment_chips(chips, "grid", n_segments=16)  # doctest: +SKIP
    >>> result = segment_sensitivity(fit, chips, labels, seed=0)  # doctest: +SKIP
    >>> result.cate_change_mean.sel(image=chips.image_ids[0])  # doctest: +SKIP
    """
    check_choice("fill", fill, FILLS)
    check_prob(prob)
    batch_size = check_positive_int("batch_size", batch_size)
    chips = as_chips(chips)
    encoder = fit_encoder(fit, chips)
    method = "slic" if segments is None else "custom"
    labels = _check_segments(segments, chips)
    if method == "custom" and _is_grid(labels):
        method = "grid"
    n_seg = int(labels.max()) + 1
    fills = fill_values(chips, fill, blur_sigma=blur_sigma)
    run = _occlusion_fn(fit, encoder, n_seg, max_draws, seed)
    n_img = chips.n_images
    size = min(batch_size, n_img)
    parts = []
    for start in progress_bar(range(0, n_img, size), progress, "segment sensitivity"):
        stop = min(start + size, n_img)
        idx = np.arange(start, start + size).clip(max=n_img - 1)  # pad: one compiled shape
        out = run(jnp.asarray(chips.values[idx]), jnp.asarray(fills[idx]), jnp.asarray(labels[idx]))
        parts.append({k: v[: stop - start] for k, v in _summaries(*out, prob).items()})
    data = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    sizes = (labels[:, None] == np.arange(n_seg)[None, :, None, None]).sum(axis=(2, 3))
    absent = sizes == 0
    for name in (
        "cate_change_mean",
        "cate_change_sd",
        "cate_change_lower",
        "cate_change_upper",
        "prob_change_positive",
        "cluster_prob_change",
        "logodds_change_mean",
    ):
        data[name][absent] = np.nan
    return _to_dataset(
        data,
        sizes,
        labels,
        chips,
        fit,
        fill,
        prob,
        method,
        draw_count(fit, max_draws, seed),
        interval_names(prob),
    )


def _check_segments(segments: np.ndarray | None, chips: Chips) -> np.ndarray:
    shape = chips.values.shape
    if segments is None:
        return segment_chips(chips, "slic")
    labels = np.asarray(segments)
    if labels.ndim == 2:
        labels = np.broadcast_to(labels, (shape[0], *labels.shape))
    if labels.shape != (shape[0], shape[2], shape[3]):
        raise InputError(
            f"segments has shape {np.shape(segments)} but the chips need (image, y, x) = "
            f"{(shape[0], shape[2], shape[3])} or one (y, x) map; make them with segment_chips."
        )
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
        raise InputError("segments must hold non-negative integer labels (from segment_chips).")
    return np.ascontiguousarray(labels, dtype=np.int32)


def _is_grid(labels: np.ndarray) -> bool:
    """Whether every chip has the same row-major regular-grid labels."""
    n = int(labels.max()) + 1
    try:
        grid = grid_labels(labels.shape[1], labels.shape[2], n)
    except InputError:
        return False
    return bool((labels == grid[None]).all())


def _to_dataset(
    data: dict,
    sizes: np.ndarray,
    labels: np.ndarray,
    chips: Chips,
    fit: EffectFit,
    fill: str,
    prob: float,
    method: str,
    n_draws: int,
    names: tuple[str, str],
) -> xr.Dataset:
    lo_q = (1 - prob) / 2
    dims2 = ("image", "segment")
    ds = xr.Dataset(
        {
            "cate_change_mean": (dims2, data["cate_change_mean"]),
            "cate_change_sd": (dims2, data["cate_change_sd"]),
            "cate_change_lower": (
                dims2,
                data["cate_change_lower"],
                {"prob": prob, "quantile": lo_q, "percentile": names[0]},
            ),
            "cate_change_upper": (
                dims2,
                data["cate_change_upper"],
                {"prob": prob, "quantile": 1 - lo_q, "percentile": names[1]},
            ),
            "prob_change_positive": (dims2, data["prob_change_positive"]),
            "cluster_prob_change": (("image", "segment", "cluster"), data["cluster_prob_change"]),
            "logodds_change_mean": (
                dims2,
                data["logodds_change_mean"],
                {"long_name": "change in the log-odds of the image's own cluster"},
            ),
            "own_cluster": ("image", data["own_cluster"]),
            "cate": ("image", data["cate"]),
            "cluster_prob": (("image", "cluster"), data["cluster_prob"]),
            "segment_size": (dims2, sizes),
            "segments": (("image", "y", "x"), labels),
        },
        coords={
            "image": chips.image_ids,
            "segment": np.arange(sizes.shape[1]),
            "cluster": np.arange(fit.n_clusters),
            "y": np.arange(labels.shape[1]),
            "x": np.arange(labels.shape[2]),
        },
        attrs={
            "fill": fill,
            "prob": prob,
            "n_draws": n_draws,
            "segment_method": method,
            "description": "change = occluded - original, per posterior draw",
        },
    )
    ds["cate_change_mean"].attrs["long_name"] = "posterior mean CATE change when occluded"
    return ds


def sensitivity_map(
    result: xr.Dataset, var: str = "cate_change_mean", cluster: int | None = None
) -> xr.DataArray:
    """Spread a per-segment variable over the pixels of its segment: (image, y, x).

    Parameters
    ----------
    result : xarray.Dataset
        From :func:`segment_sensitivity`.
    var : str
        A variable with dims (image, segment) or, with ``cluster``, (image, segment, cluster).
    cluster : int, optional
        Cluster to select from ``cluster_prob_change``.

    Returns
    -------
    xarray.DataArray
        Shape (image, y, x).

    Raises
    ------
    InputError
        If ``var`` is not a per-segment variable of ``result`` or ``cluster`` is missing.
    """
    if var not in result or "segment" not in result[var].dims:
        per_segment = [v for v in result.data_vars if "segment" in result[v].dims]
        raise InputError(f"var={var!r} is not a per-segment variable; use one of {per_segment}.")
    values = result[var]
    if "cluster" in values.dims:
        if cluster is None or cluster not in result.cluster.values:
            raise InputError(
                f"{var} has one value per cluster; pass cluster= one of "
                f"{result.cluster.values.tolist()}."
            )
        values = values.sel(cluster=cluster)
    labels = result["segments"].values
    per_pixel = np.take_along_axis(values.values, labels.reshape(len(labels), -1), axis=1)
    return xr.DataArray(
        per_pixel.reshape(labels.shape),
        dims=("image", "y", "x"),
        coords={d: result[d] for d in ("image", "y", "x")},
        name=var,
        attrs=dict(values.attrs),
    )
