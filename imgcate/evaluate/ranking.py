"""RATE: rank-weighted average treatment effects (AUTOC, Qini) of a prioritization rule, with the
TOC curve and half-sample bootstrap standard errors (Yadlowsky et al. 2021; grf)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import stats

from imgcate.errors import InputError
from imgcate.intervals import normal_interval, tidy_table
from imgcate.optional import pyplot
from imgcate.validation import (
    as_vector,
    check_choice,
    cluster_codes,
    rng_from_seed,
    seed_int,
)

RateTarget = Literal["AUTOC", "QINI"]


RATE_TARGETS = ("AUTOC", "QINI")


@dataclass(frozen=True, eq=False)
class RateResult:
    """A rank-weighted average treatment effect and its TOC curve.

    Attributes
    ----------
    target : str
        ``"AUTOC"`` or ``"QINI"`` (``"... difference"`` for :func:`rate_difference`).
    estimate, std_err : float
        The RATE and its half-sample bootstrap standard error.
    q : numpy.ndarray, shape (q,)
        Fractions treated at which the TOC is reported.
    toc, toc_std_err : numpy.ndarray, shape (q,)
        TOC(q) = mean score among the top-q fraction by priority − overall mean, and its SE.
    n_bootstrap : int
        Number of half-sample replicates.
    """

    target: str
    estimate: float
    std_err: float
    q: np.ndarray
    toc: np.ndarray
    toc_std_err: np.ndarray
    n_bootstrap: int

    def ci(self, prob: float = 0.95) -> tuple[float, float]:
        """Normal-approximation interval ``estimate ± z · std_err`` with coverage ``prob``."""
        return normal_interval(self.estimate, self.std_err, prob)

    def tidy(self, prob: float = 0.95) -> pd.DataFrame:
        """One row in the tidy schema: term, estimate, std_err, the central ``prob`` interval
        named by percentile, and ``p_value`` (two-sided, H0: RATE = 0)."""
        lo, hi = self.ci(prob)
        z = self.estimate / self.std_err if self.std_err > 0 else np.nan
        p = 2 * stats.norm.sf(abs(z)) if np.isfinite(z) else np.nan
        return tidy_table([self.target], self.estimate, self.std_err, lo, hi, prob, p_value=[p])


@dataclass(frozen=True)
class _Ranked:
    """Units sorted by decreasing priority, with tie-group codes (contiguous after sorting)."""

    order: np.ndarray
    groups: np.ndarray


def _rank(priority: np.ndarray) -> _Ranked:
    codes = np.unique(priority, return_inverse=True)[1].reshape(-1)
    # stable sort: tied units keep their input order (as R's radix order() does in grf)
    order = np.argsort(-codes, kind="stable")
    return _Ranked(order=order, groups=codes[order])


def _rate_core(
    scores: np.ndarray, weights: np.ndarray, groups: np.ndarray, q: np.ndarray, target: str
) -> tuple[float, np.ndarray]:
    """RATE and TOC on the grid ``q`` for units already sorted by decreasing priority."""
    n_groups = int(groups.max()) + 1
    group_w = np.bincount(groups, weights=weights, minlength=n_groups)
    group_ws = np.bincount(groups, weights=weights * scores, minlength=n_groups)
    present = group_w > 0
    group_avg = np.zeros(n_groups)
    group_avg[present] = group_ws[present] / group_w[present]
    tied = group_avg[groups]  # each score replaced by its tie group's weighted mean
    cum_w = np.cumsum(weights)
    cum_ws = np.cumsum(weights * tied)
    total = cum_w[-1]
    ate = cum_ws[-1] / total
    toc = cum_ws / cum_w - ate
    if target == "AUTOC":
        rate = np.sum(weights * toc) / total
    else:
        rate = np.sum(cum_w / total * weights * toc) / total
    # TOC on the grid: units cut at a fraction contribute that fraction of their weight
    cut = q * total
    toc_grid = np.interp(cut, np.r_[0.0, cum_w], np.r_[0.0, cum_ws]) / cut - ate
    return float(rate), toc_grid


def _half_samples(
    n: int, clusters: np.ndarray | None, n_bootstrap: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Boolean masks (unit,) of half-samples of units or of whole clusters, without replacement."""
    codes = np.arange(n) if clusters is None else clusters
    n_clusters = int(codes.max()) + 1
    half = n_clusters // 2
    if half < 2:
        what = "clusters" if clusters is not None else "units"
        raise InputError(
            f"the half-sample bootstrap needs at least 4 {what}, got {n_clusters}; "
            "use more units or clusters (or no clusters)."
        )
    masks = []
    for _ in range(n_bootstrap):
        chosen = np.zeros(n_clusters, dtype=bool)
        chosen[rng.choice(n_clusters, size=half, replace=False)] = True
        masks.append(chosen[codes])
    return masks


