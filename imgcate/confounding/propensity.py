"""Propensity scores from image embeddings and covariates, with overlap diagnostics.

:func:`estimate_propensity` fits P(treatment = 1 | features): by default the covariate-balancing
propensity score (a logistic model whose weights balance every feature exactly), or cross-fitted
penalized logistic regression, or a Bayesian logistic model with shrinkage priors;
:class:`Propensity` holds the scores with :meth:`~Propensity.overlap_summary` and
:meth:`~Propensity.plot_overlap`, and the model's estimating equations so that the ATE
estimators' standard errors account for the estimation.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from imgcate.confounding.balancing import (
    CBPS_AUTO_C_GRID,
    cbps_equations,
    fit_cbps,
    separated_message,
)
from imgcate.confounding.mestimation import (
    EstimatingEquations,
    design_matrix,
    logistic_equations,
)
from imgcate.confounding.weights import ipw_weights, smd
from imgcate.errors import (
    ConvergenceWarning,
    InputError,
    OverlapWarning,
    PropensityBalanceWarning,
    SeparationError,
)
from imgcate.optional import axes
from imgcate.validation import (
    as_features,
    as_propensity,
    as_treatment,
    check_choice,
    check_lengths,
    cluster_codes,
    rng_from_seed,
)

PropensityMethod = Literal["cbps", "logistic", "bayes"]


#: Propensities closer than this to 0 or 1 raise an :class:`OverlapWarning`.
EXTREME_PROPENSITY = 0.01


#: The conventional overlap band reported by :meth:`Propensity.overlap_summary`.
OVERLAP_BAND = (0.05, 0.95)


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
        ``"cbps"`` (covariate balancing), ``"logistic"`` (cross-fitted) or ``"bayes"``
        (posterior mean).
    clip : float
        The clipping bound used.
    n_clipped : int
        Number of scores that were moved by clipping.
    diagnostics : dict
        Method details: chosen penalties per fold, Newton iterations, or R-hat / divergences of
        the posterior; for every method ``max_abs_smd``, the largest |standardized mean
        difference| of a feature between the arms after weighting by the scores.
    equations : EstimatingEquations or None
        The fitted model's estimating equations (``"cbps"`` and ``"logistic"``), which
        :func:`~imgcate.confounding.hajek_ipw` and :func:`~imgcate.confounding.aipw` use to
        account for the estimated propensity in their standard errors; None for ``"bayes"``
        (the scores are then treated as known).
    """

    scores: np.ndarray
    treatment: np.ndarray
    method: str
    clip: float
    n_clipped: int = 0
    diagnostics: dict[str, Any] = field(default_factory=dict)
    equations: EstimatingEquations | None = field(default=None, repr=False)

    @property
    def ipw_weights(self) -> np.ndarray:
        """Inverse-probability (ATE) weights ``t / e + (1 - t) / (1 - e)``, shape (unit,)."""
        return ipw_weights(self.treatment, self.scores)

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
        ax = axes(ax)
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


def propensity_scores(propensity: Propensity | Any) -> np.ndarray:
    if isinstance(propensity, Propensity):
        return propensity.scores
    return as_propensity(propensity)


