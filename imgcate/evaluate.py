"""Validate treatment-effect heterogeneity: RATE, generic ML inference, calibration, spatial folds.

Array core, labelled edge: every estimator takes plain arrays (one entry per unit) and returns
either a small frozen result object or a tidy :class:`pandas.DataFrame` with the columns
``term, estimate, std_err, p_value, ci_lower, ci_upper``.

References
----------
Yadlowsky, Fleming, Shah, Brunskill, Wager (2021). Evaluating treatment prioritization rules via
rank-weighted average treatment effects. arXiv:2111.07966 (RATE, TOC; grf's
``rank_average_treatment_effect``).

Chernozhukov, Demirer, Duflo, Fernández-Val (2018). Generic machine learning inference on
heterogeneous treatment effects in randomized experiments. arXiv:1712.04802 (BLP, GATES, CLAN).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import stats

from imgcate.errors import InputError
from imgcate.validation import (
    as_float_array,
    as_propensity,
    as_treatment,
    as_vector,
    check_choice,
    cluster_codes,
    rng_from_seed,
    seed_int,
)

RateTarget = Literal["AUTOC", "QINI"]
RATE_TARGETS = ("AUTOC", "QINI")
VcovType = Literal["HC0", "HC1", "HC3"]
VCOV_TYPES = ("HC0", "HC1", "HC3")
TIDY_COLUMNS = ["term", "estimate", "std_err", "p_value", "ci_lower", "ci_upper"]

Learner = Callable[
    [np.ndarray, np.ndarray, np.ndarray, np.ndarray, int], tuple[np.ndarray, np.ndarray]
]


# --------------------------------------------------------------------------- AIPW scores


def aipw_scores(outcome: Any, treatment: Any, propensity: Any, mu0: Any, mu1: Any) -> np.ndarray:
    """Doubly robust (AIPW) scores of the unit-level treatment effect.

    ``Γ_i = mu1_i − mu0_i + t_i (y_i − mu1_i) / e_i − (1 − t_i)(y_i − mu0_i) / (1 − e_i)``.

    Parameters
    ----------
    outcome, treatment : array_like, shape (unit,)
        Observed outcome and binary 0/1 treatment.
    propensity : float or array_like, shape (unit,)
        P(treatment = 1 | x), strictly in (0, 1); a scalar when it is known by design.
    mu0, mu1 : array_like, shape (unit,)
        Predicted outcomes under control and treatment (ideally cross-fitted).

    Returns
    -------
    numpy.ndarray, shape (unit,)
        The scores; their mean is the AIPW estimate of the average treatment effect.

    Raises
    ------
    InputError
        For mismatched lengths, a non-binary treatment or propensities outside (0, 1).

    Examples
    --------
    >>> aipw_scores([1.0, 0.0], [1, 0], 0.5, [0.0, 0.0], [1.0, 1.0]).tolist()
    [1.0, 1.0]
    """
    y = as_vector("outcome", outcome)
    n = len(y)
    t = as_treatment(treatment, n)
    e = as_propensity(propensity, n)
    m0 = as_vector("mu0", mu0, n)
    m1 = as_vector("mu1", mu1, n)
    return m1 - m0 + t * (y - m1) / e - (1 - t) * (y - m0) / (1 - e)


# --------------------------------------------------------------------------- RATE


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
        if not 0 < prob < 1:
            raise InputError(f"prob={prob!r} must lie strictly between 0 and 1, e.g. 0.95.")
        z = stats.norm.ppf(0.5 + prob / 2)
        return self.estimate - z * self.std_err, self.estimate + z * self.std_err

    def tidy(self) -> pd.DataFrame:
        """One-row DataFrame: term, estimate, std_err, p_value (H0: RATE = 0), 95% interval."""
        lo, hi = self.ci(0.95)
        z = self.estimate / self.std_err if self.std_err > 0 else np.nan
        p = 2 * stats.norm.sf(abs(z)) if np.isfinite(z) else np.nan
        return pd.DataFrame(
            [[self.target, self.estimate, self.std_err, p, lo, hi]], columns=TIDY_COLUMNS
        )


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
    ImportError
        When matplotlib is not installed.

    Examples
    --------
    >>> import numpy as np
    >>> res = rate(np.arange(20.0), np.arange(20.0), n_bootstrap=10, seed=0)
    >>> ax = plot_toc(res)
    """
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("plot_toc needs matplotlib: pip install matplotlib") from exc
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


