"""Segment sensitivity per effect cluster, and the images most typical of each cluster."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
import xarray as xr

from imgcate.chips import Chips, as_chips
from imgcate.prediction import predict
from imgcate.results import EffectFit
from imgcate.segments.occlusion import fit_encoder, sensitivity_map
from imgcate.validation import check_choice, check_positive_int

Weight = Literal["prob", "hard"]


WEIGHTS = ("prob", "hard")


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
    fit: EffectFit,
    chips: Chips | np.ndarray,
    n: int = 4,
    *,
    max_draws: int | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """The ``n`` images with the highest membership probability in each cluster.

    With one cluster (``K = 1``, the smooth-effect model) every image has probability 1 and
    the effect varies through the continuous deviation alone; the ``n`` images then span the
    posterior mean CATE from the lowest to the highest (evenly spaced ranks), so that a
    gallery shows what moves the effect.

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
        One row per (cluster, rank): ``cluster``, ``rank`` (0 = most typical; with one
        cluster, 0 = lowest CATE), ``image`` (id),
        ``index`` (row in ``chips``), ``cluster_prob`` (posterior mean), ``cate`` (posterior
        mean CATE).

    Raises
    ------
    FitError
        If the fit has no encoder.
    """
    n = check_positive_int("n", n)
    chips = as_chips(chips)
    encoder = fit_encoder(fit, chips)
    # an extrapolation warning points at typical_images' caller
    pred = predict(fit, encoder.transform(chips), max_draws=max_draws, seed=seed, stacklevel=3)
    mean_prob = pred.cluster_prob.mean(0)
    cate = pred.cate.mean(0)
    rows = []
    for k in range(mean_prob.shape[1]):
        if mean_prob.shape[1] == 1:  # one cluster: from the lowest CATE to the highest
            ranked = np.argsort(cate, kind="stable")
            picks = np.unique(np.round(np.linspace(0, len(ranked) - 1, min(n, len(ranked)))))
            order = ranked[picks.astype(int)]
        else:
            order = np.argsort(-mean_prob[:, k], kind="stable")[:n]
        for rank, i in enumerate(order):
            rows.append((k, rank, chips.image_ids[i], int(i), mean_prob[i, k], cate[i]))
    return pd.DataFrame(rows, columns=["cluster", "rank", "image", "index", "cluster_prob", "cate"])