def _rate_inputs(
    priorities: Sequence[Any],
    scores: Any,
    target: str,
    weights: Any,
    clusters: Any,
    q: Any,
    n_bootstrap: int,
    seed: int,
) -> tuple[list[_Ranked], np.ndarray, np.ndarray, np.ndarray | None, np.ndarray, list]:
    check_choice("target", target, RATE_TARGETS)
    gamma = as_vector("scores", scores)
    n = len(gamma)
    prios = [as_vector(name, p, n) for name, p in priorities]
    w = np.ones(n) if weights is None else as_vector("weights", weights, n)
    if (w < 0).any() or w.sum() <= 0:
        raise InputError("weights must be non-negative with a positive sum.")
    codes = cluster_codes(clusters, n)
    keep = w > 0  # zero weight is the same as dropping the unit
    gamma, w, prios = gamma[keep], w[keep], [p[keep] for p in prios]
    if codes is not None:
        codes = pd.factorize(codes[keep], sort=True)[0]
    grid = np.arange(1, 101) / 100 if q is None else as_vector("q", q)
    if (np.diff(grid) <= 0).any() or grid[0] <= 0 or grid[-1] != 1:
        raise InputError(
            "q must be a strictly increasing grid of fractions in (0, 1] "
            "ending at 1, e.g. numpy.arange(1, 11) / 10."
        )
    if (
        isinstance(n_bootstrap, bool)
        or not isinstance(n_bootstrap, int | np.integer)
        or n_bootstrap < 2
    ):
        raise InputError(
            f"n_bootstrap={n_bootstrap!r} must be an int of at least 2 (200 is usual)."
        )
    rng = rng_from_seed(seed_int(seed))
    masks = _half_samples(len(gamma), codes, int(n_bootstrap), rng)
    return [_rank(p) for p in prios], gamma, w, codes, grid, masks