# --------------------------------------------------------------------------- regression core


def _wls(
    y: np.ndarray,
    X: np.ndarray,
    w: np.ndarray,
    clusters: np.ndarray | None,
    vcov: str,
    names: Sequence[str],
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted least squares with a heteroskedasticity- or cluster-robust sandwich covariance."""
    n, k = X.shape
    Xw = X * w[:, None]
    xtwx = X.T @ Xw
    if np.linalg.matrix_rank(xtwx) < k:
        raise InputError(
            f"regressors {list(names)} are collinear (e.g. a constant proxy score "
            "or an empty group); give a proxy that varies across units."
        )
    bread = np.linalg.inv(xtwx)
    beta = bread @ (Xw.T @ y)
    resid = y - X @ beta
    if vcov == "HC3":
        if clusters is not None:
            raise InputError("vcov_type='HC3' is not available with clusters; use 'HC1'.")
        lev = np.einsum("ij,jk,ik->i", Xw, bread, X)
        resid = resid / (1 - lev)
    u = Xw * resid[:, None]
    if clusters is not None:
        n_cl = int(clusters.max()) + 1
        if n_cl < 2:
            raise InputError("clusters must contain at least 2 distinct clusters.")
        sums = np.zeros((n_cl, k))
        np.add.at(sums, clusters, u)
        adj = n_cl / (n_cl - 1) * ((n - 1) / (n - k) if vcov == "HC1" else 1.0)
        meat = sums.T @ sums
    else:
        adj = n / (n - k) if vcov == "HC1" else 1.0
        meat = u.T @ u
    return beta, adj * bread @ meat @ bread


def _tidy(
    terms: Sequence[str], est: np.ndarray, se: np.ndarray, alpha: float, df: float | None = None
) -> pd.DataFrame:
    """Two-sided p-values and (1 − alpha) intervals (normal, or t with ``df``)."""
    dist = stats.norm if df is None else stats.t(df)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = est / se
    crit = dist.ppf(1 - alpha / 2)
    return pd.DataFrame(
        {
            "term": list(terms),
            "estimate": est,
            "std_err": se,
            "p_value": 2 * dist.sf(np.abs(z)),
            "ci_lower": est - crit * se,
            "ci_upper": est + crit * se,
        }
    )


def _design_inputs(outcome, treatment, propensity, score, baseline, clusters):
    y = as_vector("outcome", outcome)
    n = len(y)
    t = as_treatment(treatment, n)
    p = as_propensity(propensity, n)
    s = as_vector("score", score, n)
    b = None if baseline is None else as_vector("baseline", baseline, n)
    return y, t, p, s, b, cluster_codes(clusters, n)


def _controls(p: np.ndarray, b: np.ndarray | None) -> tuple[list[np.ndarray], list[str]]:
    cols, names = [np.ones_like(p)], ["intercept"]
    if b is not None:
        cols, names = cols + [b], names + ["baseline"]
    return cols, names


def blp(
    outcome: Any,
    treatment: Any,
    propensity: Any,
    score: Any,
    baseline: Any = None,
    clusters: Any = None,
    *,
    alpha: float = 0.05,
    vcov_type: VcovType = "HC1",
) -> pd.DataFrame:
    """Best linear predictor of the CATE given a fixed proxy ``score`` (CDDF 2018, eq. 3.1).

    Weighted OLS (weights ``1 / (p (1 − p))``) of the outcome on ``1``, ``baseline``,
    ``(T − p)`` and ``(T − p)(S − mean S)``. ``ate`` (β1) is the average treatment effect and
    ``hte`` (β2) the loading on the proxy: β2 = 1 when S is the true CATE, β2 = 0 when S
    carries no information about heterogeneity (or there is none).

    Parameters
    ----------
    outcome, treatment : array_like, shape (unit,)
        Outcome and binary 0/1 treatment.
    propensity : float or array_like, shape (unit,)
        Known assignment probability, strictly in (0, 1).
    score : array_like, shape (unit,)
        Proxy S(x) of the CATE, built without these units' outcomes.
    baseline : array_like, shape (unit,), optional
        Proxy B(x) of E[Y | T = 0, x]; improves precision only.
    clusters : array_like, shape (unit,), optional
        Cluster labels for cluster-robust standard errors.
    alpha : float
        Intervals have level 1 − alpha.
    vcov_type : {"HC0", "HC1", "HC3"}
        Sandwich correction (HC3 only without clusters).

    Returns
    -------
    pandas.DataFrame
        Rows ``ate`` and ``hte``; columns term, estimate, std_err, p_value (two-sided, normal),
        ci_lower, ci_upper.

    Raises
    ------
    InputError
        For mismatched lengths, a non-binary treatment, propensities outside (0, 1) or a
        constant ``score``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=2000); t = rng.integers(0, 2, 2000)
    >>> y = x + t * (1 + x) + rng.normal(size=2000)
    >>> tab = blp(y, t, 0.5, 1 + x)
    >>> tab["term"].tolist()
    ['ate', 'hte']
    """
    check_choice("vcov_type", vcov_type, VCOV_TYPES)
    y, t, p, s, b, codes = _design_inputs(outcome, treatment, propensity, score, baseline, clusters)
    cols, names = _controls(p, b)
    X = np.column_stack(cols + [t - p, (t - p) * (s - s.mean())])
    beta, cov = _wls(y, X, 1 / (p * (1 - p)), codes, vcov_type, names + ["ate", "hte"])
    k = len(names)
    return _tidy(["ate", "hte"], beta[k:], np.sqrt(np.diag(cov))[k:], alpha)


def _groups(score: np.ndarray, n_groups: int) -> np.ndarray:
    """Group 0 (lowest proxy) to n_groups − 1 (highest), equal sizes by rank (stable ties)."""
    ranks = np.empty(len(score), dtype=np.int64)
    ranks[np.argsort(score, kind="stable")] = np.arange(len(score))
    return ranks * n_groups // len(score)


def gates(
    outcome: Any,
    treatment: Any,
    propensity: Any,
    score: Any,
    baseline: Any = None,
    clusters: Any = None,
    *,
    n_groups: int = 5,
    alpha: float = 0.05,
    vcov_type: VcovType = "HC1",
) -> pd.DataFrame:
    """Sorted group average treatment effects (GATES) by quantile groups of a fixed proxy.

    Weighted OLS (weights ``1 / (p (1 − p))``) of the outcome on ``1``, ``baseline`` and
    ``(T − p) · 1{S in group k}``; groups are equal-sized by the rank of S (ties broken by
    input order), ``gate_1`` the lowest, ``gate_K`` the highest.

    Parameters
    ----------
    outcome, treatment, propensity, score, baseline, clusters, alpha, vcov_type
        As in :func:`blp`.
    n_groups : int
        Number of groups K (at least 2).

    Returns
    -------
    pandas.DataFrame
        Rows ``gate_1`` ... ``gate_K`` and ``gate_K-gate_1`` (the top-minus-bottom difference),
        tidy columns as in :func:`blp`.

    Raises
    ------
    InputError
        As in :func:`blp`, or when ``n_groups`` is below 2 or above the number of units.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=1000); t = rng.integers(0, 2, 1000)
    >>> y = t * x + rng.normal(size=1000)
    >>> len(gates(y, t, 0.5, x, n_groups=4))
    5
    """
    check_choice("vcov_type", vcov_type, VCOV_TYPES)
    y, t, p, s, b, codes = _design_inputs(outcome, treatment, propensity, score, baseline, clusters)
    n_groups = _check_groups(n_groups, len(y))
    grp = _groups(s, n_groups)
    cols, names = _controls(p, b)
    dummies = (grp[:, None] == np.arange(n_groups)[None, :]) * (t - p)[:, None]
    terms = [f"gate_{k + 1}" for k in range(n_groups)]
    X = np.column_stack(cols + [dummies])
    beta, cov = _wls(y, X, 1 / (p * (1 - p)), codes, vcov_type, names + terms)
    k = len(names)
    est, cov = beta[k:], cov[k:, k:]
    contrast = np.zeros(n_groups)
    contrast[[-1, 0]] = 1.0, -1.0
    est = np.r_[est, contrast @ est]
    se = np.sqrt(np.r_[np.diag(cov), contrast @ cov @ contrast])
    return _tidy(terms + [f"gate_{n_groups}-gate_1"], est, se, alpha)


def _check_groups(n_groups: int, n: int) -> int:
    if (
        isinstance(n_groups, bool)
        or not isinstance(n_groups, int | np.integer)
        or not 2 <= n_groups <= n
    ):
        raise InputError(
            f"n_groups={n_groups!r} must be an int between 2 and the number of "
            f"units ({n}); 5 is usual."
        )
    return int(n_groups)


def _clan(
    features: np.ndarray, score: np.ndarray, n_groups: int, names: Sequence[str], alpha: float
) -> pd.DataFrame:
    """Feature means in the most vs least affected group and their difference (Welch SE)."""
    grp = _groups(score, n_groups)
    top, bot = features[grp == n_groups - 1], features[grp == 0]
    m_top, m_bot = top.mean(axis=0), bot.mean(axis=0)
    se_top = top.std(axis=0, ddof=1) / np.sqrt(len(top))
    se_bot = bot.std(axis=0, ddof=1) / np.sqrt(len(bot))
    terms = (
        [f"{c}[most]" for c in names]
        + [f"{c}[least]" for c in names]
        + [f"{c}[most-least]" for c in names]
    )
    est = np.r_[m_top, m_bot, m_top - m_bot]
    se = np.r_[se_top, se_bot, np.sqrt(se_top**2 + se_bot**2)]
    return _tidy(terms, est, se, alpha)


# --------------------------------------------------------------------------- generic ML


@dataclass(frozen=True, eq=False)
class GenericMLResult:
    """Generic ML inference aggregated over sample splits by the median rule.

    Attributes
    ----------
    blp, gates, clan : pandas.DataFrame
        Tidy tables (term, estimate, std_err, p_value, ci_lower, ci_upper): medians over
        splits of estimates and SEs, median interval bounds, p-value ``min(1, 2 · median p)``.
    conf_level : float
        Guaranteed level ``1 − 2 alpha`` of the median intervals (CDDF 2018, sec. 4).
    n_splits : int
        Number of random auxiliary/main splits.
    """

    blp: pd.DataFrame
    gates: pd.DataFrame
    clan: pd.DataFrame
    conf_level: float
    n_splits: int

    def tidy(self) -> pd.DataFrame:
        """All three tables stacked, with a ``table`` column ("blp", "gates", "clan")."""
        return pd.concat(
            [
                tab.assign(table=name)
                for name, tab in (("blp", self.blp), ("gates", self.gates), ("clan", self.clan))
            ],
            ignore_index=True,
        )


def _median_aggregate(tables: list[pd.DataFrame]) -> pd.DataFrame:
    stacked = np.stack([tab[TIDY_COLUMNS[1:]].to_numpy() for tab in tables])  # split, term, col
    med = np.median(stacked, axis=0)
    out = pd.DataFrame(med, columns=TIDY_COLUMNS[1:])
    out["p_value"] = np.minimum(1.0, 2 * med[:, 2])
    out.insert(0, "term", tables[0]["term"].to_numpy())
    return out


def forest_learner(
    x_train: np.ndarray,
    t_train: np.ndarray,
    y_train: np.ndarray,
    x_predict: np.ndarray,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Default proxy learner: a T-learner of two scikit-learn random forests.

    Parameters
    ----------
    x_train, t_train, y_train : numpy.ndarray
        Auxiliary-sample features (unit, feature), treatment and outcome.
    x_predict : numpy.ndarray
        Main-sample features at which to predict.
    seed : int
        Seed of the forests.

    Returns
    -------
    baseline, score : numpy.ndarray, shape (unit,)
        B(x) = predicted control outcome and S(x) = predicted treated − control outcome.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.arange(40.0)[:, None]; t = np.tile([0, 1], 20); y = t * x[:, 0]
    >>> b, s = forest_learner(x, t, y, x, seed=0)
    >>> b.shape
    (40,)
    """
    from sklearn.ensemble import RandomForestRegressor

    preds = []
    for arm in (0, 1):
        forest = RandomForestRegressor(
            n_estimators=100,
            min_samples_leaf=5,
            max_features=0.5,
            random_state=seed + arm,
            n_jobs=1,
        )
        forest.fit(x_train[t_train == arm], y_train[t_train == arm])
        preds.append(forest.predict(x_predict))
    return preds[0], preds[1] - preds[0]


