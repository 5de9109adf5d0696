"""Generic machine learning inference on heterogeneous effects (Chernozhukov, Demirer, Duflo,
Fernández-Val 2018): BLP, GATES and CLAN over sample splits, aggregated by the median rule."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from imgcate.errors import InputError
from imgcate.evaluate.regression import VCOV_TYPES, VcovType, vcov_label, wls
from imgcate.intervals import interval_names, normal_interval, tidy_table
from imgcate.validation import (
    as_float_array,
    as_propensity,
    as_treatment,
    as_vector,
    check_choice,
    check_prob,
    cluster_codes,
    rng_from_seed,
    seed_int,
)

Learner = Callable[
    [np.ndarray, np.ndarray, np.ndarray, np.ndarray, int], tuple[np.ndarray, np.ndarray]
]


def _tidy(
    terms: Sequence[str], est: np.ndarray, se: np.ndarray, prob: float, vcov: str
) -> pd.DataFrame:
    """The tidy schema with central ``prob`` normal intervals, two-sided p-values and the
    covariance type (``vcov``: HC0/HC1/HC3, or CR0/CR1/CR3 when cluster-robust)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        z = est / se
    lower, upper = normal_interval(est, se, prob)
    return tidy_table(
        terms,
        est,
        se,
        lower,
        upper,
        prob,
        p_value=2 * stats.norm.sf(np.abs(z)),
        vcov=[vcov] * len(terms),
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
    prob: float = 0.95,
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
    prob : float
        Probability of the central intervals.
    vcov_type : {"HC0", "HC1", "HC3"}
        Sandwich correction; with ``clusters`` the cluster-robust version (CR1 is
        ``vcovCL``'s HC1: ``G / (G - 1) (n - 1) / (n - k)``; CR3 its clustered HC3).

    Returns
    -------
    pandas.DataFrame
        Rows ``ate`` and ``hte`` in the tidy schema: term, estimate, std_err, the interval
        bounds named by percentile ("2.5%", "97.5%" for ``prob=0.95``), p_value (two-sided,
        normal), vcov (the covariance used: ``"HC1"``, or ``"CR1"`` with clusters).

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
    beta, cov = wls(y, X, 1 / (p * (1 - p)), codes, vcov_type, names + ["ate", "hte"])
    k = len(names)
    se = np.sqrt(np.diag(cov))[k:]
    return _tidy(["ate", "hte"], beta[k:], se, check_prob(prob), vcov_label(vcov_type, codes))


def quantile_groups(score: np.ndarray, n_groups: int) -> np.ndarray:
    """Group 0 (lowest proxy) to n_groups - 1 (highest) by the proxy's quantile cut points.

    CDDF (2018, sec. 3.3) define the groups by quantiles of the proxy: with cut points
    ``l_k`` the ``k / n_groups`` empirical quantiles (linear interpolation, NumPy's and R's
    default), group ``k`` holds the units with ``l_k <= S < l_{k+1}``. Units with the same
    proxy always share a group, so the groups do not depend on the order of the rows; without
    ties they are equal-sized (to one unit).

    Raises
    ------
    InputError
        When ties leave a group empty (the proxy has too few distinct values).
    """
    cuts = np.quantile(score, np.arange(1, n_groups) / n_groups)
    groups = np.searchsorted(cuts, score, side="right")
    sizes = np.bincount(groups, minlength=n_groups)
    if (sizes == 0).any():
        raise InputError(
            f"the proxy score takes {len(np.unique(score))} distinct values, so with "
            f"n_groups={n_groups} quantile group(s) {np.flatnonzero(sizes == 0).tolist()} are "
            "empty (tied units share a group); lower n_groups or use a proxy with more "
            "distinct values."
        )
    return groups


def gates(
    outcome: Any,
    treatment: Any,
    propensity: Any,
    score: Any,
    baseline: Any = None,
    clusters: Any = None,
    *,
    n_groups: int = 5,
    prob: float = 0.95,
    vcov_type: VcovType = "HC1",
) -> pd.DataFrame:
    """Sorted group average treatment effects (GATES) by quantile groups of a fixed proxy.

    Weighted OLS (weights ``1 / (p (1 − p))``) of the outcome on ``1``, ``baseline`` and
    ``(T − p) · 1{S in group k}``; groups are cut at the quantiles of S
    (:func:`quantile_groups`: equal-sized without ties, tied units in one group, independent
    of the row order), ``gate_1`` the lowest, ``gate_K`` the highest.

    Parameters
    ----------
    outcome, treatment, propensity, score, baseline, clusters, prob, vcov_type
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
        As in :func:`blp`, when ``n_groups`` is below 2 or above the number of units, or when
        ties in the proxy leave a group empty.

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
    grp = quantile_groups(s, n_groups)
    cols, names = _controls(p, b)
    dummies = (grp[:, None] == np.arange(n_groups)[None, :]) * (t - p)[:, None]
    terms = [f"gate_{k + 1}" for k in range(n_groups)]
    X = np.column_stack(cols + [dummies])
    beta, cov = wls(y, X, 1 / (p * (1 - p)), codes, vcov_type, names + terms)
    k = len(names)
    est, cov = beta[k:], cov[k:, k:]
    contrast = np.zeros(n_groups)
    contrast[[-1, 0]] = 1.0, -1.0
    est = np.r_[est, contrast @ est]
    se = np.sqrt(np.r_[np.diag(cov), contrast @ cov @ contrast])
    label = vcov_label(vcov_type, codes)
    return _tidy(terms + [f"gate_{n_groups}-gate_1"], est, se, check_prob(prob), label)


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


def clan(
    features: Any,
    score: Any,
    clusters: Any = None,
    *,
    n_groups: int = 5,
    feature_names: Sequence[str] | None = None,
    prob: float = 0.95,
) -> pd.DataFrame:
    """Classification analysis (CLAN): feature means in the most and least affected groups.

    The groups are the top and bottom :func:`quantile_groups` of the proxy ``score``. Each
    feature's mean in the most affected group, in the least affected one and their difference
    come from the regression of the feature on the two group indicators (units of the two
    groups only). Standard errors: Welch's (each group's sample variance over its size)
    without clusters; cluster-robust CR1 (``vcovCL``'s HC1, ``G / (G - 1) (n - 1) / (n - 2)``
    over the clusters of the two groups) with them, so that spatially clustered units do not
    make the differences look more certain than they are.

    Parameters
    ----------
    features : array_like, shape (unit, feature)
        The characteristics to compare, e.g. covariates and image features.
    score : array_like, shape (unit,)
        Proxy S(x) of the CATE, built without these units' outcomes.
    clusters : array_like, shape (unit,), optional
        Cluster labels for cluster-robust standard errors.
    n_groups : int
        Number of quantile groups K (the most affected group is the K-th).
    feature_names : sequence of str, optional
        Row names (default ``x0, x1, ...``).
    prob : float
        Probability of the central intervals.

    Returns
    -------
    pandas.DataFrame
        Rows ``<name>[most]``, ``<name>[least]`` and ``<name>[most-least]`` per feature in the
        tidy schema (term, estimate, std_err, interval bounds, p_value, vcov: ``"Welch"`` or
        ``"CR1"``).

    Raises
    ------
    InputError
        On mismatched shapes, a bad ``n_groups``, or ties that leave a group empty.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.arange(100.0)[:, None]
    >>> clan(x, x[:, 0], n_groups=4)["estimate"].round(1).tolist()
    [87.0, 12.0, 75.0]
    """
    s = as_vector("score", score)
    n = len(s)
    x = as_float_array("features", features)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or len(x) != n:
        raise InputError(f"features must have shape (unit, feature) with {n} rows, got {x.shape}.")
    names = (
        list(feature_names) if feature_names is not None else [f"x{j}" for j in range(x.shape[1])]
    )
    if len(names) != x.shape[1]:
        raise InputError(f"feature_names has {len(names)} names for {x.shape[1]} features.")
    codes = cluster_codes(clusters, n)
    grp = quantile_groups(s, _check_groups(n_groups, n))
    top, bot = grp == n_groups - 1, grp == 0
    terms = (
        [f"{c}[most]" for c in names]
        + [f"{c}[least]" for c in names]
        + [f"{c}[most-least]" for c in names]
    )
    m_top, m_bot = x[top].mean(axis=0), x[bot].mean(axis=0)
    est = np.r_[m_top, m_bot, m_top - m_bot]
    if codes is None:
        se_top = x[top].std(axis=0, ddof=1) / np.sqrt(top.sum())
        se_bot = x[bot].std(axis=0, ddof=1) / np.sqrt(bot.sum())
        se = np.r_[se_top, se_bot, np.sqrt(se_top**2 + se_bot**2)]
        return _tidy(terms, est, se, check_prob(prob), "Welch")
    keep = top | bot
    design = np.column_stack([top[keep], bot[keep]]).astype(float)
    sub_codes = np.unique(codes[keep], return_inverse=True)[1].reshape(-1)
    ses = []
    for j in range(x.shape[1]):
        _, cov = wls(x[keep, j], design, np.ones(keep.sum()), sub_codes, "HC1", ["most", "least"])
        ses.append(
            [np.sqrt(cov[0, 0]), np.sqrt(cov[1, 1]), np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])]
        )
    se = np.asarray(ses).T.reshape(-1)
    return _tidy(terms, est, se, check_prob(prob), "CR1")


@dataclass(frozen=True, eq=False)
class GenericMLResult:
    """Generic ML inference aggregated over sample splits by the median rule.

    Attributes
    ----------
    blp, gates, clan : pandas.DataFrame
        Tidy tables (term, estimate, std_err, the interval bounds named by percentile,
        p_value, vcov): medians over splits of estimates and SEs; the interval is the upper
        median of the lower bounds and the lower median of the upper bounds (CDDF 2018,
        sec. 4); p-value ``min(1, 2 · median p)``.
    prob : float
        Probability of each split's intervals (whose medians the bounds are).
    guaranteed_prob : float
        The level the median intervals are guaranteed to have, ``2 prob − 1`` (CDDF 2018,
        sec. 4: per-split level 1 − alpha gives at least 1 − 2 alpha).
    n_splits : int
        Number of random auxiliary/main splits.
    """

    blp: pd.DataFrame
    gates: pd.DataFrame
    clan: pd.DataFrame
    prob: float
    guaranteed_prob: float
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


def lower_median(values: np.ndarray, axis: int = 0) -> np.ndarray:
    """``inf{x: F(x) >= 1/2}``: the ``ceil(S/2)``-th smallest of ``S`` values."""
    ordered = np.sort(values, axis=axis)
    return np.take(ordered, (ordered.shape[axis] + 1) // 2 - 1, axis=axis)


def upper_median(values: np.ndarray, axis: int = 0) -> np.ndarray:
    """``sup{x: P(X >= x) >= 1/2}``: the ``(floor(S/2) + 1)``-th smallest of ``S`` values."""
    ordered = np.sort(values, axis=axis)
    return np.take(ordered, ordered.shape[axis] // 2, axis=axis)


def _median_aggregate(tables: list[pd.DataFrame], prob: float) -> pd.DataFrame:
    """CDDF's aggregation over splits: median estimate and SE (the mean of the lower and upper
    medians, ``np.median``), the upper median of the lower bounds, the lower median of the upper
    bounds, and ``min(1, 2 median p)``."""
    lo_name, hi_name = interval_names(prob)
    stack = {
        col: np.stack([tab[col].to_numpy(dtype=float) for tab in tables])
        for col in ("estimate", "std_err", lo_name, hi_name, "p_value")
    }
    out = pd.DataFrame(
        {
            "term": tables[0]["term"].to_numpy(),
            "estimate": np.median(stack["estimate"], axis=0),
            "std_err": np.median(stack["std_err"], axis=0),
            lo_name: upper_median(stack[lo_name]),
            hi_name: lower_median(stack[hi_name]),
            "p_value": np.minimum(1.0, 2 * np.median(stack["p_value"], axis=0)),
            "vcov": tables[0]["vcov"].to_numpy(),
        }
    )
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
    prob: float = 0.95,
    feature_names: Sequence[str] | None = None,
    seed: int,
) -> GenericMLResult:
    """Generic machine learning inference on heterogeneous effects (CDDF 2018).

    For each of ``n_splits`` random splits into auxiliary and main halves (of units, or of
    whole clusters), the proxy learner is fitted on the auxiliary half and predicts B(x) and
    S(x) on the main half, where :func:`blp`, :func:`gates` and CLAN (feature means in the
    most vs least affected proxy group) are estimated. Results are aggregated by the paper's
    median rule: medians of estimates and interval bounds (per-split intervals at level
    ``prob``, so the median interval has level at least ``2 prob − 1``), p-value
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
    prob : float
        Probability of each split's intervals (in (0.5, 1)).
    feature_names : sequence of str, optional
        Names for the CLAN rows (default ``x0, x1, ...``).
    seed : int
        Seed of the splits and of the learner.

    Returns
    -------
    GenericMLResult
        ``blp``, ``gates`` and ``clan`` tidy DataFrames, ``prob`` and
        ``guaranteed_prob = 2 prob − 1``.

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
    if not 0.5 < check_prob(prob) < 1:
        raise InputError(
            f"prob={prob!r} must lie in (0.5, 1), e.g. 0.95 (the median intervals are "
            "guaranteed a level of 2 prob - 1)."
        )
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
        tables["blp"].append(blp(*args, prob=prob))
        tables["gates"].append(gates(*args, n_groups=n_groups, prob=prob))
        tables["clan"].append(
            clan(x[main], s, cl, n_groups=n_groups, feature_names=names, prob=prob)
        )
    agg = {name: _median_aggregate(tabs, prob) for name, tabs in tables.items()}
    return GenericMLResult(
        blp=agg["blp"],
        gates=agg["gates"],
        clan=agg["clan"],
        prob=prob,
        guaranteed_prob=2 * prob - 1,
        n_splits=int(n_splits),
    )