def _rate_replicates(
    ranked: _Ranked,
    gamma: np.ndarray,
    w: np.ndarray,
    grid: np.ndarray,
    target: str,
    masks: list[np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Point estimate and replicates, each as [rate, toc(q)...]."""
    s, ww = gamma[ranked.order], w[ranked.order]
    rate, toc = _rate_core(s, ww, ranked.groups, grid, target)
    point = np.r_[rate, toc]
    reps = np.empty((len(masks), len(point)))
    for b, mask in enumerate(masks):
        m = mask[ranked.order]  # a subset keeps the sorted order, so no re-sorting is needed
        rate_b, toc_b = _rate_core(s[m], ww[m], ranked.groups[m], grid, target)
        reps[b] = np.r_[rate_b, toc_b]
    return point, reps


def _rate_result(label: str, point: np.ndarray, reps: np.ndarray, grid: np.ndarray) -> RateResult:
    se = reps.std(axis=0, ddof=1)
    return RateResult(
        target=label,
        estimate=float(point[0]),
        std_err=float(se[0]),
        q=grid,
        toc=point[1:],
        toc_std_err=se[1:],
        n_bootstrap=len(reps),
    )


def rate(
    priority: Any,
    scores: Any,
    *,
    target: RateTarget = "AUTOC",
    weights: Any = None,
    clusters: Any = None,
    q: Any = None,
    n_bootstrap: int = 200,
    seed: int,
) -> RateResult:
    """Rank-weighted average treatment effect (AUTOC or Qini) of a prioritization rule.

    Units are sorted by decreasing ``priority``; tied priorities share the (weighted) mean of
    their scores. With cumulative weight fractions ``q_i = W_i / W`` and
    ``TOC(q_i) = mean of scores among the first i units − overall mean`` (weighted means),
    ``AUTOC = Σ_i TOC(q_i) w_i / W`` and ``Qini = Σ_i q_i TOC(q_i) w_i / W``, as in grf's
    ``rank_average_treatment_effect``. Standard errors come from the half-sample bootstrap
    (half of the units, or of the clusters, drawn without replacement), as grf does.

    Parameters
    ----------
    priority : array_like, shape (unit,)
        Higher means treat first (e.g. an out-of-sample CATE estimate). Must not be built
        from the data that produced ``scores``.
    scores : array_like, shape (unit,)
        Doubly robust scores, e.g. from :func:`aipw_scores`.
    target : {"AUTOC", "QINI"}
        AUTOC weights all q equally (power when few units benefit); Qini weights by q.
    weights : array_like, shape (unit,), optional
        Non-negative sample weights (zero drops a unit).
    clusters : array_like, shape (unit,), optional
        Cluster labels; the bootstrap then draws half of the clusters.
    q : array_like, optional
        Increasing grid in (0, 1] ending at 1 for the TOC curve (default 0.01, 0.02, ..., 1).
    n_bootstrap : int
        Half-sample replicates for standard errors.
    seed : int
        Seed of the bootstrap.

    Returns
    -------
    RateResult
        ``estimate``, ``std_err``, ``q``, ``toc``, ``toc_std_err`` and ``ci(prob)``.

    Raises
    ------
    InputError
        For mismatched lengths, an unknown ``target``, negative weights, a bad grid or fewer
        than 4 units (clusters).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> tau = rng.normal(size=400)
    >>> res = rate(tau, tau + rng.normal(size=400), seed=1)
    >>> bool(res.estimate > 0)
    True
    """
    ranked, gamma, w, _, grid, masks = _rate_inputs(
        [("priority", priority)], scores, target, weights, clusters, q, n_bootstrap, seed
    )
    point, reps = _rate_replicates(ranked[0], gamma, w, grid, target, masks)
    return _rate_result(target, point, reps, grid)


def rate_difference(
    priority_a: Any,
    priority_b: Any,
    scores: Any,
    *,
    target: RateTarget = "AUTOC",
    weights: Any = None,
    clusters: Any = None,
    q: Any = None,
    n_bootstrap: int = 200,
    seed: int,
) -> RateResult:
    """Difference RATE(a) − RATE(b) of two prioritization rules, with a paired bootstrap.

    Both rules are evaluated on the same half-samples, so the standard error accounts for the
    correlation between them. Parameters are as in :func:`rate`.

    Returns
    -------
    RateResult
        The difference of estimates and of TOC curves, with paired-bootstrap SEs.

    Raises
    ------
    InputError
        As in :func:`rate`.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> tau = rng.normal(size=400)
    >>> gamma = tau + rng.normal(size=400)
    >>> res = rate_difference(tau, rng.normal(size=400), gamma, seed=1)
    >>> bool(res.estimate > 0)
    True
    """
    ranked, gamma, w, _, grid, masks = _rate_inputs(
        [("priority_a", priority_a), ("priority_b", priority_b)],
        scores,
        target,
        weights,
        clusters,
        q,
        n_bootstrap,
        seed,
    )
    point_a, reps_a = _rate_replicates(ranked[0], gamma, w, grid, target, masks)
    point_b, reps_b = _rate_replicates(ranked[1], gamma, w, grid, target, masks)
    return _rate_result(f"{target} difference", point_a - point_b, reps_a - reps_b, grid)


def plot_toc(result: RateResult, ax: Any = None, *, prob: float = 0.95) -> Any:
    """Plot the TOC curve with a pointwise normal interval.

    Parameters
    ----------
    result : RateResult
        From :func:`rate` or :func:`rate_difference`.
    ax : matplotlib.axes.Axes, optional
        Axes to draw on (default: a new figure).
    prob : float
        Coverage of the pointwise band.

    Returns
    -------
    matplotlib.axes.Axes

    Raises
    ------
    MissingDependencyError
        When matplotlib is not installed (``pip install "imgcate[plots]"``).

    Examples
    --------
    >>> import numpy as np
    >>> res = rate(np.arange(20.0), np.arange(20.0), n_bootstrap=10, seed=0)
    >>> ax = plot_toc(res)
    """
    plt = pyplot("plot_toc")
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.5))
    z = stats.norm.ppf(0.5 + prob / 2)
    ax.plot(result.q, result.toc, color="C0", label="TOC")
    ax.fill_between(
        result.q,
        result.toc - z * result.toc_std_err,
        result.toc + z * result.toc_std_err,
        color="C0",
        alpha=0.25,
        label=f"{prob:.0%} pointwise",
    )
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xlabel("fraction treated q")
    ax.set_ylabel("TOC(q)")
    ax.set_title(f"{result.target} = {result.estimate:.3g} (SE {result.std_err:.2g})")
    ax.legend(frameon=False)
    return ax