def generic_ml(
    outcome: Any,
    treatment: Any,
    features: Any,
    propensity: Any,
    *,
    n_splits: int = 100,
    n_groups: int = 5,
    learner: Learner | None = None,
    clusters: Any = None,
    alpha: float = 0.05,
    feature_names: Sequence[str] | None = None,
    seed: int,
) -> GenericMLResult:
    """Generic machine learning inference on heterogeneous effects (CDDF 2018).

    For each of ``n_splits`` random splits into auxiliary and main halves (of units, or of
    whole clusters), the proxy learner is fitted on the auxiliary half and predicts B(x) and
    S(x) on the main half, where :func:`blp`, :func:`gates` and CLAN (feature means in the
    most vs least affected proxy group) are estimated. Results are aggregated by the paper's
    median rule: medians of estimates and interval bounds (per-split intervals at level
    1 − alpha, so the median interval has level at least 1 − 2 alpha), p-value
    ``min(1, 2 · median p)``.

    Parameters
    ----------
    outcome, treatment : array_like, shape (unit,)
        Outcome and binary 0/1 treatment of a randomized experiment.
    features : array_like, shape (unit, feature)
        Inputs of the proxy learner, e.g. image embeddings and covariates.
    propensity : float or array_like, shape (unit,)
        Known assignment probability.
    n_splits : int
        Number of random splits.
    n_groups : int
        Number of GATES groups.
    learner : callable, optional
        ``learner(x_train, t_train, y_train, x_predict, seed) -> (baseline, score)``; the
        default is :func:`forest_learner` (T-learner with random forests).
    clusters : array_like, shape (unit,), optional
        Cluster labels: splits keep clusters whole and SEs are cluster-robust (HC1).
    alpha : float
        Per-split significance level.
    feature_names : sequence of str, optional
        Names for the CLAN rows (default ``x0, x1, ...``).
    seed : int
        Seed of the splits and of the learner.

    Returns
    -------
    GenericMLResult
        ``blp``, ``gates`` and ``clan`` tidy DataFrames and ``conf_level = 1 − 2 alpha``.

    Raises
    ------
    InputError
        For mismatched shapes, a bad treatment or propensity, or too few units per split.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(400, 2)); t = rng.integers(0, 2, 400)
    >>> y = x[:, 0] + t * (1 + x[:, 1]) + rng.normal(size=400)
    >>> oracle = lambda xa, ta, ya, xm, s: (xm[:, 0], 1 + xm[:, 1])
    >>> res = generic_ml(y, t, x, 0.5, n_splits=5, learner=oracle, seed=0)
    >>> res.blp["term"].tolist()
    ['ate', 'hte']
    """
    y = as_vector("outcome", outcome)
    n = len(y)
    t = as_treatment(treatment, n)
    x = as_float_array("features", features)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or len(x) != n:
        raise InputError(f"features must have shape (unit, feature) with {n} rows, got {x.shape}.")
    p = as_propensity(propensity, n)
    codes = cluster_codes(clusters, n)
    n_groups = _check_groups(n_groups, n // 2)
    if isinstance(n_splits, bool) or not isinstance(n_splits, int | np.integer) or n_splits < 1:
        raise InputError(f"n_splits={n_splits!r} must be a positive int (100 is usual).")
    if not 0 < alpha < 0.5:
        raise InputError(f"alpha={alpha!r} must lie in (0, 0.5), e.g. 0.05.")
    names = (
        list(feature_names) if feature_names is not None else [f"x{j}" for j in range(x.shape[1])]
    )
    if len(names) != x.shape[1]:
        raise InputError(f"feature_names has {len(names)} names for {x.shape[1]} features.")
    learner = forest_learner if learner is None else learner
    rng = rng_from_seed(seed_int(seed))
    unit_codes = np.arange(n) if codes is None else codes
    n_cl = int(unit_codes.max()) + 1
    tables: dict[str, list[pd.DataFrame]] = {"blp": [], "gates": [], "clan": []}
    for _ in range(int(n_splits)):
        aux_cl = np.zeros(n_cl, dtype=bool)
        aux_cl[rng.choice(n_cl, size=n_cl // 2, replace=False)] = True
        aux = aux_cl[unit_codes]
        main = ~aux
        split_seed = int(rng.integers(2**31 - 1))
        b, s = learner(x[aux], t[aux], y[aux], x[main], split_seed)
        b = as_vector("learner baseline", b, int(main.sum()))
        s = as_vector("learner score", s, int(main.sum()))
        cl = None if codes is None else codes[main]
        args = (y[main], t[main], p[main], s, b, cl)
        tables["blp"].append(blp(*args, alpha=alpha))
        tables["gates"].append(gates(*args, n_groups=n_groups, alpha=alpha))
        tables["clan"].append(_clan(x[main], s, n_groups, names, alpha))
    agg = {name: _median_aggregate(tabs) for name, tabs in tables.items()}
    return GenericMLResult(
        blp=agg["blp"],
        gates=agg["gates"],
        clan=agg["clan"],
        conf_level=1 - 2 * alpha,
        n_splits=int(n_splits),
    )


# --------------------------------------------------------------------------- calibration


def test_calibration(
    outcome: Any,
    treatment: Any,
    propensity: Any,
    mu_hat: Any,
    tau_hat: Any,
    clusters: Any = None,
    *,
    weights: Any = None,
    vcov_type: VcovType = "HC3",
) -> pd.DataFrame:
    """Omnibus calibration test of CATE predictions, as grf's ``test_calibration``.

    Regresses ``Y − m(X)`` without intercept on ``(T − e) · mean(τ̂)`` (mean forest
    prediction) and ``(T − e) · (τ̂ − mean(τ̂))`` (differential forest prediction). A coefficient
    of 1 on the first says the average prediction is right; 1 on the second says the
    heterogeneity is well calibrated, and > 0 significantly rejects "no heterogeneity".

    Parameters
    ----------
    outcome, treatment : array_like, shape (unit,)
        Outcome and binary 0/1 treatment.
    propensity : float or array_like, shape (unit,)
        e(x) = P(T = 1 | x), strictly in (0, 1) (held-out estimates in observational data).
    mu_hat : array_like, shape (unit,)
        m(x) = E[Y | x] (marginal over treatment), held-out estimates.
    tau_hat : array_like, shape (unit,)
        Held-out CATE predictions to test.
    clusters : array_like, shape (unit,), optional
        Cluster labels for cluster-robust standard errors.
    weights : array_like, shape (unit,), optional
        Sample weights (weighted means and weighted least squares).
    vcov_type : {"HC0", "HC1", "HC3"}
        Sandwich correction; grf's default HC3 (needs ``clusters=None``).

    Returns
    -------
    pandas.DataFrame
        Rows ``mean.forest.prediction`` and ``differential.forest.prediction``; columns term,
        estimate, std_err, t_value, p_value (one-sided, H1: coefficient > 0, t with n − 2 df).

    Raises
    ------
    InputError
        For mismatched lengths, bad treatment or propensity, or HC3 with clusters.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=2000); t = rng.integers(0, 2, 2000)
    >>> y = x + t * (1 + x) + rng.normal(size=2000)
    >>> tab = test_calibration(y, t, 0.5, x + 0.5 * (1 + x), 1 + x)
    >>> tab["term"].tolist()
    ['mean.forest.prediction', 'differential.forest.prediction']
    """
    check_choice("vcov_type", vcov_type, VCOV_TYPES)
    y = as_vector("outcome", outcome)
    n = len(y)
    t = as_treatment(treatment, n)
    e = as_propensity(propensity, n)
    m = as_vector("mu_hat", mu_hat, n)
    tau = as_vector("tau_hat", tau_hat, n)
    w = np.ones(n) if weights is None else as_vector("weights", weights, n)
    if (w < 0).any() or w.sum() <= 0:
        raise InputError("weights must be non-negative with a positive sum.")
    codes = cluster_codes(clusters, n)
    mean_tau = np.sum(w * tau) / w.sum()
    terms = ["mean.forest.prediction", "differential.forest.prediction"]
    X = np.column_stack([(t - e) * mean_tau, (t - e) * (tau - mean_tau)])
    beta, cov = _wls(y - m, X, w, codes, vcov_type, terms)
    se = np.sqrt(np.diag(cov))
    tval = beta / se
    return pd.DataFrame(
        {
            "term": terms,
            "estimate": beta,
            "std_err": se,
            "t_value": tval,
            "p_value": stats.t.sf(tval, n - 2),
        }
    )


test_calibration.__test__ = False  # not a pytest test despite its name (grf's name is kept)


# --------------------------------------------------------------------------- spatial folds


def spatial_blocks(x: Any, y: Any, block_size: float) -> np.ndarray:
    """Square-grid block of each unit.

    Parameters
    ----------
    x, y : array_like, shape (unit,)
        Coordinates in a projected CRS (metres) or degrees; ``block_size`` is in the same units.
    block_size : float
        Side of the square blocks; the grid starts at the minimum x and y.

    Returns
    -------
    numpy.ndarray of int, shape (unit,)
        Block ids 0..n_blocks − 1 (only non-empty blocks are numbered).

    Raises
    ------
    InputError
        For mismatched lengths, non-finite coordinates or a non-positive ``block_size``.

    Examples
    --------
    >>> spatial_blocks([0, 1, 15], [0, 2, 0], 10).tolist()
    [0, 0, 1]
    """
    xs = as_vector("x", x)
    ys = as_vector("y", y, len(xs))
    if not np.isfinite(block_size) or block_size <= 0:
        raise InputError(
            f"block_size={block_size!r} must be positive, in the units of the "
            "coordinates (e.g. metres in a projected CRS)."
        )
    col = np.floor((xs - xs.min()) / block_size).astype(np.int64)
    row = np.floor((ys - ys.min()) / block_size).astype(np.int64)
    return np.unique(np.column_stack([col, row]), axis=0, return_inverse=True)[1].reshape(-1)


def _assign_blocks(blocks: np.ndarray, n_folds: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy balanced assignment: largest blocks first (random order among equals)."""
    sizes = np.bincount(blocks)
    perm = rng.permutation(len(sizes))
    order = perm[np.argsort(-sizes[perm], kind="stable")]
    load = np.zeros(n_folds)
    fold_of_block = np.empty(len(sizes), dtype=np.int64)
    for blk in order:
        fold = int(np.argmin(load + rng.random(n_folds) * 1e-9))
        fold_of_block[blk] = fold
        load[fold] += sizes[blk]
    return fold_of_block


def spatial_folds(x: Any, y: Any, n_folds: int, block_size: float, seed: int) -> np.ndarray:
    """Cross-validation folds that keep whole spatial blocks together.

    Parameters
    ----------
    x, y : array_like, shape (unit,)
        Coordinates (see :func:`spatial_blocks`).
    n_folds : int
        Number of folds (at least 2, at most the number of non-empty blocks).
    block_size : float
        Side of the square blocks, in coordinate units.
    seed : int
        Seed of the assignment.

    Returns
    -------
    numpy.ndarray of int, shape (unit,)
        Fold 0..n_folds − 1 of each unit; folds hold about equal numbers of units.

    Raises
    ------
    InputError
        When there are fewer non-empty blocks than folds, or for bad coordinates.

    Examples
    --------
    >>> import numpy as np
    >>> xy = np.random.default_rng(0).uniform(0, 100, size=(500, 2))
    >>> folds = spatial_folds(xy[:, 0], xy[:, 1], 5, 10.0, seed=0)
    >>> sorted(set(folds.tolist()))
    [0, 1, 2, 3, 4]
    """
    blocks = spatial_blocks(x, y, block_size)
    n_blocks = int(blocks.max()) + 1
    if (
        isinstance(n_folds, bool)
        or not isinstance(n_folds, int | np.integer)
        or not 2 <= n_folds <= n_blocks
    ):
        raise InputError(
            f"n_folds={n_folds!r} must be an int between 2 and the number of "
            f"non-empty blocks ({n_blocks}); use a smaller block_size or fewer "
            "folds."
        )
    rng = rng_from_seed(seed_int(seed))
    return _assign_blocks(blocks, int(n_folds), rng)[blocks]


def train_test_split_spatial(
    trial: Any, test_fraction: float, block_size: float, seed: int, *, crs: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """Split a trial's units into train and test sets made of whole spatial blocks.

    Parameters
    ----------
    trial : imgcate.units.Trial
        The units; their point locations define the blocks.
    test_fraction : float
        Target share of units in the test set, in (0, 1).
    block_size : float
        Side of the square blocks in the units of ``crs`` (or of the trial's CRS; use a
        projected CRS to give metres).
    seed : int
        Seed of the block order.
    crs : optional
        CRS to project the locations to before blocking.

    Returns
    -------
    train, test : numpy.ndarray of int
        Sorted row positions; each block falls wholly in one of them.

    Raises
    ------
    InputError
        For ``test_fraction`` outside (0, 1) or fewer than 2 non-empty blocks.

    Examples
    --------
    >>> import pandas as pd
    >>> from imgcate.units import read_units
    >>> df = pd.DataFrame({"id": range(4), "lon": [0, 0, 5, 5], "lat": [0, 1, 0, 1],
    ...                    "treatment": [0, 1, 0, 1], "outcome": [0.0, 1, 2, 3]})
    >>> train, test = train_test_split_spatial(read_units(df), 0.5, 2.0, seed=0)
    >>> len(train), len(test)
    (2, 2)
    """
    if not 0 < test_fraction < 1:
        raise InputError(
            f"test_fraction={test_fraction!r} must lie strictly between 0 and 1, e.g. 0.2."
        )
    xs, ys = trial.xy(crs)
    blocks = spatial_blocks(xs, ys, block_size)
    sizes = np.bincount(blocks)
    if len(sizes) < 2:
        raise InputError("all units fall in one block; use a smaller block_size.")
    rng = rng_from_seed(seed_int(seed))
    order = rng.permutation(len(sizes))
    cum = np.cumsum(sizes[order])
    target = test_fraction * len(blocks)
    # the prefix of shuffled blocks whose size is closest to the target (at least one block,
    # never all of them)
    n_test = int(np.argmin(np.abs(cum[:-1] - target))) + 1
    in_test = np.zeros(len(sizes), dtype=bool)
    in_test[order[:n_test]] = True
    test_mask = in_test[blocks]
    return np.flatnonzero(~test_mask), np.flatnonzero(test_mask)
