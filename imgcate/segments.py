"""Segment sensitivity: which parts of an image drive its estimated treatment effect.

Two views, both end to end through the fit's differentiable encoder and its posterior:

* **occlusion** (:func:`segment_sensitivity`): each segment of a chip (SLIC superpixels or a
  regular grid, :func:`segment_chips`) is replaced by a neutral fill, the chip is re-embedded
  and the CATE and cluster probabilities are recomputed under every posterior draw; the change
  (occluded - original) is summarized per (image, segment) with a posterior mean and a central
  credible interval;
* **gradient saliency** (:func:`saliency`): the gradient of the posterior-mean CATE (or of a
  cluster probability) with respect to the pixels, optionally smoothed (SmoothGrad).

:func:`cluster_sensitivity` averages occlusion maps per effect cluster and
:func:`typical_images` picks the images most typical of each cluster.
"""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import xarray as xr

from imgcate.chips import Chips, as_chips
from imgcate.errors import FitError, InputError
from imgcate.intervals import interval_names, quantiles
from imgcate.validation import check_choice, check_prob

SegmentMethod = Literal["slic", "grid"]
SEGMENT_METHODS = ("slic", "grid")
Fill = Literal["mean", "blur"]
FILLS = ("mean", "blur")
Target = Literal["cate", "cluster_prob"]
TARGETS = ("cate", "cluster_prob")
Weight = Literal["prob", "hard"]
WEIGHTS = ("prob", "hard")


# ---------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------


def _require_encoder(fit: Any, chips: Chips) -> Any:
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


def _check_positive(name: str, value: int) -> int:
    if int(value) != value or value < 1:
        raise InputError(f"{name}={value!r} must be a positive integer.")
    return int(value)


# ---------------------------------------------------------------------------------------------
# segments
# ---------------------------------------------------------------------------------------------


