"""Confounder adjustment for observational studies with images.

When a program was targeted rather than randomized, the places that received it differ from those
that did not, and satellite images often show how (built-up area, roads, vegetation). This module
uses image embeddings (plus tabular covariates) as proxies for those confounders:

1. :func:`estimate_propensity` fits P(treatment = 1 | features), cross-fitted penalized logistic
   regression or a Bayesian logistic model with shrinkage priors, with overlap diagnostics
   (:meth:`Propensity.overlap_summary`, :meth:`Propensity.plot_overlap`) and trimming
   (:func:`trim`).
2. :func:`ate_estimates` (or :func:`hajek_ipw`, :func:`aipw` alone) estimates the average treatment
   effect with influence-function standard errors, cluster-robust when cluster ids are given;
   :func:`balance_table` and :func:`plot_love` check covariate and embedding balance.
3. :func:`confounding_sensitivity` asks how strong an *unobserved* confounder would have to be to
   change the conclusion (Cinelli & Hazlett 2020), benchmarked against observed covariates.

Assumptions, stated once
------------------------
* **Ignorability (no unmeasured confounding) given the image and covariates**: potential outcomes
  are independent of treatment given the features passed in. The features must carry everything
  that drove both targeting and outcomes; an embedding that misses it leaves bias that no weighting
  removes. Step 3 quantifies how much hidden confounding would matter.
* **Overlap (positivity)**: every unit had a probability of treatment bounded away from 0 and 1.
  Weights of units with extreme propensities dominate the estimates; an :class:`OverlapWarning`
  says when that happens. Trimming restores overlap but changes the estimand to the average effect
  on the kept units.
* **SUTVA**: one unit's treatment does not change another's outcome (beyond what clustering allows).

The standard errors treat the cross-fitted nuisance functions (propensity, outcome regressions) as
known, which is justified for AIPW by cross-fitting (Chernozhukov et al. 2018) and conservative for
Hajek IPW with an estimated propensity in the usual case.

Examples
--------
>>> from imgcate.confounding import estimate_propensity, ate_estimates
>>> from imgcate.simulate import simulate_confounded
>>> sim = simulate_confounded(seed=0, n_units=500)
>>> ps = estimate_propensity(sim.features, sim.treatment, seed=0)
>>> table = ate_estimates(sim.outcome, sim.treatment, ps, features=sim.features, seed=0)
>>> list(table.index)
['difference_in_means', 'ipw_hajek', 'aipw']
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import stats

from imgcate.errors import ConvergenceWarning, InputError, OverlapWarning
from imgcate.evaluate import aipw_scores
from imgcate.validation import (
    as_features,
    as_float_array,
    as_propensity,
    as_treatment,
    check_choice,
    check_lengths,
    check_prob,
    cluster_codes,
    rng_from_seed,
)

PropensityMethod = Literal["logistic", "bayes"]
OutcomeModel = Literal["ridge", "lasso", "boosting"]

#: Propensities closer than this to 0 or 1 raise an :class:`OverlapWarning`.
EXTREME_PROPENSITY = 0.01
#: The conventional overlap band reported by :meth:`Propensity.overlap_summary`.
OVERLAP_BAND = (0.05, 0.95)

__all__ = [
    "AteEstimate",
    "ConfoundingSensitivity",
    "Propensity",
    "TrimResult",
    "aipw",
    "ate_estimates",
    "balance_table",
    "confounding_sensitivity",
    "crump_alpha",
    "difference_in_means",
    "estimate_propensity",
    "hajek_ipw",
    "plot_love",
    "robustness_value",
    "trim",
]


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------


def _propensity_array(propensity: Propensity | Any) -> np.ndarray:
    if isinstance(propensity, Propensity):
        return propensity.scores
    return as_propensity(propensity)


def _fold_ids(
    treatment: np.ndarray, n_folds: int, rng: np.random.Generator, clusters: np.ndarray | None
) -> np.ndarray:
    """Fold of each unit: stratified by arm, or whole clusters kept together."""
    if n_folds < 2:
        raise InputError(f"n_folds={n_folds} must be at least 2 for cross-fitting.")
    folds = np.empty(len(treatment), dtype=int)
    if clusters is not None:
        groups = rng.permutation(clusters.max() + 1)
        if len(groups) < n_folds:
            raise InputError(
                f"n_folds={n_folds} exceeds the number of clusters ({len(groups)}); lower n_folds."
            )
        fold_of_group = np.empty(len(groups), dtype=int)
        fold_of_group[groups] = np.arange(len(groups)) % n_folds
        folds[:] = fold_of_group[clusters]
    else:
        for arm in (0, 1):
            idx = rng.permutation(np.flatnonzero(treatment == arm))
            folds[idx] = (np.arange(len(idx)) + arm) % n_folds
    for k in range(n_folds):
        train = treatment[folds != k]
        if train.min() == train.max():
            raise InputError(
                f"fold {k} leaves only one treatment arm to train on; lower n_folds "
                "or use more units."
            )
    return folds


# --------------------------------------------------------------------------------------------
# propensity
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Propensity:
    """Estimated propensity scores with overlap diagnostics.

    Attributes
    ----------
    scores : numpy.ndarray
        P(treatment = 1 | features), shape (unit,), clipped to ``[clip, 1 - clip]``.
    treatment : numpy.ndarray
        The 0/1 treatment the scores were fitted to, shape (unit,).
    method : str
        ``"logistic"`` (cross-fitted) or ``"bayes"`` (posterior mean).
    clip : float
        The clipping bound used.
    n_clipped : int
        Number of scores that were moved by clipping.
    diagnostics : dict
        Method details: chosen penalties per fold, or R-hat / divergences of the posterior.
    """

    scores: np.ndarray
    treatment: np.ndarray
    method: str
    clip: float
    n_clipped: int = 0
    diagnostics: dict[str, Any] = field(default_factory=dict)

    @property
    def ipw_weights(self) -> np.ndarray:
        """Inverse-probability (ATE) weights ``t / e + (1 - t) / (1 - e)``, shape (unit,)."""
        return _ipw_weights(self.treatment, self.scores)

    def overlap_summary(self) -> pd.DataFrame:
        """Overlap diagnostics by treatment arm.

        Returns
        -------
        pandas.DataFrame
            Index ``control``, ``treated``; columns ``n``, ``min``, ``max``, ``frac_outside``
            (share of scores outside [0.05, 0.95]), ``max_weight`` (largest IPW weight),
            ``max_weight_share`` (largest weight over the arm's total weight) and ``ess``
            (Kish effective sample size of the IPW weights, ``(sum w)^2 / sum w^2``).

        Examples
        --------
        >>> import numpy as np
        >>> e, t = np.array([0.2, 0.5, 0.6, 0.9]), np.array([0, 0, 1, 1])
        >>> ps = Propensity(e, t, "logistic", 1e-3)
        >>> int(ps.overlap_summary().loc["treated", "n"])
        2
        """
        w = self.ipw_weights
        lo, hi = OVERLAP_BAND
        rows = {}
        for arm, label in ((0, "control"), (1, "treated")):
            sel = self.treatment == arm
            e, wa = self.scores[sel], w[sel]
            rows[label] = {
                "n": int(sel.sum()),
                "min": float(e.min()),
                "max": float(e.max()),
                "frac_outside": float(np.mean((e < lo) | (e > hi))),
                "max_weight": float(wa.max()),
                "max_weight_share": float(wa.max() / wa.sum()),
                "ess": float(wa.sum() ** 2 / np.sum(wa**2)),
            }
        return pd.DataFrame.from_dict(rows, orient="index")

    def plot_overlap(self, ax: Any = None, bins: int = 30) -> Any:
        """Histograms of the propensity scores by arm.

        Parameters
        ----------
        ax : matplotlib.axes.Axes, optional
            Axes to draw on; a new figure is made when omitted.
        bins : int
            Number of histogram bins over [0, 1].

        Returns
        -------
        matplotlib.axes.Axes
        """
        ax = _axes(ax)
        edges = np.linspace(0, 1, bins + 1)
        for arm, label, colour in ((0, "control", "tab:blue"), (1, "treated", "tab:orange")):
            ax.hist(
                self.scores[self.treatment == arm],
                bins=edges,
                alpha=0.5,
                density=True,
                label=label,
                color=colour,
            )
        for x in OVERLAP_BAND:
            ax.axvline(x, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("propensity")
        ax.set_ylabel("density")
        ax.set_title(f"Overlap ({self.method} propensity)")
        ax.legend()
        return ax


def _axes(ax: Any) -> Any:
    if ax is not None:
        return ax
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - matplotlib is a dependency
        raise ImportError("plotting needs matplotlib: pip install matplotlib") from exc
    _, ax = plt.subplots()
    return ax


def _logistic_cross_fit(
    x: np.ndarray, t: np.ndarray, folds: np.ndarray, C: float | None, inner_folds: int
) -> tuple[np.ndarray, list[float]]:
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    scores = np.empty(len(t))
    chosen: list[float] = []
    for k in np.unique(folds):
        test = folds == k
        if C is None:
            clf = LogisticRegressionCV(Cs=10, cv=inner_folds, scoring="neg_log_loss", max_iter=2000)
        else:
            clf = LogisticRegression(C=C, max_iter=2000)
        with warnings.catch_warnings():
            # scikit-learn 1.8+ announces changes of defaults we do not rely on (l1_ratios,
            # legacy attributes); C_ is read in a way that works before and after.
            warnings.simplefilter("ignore", FutureWarning)
            model = make_pipeline(StandardScaler(), clf).fit(x[~test], t[~test])
        scores[test] = model.predict_proba(x[test])[:, 1]
        fitted = model[-1]
        chosen.append(float(np.ravel(fitted.C_)[0]) if C is None else float(C))
    return scores, chosen


#: Inverse penalties tried by ``estimate_propensity(tune="balance")``.
BALANCE_C_GRID = tuple(float(c) for c in np.logspace(-3, 3, 13))


def _balance_tuned_cross_fit(
    x: np.ndarray, t: np.ndarray, folds: np.ndarray, clip: float
) -> tuple[np.ndarray, float, dict[float, float]]:
    """Cross-fitted scores for each C on the grid; keep the C whose clipped scores give the
    smallest max |SMD| after IPW weighting."""
    imbalance: dict[float, float] = {}
    best: tuple[float, float, np.ndarray] | None = None
    for c in BALANCE_C_GRID:
        scores, _ = _logistic_cross_fit(x, t, folds, c, 0)
        weights = _ipw_weights(t, np.clip(scores, clip, 1 - clip))
        imbalance[c] = float(np.nanmax(np.abs(_smd(x, t, weights))))
        if best is None or imbalance[c] < best[0]:
            best = (imbalance[c], c, scores)
    assert best is not None
    return best[2], best[1], imbalance


def _bayes_logistic_model(features, treatment=None):
    """Logistic regression with a half-normal global scale on Normal coefficients."""
    import numpyro
    import numpyro.distributions as dist

    n_feature = features.shape[1]
    intercept = numpyro.sample("intercept", dist.Normal(0.0, 2.5))
    tau = numpyro.sample("tau", dist.HalfNormal(1.0))
    with numpyro.plate("feature", n_feature):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
    beta = numpyro.deterministic("beta", tau * z)
    logit = intercept + features @ beta
    with numpyro.plate("unit", features.shape[0]):
        numpyro.sample("treatment", dist.Bernoulli(logits=logit), obs=treatment)


def _bayes_propensity(
    x: np.ndarray,
    t: np.ndarray,
    seed: int,
    num_warmup: int,
    num_samples: int,
    num_chains: int,
    progress_bar: bool,
) -> tuple[np.ndarray, dict[str, Any]]:
    import jax
    import jax.numpy as jnp
    from numpyro.diagnostics import summary
    from numpyro.infer import MCMC, NUTS

    sd = x.std(axis=0)
    xs = (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    mcmc = MCMC(
        NUTS(_bayes_logistic_model, target_accept_prob=0.9),
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        chain_method="sequential",
        progress_bar=progress_bar,
    )
    mcmc.run(jax.random.PRNGKey(seed), jnp.asarray(xs), jnp.asarray(t, dtype=jnp.float32))
    draws = mcmc.get_samples(group_by_chain=True)
    logits = draws["intercept"][..., None] + jnp.einsum("cdf,uf->cdu", draws["beta"], xs)
    scores = np.asarray(jax.nn.sigmoid(logits).mean(axis=(0, 1)), dtype=float)
    summ = summary({k: draws[k] for k in ("intercept", "tau", "z")})
    rhat = max(float(np.nanmax(v["r_hat"])) for v in summ.values())
    divergences = int(np.asarray(mcmc.get_extra_fields()["diverging"]).sum())
    diag = {"max_r_hat": rhat, "divergences": divergences, "num_chains": num_chains}
    if (num_chains > 1 and rhat > 1.05) or divergences > 0:
        warnings.warn(
            f"Bayesian propensity: max R-hat {rhat:.3f}, {divergences} divergent transition(s); "
            "raise num_warmup/num_samples or check the features for collinearity.",
            ConvergenceWarning,
            stacklevel=3,
        )
    return scores, diag


def estimate_propensity(
    features: Any,
    treatment: Any,
    *,
    method: PropensityMethod = "logistic",
    n_folds: int = 5,
    C: float | None = None,
    tune: Literal["balance", "log_loss"] = "balance",
    inner_folds: int = 3,
    clusters: Any = None,
    seed: int,
    clip: float = 1e-3,
    num_warmup: int = 500,
    num_samples: int = 500,
    num_chains: int = 2,
    progress_bar: bool = False,
) -> Propensity:
    """Estimate propensity scores from image embeddings and covariates.

    Parameters
    ----------
    features : array-like
        Shape (unit, feature): embeddings and covariates stacked column-wise (e.g.
        ``np.hstack([emb.for_keys(trial.image_keys), trial.covariate_matrix])``).
    treatment : array-like
        Shape (unit,), binary 0/1.
    method : {"logistic", "bayes"}
        ``"logistic"``: L2-penalized logistic regression on standardized features, **cross-fitted**
        (each unit's score comes from a model not trained on its fold), penalty chosen by
        ``tune`` unless ``C`` is given.
        ``"bayes"``: logistic regression with Normal(0, tau) coefficients and a half-normal global
        scale tau, fitted with NUTS; returns posterior-mean propensities (in-sample).
    n_folds : int
        Cross-fitting folds (``"logistic"``).
    C : float, optional
        Fixed inverse penalty; ``None`` chooses it as ``tune`` says.
    tune : {"balance", "log_loss"}
        How ``C`` is chosen when not given. ``"balance"`` (default): the value on the grid
        ``BALANCE_C_GRID`` whose cross-fitted scores give the smallest maximum absolute
        standardized mean difference of the features after IPW weighting (the propensity is
        tuned for the balance it is used for, as in twang's balance stopping rules).
        ``"log_loss"``: ``LogisticRegressionCV`` within each training fold, which predicts
        treatment best but shrinks the scores towards 0.5 and leaves confounding behind
        (measured: IPW bias +0.2 on chip-confounded scene trials; see docs/confounding.md).
    inner_folds : int
        Folds of the inner cross-validation for ``tune="log_loss"``.
    clusters : array-like, optional
        Shape (unit,): cluster ids; whole clusters are kept in one fold.
    seed : int
        Random seed (fold assignment, MCMC key).
    clip : float
        Scores are clipped to ``[clip, 1 - clip]``.
    num_warmup, num_samples, num_chains : int
        NUTS settings (``"bayes"``); chains run sequentially.
    progress_bar : bool
        Show the NUTS progress bar.

    Returns
    -------
    Propensity
        Scores (unit,) with method, clipping count and diagnostics.

    Raises
    ------
    InputError
        On non-binary treatment, mismatched lengths, non-finite features or bad options.

    Warns
    -----
    OverlapWarning
        When some scores fall below 0.01 or above 0.99.
    ConvergenceWarning
        When the NUTS fit has R-hat above 1.05 or divergences.

    Examples
    --------
    >>> sim = simulate_confounded(seed=0, n_units=300)
    >>> ps = estimate_propensity(sim.features, sim.treatment, seed=0)
    >>> ps.scores.shape
    (300,)
    """
    check_choice("method", method, ("logistic", "bayes"))
    x = as_features(features)
    t = as_treatment(treatment).astype(np.int8)
    n = check_lengths(features=x, treatment=t)
    if not 0 < clip < 0.5:
        raise InputError(f"clip={clip!r} must lie in (0, 0.5), e.g. 1e-3.")
    rng = rng_from_seed(seed)
    check_choice("tune", tune, ("balance", "log_loss"))
    if method == "logistic":
        folds = _fold_ids(t, n_folds, rng, cluster_codes(clusters, n, min_clusters=2))
        diagnostics: dict[str, Any] = {"n_folds": n_folds}
        if C is None and tune == "balance":
            raw, C_best, imbalance = _balance_tuned_cross_fit(x, t, folds, clip)
            chosen = [C_best] * len(np.unique(folds))
            diagnostics["max_abs_smd_by_C"] = imbalance
        else:
            raw, chosen = _logistic_cross_fit(x, t, folds, C, inner_folds)
        diagnostics["C_by_fold"] = chosen
    else:
        raw, diagnostics = _bayes_propensity(
            x, t, int(seed), num_warmup, num_samples, num_chains, progress_bar
        )
    _warn_extreme(raw)
    scores = np.clip(raw, clip, 1 - clip)
    n_clipped = int(np.sum(scores != raw))
    return Propensity(scores, t, method, float(clip), n_clipped, diagnostics)


def _warn_extreme(scores: np.ndarray) -> None:
    extreme = (scores < EXTREME_PROPENSITY) | (scores > 1 - EXTREME_PROPENSITY)
    if extreme.any():
        warnings.warn(
            f"{int(extreme.sum())} of {len(scores)} propensity scores lie outside "
            f"[{EXTREME_PROPENSITY}, {1 - EXTREME_PROPENSITY}] (min {scores.min():.2g}, "
            f"max {scores.max():.2g}); weights will be extreme. Check overlap_summary() and "
            "consider trim(...).",
            OverlapWarning,
            stacklevel=3,
        )


# --------------------------------------------------------------------------------------------
# trimming
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrimResult:
    """Which units to keep after trimming on the propensity score.

    Attributes
    ----------
    keep : numpy.ndarray
        Boolean mask, shape (unit,): ``alpha <= e <= 1 - alpha``.
    alpha : float
        The trimming threshold (0 means nothing was trimmed).
    rule : str
        ``"crump"`` or ``"fixed"``.
    n_dropped : int
        Number of units dropped.
    n_dropped_by_arm : dict
        Units dropped among controls and treated (when the treatment is known).
    """

    keep: np.ndarray
    alpha: float
    rule: str
    n_dropped: int
    n_dropped_by_arm: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        return (
            f"trimmed {self.n_dropped} of {len(self.keep)} units ({self.rule} rule, "
            f"keep {self.alpha:.4f} <= e <= {1 - self.alpha:.4f})"
        )


def crump_alpha(scores: Any) -> float:
    """The Crump, Hotz, Imbens & Mitnik (2009) optimal trimming threshold.

    With ``g = 1 / (e (1 - e))``, alpha is 0 when ``max g <= 2 E[g]``; otherwise
    ``gamma = 1 / (alpha (1 - alpha))`` solves ``gamma = 2 E[g | g <= gamma]``, the first-order
    condition of the variance bound ``E[g | g <= gamma] / P(g <= gamma)``. In the sample the
    equation is solved exactly (``gamma = 2 mean(g_(1..k))`` lying in ``[g_(k), g_(k+1))``); when it
    has several roots, the one with the smallest variance bound is taken.

    Parameters
    ----------
    scores : array-like
        Propensity scores in (0, 1), shape (unit,).

    Returns
    -------
    float
        alpha in [0, 0.5).

    Raises
    ------
    InputError
        When a score is not strictly inside (0, 1).

    Examples
    --------
    >>> crump_alpha([0.3, 0.4, 0.5, 0.6])
    0.0
    """
    e = as_propensity(scores)
    g = np.sort(1 / (e * (1 - e)))
    if g[-1] <= 2 * g.mean():
        return 0.0
    k = np.arange(1, len(g) + 1)
    cumsum = np.cumsum(g)
    cummean = cumsum / k
    # gamma = 2 * cummean[k] is a root when it lies in [g[k], g[k + 1]).
    roots = np.flatnonzero((g[:-1] <= 2 * cummean[:-1]) & (2 * cummean[:-1] < g[1:]))
    best = roots[np.argmin(cumsum[roots] / k[roots] ** 2)]
    gamma = 2 * cummean[best]
    return float(0.5 - np.sqrt(0.25 - 1 / gamma))


def trim(propensity: Propensity | Any, rule: Literal["crump"] | float = "crump") -> TrimResult:
    """Keep units with propensity in ``[alpha, 1 - alpha]``.

    Parameters
    ----------
    propensity : Propensity or array-like
        Scores in (0, 1), shape (unit,).
    rule : "crump" or float
        ``"crump"``: the optimal threshold of Crump et al. (2009) (:func:`crump_alpha`);
        a float in (0, 0.5): a fixed threshold (0.1 is the usual rule of thumb).

    Returns
    -------
    TrimResult
        The keep mask, the threshold and the number of units dropped (also by arm when
        ``propensity`` is a :class:`Propensity`). The estimand of a trimmed analysis is the
        average effect among the kept units.

    Raises
    ------
    InputError
        On scores outside (0, 1) or an unknown rule.

    Examples
    --------
    >>> import numpy as np
    >>> trim(np.array([0.02, 0.3, 0.5, 0.97]), rule=0.05).n_dropped
    2
    """
    e = _propensity_array(propensity)
    if isinstance(rule, str):
        check_choice("rule", rule, ("crump",))
        alpha, name = crump_alpha(e), "crump"
    else:
        if not 0 < float(rule) < 0.5:
            raise InputError(f"rule={rule!r}: a fixed threshold must lie in (0, 0.5), e.g. 0.1.")
        alpha, name = float(rule), "fixed"
    keep = (e >= alpha) & (e <= 1 - alpha)
    by_arm = {}
    if isinstance(propensity, Propensity):
        t = propensity.treatment
        by_arm = {
            "control": int(np.sum(~keep & (t == 0))),
            "treated": int(np.sum(~keep & (t == 1))),
        }
    return TrimResult(keep, alpha, name, int((~keep).sum()), by_arm)


# --------------------------------------------------------------------------------------------
# ATE estimators
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AteEstimate:
    """One ATE estimate with its influence-function standard error.

    Attributes
    ----------
    name : str
        ``"difference_in_means"``, ``"ipw_hajek"`` or ``"aipw"``.
    estimate, std_err, ci_lower, ci_upper : float
        Point estimate, standard error and the ``prob`` normal interval.
    prob : float
        Coverage probability of the interval.
    n : int
        Number of units.
    n_clusters : int or None
        Number of clusters when the errors are cluster-robust.
    influence : numpy.ndarray
        Estimated influence function, shape (unit,), mean zero.
    """

    name: str
    estimate: float
    std_err: float
    ci_lower: float
    ci_upper: float
    prob: float
    n: int
    n_clusters: int | None
    influence: np.ndarray

    def tidy(self) -> pd.DataFrame:
        """A one-row DataFrame indexed by estimator name (columns as in :func:`ate_estimates`)."""
        cols = ("estimate", "std_err", "ci_lower", "ci_upper", "n")
        return pd.DataFrame([{c: getattr(self, c) for c in cols}], index=[self.name])


def _from_influence(
    name: str, estimate: float, influence: np.ndarray, clusters: np.ndarray | None, prob: float
) -> AteEstimate:
    n = len(influence)
    if clusters is None:
        se = float(np.sqrt(np.sum(influence**2)) / n)
        n_clusters = None
    else:
        sums = np.bincount(clusters, weights=influence)
        n_clusters = len(sums)
        se = float(np.sqrt(n_clusters / (n_clusters - 1) * np.sum(sums**2)) / n)
    z = stats.norm.ppf(0.5 + prob / 2)
    return AteEstimate(
        name,
        float(estimate),
        se,
        estimate - z * se,
        estimate + z * se,
        prob,
        n,
        n_clusters,
        influence,
    )


def _common(outcome, treatment, propensity=None, clusters=None, prob=0.95):
    y = as_float_array("outcome", outcome, ndim=1)
    t = as_treatment(treatment).astype(np.int8)
    e = None if propensity is None else _propensity_array(propensity)
    n = check_lengths(outcome=y, treatment=t, propensity=e)
    return y, t, e, cluster_codes(clusters, n, min_clusters=2), check_prob(prob)


def difference_in_means(
    outcome: Any, treatment: Any, *, clusters: Any = None, prob: float = 0.95
) -> AteEstimate:
    """Unadjusted difference in mean outcomes, treated minus control.

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
        Biased under confounding; reported as the naive benchmark.

    Raises
    ------
    InputError
        On non-binary treatment or mismatched lengths.

    Examples
    --------
    >>> difference_in_means([1.0, 2.0, 3.0, 5.0], [0, 0, 1, 1]).estimate
    2.5
    """
    y, t, _, codes, prob = _common(outcome, treatment, None, clusters, prob)
    p = t.mean()
    m1, m0 = y[t == 1].mean(), y[t == 0].mean()
    psi = t * (y - m1) / p - (1 - t) * (y - m0) / (1 - p)
    return _from_influence("difference_in_means", m1 - m0, psi, codes, prob)


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
    ``t (y - m1) / (e E[t/e]) - (1-t) (y - m0) / ((1-e) E[(1-t)/(1-e)])``, summed within clusters
    when cluster ids are given; it treats the propensity as known.

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
    y, t, e, codes, prob = _common(outcome, treatment, propensity, clusters, prob)
    w1, w0 = t / e, (1 - t) / (1 - e)
    m1, m0 = np.sum(w1 * y) / w1.sum(), np.sum(w0 * y) / w0.sum()
    psi = w1 * (y - m1) / w1.mean() - w0 * (y - m0) / w0.mean()
    return _from_influence("ipw_hajek", m1 - m0, psi, codes, prob)


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
    deviation of that influence function over sqrt(n), summed within clusters when given.

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
    y, t, e, codes, prob = _common(outcome, treatment, propensity, clusters, prob)
    if (mu0 is None) != (mu1 is None):
        raise InputError("give both mu0 and mu1, or neither (then features are required).")
    if mu0 is None:
        if features is None:
            raise InputError("aipw needs features (to fit outcome models) or both mu0 and mu1.")
        x = as_features(features)
        check_lengths(outcome=y, features=x)
        folds = _fold_ids(t, n_folds, rng_from_seed(seed), codes)
        m0, m1 = _cross_fit_outcome(x, y, t, folds, outcome_model, int(seed))
    else:
        m0 = as_float_array("mu0", mu0, ndim=1)
        m1 = as_float_array("mu1", mu1, ndim=1)
        check_lengths(outcome=y, mu0=m0, mu1=m1)
    phi = aipw_scores(y, t, e, m0, m1)
    tau = phi.mean()
    return _from_influence("aipw", tau, phi - tau, codes, prob)


def ate_estimates(
    outcome: Any,
    treatment: Any,
    propensity: Propensity | Any,
    *,
    features: Any = None,
    clusters: Any = None,
    n_folds: int = 5,
    outcome_model: OutcomeModel | Any = None,
    prob: float = 0.95,
    seed: int,
) -> pd.DataFrame:
    """Difference in means, Hajek IPW and AIPW estimates of the ATE side by side.

    Parameters
    ----------
    outcome : array-like
        Shape (unit,).
    treatment : array-like
        Shape (unit,), binary 0/1.
    propensity : Propensity or array-like
        Scores in (0, 1), shape (unit,).
    features : array-like, optional
        Shape (unit, feature) for the AIPW outcome regressions; without it the AIPW row is omitted.
    clusters : array-like, optional
        Cluster ids, shape (unit,): cluster-robust errors (influence summed within clusters).
    n_folds : int
        Cross-fitting folds for AIPW.
    outcome_model : {"ridge", "lasso", "boosting"} or scikit-learn regressor, optional
        See :func:`aipw`.
    prob : float
        Interval coverage (0.95 by default); stored in ``table.attrs["prob"]``.
    seed : int
        Random seed (fold assignment).

    Returns
    -------
    pandas.DataFrame
        Index ``difference_in_means``, ``ipw_hajek``, ``aipw``; columns ``estimate``,
        ``std_err``, ``ci_lower``, ``ci_upper``, ``n``.

    Raises
    ------
    InputError
        On non-binary treatment, scores outside (0, 1) or mismatched lengths.

    Examples
    --------
    >>> sim = simulate_confounded(seed=0, n_units=400)
    >>> table = ate_estimates(sim.outcome, sim.treatment, sim.truth.propensity, seed=0)
    >>> list(table.columns)
    ['estimate', 'std_err', 'ci_lower', 'ci_upper', 'n']
    """
    results = [
        difference_in_means(outcome, treatment, clusters=clusters, prob=prob),
        hajek_ipw(outcome, treatment, propensity, clusters=clusters, prob=prob),
    ]
    if features is not None:
        results.append(
            aipw(
                outcome,
                treatment,
                propensity,
                features=features,
                clusters=clusters,
                n_folds=n_folds,
                outcome_model=outcome_model,
                prob=prob,
                seed=seed,
            )
        )
    table = pd.concat([r.tidy() for r in results])
    table.attrs["prob"] = prob
    return table


# --------------------------------------------------------------------------------------------
# balance
# --------------------------------------------------------------------------------------------


def _weighted_mean(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    return (w[:, None] * x).sum(axis=0) / w.sum()


def _ipw_weights(t: np.ndarray, e: np.ndarray) -> np.ndarray:
    return np.where(t == 1, 1 / e, 1 / (1 - e))


def _pooled_sd(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Unweighted pooled SD per feature (NaN where it is 0)."""
    x1, x0 = x[t == 1], x[t == 0]
    pooled = np.sqrt((x1.var(axis=0, ddof=1) + x0.var(axis=0, ddof=1)) / 2)
    return np.where(pooled > 0, pooled, np.nan)


def _smd(x: np.ndarray, t: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted standardized mean differences, unweighted pooled SD."""
    diff = _weighted_mean(x[t == 1], w[t == 1]) - _weighted_mean(x[t == 0], w[t == 0])
    return diff / _pooled_sd(x, t)


def balance_table(
    features: Any,
    treatment: Any,
    weights: Propensity | Any = None,
    names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Standardized mean differences of each feature before and after weighting.

    ``SMD = (mean_treated - mean_control) / sqrt((var_treated + var_control) / 2)``, with the
    pooled standard deviation of the *unweighted* sample in both columns so that they are
    comparable. |SMD| below 0.1 is the usual mark of good balance.

    Parameters
    ----------
    features : array-like
        Shape (unit, feature): covariates and/or embedding features.
    treatment : array-like
        Shape (unit,), binary 0/1.
    weights : Propensity or array-like, optional
        Unit weights, shape (unit,); a :class:`Propensity` gives its IPW (ATE) weights.
    names : sequence of str, optional
        Feature names; default ``feature_0``, ``feature_1``, ...

    Returns
    -------
    pandas.DataFrame
        Index: feature names. Columns ``mean_treated``, ``mean_control``, ``smd_before`` and,
        with weights, ``mean_treated_weighted``, ``mean_control_weighted``, ``smd_after``.

    Raises
    ------
    InputError
        On non-binary treatment, mismatched lengths, negative weights or wrong number of names.

    Examples
    --------
    >>> import numpy as np
    >>> tab = balance_table(np.array([[0.0], [1.0], [1.0], [2.0]]), [0, 0, 1, 1])
    >>> round(float(tab.loc["feature_0", "smd_before"]), 3)
    1.414
    """
    x = as_features(features)
    t = as_treatment(treatment).astype(np.int8)
    w = None
    if isinstance(weights, Propensity):
        w = weights.ipw_weights
    elif weights is not None:
        w = as_float_array("weights", weights, ndim=1)
        if (w < 0).any() or w.sum() <= 0:
            raise InputError("weights must be non-negative with a positive sum.")
    check_lengths(features=x, treatment=t, weights=w)
    if names is None:
        names = [f"feature_{j}" for j in range(x.shape[1])]
    if len(names) != x.shape[1]:
        raise InputError(f"names has {len(names)} entries but features has {x.shape[1]} columns.")
    x1, x0 = x[t == 1], x[t == 0]
    table = pd.DataFrame(
        {"mean_treated": x1.mean(axis=0), "mean_control": x0.mean(axis=0)}, index=list(names)
    )
    table["smd_before"] = _smd(x, t, np.ones(len(t)))
    if w is not None:
        table["mean_treated_weighted"] = _weighted_mean(x1, w[t == 1])
        table["mean_control_weighted"] = _weighted_mean(x0, w[t == 0])
        table["smd_after"] = _smd(x, t, w)
    return table


def plot_love(table: pd.DataFrame, ax: Any = None, threshold: float = 0.1) -> Any:
    """Love plot: |SMD| per feature before and (if present) after weighting.

    Parameters
    ----------
    table : pandas.DataFrame
        Output of :func:`balance_table`.
    ax : matplotlib.axes.Axes, optional
        Axes to draw on.
    threshold : float
        Reference line for acceptable balance.

    Returns
    -------
    matplotlib.axes.Axes
    """
    if "smd_before" not in table:
        raise InputError("table must come from balance_table (it has no smd_before column).")
    ax = _axes(ax)
    order = table["smd_before"].abs().sort_values().index
    pos = np.arange(len(order))
    ax.scatter(table.loc[order, "smd_before"].abs(), pos, label="before", marker="o")
    if "smd_after" in table:
        ax.scatter(table.loc[order, "smd_after"].abs(), pos, label="after weighting", marker="x")
    ax.axvline(threshold, color="grey", linestyle=":")
    ax.set_yticks(pos, labels=list(order))
    ax.set_xlabel("|standardized mean difference|")
    ax.legend()
    return ax


# --------------------------------------------------------------------------------------------
# sensitivity to unobserved confounding (Cinelli & Hazlett 2020)
# --------------------------------------------------------------------------------------------


def robustness_value(t_stat: float, dof: int, q: float = 1.0, alpha: float | None = None) -> float:
    """Robustness value RV_q (or RV_{q,alpha}) of Cinelli & Hazlett (2020).

    The minimum partial R-squared that a confounder must have with both treatment and outcome to
    reduce the estimate by ``100 q`` percent (or, with ``alpha``, to make the reduced estimate
    insignificant at level ``alpha``). With ``f_q = q |t| / sqrt(dof)``:
    ``RV_q = (sqrt(f_q^4 + 4 f_q^2) - f_q^2) / 2``; for ``alpha``, ``f_q`` is replaced by
    ``f_q - |t*_{alpha/2, dof-1}| / sqrt(dof - 1)`` (0 when negative; when
    ``f_q > 1 / f_crit`` the unconstrained solution ``(f_q^2 - f_crit^2) / (1 + f_q^2)`` applies).

    Parameters
    ----------
    t_stat : float
        t-statistic of the treatment coefficient.
    dof : int
        Residual degrees of freedom of the regression.
    q : float
        Fraction of the estimate to explain away (1 = bring it to zero).
    alpha : float, optional
        Significance level for RV_{q,alpha}.

    Returns
    -------
    float
        In [0, 1].

    Examples
    --------
    >>> round(robustness_value(4.18445, 783), 4)
    0.1388
    """
    if q <= 0:
        raise InputError(f"q={q!r} must be positive.")
    fq = q * abs(t_stat) / np.sqrt(dof)
    if alpha is None:
        return float(0.5 * (np.sqrt(fq**4 + 4 * fq**2) - fq**2))
    if not 0 < alpha < 1:
        raise InputError(f"alpha={alpha!r} must lie in (0, 1).")
    f_crit = abs(stats.t.ppf(alpha / 2, dof - 1)) / np.sqrt(dof - 1)
    fqa = fq - f_crit
    if fqa <= 0:
        return 0.0
    if fq > 1 / f_crit:
        return float((fq**2 - f_crit**2) / (1 + fq**2))
    return float(0.5 * (np.sqrt(fqa**4 + 4 * fqa**2) - fqa**2))


def _ols(y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Coefficients, classical standard errors and residual dof of y on x (x has the constant)."""
    coef, _, rank, _ = np.linalg.lstsq(x, y, rcond=None)
    dof = len(y) - x.shape[1]
    if rank < x.shape[1]:
        raise InputError(
            "the covariates are collinear with each other or the treatment; drop redundant ones."
        )
    if dof < 2:
        raise InputError(f"too few units ({len(y)}) for {x.shape[1] - 1} regressors.")
    resid = y - x @ coef
    sigma2 = resid @ resid / dof
    se = np.sqrt(sigma2 * np.diag(np.linalg.inv(x.T @ x)))
    return coef, se, dof


def _partial_r2(t_stat: np.ndarray | float, dof: int) -> np.ndarray | float:
    return t_stat**2 / (t_stat**2 + dof)


def _benchmark_bound(r2dxj: float, r2yxj: float, kd: float, ky: float) -> tuple[float, float]:
    """(R2_{D~Z|X}, R2_{Y~Z|D,X}) of a confounder kd/ky times as strong as covariate j."""
    r2dz = kd * r2dxj / (1 - r2dxj)
    denom = (1 - kd * r2dxj) * (1 - r2dxj)
    if r2dz >= 1 or denom <= 0:
        return float("nan"), float("nan")
    r2zxj = kd * r2dxj**2 / denom
    if r2zxj >= 1:
        return float(r2dz), float("nan")
    r2yz = ((np.sqrt(ky) + np.sqrt(r2zxj)) / np.sqrt(1 - r2zxj)) ** 2 * r2yxj / (1 - r2yxj)
    return float(r2dz), float(min(r2yz, 1.0))


def _adjusted(
    estimate: float, se: float, dof: int, r2dz: Any, r2yz: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Estimate and standard error after removing the bias of a confounder (r2dz, r2yz)."""
    r2dz, r2yz = np.asarray(r2dz, dtype=float), np.asarray(r2yz, dtype=float)
    bias = se * np.sqrt(dof) * np.sqrt(r2yz * r2dz / (1 - r2dz))
    adj = np.sign(estimate) * (abs(estimate) - bias)
    adj_se = se * np.sqrt(dof / (dof - 1)) * np.sqrt((1 - r2yz) / (1 - r2dz))
    return adj, adj_se


@dataclass(frozen=True)
class ConfoundingSensitivity:
    """Sensitivity of an OLS treatment effect to an unobserved confounder Z.

    Attributes
    ----------
    estimate, std_err, t_stat : float
        Treatment coefficient of ``outcome ~ 1 + treatment + covariates``, its classical
        standard error and t-statistic.
    dof : int
        Residual degrees of freedom.
    partial_r2 : float
        R2_{Y~D|X}: share of residual outcome variance explained by the treatment; also the
        smallest R2_{D~Z|X} that a confounder explaining all the outcome residual needs to
        explain the effect away.
    rv_q, rv_qa : float
        Robustness values RV_q and RV_{q,alpha}.
    q, alpha : float
        The fraction of the estimate to explain away and the significance level.
    bounds : pandas.DataFrame
        One row per (benchmark, kd): ``benchmark``, ``kd``, ``ky``, ``r2dz_x``, ``r2yz_dx``,
        ``adjusted_estimate``, ``adjusted_se``, ``adjusted_t``, ``adjusted_lower``,
        ``adjusted_upper`` (1 - alpha interval).
    """

    estimate: float
    std_err: float
    t_stat: float
    dof: int
    partial_r2: float
    rv_q: float
    rv_qa: float
    q: float
    alpha: float
    bounds: pd.DataFrame

    def summary(self) -> pd.DataFrame:
        """One-row DataFrame of the estimate and its sensitivity statistics.

        Returns
        -------
        pandas.DataFrame
            Columns ``estimate``, ``std_err``, ``t_stat``, ``dof``, ``partial_r2_yd_x``,
            ``rv_q``, ``rv_qa``, ``q``, ``alpha``; index ``treatment``.
        """
        row = {
            "estimate": self.estimate,
            "std_err": self.std_err,
            "t_stat": self.t_stat,
            "dof": self.dof,
            "partial_r2_yd_x": self.partial_r2,
            "rv_q": self.rv_q,
            "rv_qa": self.rv_qa,
            "q": self.q,
            "alpha": self.alpha,
        }
        return pd.DataFrame([row], index=["treatment"])

    def adjusted_estimate(self, r2dz_x: Any, r2yz_dx: Any) -> np.ndarray:
        """Estimate after removing the bias of a confounder with the given partial R2 values."""
        return _adjusted(self.estimate, self.std_err, self.dof, r2dz_x, r2yz_dx)[0]

    def plot_contour(self, ax: Any = None, lim: float | None = None, levels: int = 12) -> Any:
        """Contours of the adjusted estimate over confounder strength, with benchmarks.

        Parameters
        ----------
        ax : matplotlib.axes.Axes, optional
            Axes to draw on.
        lim : float, optional
            Upper limit of both axes (partial R2); default covers the benchmarks.
        levels : int
            Number of contour levels.

        Returns
        -------
        matplotlib.axes.Axes
        """
        ax = _axes(ax)
        finite = self.bounds[["r2dz_x", "r2yz_dx"]].to_numpy(dtype=float)
        finite = finite[np.isfinite(finite).all(axis=1)]
        if lim is None:
            top = finite.max() * 1.2 if len(finite) else 0.0
            lim = float(min(max(0.4, top), 0.99))
        grid = np.linspace(0, lim, 101)
        dz, yz = np.meshgrid(grid, grid)
        adj = self.adjusted_estimate(dz, yz)
        cs = ax.contour(dz, yz, adj, levels=levels, colors="black", linewidths=0.8)
        ax.clabel(cs, fontsize=7)
        if adj.min() < 0 < adj.max() or adj.min() <= 0:
            ax.contour(dz, yz, adj, levels=[0.0], colors="red", linestyles="--", linewidths=1.5)
        ax.plot(0, 0, marker="^", color="black")
        ax.annotate(f"unadjusted ({self.estimate:.3g})", (0, 0), fontsize=8)
        for row in self.bounds.itertuples():
            if np.isfinite(row.r2dz_x) and np.isfinite(row.r2yz_dx):
                ax.plot(row.r2dz_x, row.r2yz_dx, marker="D", color="red")
                ax.annotate(
                    f"{row.kd:g}x {row.benchmark} ({row.adjusted_estimate:.3g})",
                    (row.r2dz_x, row.r2yz_dx),
                    fontsize=8,
                )
        ax.set_xlabel("partial R² of confounder with treatment (R²_{D~Z|X})")
        ax.set_ylabel("partial R² of confounder with outcome (R²_{Y~Z|D,X})")
        ax.set_xlim(0, lim)
        ax.set_ylim(0, lim)
        return ax


def _benchmark_positions(benchmark: Any, names: Sequence[str]) -> list[int]:
    if benchmark is None:
        return []
    items = [benchmark] if isinstance(benchmark, str | int | np.integer) else list(benchmark)
    positions = []
    for b in items:
        if isinstance(b, str):
            if b not in names:
                raise InputError(f"benchmark {b!r} is not a covariate name; use one of {names}.")
            positions.append(list(names).index(b))
        elif 0 <= int(b) < len(names):
            positions.append(int(b))
        else:
            raise InputError(f"benchmark {b!r} is not a covariate position (0..{len(names) - 1}).")
    return positions


def confounding_sensitivity(
    outcome: Any,
    treatment: Any,
    covariates: Any,
    *,
    benchmark: str | int | Sequence[str | int] | None = None,
    names: Sequence[str] | None = None,
    q: float = 1.0,
    alpha: float = 0.05,
    kd: float | Sequence[float] = (1, 2, 3),
    ky: float | Sequence[float] | None = None,
) -> ConfoundingSensitivity:
    """Sensitivity of the OLS treatment effect to unobserved confounding (Cinelli & Hazlett 2020).

    Fits ``outcome ~ 1 + treatment + covariates`` by OLS and reports the treatment's partial R2,
    the robustness values RV_q and RV_{q,alpha}, and, for each benchmark covariate X_j and
    multiplier kd, the strength of a confounder "kd times as strong as X_j" (from X_j's partial
    R2 with the treatment given the other covariates, and with the outcome given treatment and the
    other covariates) together with the estimate adjusted for such a confounder.

    Parameters
    ----------
    outcome : array-like
        Shape (unit,).
    treatment : array-like
        Shape (unit,), binary 0/1.
    covariates : array-like
        Shape (unit, covariate): observed controls (covariates and/or embedding features).
    benchmark : str, int or sequence, optional
        Covariate(s) to benchmark against, by name (with ``names``) or position.
    names : sequence of str, optional
        Covariate names; default ``covariate_0``, ...
    q : float
        Fraction of the estimate to be explained away (1 = bring it to zero).
    alpha : float
        Significance level for RV_{q,alpha} and the adjusted intervals.
    kd : float or sequence of float
        Multipliers of the benchmark's association with the treatment.
    ky : float or sequence of float, optional
        Multipliers of its association with the outcome; default equal to ``kd``.

    Returns
    -------
    ConfoundingSensitivity
        With ``summary()``, ``bounds`` and ``plot_contour()``.

    Raises
    ------
    InputError
        On non-binary treatment, mismatched lengths, collinear covariates or unknown benchmarks.

    Examples
    --------
    >>> sim = simulate_confounded(seed=0, n_units=300)
    >>> res = confounding_sensitivity(sim.outcome, sim.treatment, sim.features[:, :3],
    ...                               benchmark=0)
    >>> res.bounds.shape[0]
    3
    """
    y = as_float_array("outcome", outcome, ndim=1)
    t = as_treatment(treatment)
    x = as_features(covariates, "covariates")
    n = check_lengths(outcome=y, treatment=t, covariates=x)
    names = [f"covariate_{j}" for j in range(x.shape[1])] if names is None else list(names)
    if len(names) != x.shape[1]:
        raise InputError(f"names has {len(names)} entries but covariates has {x.shape[1]} columns.")
    positions = _benchmark_positions(benchmark, names)
    kds = np.atleast_1d(np.asarray(kd, dtype=float))
    kys = kds if ky is None else np.broadcast_to(np.asarray(ky, dtype=float), kds.shape)
    const = np.ones((n, 1))
    coef, se, dof = _ols(y, np.hstack([const, t[:, None], x]))
    est, est_se = float(coef[1]), float(se[1])
    t_stat = est / est_se
    rows = []
    if positions:
        coef_d, se_d, dof_d = _ols(t, np.hstack([const, x]))
        t_y, t_d = coef[2:] / se[2:], coef_d[1:] / se_d[1:]
        crit = stats.t.ppf(1 - alpha / 2, dof - 1)
        for j in positions:
            r2dxj, r2yxj = _partial_r2(t_d[j], dof_d), _partial_r2(t_y[j], dof)
            for k_d, k_y in zip(kds, kys, strict=True):
                r2dz, r2yz = _benchmark_bound(r2dxj, r2yxj, k_d, k_y)
                adj, adj_se = _adjusted(est, est_se, dof, r2dz, r2yz)
                with np.errstate(divide="ignore", invalid="ignore"):
                    adj_t = adj / adj_se  # r2yz_dx = 1 leaves no residual: se 0, t infinite
                rows.append(
                    {
                        "benchmark": names[j],
                        "kd": k_d,
                        "ky": k_y,
                        "r2dz_x": r2dz,
                        "r2yz_dx": r2yz,
                        "adjusted_estimate": float(adj),
                        "adjusted_se": float(adj_se),
                        "adjusted_t": float(adj_t),
                        "adjusted_lower": float(adj - crit * adj_se),
                        "adjusted_upper": float(adj + crit * adj_se),
                    }
                )
    columns = [
        "benchmark",
        "kd",
        "ky",
        "r2dz_x",
        "r2yz_dx",
        "adjusted_estimate",
        "adjusted_se",
        "adjusted_t",
        "adjusted_lower",
        "adjusted_upper",
    ]
    return ConfoundingSensitivity(
        estimate=est,
        std_err=est_se,
        t_stat=float(t_stat),
        dof=int(dof),
        partial_r2=float(_partial_r2(t_stat, dof)),
        rv_q=robustness_value(t_stat, dof, q),
        rv_qa=robustness_value(t_stat, dof, q, alpha),
        q=float(q),
        alpha=float(alpha),
        bounds=pd.DataFrame(rows, columns=columns),
    )


# ---------------------------------------------------------------------------------------------
# Resolution check
# ---------------------------------------------------------------------------------------------


def resolution_check(
    trial: Any,
    chips: Any,
    factors: Sequence[int] = (1, 2, 4),
    *,
    n_features: int = 128,
    n_components: int = 8,
    n_folds: int = 5,
    prob: float = 0.95,
    seed: int,
) -> pd.DataFrame:
    """The same confounder adjustment with the images at coarser resolutions, side by side.

    What an image can reveal about confounders depends on its resolution: roads and roofs
    that a 30 m pixel shows may vanish at 250 m. For each factor the chips are coarsened by
    block means (same footprint, ``factor`` times larger pixels), embedded afresh with the
    default encoder, and the propensity, Hajek IPW and AIPW are estimated from the embedding
    and the trial's covariates.

    Parameters
    ----------
    trial : Trial
        Units with treatment, outcome and covariates (aligned with ``chips``: subset it with
        ``trial.subset(chips.kept)`` after ``on_edge="drop"``).
    chips : Chips
        Chips of the units at the finest resolution (from :func:`imgcate.chips.extract_chips`).
    factors : sequence of int
        Coarsening factors; each must divide the chip size.
    n_features, n_components : int
        Encoder size (random features, PCA components).
    n_folds : int
        Cross-fitting folds.
    prob : float
        Interval probability.
    seed : int
        Seed of the encoder and of the cross-fitting.

    Returns
    -------
    pandas.DataFrame
        One row per (factor, estimator): ``factor``, ``pixel_size`` (in CRS units, NaN for
        in-memory chips), ``estimator`` (difference_in_means, ipw_hajek, aipw), ``estimate``,
        ``std_err``, ``ci_lower``, ``ci_upper``, ``max_abs_smd_after`` (embedding and covariate
        balance after IPW weighting) and ``propensity_auc``.
    """
    from sklearn.metrics import roc_auc_score

    from imgcate.embeddings import embed

    treatment = as_treatment(trial.treatment_array).astype(np.int8)
    outcome = trial.outcome_array
    rows = []
    for factor in factors:
        coarse = chips.coarsen(int(factor))
        emb = embed(coarse, "rcf", n_features=n_features, n_components=n_components, seed=seed)
        features = np.column_stack([emb.for_keys(trial.image_keys), trial.covariate_matrix])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OverlapWarning)
            ps = estimate_propensity(features, treatment, n_folds=n_folds, seed=seed)
        table = ate_estimates(
            outcome, treatment, ps, features=features, n_folds=n_folds, prob=prob, seed=seed
        )
        balance = balance_table(features, treatment, weights=ps)
        pixel = abs(coarse.transforms[0].a) if coarse.transforms else np.nan
        for estimator, row in table.iterrows():
            rows.append(
                {
                    "factor": int(factor),
                    "pixel_size": pixel,
                    "estimator": estimator,
                    "estimate": row["estimate"],
                    "std_err": row["std_err"],
                    "ci_lower": row["ci_lower"],
                    "ci_upper": row["ci_upper"],
                    "max_abs_smd_after": float(balance["smd_after"].abs().max()),
                    "propensity_auc": float(roc_auc_score(treatment, ps.scores)),
                }
            )
    return pd.DataFrame(rows)