def fold_ids(
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
        weights = ipw_weights(t, np.clip(scores, clip, 1 - clip))
        imbalance[c] = float(np.nanmax(np.abs(smd(x, t, weights))))
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


def _logistic_equations(
    x: np.ndarray, t: np.ndarray, chosen: list[float], n_folds: int, raw: np.ndarray, clip: float
) -> EstimatingEquations:
    """The cross-fitted logistic model's equations: a full-sample fit with the per-unit penalty
    of the fold models (``C`` times the training share), linearized at the cross-fitted scores
    (each fold's coefficients are a full-sample fit's to first order)."""
    from sklearn.linear_model import LogisticRegression

    design = design_matrix(x)
    C_fold = float(np.exp(np.mean(np.log(chosen))))
    C_full = C_fold * (n_folds - 1) / n_folds
    model = LogisticRegression(C=C_full, max_iter=5000, tol=1e-10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model.fit(design[:, 1:], t)
    coef = np.r_[model.intercept_, model.coef_.ravel()]
    fitted = model.predict_proba(design[:, 1:])[:, 1]
    free = (raw > clip) & (raw < 1 - clip)
    scores = np.clip(raw, clip, 1 - clip)
    return logistic_equations(design, t, fitted, coef, C_full, scores, free)


def _positive_C(C: Any) -> float:
    try:
        value = float(C)
    except (TypeError, ValueError):
        value = float("nan")
    if not value > 0:
        raise InputError(f"C={C!r} must be a positive number, 'auto' or None.")
    return value


def _cbps(
    x: np.ndarray, t: np.ndarray, C: float | str | None, clip: float
) -> tuple[np.ndarray, dict[str, Any], EstimatingEquations]:
    from scipy.special import expit

    design = design_matrix(x)
    if C == "auto":  # exact if it can be, else the weakest penalty on the grid that has a solution
        for candidate in (None, *CBPS_AUTO_C_GRID):
            try:
                beta, info = fit_cbps(design, t.astype(float), candidate)
            except SeparationError:
                continue
            if info["max_abs_gradient"] < 1e-7:  # converged, not stopped at the step limit
                C = candidate
                break
        else:
            raise SeparationError(separated_message("auto"))
    else:
        beta, info = fit_cbps(design, t.astype(float), C)
    raw = expit(design @ beta)
    free = (raw > clip) & (raw < 1 - clip)
    scores = np.clip(raw, clip, 1 - clip)
    info["C"] = C
    return raw, info, cbps_equations(design, t.astype(float), beta, C, scores, free)


def estimate_propensity(
    features: Any,
    treatment: Any,
    *,
    method: PropensityMethod = "cbps",
    n_folds: int = 5,
    C: float | Literal["auto"] | None = None,
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
    method : {"cbps", "logistic", "bayes"}
        ``"cbps"`` (default): the covariate-balancing propensity score of Imai & Ratkovic
        (2014), exactly identified for the ATE: a logistic model on the standardized features
        whose inverse-probability weights make the weighted mean of every feature equal in
        both arms (with ``C``, an L2 penalty makes the balance approximate). Fitted on all
        units, by Newton's method on Zhao's (2019) convex loss. It does not chase the noise of
        many feature columns the way a tuned penalty does, and Hajek IPW with it is
        consistent when either the logit of the propensity or the untreated and treated
        outcomes are linear in the features (see docs/confounding.md for the measured
        comparison).
        ``"logistic"``: L2-penalized logistic regression on standardized features, **cross-fitted**
        (each unit's score comes from a model not trained on its fold), penalty chosen by
        ``tune`` unless ``C`` is given.
        ``"bayes"``: logistic regression with Normal(0, tau) coefficients and a half-normal global
        scale tau, fitted with NUTS; returns posterior-mean propensities (in-sample).
    n_folds : int
        Cross-fitting folds (``"logistic"``).
    C : float or "auto", optional
        Fixed inverse penalty (per unit: the penalty is ``||beta||^2 / (2 C)`` on the summed
        loss, as in scikit-learn); ``None``: exact balance for ``"cbps"``, chosen as ``tune``
        says for ``"logistic"``. ``"auto"`` (``"cbps"`` only): exact balance where the
        features allow it, else the weakest penalty of
        :data:`imgcate.confounding.balancing.CBPS_AUTO_C_GRID` (10 down to 0.001) that has a
        solution, the nearest to exact balance (``diagnostics["C"]`` says which; the penalty
        is per unit, so at large n even 0.001 is weak). A stronger penalty than needed shrinks
        the scores towards the treated share and leaves confounding behind
        (docs/confounding.md, "The ATE where the arms barely overlap").
    tune : {"balance", "log_loss"}
        How ``C`` is chosen for ``"logistic"`` when not given. ``"balance"`` (default): the
        value on the grid ``BALANCE_C_GRID`` whose cross-fitted scores give the smallest
        maximum absolute standardized mean difference of the features after IPW weighting.
        ``"log_loss"``: ``LogisticRegressionCV`` within each training fold, which predicts
        treatment best but shrinks the scores towards 0.5 and leaves confounding behind
        (measured: IPW bias +0.2 on chip-confounded scene trials; see docs/confounding.md).
    inner_folds : int
        Folds of the inner cross-validation for ``tune="log_loss"``.
    clusters : array-like, optional
        Shape (unit,): cluster ids; whole clusters are kept in one fold (``"logistic"``).
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
        Scores (unit,) with method, clipping count, diagnostics and (``"cbps"``,
        ``"logistic"``) the model's estimating equations.

    Raises
    ------
    InputError
        On non-binary treatment, mismatched lengths, non-finite features or bad options.
    SeparationError
        (``"cbps"``) When the features separate the arms at the penalty given (with
        ``"auto"``, at every penalty of the grid); an ``InputError``.

    Warns
    -----
    OverlapWarning
        When some scores fall below 0.01 or above 0.99.
    PropensityBalanceWarning
        When the scores' inverse-probability weights leave a feature's |standardized mean
        difference| between the arms above 0.25 and above chance (three of its standard
        errors); ``diagnostics["max_abs_smd"]`` has the largest.
    ConvergenceWarning
        When the NUTS fit has R-hat above 1.05 or divergences.

    Examples
    --------
    >>> sim = simulate_confounded(seed=0, n_units=300)
    >>> ps = estimate_propensity(sim.features, sim.treatment, seed=0)
    >>> ps.scores.shape
    (300,)
    """
    check_choice("method", method, ("cbps", "logistic", "bayes"))
    x = as_features(features)
    t = as_treatment(treatment).astype(np.int8)
    n = check_lengths(features=x, treatment=t)
    if not 0 < clip < 0.5:
        raise InputError(f"clip={clip!r} must lie in (0, 0.5), e.g. 1e-3.")
    if C == "auto" and method != "cbps":
        raise InputError(
            f"C='auto' is for method='cbps'; method={method!r} takes a number, or None (tuned)."
        )
    if C is not None and not isinstance(C, str):
        C = _positive_C(C)
    elif isinstance(C, str) and C != "auto":
        raise InputError(f"C={C!r} must be a positive number, 'auto' or None.")
    rng = rng_from_seed(seed)
    check_choice("tune", tune, ("balance", "log_loss"))
    equations = None
    if method == "cbps":
        raw, diagnostics, equations = _cbps(x, t, C, clip)
    elif method == "logistic":
        folds = fold_ids(t, n_folds, rng, cluster_codes(clusters, n, min_clusters=2))
        diagnostics: dict[str, Any] = {"n_folds": n_folds}
        if C is None and tune == "balance":
            raw, C_best, imbalance = _balance_tuned_cross_fit(x, t, folds, clip)
            chosen = [C_best] * len(np.unique(folds))
            diagnostics["max_abs_smd_by_C"] = imbalance
        else:
            raw, chosen = _logistic_cross_fit(x, t, folds, C, inner_folds)
        diagnostics["C_by_fold"] = chosen
        equations = _logistic_equations(x, t, chosen, n_folds, raw, clip)
    else:
        raw, diagnostics = _bayes_propensity(
            x, t, int(seed), num_warmup, num_samples, num_chains, progress_bar
        )
    _warn_extreme(raw, clip)
    scores = np.clip(raw, clip, 1 - clip)
    n_clipped = int(np.sum(scores != raw))
    imbalance = np.abs(smd(x, t, ipw_weights(t, scores)))
    finite = np.isfinite(imbalance).any()  # no all-NaN warning where every feature is constant
    diagnostics["max_abs_smd"] = float(np.nanmax(imbalance)) if finite else float("nan")
    names = [str(c) for c in getattr(features, "columns", [])]
    if len(names) != x.shape[1]:  # an array (or columns dropped): by position
        names = [f"feature_{j}" for j in range(x.shape[1])]  # as balance_table names them
    _warn_imbalance(imbalance, t, names, method == "cbps" and diagnostics.get("C") is not None)
    return Propensity(scores, t, method, float(clip), n_clipped, diagnostics, equations)


def format_probability(p: float) -> str:
    """A probability with enough digits to tell it from 0 and 1: 0.998 -> "0.998",
    2.5e-06 -> "2.5e-06", 0.9999975 -> "0.9999975"."""
    p = float(p)
    if p <= 0 or p >= 1:
        return f"{p:g}"
    if p < 1e-3:
        return f"{p:.2g}"
    distance = min(p, 1 - p)
    digits = max(3, int(np.ceil(-np.log10(distance))) + 1)
    return f"{p:.{digits}f}".rstrip("0").rstrip(".")


#: Largest |standardized mean difference| of a feature between the arms after weighting by a
#: propensity's inverse (ATE weights) before ``estimate_propensity`` warns: 0.25, the rule of
#: thumb for serious imbalance (Rubin 2001; Stuart 2010), and at least three standard errors
#: of an SMD under no imbalance, ``3 sqrt(1 / n_1 + 1 / n_0)``, so that chance alone (the
#: largest of many noise features in a small trial) does not warn.
MAX_WEIGHTED_SMD = 0.25


def imbalance_limit(t: np.ndarray) -> float:
    """The weighted |SMD| above which a propensity's balance is warned of:
    :data:`MAX_WEIGHTED_SMD`, or three standard errors of an SMD where that is larger."""
    n1, n0 = int(np.sum(t)), int(len(t) - np.sum(t))
    return float(max(MAX_WEIGHTED_SMD, 3 * np.sqrt(1 / n1 + 1 / n0)))


def _warn_imbalance(
    imbalance: np.ndarray, t: np.ndarray, names: list[str], penalized: bool
) -> None:
    """Warn where the weights leave a feature's |SMD| above :data:`MAX_WEIGHTED_SMD` and
    above chance."""
    if not np.isfinite(imbalance).any():
        return
    limit = imbalance_limit(t)
    worst = int(np.nanargmax(imbalance))
    if imbalance[worst] > limit:
        bad = int(np.sum(imbalance > limit))
        if penalized:  # C='auto' or a C given: a weaker penalty had no solution, or was not tried
            advice = (
                "The penalty shrinks the scores, so trimming on them keeps units whose own "
                "propensity is extreme: drop the features that (nearly) separate the arms, or "
                "try method='logistic', and compare the estimates they give."
            )
        else:
            advice = (
                "Try C='auto' (\"cbps\") or another method, or estimate the effect where the "
                "arms overlap (ate_estimates(..., trim='crump')), and compare the estimates "
                "they give."
            )
        warnings.warn(
            f"the propensity's weights leave {bad} of {len(imbalance)} features apart between "
            f"the arms (|standardized mean difference| above {limit:.2f}; {names[worst]}: "
            f"{imbalance[worst]:.2f}): such scores can leave confounding in IPW, and in AIPW "
            f"and a fit given them unless their outcome model is right. {advice}",
            PropensityBalanceWarning,
            stacklevel=3,
        )


def _warn_extreme(scores: np.ndarray, clip: float) -> None:
    """Warn of scores (before clipping at ``clip``) closer than EXTREME_PROPENSITY to 0 or 1."""
    extreme = (scores < EXTREME_PROPENSITY) | (scores > 1 - EXTREME_PROPENSITY)
    if extreme.any():
        lo, hi = OVERLAP_BAND
        warnings.warn(
            f"{int(extreme.sum())} of {len(scores)} propensity scores lie outside "
            f"[{EXTREME_PROPENSITY}, {1 - EXTREME_PROPENSITY}] (min "
            f"{format_probability(scores.min())}, max {format_probability(scores.max())} "
            f"before clipping to [{clip:g}, {1 - clip:g}]); weights will be extreme. Check "
            f"overlap_summary() (its frac_outside counts the clipped scores outside [{lo}, {hi}]) "
            "and consider estimating where the arms overlap (ate_estimates(..., trim='crump')).",
            OverlapWarning,
            stacklevel=3,
        )
