"""The ATE estimators side by side (:func:`ate_estimates`): on every unit, or where the arms
overlap (``trim``), with the warnings that say when the full-sample ATE is not to be trusted.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import numpy as np
import pandas as pd

from imgcate.confounding.estimators import (
    OutcomeModel,
    aipw,
    common_inputs,
    difference_in_means,
    hajek_ipw,
)
from imgcate.confounding.overlap import trimmed_units
from imgcate.confounding.propensity import Propensity, propensity_scores
from imgcate.errors import OverlapWarning, PropensityBalanceWarning
from imgcate.validation import as_features, check_lengths


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
    trim: Literal["crump"] | float | None = None,
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
        Cluster ids, shape (unit,): cluster-robust errors for every row (CR2 for the difference
        in means, CR1 on the influence functions of IPW and AIPW; t intervals with ``G - 1``
        degrees of freedom).
    n_folds : int
        Cross-fitting folds for AIPW.
    outcome_model : {"ridge", "lasso", "boosting"} or scikit-learn regressor, optional
        See :func:`aipw`.
    prob : float
        Probability of the central intervals (0.95 by default); stored in
        ``table.attrs["prob"]``.
    trim : "crump" or float, optional
        Estimate the effect where the arms overlap: every row on the units that
        :func:`imgcate.confounding.trim` keeps by this rule (``"crump"``, the threshold of
        Crump et al. 2009, or a fixed threshold such as 0.1). The estimand is then the average
        effect of the kept units, not of all; with scores near 0 or 1 the full ATE rests on a
        few units' weights and its intervals miss far more often than they say
        (docs/confounding.md, "The ATE where the arms barely overlap"). The kept units' scores
        are taken as known (``propensity`` column ``"known, trimmed"``; the threshold is taken
        as fixed), and ``table.attrs["trim"]`` gives the rule, its threshold and the units
        kept and dropped.
    seed : int
        Random seed (fold assignment).

    Returns
    -------
    pandas.DataFrame
        Index ``estimator`` (``difference_in_means``, ``ipw_hajek``, ``aipw``); columns
        ``estimate``, ``std_err``, the interval bounds named by percentile (``"2.5%"``,
        ``"97.5%"``), ``n``, ``n_clusters``, ``vcov`` and ``propensity``: the rows of each
        estimate's :meth:`AteEstimate.tidy`, indexed by their term, as
        :meth:`imgcate.EffectFit.ate` is.

    Raises
    ------
    InputError
        On non-binary treatment, scores outside (0, 1), mismatched lengths, or a trimming
        rule that is unknown or keeps too few units of an arm.

    Warns
    -----
    OverlapWarning
        Without ``trim``, when more than a tenth of the units have a propensity outside
        [0.1, 0.9]: then estimate where the arms overlap as well.
    PropensityBalanceWarning
        When ``propensity`` is a :class:`Propensity` whose weights leave a feature apart
        between the arms (its ``diagnostics["max_abs_smd"]``, as ``estimate_propensity``
        warned).

    Examples
    --------
    >>> sim = simulate_confounded(seed=0, n_units=400)
    >>> table = ate_estimates(sim.outcome, sim.treatment, sim.truth.propensity, seed=0)
    >>> list(table.columns)
    ['estimate', 'std_err', '2.5%', '97.5%', 'n', 'n_clusters', 'vcov', 'propensity']
    """
    args = (outcome, treatment, propensity, features, clusters, n_folds, outcome_model, prob, seed)
    if trim is not None:
        table = _trimmed_estimates(*args, trim)
    else:
        table = _estimates(*args)
        _warn_limited_overlap(propensity_scores(propensity))
    _warn_propensity_balance(propensity)
    return table


def _warn_propensity_balance(propensity: Propensity | Any) -> None:
    """Say again, beside the estimates, that a Propensity's weights left the arms apart."""
    from imgcate.confounding.propensity import imbalance_limit

    if not isinstance(propensity, Propensity):
        return
    worst = propensity.diagnostics.get("max_abs_smd", float("nan"))
    limit = imbalance_limit(propensity.treatment)
    if np.isfinite(worst) and worst > limit:
        C = propensity.diagnostics.get("C")
        penalty = f", C={C:g}" if isinstance(C, int | float) else ""
        warnings.warn(
            f"the Propensity ({propensity.method}{penalty}) leaves the features apart between "
            f"the arms (largest weighted |SMD| {worst:.2f}, above {limit:.2f}): every row of "
            "this table, trimmed or not, can keep confounding, and trimming on its scores "
            "keeps units whose own propensity is extreme. Compare with another method, or "
            "with fewer features.",
            PropensityBalanceWarning,
            stacklevel=3,
        )


def _estimates(
    outcome, treatment, propensity, features, clusters, n_folds, outcome_model, prob, seed
) -> pd.DataFrame:
    """The rows of :func:`ate_estimates` on every unit given."""
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
    table = pd.concat([r.tidy() for r in results]).set_index("term").rename_axis("estimator")
    table.attrs["prob"] = prob
    return table


def _warn_limited_overlap(scores: np.ndarray) -> None:
    """Warn when more than a tenth of the units have a propensity outside the overlap band:
    the full-sample ATE then rests on few units' weights or on extrapolation."""
    from imgcate.ates import OVERLAP_LIMITS, outside_overlap
    from imgcate.prediction import EXTRAPOLATION_WARN_SHARE

    outside = outside_overlap(scores)
    if outside.mean() > EXTRAPOLATION_WARN_SHARE:
        lo, hi = OVERLAP_LIMITS
        warnings.warn(
            f"{int(outside.sum())} of {len(scores)} units ({outside.mean():.0%}) have a "
            f"propensity outside [{lo}, {hi}]: the ATE of all units then rests on a few "
            "units' weights (IPW) or on the outcome model's extrapolation (AIPW), and its "
            "intervals can miss far more often than they say. Estimate the effect where the "
            "arms overlap as well (ate_estimates(..., trim='crump'); docs/confounding.md, "
            "'The ATE where the arms barely overlap').",
            OverlapWarning,
            stacklevel=3,
        )


def _trimmed_estimates(
    outcome, treatment, propensity, features, clusters, n_folds, outcome_model, prob, seed, rule
) -> pd.DataFrame:
    """:func:`ate_estimates` on the units that ``trim(propensity, rule)`` keeps, their scores
    taken as known."""
    y, t, e, codes, prob = common_inputs(outcome, treatment, propensity, clusters, prob)
    x = None if features is None else as_features(features)
    if x is not None:
        check_lengths(outcome=y, features=x)
    keep, info = trimmed_units(propensity, t, rule)
    table = _estimates(
        y[keep],
        t[keep],
        e[keep],
        None if x is None else x[keep],
        None if codes is None else codes[keep],
        n_folds,
        outcome_model,
        prob,
        seed,
    )
    table["propensity"] = table["propensity"].replace({"known": "known, trimmed"})
    table.attrs["trim"] = info
    return table