def _grid_shape(n_segments: int, height: int, width: int) -> tuple[int, int]:
    """(rows, cols) with rows * cols == n_segments, as square as the chip's aspect allows."""
    pairs = [(r, n_segments // r) for r in range(1, n_segments + 1) if n_segments % r == 0]
    aspect = height / width
    rows, cols = min(pairs, key=lambda p: abs(np.log((p[0] / p[1]) / aspect)))
    if rows > height or cols > width:
        raise InputError(
            f"n_segments={n_segments} gives a {rows} x {cols} grid, finer than the "
            f"{height} x {width} px chips; use fewer segments."
        )
    return rows, cols


def grid_labels(height: int, width: int, n_segments: int) -> np.ndarray:
    """Regular-grid segment labels of one chip, row-major: shape (y, x), values 0..n-1.

    Parameters
    ----------
    height, width : int
        Chip size in pixels.
    n_segments : int
        Number of blocks; factorized into rows x cols as close to the chip's aspect as possible
        (16 -> 4 x 4, 12 -> 3 x 4).

    Returns
    -------
    numpy.ndarray
        int32, shape (y, x).

    Examples
    --------
    >>> grid_labels(4, 4, 4)
    array([[0, 0, 1, 1],
           [0, 0, 1, 1],
           [2, 2, 3, 3],
           [2, 2, 3, 3]], dtype=int32)
    """
    rows, cols = _grid_shape(_check_positive("n_segments", n_segments), height, width)
    r = np.arange(height) * rows // height
    c = np.arange(width) * cols // width
    return (r[:, None] * cols + c[None, :]).astype(np.int32)


def composite(
    values: np.ndarray,
    bands: tuple[int, ...] | None = None,
    percentiles: tuple[float, float] = (2.0, 98.0),
) -> np.ndarray:
    """A percentile-stretched colour composite of one chip: (band, y, x) -> (y, x, channel).

    Parameters
    ----------
    values : numpy.ndarray
        One chip, shape (band, y, x).
    bands : tuple of int, optional
        0-based bands for the channels; default (3, 2, 1) (false colour NIR/red/green for
        Landsat band order) when the chip has at least 4 bands, else all bands.
    percentiles : (float, float)
        Each channel is mapped linearly from these percentiles to [0, 1] and clipped.

    Returns
    -------
    numpy.ndarray
        float64 in [0, 1], shape (y, x, channel).
    """
    n_bands = values.shape[0]
    if bands is None:
        bands = (3, 2, 1) if n_bands >= 4 else tuple(range(n_bands))
    bands = tuple(int(b) for b in bands)
    bad = [b for b in bands if not 0 <= b < n_bands]
    if bad:
        raise InputError(
            f"bands={bands} names band(s) {bad} but the chips have {n_bands} bands "
            f"(0-based: 0..{n_bands - 1})."
        )
    img = np.moveaxis(np.asarray(values, dtype=np.float64)[list(bands)], 0, -1)
    lo, hi = np.percentile(img, percentiles, axis=(0, 1))
    span = np.where(hi > lo, hi - lo, 1.0)
    return np.clip((img - lo) / span, 0.0, 1.0)


def _slic_labels(
    values: np.ndarray, n_segments: int, compactness: float, bands: tuple[int, ...] | None
) -> np.ndarray:
    from skimage.segmentation import slic

    img = composite(values, bands)
    labels = slic(
        img,
        n_segments=n_segments,
        compactness=compactness,
        start_label=0,
        channel_axis=-1,
        convert2lab=False,
        enforce_connectivity=True,
    )
    _, contiguous = np.unique(labels, return_inverse=True)
    return contiguous.reshape(labels.shape).astype(np.int32)


def segment_chips(
    chips: Chips | np.ndarray,
    method: SegmentMethod = "slic",
    *,
    n_segments: int = 16,
    compactness: float = 0.3,
    bands: tuple[int, ...] | None = None,
) -> np.ndarray:
    """Segment each chip into SLIC superpixels or a regular grid.

    Parameters
    ----------
    chips : Chips or array_like
        Single-date chips, (image, band, y, x).
    method : {"slic", "grid"}
        ``"slic"``: SLIC superpixels (scikit-image) of a percentile-stretched colour composite
        (see :func:`composite`); the number of segments per chip is close to, not exactly,
        ``n_segments``. ``"grid"``: ``n_segments`` regular blocks, the same in every chip, so
        segment s is the same grid position in every image.
    n_segments : int
        Target number of segments.
    compactness : float
        SLIC trade-off between colour similarity and square shape (higher = squarer). The
        composite is clustered in its [0, 1] stretched values (not CIELAB, so any band count
        works), which puts useful values near 0.1-1 rather than scikit-image's Lab-scale 10;
        0.3 gives close to ``n_segments`` superpixels on noisy 32 px chips.
    bands : tuple of int, optional
        0-based bands of the SLIC composite (default (3, 2, 1) with >= 4 bands, else all).

    Returns
    -------
    numpy.ndarray
        int32, shape (image, y, x): segment label of each pixel, 0..n_i-1 per chip.

    Raises
    ------
    InputError
        For an unknown method, a non-positive ``n_segments``, a grid finer than the chip, or
        bands the chips do not have.

    Notes
    -----
    SLIC and the grid are deterministic, so no seed is needed.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(2, 3, 16, 16))
    >>> segment_chips(x, "grid", n_segments=4).shape
    (2, 16, 16)
    """
    check_choice("method", method, SEGMENT_METHODS)
    n_segments = _check_positive("n_segments", n_segments)
    chips = as_chips(chips)
    n_img, _, height, width = chips.values.shape
    if method == "grid":
        return np.broadcast_to(
            grid_labels(height, width, n_segments), (n_img, height, width)
        ).copy()
    if compactness <= 0:
        raise InputError(f"compactness={compactness} must be > 0 (0.3 is a good start).")
    return np.stack([_slic_labels(v, n_segments, compactness, bands) for v in chips.values])


# ---------------------------------------------------------------------------------------------
# occlusion
# ---------------------------------------------------------------------------------------------


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


def _occlusion_fn(fit: Any, encoder: Any, n_segments: int, max_draws: int | None, seed: int):
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
        return (
            cate0,
            prob0.mean(0),
            jnp.moveaxis(cate_s - cate0[:, None], 1, 0),
            (prob_s - prob0[:, None]).mean(0),
        )

    return run


def _summaries(cate0, prob0, dcate, dprob, prob: float):
    """numpy summaries of one batch: per (image, segment) mean/sd/interval of the change."""
    draws = np.moveaxis(np.asarray(dcate, dtype=np.float64), 2, 0)  # (B, S, draw)
    lo, hi = quantiles(draws, prob, axis=-1)
    return {
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
    fit: Any,
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
    batch_size = _check_positive("batch_size", batch_size)
    chips = as_chips(chips)
    encoder = _require_encoder(fit, chips)
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
    for start in _progress(range(0, n_img, size), progress, "segment sensitivity"):
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
        len(fit.draw_indices(max_draws, seed)),
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


def _progress(iterable, show: bool, desc: str):
    if not show:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc)


def _to_dataset(
    data: dict,
    sizes: np.ndarray,
    labels: np.ndarray,
    chips: Chips,
    fit: Any,
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


# ---------------------------------------------------------------------------------------------
# gradient saliency
# ---------------------------------------------------------------------------------------------


def saliency(
    fit: Any,
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
    encoder = _require_encoder(fit, chips)
    batch_size = _check_positive("batch_size", batch_size)
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
    fit: Any, encoder: Any, target: str, cluster: int | None, max_draws: int | None, seed: int
):
    effect = fit.effect_function(max_draws=max_draws, seed=seed)

    def objective(x):
        cate, prob = effect(encoder.apply_jax(x))
        per_image = cate.mean(0) if target == "cate" else prob[..., cluster].mean(0)
        return per_image.sum()  # images are independent: the gradient is per image

    return jax.jit(jax.grad(objective))


# ---------------------------------------------------------------------------------------------
# aggregates
# ---------------------------------------------------------------------------------------------


def cluster_sensitivity(
    result: xr.Dataset, *, var: str = "cate_change_mean", weight: Weight = "prob"
) -> xr.Dataset:
    """Average segment sensitivity per effect cluster.

    Each image's per-pixel map (:func:`sensitivity_map`) is weighted by its posterior mean
    membership probability in each cluster (``weight="prob"``) or assigned to its most probable
    cluster (``"hard"``). With grid segments (the same grid in every chip), the per-segment
    average is also given, one value per grid position.

    Parameters
    ----------
    result : xarray.Dataset
        From :func:`segment_sensitivity` (it holds the images' cluster probabilities).
    var : str
        Per-segment variable to average.
    weight : {"prob", "hard"}

    Returns
    -------
    xarray.Dataset
        ``sensitivity`` (cluster, y, x); ``weight`` (cluster): total weight (images) per
        cluster; for grid segments also ``segment_sensitivity`` (cluster, segment).
        Clusters with no weight are NaN.

    Raises
    ------
    InputError
        For an unknown ``var`` or ``weight``.
    """
    check_choice("weight", weight, WEIGHTS)
    pix = sensitivity_map(result, var)
    probs = result["cluster_prob"].values
    if weight == "hard":
        probs = np.eye(probs.shape[1])[probs.argmax(1)]
    total = probs.sum(0)
    denom = np.where(total > 0, total, np.nan)
    maps = np.einsum("ik,iyx->kyx", probs, np.nan_to_num(pix.values)) / denom[:, None, None]
    out = xr.Dataset(
        {"sensitivity": (("cluster", "y", "x"), maps), "weight": ("cluster", total)},
        coords={"cluster": result.cluster.values, "y": result.y.values, "x": result.x.values},
        attrs={"var": var, "weight": weight},
    )
    if result.attrs.get("segment_method") == "grid":
        seg = np.nan_to_num(result[var].values)
        out["segment_sensitivity"] = (("cluster", "segment"), probs.T @ seg / denom[:, None])
        out = out.assign_coords(segment=result.segment.values)
    return out


def typical_images(
    fit: Any, chips: Chips | np.ndarray, n: int = 4, *, max_draws: int | None = None, seed: int = 0
) -> pd.DataFrame:
    """The ``n`` images with the highest membership probability in each cluster.

    Parameters
    ----------
    fit : EffectFit
        A fit that carries its encoder.
    chips : Chips or array_like
        Candidate chips (e.g. the trial's).
    n : int
        Images per cluster.
    max_draws : int, optional
        Use a random subset of this many posterior draws.
    seed : int
        Seed of that subset.

    Returns
    -------
    pandas.DataFrame
        One row per (cluster, rank): ``cluster``, ``rank`` (0 = most typical), ``image`` (id),
        ``index`` (row in ``chips``), ``cluster_prob`` (posterior mean), ``cate`` (posterior
        mean CATE).

    Raises
    ------
    FitError
        If the fit has no encoder.
    """
    n = _check_positive("n", n)
    chips = as_chips(chips)
    encoder = _require_encoder(fit, chips)
    pred = fit.predict(encoder.transform(chips), max_draws=max_draws, seed=seed)
    mean_prob = pred.cluster_prob.mean(0)
    cate = pred.cate.mean(0)
    rows = []
    for k in range(mean_prob.shape[1]):
        order = np.argsort(-mean_prob[:, k], kind="stable")[:n]
        for rank, i in enumerate(order):
            rows.append((k, rank, chips.image_ids[i], int(i), mean_prob[i, k], cate[i]))
    return pd.DataFrame(rows, columns=["cluster", "rank", "image", "index", "cluster_prob", "cate"])
