"""ATE estimators with influence-function standard errors: difference in means, Hajek IPW and
AIPW (doubly robust, cross-fitted outcome regressions), accounting for an estimated propensity
and cluster-robust when cluster ids are given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from imgcate.confounding.mestimation import EstimatingEquations
from imgcate.confounding.propensity import Propensity, fold_ids, propensity_scores
from imgcate.errors import InputError
from imgcate.evaluate import aipw_scores
from imgcate.intervals import normal_interval, tidy_table
from imgcate.validation import (
    as_features,
    as_float_array,
    as_treatment,
    check_choice,
    check_lengths,
    check_prob,
    cluster_codes,
    rng_from_seed,
)

OutcomeModel = Literal["ridge", "lasso", "boosting"]


@dataclass(frozen=True)
class AteEstimate:
    """One ATE estimate with its influence-function standard error.

    Attributes
    ----------
    name : str
        ``"difference_in_means"``, ``"ipw_hajek"`` or ``"aipw"``.
    estimate, std_err, lower, upper : float
        Point estimate, standard error and the bounds of the central ``prob`` interval
        (normal, or Student-t with ``df`` degrees of freedom when cluster-robust).
    prob : float
        Coverage probability of the interval.
    n : int
        Number of units.
    n_clusters : int or None
        Number of clusters when the errors are cluster-robust.
    influence : numpy.ndarray
        Estimated influence function, shape (unit,), mean zero.
    vcov : str
        How the standard error was computed: ``"HC2"`` (Neyman) or ``"CR2"`` (Bell-McCaffrey,
        cluster-robust) for the difference in means; ``"HC0"`` or ``"CR1"`` (Liang-Zeger with
        ``G / (G - 1)``) for the influence functions of IPW and AIPW.
    df : float or None
        Degrees of freedom of the t interval (``G - 1`` with clusters), None for normal.
    propensity : str
        ``"estimated"`` when the standard error accounts for the estimation of the
        propensity (its model's estimating equations are stacked with the estimator's),
        ``"known"`` when the scores were taken as given, ``"none"`` for the difference in
        means.
    """

    name: str
    estimate: float
    std_err: float
    lower: float
    upper: float
    prob: float
    n: int
    n_clusters: int | None
    influence: np.ndarray
    vcov: str = "HC0"
    df: float | None = None
    propensity: str = "none"

    def tidy(self) -> pd.DataFrame:
        """One row in the tidy schema: ``term`` (the estimator), ``estimate``, ``std_err``, the
        interval bounds named by percentile (``"2.5%"``, ``"97.5%"`` for ``prob=0.95``), then
        ``n``, ``n_clusters`` (missing without clusters), ``vcov`` (how the standard error was
        computed: HC2/CR2, HC0/CR1) and ``propensity`` (estimated, known or none)."""
        table = tidy_table(
            [self.name],
            self.estimate,
            self.std_err,
            self.lower,
            self.upper,
            self.prob,
            n=[self.n],
            n_clusters=[self.n_clusters],
            vcov=[self.vcov],
            propensity=[self.propensity],
        )
        table["n_clusters"] = table["n_clusters"].astype("Int64")
        return table


def _result(
    name: str,
    estimate: float,
    se: float,
    influence: np.ndarray,
    n_clusters: int | None,
    prob: float,
    vcov: str,
    propensity: str,
) -> AteEstimate:
    df = None if n_clusters is None else float(n_clusters - 1)
    lower, upper = normal_interval(estimate, se, prob, df=df)
    return AteEstimate(
        name,
        float(estimate),
        float(se),
        float(lower),
        float(upper),
        prob,
        len(influence),
        n_clusters,
        influence,
        vcov,
        df,
        propensity,
    )


def _from_influence(
    name: str,
    estimate: float,
    influence: np.ndarray,
    clusters: np.ndarray | None,
    prob: float,
    propensity: str,
) -> AteEstimate:
    """HC0 (``sqrt(sum psi^2) / n``) or CR1 (``sqrt(G/(G-1) sum_g (sum_g psi)^2) / n``)."""
    n = len(influence)
    if clusters is None:
        se = float(np.sqrt(np.sum(influence**2)) / n)
        return _result(name, estimate, se, influence, None, prob, "HC0", propensity)
    sums = np.bincount(clusters, weights=influence)
    g = len(sums)
    se = float(np.sqrt(g / (g - 1) * np.sum(sums**2)) / n)
    return _result(name, estimate, se, influence, g, prob, "CR1", propensity)


def common_inputs(
    outcome: Any,
    treatment: Any,
    propensity: Propensity | Any = None,
    clusters: Any = None,
    prob: float = 0.95,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None, float]:
    """The estimators' inputs, checked: outcome (float), treatment (0/1), scores (or None),
    cluster codes (or None) and the interval probability; a :class:`Propensity` must be of
    the same treatment vector."""
    y = as_float_array("outcome", outcome, ndim=1)
    t = as_treatment(treatment).astype(np.int8)
    e = None if propensity is None else propensity_scores(propensity)
    n = check_lengths(outcome=y, treatment=t, propensity=e)
    if isinstance(propensity, Propensity) and not np.array_equal(propensity.treatment, t):
        raise InputError(
            "the Propensity was fitted to another treatment vector than the one given; pass "
            "the same units in the same order (or its .scores to treat them as known)."
        )
    return y, t, e, cluster_codes(clusters, n, min_clusters=2), check_prob(prob)


def _equations(propensity: Propensity | Any) -> EstimatingEquations | None:
    if isinstance(propensity, Propensity):
        return propensity.equations
    return None


def _cr2_dim(y: np.ndarray, t: np.ndarray, codes: np.ndarray) -> float:
    """Bell-McCaffrey (CR2) standard error of the treatment coefficient of ``y ~ 1 + t``.

    The hat matrix of ``[1, t]`` restricted to a cluster is block diagonal by arm, with blocks
    ``J / n_arm``, so ``(I - H_gg)^{-1/2}`` scales each cluster-arm cell's residual sum by
    ``(1 - n_g,arm / n_arm)^{-1/2}``: the Neyman (HC2) variance when every unit is its own
    cluster, the cluster-totals Neyman variance when whole clusters are treated.
    """
    n_groups = int(codes.max()) + 1
    sums = np.zeros((2, n_groups))
    counts = np.zeros((2, n_groups))
    for arm in (0, 1):
        sel = t == arm
        resid = y[sel] - y[sel].mean()
        sums[arm] = np.bincount(codes[sel], weights=resid, minlength=n_groups)
        counts[arm] = np.bincount(codes[sel], minlength=n_groups)
    n_arm = counts.sum(axis=1, keepdims=True)
    if (counts == n_arm).any():
        arm = "treated" if (counts[1] == n_arm[1]).any() else "control"
        raise InputError(
            f"every {arm} unit is in one cluster, so the difference in means has no "
            "cluster-robust standard error: the design gives no replication of that arm "
            "across clusters. A cluster-robust SE needs each arm spread over at least 2 "
            "clusters; with cluster-level assignment (whole clusters treated) that means at "
            "least 2 treated and 2 control clusters, and more for a useful interval (its t "
            "quantile has G - 1 degrees of freedom). Check the cluster ids, or collect more "
            "clusters."
        )
    scaled = sums / np.sqrt(1 - counts / n_arm) / n_arm
    return float(np.sqrt(np.sum((scaled[1] - scaled[0]) ** 2)))


def difference_in_means(
    outcome: Any, treatment: Any, *, clusters: Any = None, prob: float = 0.95
) -> AteEstimate:
    """Unadjusted difference in mean outcomes, treated minus control.

    The standard error is Neyman's, ``sqrt(s1^2 / n1 + s0^2 / n0)`` with sample variances
    (HC2 of the regression on ``[1, t]``). With ``clusters`` it is cluster-robust: the
    Bell-McCaffrey CR2 estimator of that regression, which reduces to Neyman's when every unit
    is its own cluster and to the Neyman variance of cluster totals when whole clusters are
    assigned (cluster-randomized trials, units sharing an image); the interval is then
    Student-t with ``G - 1`` degrees of freedom. ``vcov`` says which was used.

    Parameters
    ----------
    outcome : array-like
        Shape (unit,).
    treatment : array-like
        Shape (unit,), binary 0/1.
    clusters : array-like, optional
        Cluster ids, shape (unit,), for cluster-robust errors.
    prob : float
        Interval coverage.

    Returns
    -------
    AteEstimate
        Biased under confounding; reported as the naive benchmark (and as the design-based
        ATE of a randomized trial).

    Raises
    ------
    InputError
        On non-binary treatment, mismatched lengths, or a cluster holding a whole arm (a
        cluster-robust SE needs each arm in at least 2 clusters).

    Examples
    --------
    >>> difference_in_means([1.0, 2.0, 3.0, 5.0], [0, 0, 1, 1]).estimate
    2.5
    """
    y, t, _, codes, prob = common_inputs(outcome, treatment, None, clusters, prob)
    p = t.mean()
    m1, m0 = y[t == 1].mean(), y[t == 0].mean()
    psi = t * (y - m1) / p - (1 - t) * (y - m0) / (1 - p)
    if codes is None:
        se = _cr2_dim(y, t, np.arange(len(y)))
        return _result("difference_in_means", m1 - m0, se, psi, None, prob, "HC2", "none")
    se = _cr2_dim(y, t, codes)
    g = int(codes.max()) + 1
    return _result("difference_in_means", m1 - m0, se, psi, g, prob, "CR2", "none")


def hajek_ipw(
    outcome: Any,
    treatment: Any,
    propensity: Propensity | Any,
    *,
    clusters: Any = None,
    prob: float = 0.95,
) -> AteEstimate:
    """Hajek (normalized) inverse-probability-weighted ATE.

    ``sum(t w1 y) / sum(t w1) - sum((1-t) w0 y) / sum((1-t) w0)`` with ``w1 = 1/e``,
    ``w0 = 1/(1-e)``. The standard error comes from the influence function
    ``psi = t (y - m1) / (e E[t/e]) - (1-t) (y - m0) / ((1-e) E[(1-t)/(1-e)])``. When
    ``propensity`` is a :class:`Propensity` from :func:`estimate_propensity` (``"cbps"`` or
    ``"logistic"``) its estimation is accounted for by stacking the propensity model's
    estimating equations ``g_i`` with the estimator's (M-estimation; Lunceford & Davidian
    2004): the influence function becomes ``psi - H A^{-1} g_i``, ``A`` the mean Jacobian of
    ``g`` and ``H`` the mean derivative of ``psi``'s terms with respect to the propensity
    coefficients. Scores passed as an array are treated as known (which overstates the
    standard error of an estimated propensity: 1.5-fold on average over 10 draws of
    ``simulate_confounded(n_units=1000)`` with the default propensity). With cluster ids the
    influence function is summed within clusters (CR1, ``G / (G - 1)``) and the interval is t
    with ``G - 1`` degrees of freedom.

    Parameters
    ----------
    outcome : array-like
        Shape (unit,).
    treatment : array-like
        Shape (unit,), binary 0/1.
    propensity : Propensity or array-like
        Scores in (0, 1), shape (unit,), ideally cross-fitted.
    clusters : array-like, optional
        Cluster ids, shape (unit,).
    prob : float
        Interval coverage.

    Returns
    -------
    AteEstimate

    Raises
    ------
    InputError
        On non-binary treatment, scores outside (0, 1) or mismatched lengths.

    Examples
    --------
    >>> import numpy as np
    >>> round(hajek_ipw([1.0, 2.0, 3.0, 5.0], [0, 0, 1, 1], np.full(4, 0.5)).estimate, 3)
    2.5
    """
    y, t, e, codes, prob = common_inputs(outcome, treatment, propensity, clusters, prob)
    w1, w0 = t / e, (1 - t) / (1 - e)
    m1, m0 = np.sum(w1 * y) / w1.sum(), np.sum(w0 * y) / w0.sum()
    psi = w1 * (y - m1) / w1.mean() - w0 * (y - m0) / w0.mean()
    equations = _equations(propensity)
    if equations is None:
        return _from_influence("ipw_hajek", m1 - m0, psi, codes, prob, "known")
    # d/dbeta of t (y - m1) / e and (1 - t)(y - m0) / (1 - e), through de/dbeta
    grad = equations.score_gradient
    h1 = np.mean((-t * (y - m1) / e**2)[:, None] * grad, axis=0)
    h0 = np.mean(((1 - t) * (y - m0) / (1 - e) ** 2)[:, None] * grad, axis=0)
    psi = psi - equations.correction(h1 / w1.mean() - h0 / w0.mean())
    return _from_influence("ipw_hajek", m1 - m0, psi, codes, prob, "estimated")


def _outcome_regressor(outcome_model: Any, seed: int) -> Any:
    from sklearn.base import clone

    if outcome_model is None:
        outcome_model = "ridge"
    if not isinstance(outcome_model, str):
        if not hasattr(outcome_model, "fit") or not hasattr(outcome_model, "predict"):
            raise InputError(
                "outcome_model must be 'ridge', 'lasso', 'boosting' or a scikit-learn regressor "
                f"with fit/predict; got {type(outcome_model).__name__}."
            )
        return clone(outcome_model)
    check_choice("outcome_model", outcome_model, ("ridge", "lasso", "boosting"))
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.linear_model import LassoCV, RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if outcome_model == "ridge":
        return make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13)))
    if outcome_model == "lasso":
        return make_pipeline(StandardScaler(), LassoCV(cv=3, random_state=seed))
    return HistGradientBoostingRegressor(max_iter=200, random_state=seed)


def _cross_fit_outcome(
    x: np.ndarray, y: np.ndarray, t: np.ndarray, folds: np.ndarray, outcome_model: Any, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    mu = np.empty((2, len(y)))
    for k in np.unique(folds):
        test = folds == k
        for arm in (0, 1):
            train = (~test) & (t == arm)
            model = _outcome_regressor(outcome_model, seed).fit(x[train], y[train])
            mu[arm, test] = model.predict(x[test])
    return mu[0], mu[1]


def aipw(
    outcome: Any,
    treatment: Any,
    propensity: Propensity | Any,
    *,
    features: Any = None,
    mu0: Any = None,
    mu1: Any = None,
    clusters: Any = None,
    n_folds: int = 5,
    outcome_model: OutcomeModel | Any = None,
    prob: float = 0.95,
    seed: int | None = None,
) -> AteEstimate:
    """Augmented IPW (doubly robust) ATE with cross-fitted outcome regressions.

    ``mean(mu1 - mu0 + t (y - mu1) / e - (1 - t) (y - mu0) / (1 - e))``; consistent when either
    the propensity or the outcome regressions are right. The standard error is the standard
    deviation of that influence function over sqrt(n), summed within clusters when given (CR1,
    t interval with ``G - 1`` degrees of freedom). The cross-fitted outcome regressions need no
    correction (the score is Neyman-orthogonal); an estimated :class:`Propensity` is stacked
    as in :func:`hajek_ipw`, which matters only when the outcome regressions are wrong (the
    correction's ``H`` is then non-zero) and keeps the standard error right in that case too.

    Parameters
    ----------
    outcome : array-like
        Shape (unit,).
    treatment : array-like
        Shape (unit,), binary 0/1.
    propensity : Propensity or array-like
        Scores in (0, 1), shape (unit,), ideally cross-fitted.
    features : array-like, optional
        Shape (unit, feature); the outcome regressions of y on features are fitted within each
        arm on the other folds. Needed unless ``mu0`` and ``mu1`` are given.
    mu0, mu1 : array-like, optional
        Precomputed E[y | features, t = 0] and E[y | features, t = 1], shape (unit,) (e.g. a
        deliberately wrong model, to check double robustness).
    clusters : array-like, optional
        Cluster ids, shape (unit,); folds keep clusters whole and errors are cluster-robust.
    n_folds : int
        Cross-fitting folds.
    outcome_model : {"ridge", "lasso", "boosting"} or scikit-learn regressor, optional
        Regression of y on features within each arm; default ridge with cross-validated penalty.
    prob : float
        Interval coverage.
    seed : int, optional
        Random seed for the fold assignment; required when ``mu0``/``mu1`` are fitted.

    Returns
    -------
    AteEstimate

    Raises
    ------
    InputError
        On non-binary treatment, scores outside (0, 1), mismatched lengths, or neither
        ``features`` nor ``mu0``/``mu1``.

    Examples
    --------
    >>> sim = simulate_confounded(seed=0, n_units=400)
    >>> est = aipw(sim.outcome, sim.treatment, sim.truth.propensity, features=sim.features,
    ...            seed=0)
    >>> est.name
    'aipw'
    """
    y, t, e, codes, prob = common_inputs(outcome, treatment, propensity, clusters, prob)
    if (mu0 is None) != (mu1 is None):
        raise InputError("give both mu0 and mu1, or neither (then features are required).")
    if mu0 is None:
        if features is None:
            raise InputError("aipw needs features (to fit outcome models) or both mu0 and mu1.")
        x = as_features(features)
        check_lengths(outcome=y, features=x)
        folds = fold_ids(t, n_folds, rng_from_seed(seed), codes)
        m0, m1 = _cross_fit_outcome(x, y, t, folds, outcome_model, int(seed))
    else:
        m0 = as_float_array("mu0", mu0, ndim=1)
        m1 = as_float_array("mu1", mu1, ndim=1)
        check_lengths(outcome=y, mu0=m0, mu1=m1)
    phi = aipw_scores(y, t, e, m0, m1)
    tau = phi.mean()
    equations = _equations(propensity)
    if equations is None:
        return _from_influence("aipw", tau, phi - tau, codes, prob, "known")
    dphi_de = -t * (y - m1) / e**2 - (1 - t) * (y - m0) / (1 - e) ** 2
    h = np.mean(dphi_de[:, None] * equations.score_gradient, axis=0)
    influence = phi - tau - equations.correction(h)
    return _from_influence("aipw", tau, influence, codes, prob, "estimated")
