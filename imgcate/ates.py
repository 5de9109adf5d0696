"""The model-implied ATE beside design-based estimates of the same quantity.

The model's ATE is the average of its unit effects: it rests on the outcome model. Beside it
:func:`ate_table` puts what does not: the difference in means, which estimates the ATE in a
randomized trial, and, for a fit given a propensity score (an observational study, where the
difference in means is confounded by design), the doubly robust AIPW estimate with that
propensity and cross-fitted outcome regressions on the fit's own embedding and covariates.
:func:`imgcate.diagnostics.ate_gap` says when the model's ATE and the design's disagree.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from imgcate.errors import InputError
from imgcate.intervals import interval_names, quantiles
from imgcate.posterior import flat

if TYPE_CHECKING:
    from imgcate.results import EffectFit

#: Folds of the AIPW row's cross-fitted outcome regressions (fewer where the design has fewer
#: clusters).
AIPW_FOLDS = 5


def ate_table(
    fit: EffectFit, prob: float = 0.9, seed: int = 0, trim: str | float | None = None
) -> pd.DataFrame:
    """The rows of :meth:`imgcate.results.EffectFit.ate`.

    Parameters
    ----------
    fit : EffectFit
        A fitted effect model.
    prob : float
        Interval probability.
    seed : int
        Seed of the AIPW row's cross-fitting folds.
    trim : "crump" or float, optional
        For a fit given a propensity: every row on the units that
        :func:`imgcate.confounding.trim` keeps by this rule (the effect where the arms
        overlap); ``table.attrs["trim"]`` says the rule, its threshold and the units kept.

    Returns
    -------
    pandas.DataFrame
        Index ``estimator``: ``model_implied``, then ``aipw`` for a fit given a propensity
        score, then ``difference_in_means``; columns ``estimate``, ``std_err``, the interval
        (``prob``) and ``vcov`` (how the standard error was computed, or why there is none:
        NaN then).

    Raises
    ------
    InputError
        ``trim`` for a fit given no propensity, an unknown rule, or one that keeps fewer than
        ten units of an arm (:data:`imgcate.confounding.overlap.MIN_KEPT_PER_ARM`).
    """
    from imgcate.confounding import aipw, difference_in_means

    lo_name, hi_name = interval_names(prob)
    const = fit.idata.constant_data
    clusters = const["design_cluster"].values if "design_cluster" in const else None
    y, t = fit.observed_outcome(), const["treatment"].values
    scores, features = fit_propensity(fit)
    keep, info = None, None
    if trim is not None:
        if scores is None:
            raise InputError(
                f"trim={trim!r} needs a fit given a propensity (fit(..., propensity=...)): the "
                "units are trimmed on it. A randomized trial has overlap by design."
            )
        from imgcate.confounding.overlap import trimmed_units

        keep, info = trimmed_units(scores, t, trim)
    if keep is None:
        draws = flat(fit.idata.posterior["ate"].values)
        propensity = None if scores is None else kept_propensity(fit, scores)
    else:
        draws = subset_ate_draws(fit, keep)
        y, t, features, propensity = y[keep], t[keep], features[keep], scores[keep]
        clusters = None if clusters is None else clusters[keep]
    lo, hi = quantiles(draws, prob)
    rows = {"model_implied": (float(draws.mean()), float(draws.std()), lo, hi, "posterior")}
    if propensity is not None:
        groups = len(np.unique(clusters)) if clusters is not None else len(y)
        try:
            dr = aipw(
                y,
                t,
                propensity,
                features=features,
                clusters=clusters,
                n_folds=max(2, min(AIPW_FOLDS, groups)),
                prob=prob,
                seed=seed,
            )
            how = "score estimation stacked" if dr.propensity == "estimated" else "scores given"
            if keep is not None:
                how = "scores taken as known, trimmed"
            elif reason := fit.idata.constant_data.attrs.get("propensity_equations"):
                how += f" (their equations {reason})"
            rows["aipw"] = (dr.estimate, dr.std_err, dr.lower, dr.upper, f"{dr.vcov}, {how}")
        except (InputError, ValueError) as exc:  # too few clusters or units of an arm to cross-fit
            rows["aipw"] = (np.nan, np.nan, np.nan, np.nan, f"none: {exc}")
    try:
        dim = difference_in_means(y, t, clusters=clusters, prob=prob)
        rows["difference_in_means"] = (dim.estimate, dim.std_err, dim.lower, dim.upper, dim.vcov)
    except InputError:  # a cluster holds a whole arm: no design-based standard error
        diff = float(y[t == 1].mean() - y[t == 0].mean())
        why = "none: a cluster holds a whole arm"
        rows["difference_in_means"] = (diff, np.nan, np.nan, np.nan, why)
    columns = ["estimate", "std_err", lo_name, hi_name, "vcov"]
    table = pd.DataFrame.from_dict(rows, orient="index", columns=columns)
    table = table.rename_axis("estimator").astype({c: float for c in columns[:4]})
    if info is not None:
        table.attrs["trim"] = info
    return table


def subset_ate_draws(fit: EffectFit, keep: np.ndarray) -> np.ndarray:
    """Posterior draws of the average CATE over some of the trial's units.

    Parameters
    ----------
    fit : EffectFit
        A fitted effect model.
    keep : numpy.ndarray
        Boolean mask over the trial's units, shape (unit,).

    Returns
    -------
    numpy.ndarray
        Shape (sample,), on the outcome's original scale: the mean of the stored unit CATE
        over the kept units where the fit kept it, else the same evaluated in chunks of units
        (:func:`imgcate.posterior.evaluate`, as ``unit_effects`` does).
    """
    from imgcate.posterior import DRAW_CHUNK_VALUES, evaluate, fit_spec, site_draws, trial_inputs

    post = fit.idata.posterior
    if "tau_unit" in post:
        return flat(post["tau_unit"].values)[:, keep].astype(np.float64).mean(1)
    params, inputs, spec = site_draws(fit), trial_inputs(fit), fit_spec(fit)
    n_draws = len(next(iter(params.values())))
    chunk = max(1, DRAW_CHUNK_VALUES // (n_draws * max(spec.n_clusters, 2)))  # as unit_summaries
    rows = np.flatnonzero(keep)
    total = np.zeros(n_draws)
    for start in range(0, len(rows), chunk):
        q = evaluate(params, inputs.take(rows[start : start + chunk]), spec)
        total += np.asarray(q["cate"], np.float64).sum(1)
    return total * fit.standardizer.outcome_sd / len(rows)


def fit_propensity(fit: EffectFit) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The propensity scores a fit was given (``fit(..., propensity=...)``) and its other
    adjustment features.

    Parameters
    ----------
    fit : EffectFit
        A fitted effect model.

    Returns
    -------
    scores : ndarray (unit,) or None
        As :func:`given_propensity`.
    features : ndarray (unit, feature) or None
        The fit's embedding and its other covariates (model scale).
    """
    scores = given_propensity(fit)
    if scores is None:
        return None, None
    const = fit.idata.constant_data
    j = list(const.coords["covariate"].values).index("propensity")
    covariates = np.asarray(const["covariates"].values, dtype=float)
    features = np.hstack(
        [np.asarray(const["embedding"].values, dtype=float), np.delete(covariates, j, axis=1)]
    )
    return scores, features


def given_propensity(fit: EffectFit) -> np.ndarray | None:
    """The propensity scores a fit was given (``fit(..., propensity=...)``), or None.

    Parameters
    ----------
    fit : EffectFit
        A fitted effect model.

    Returns
    -------
    ndarray (unit,) or None
        The scores as given (float64, kept with the fit), or, for a fit saved before they were
        kept, read back from its ``propensity`` covariate; None for a fit given none.
        A fit saved before 2026-12-07 does not record whether ``propensity=`` was passed, so
        a covariate of its own named ``propensity`` is read as the scores there; refit it to
        tell the two apart.
    """
    const = fit.idata.constant_data
    names = list(const.coords["covariate"].values) if "covariate" in const.coords else []
    if "propensity" not in names or not const.attrs.get("propensity_passed", 1):
        return None  # none, or a covariate of the user's that happens to be so named
    if "propensity_given" in const:
        return np.asarray(const["propensity_given"].values, dtype=float)
    j = names.index("propensity")
    std = fit.standardizer  # float32 on the model scale: back within ~1e-7 of the scores
    scores = np.asarray(const["covariates"].values[:, j], dtype=float)
    return np.clip(scores * std.covariate_sd[j] + std.covariate_mean[j], 1e-6, 1 - 1e-6)


#: Values (units x parameters) up to which a fit keeps each of the two unit-by-parameter
#: arrays of the estimating equations of a propensity model it was given (float64: 16 MB each,
#: e.g. 200,000 units and 10 parameters).
EQUATIONS_MAX_VALUES = 2_000_000

#: constant_data names of the kept equations (:func:`keep_propensity_equations`).
EQUATION_ARRAYS = {
    "propensity_estfun": "estfun",
    "propensity_score_gradient": "score_gradient",
    "propensity_jacobian": "jacobian",
}


def keep_propensity_equations(idata: Any, propensity: Any) -> None:
    """Keep with a fit (``idata``, in place) the estimating equations of an estimated
    :class:`~imgcate.confounding.Propensity` it was given, so that the AIPW row of
    :func:`ate_table` stacks the scores' estimation into its standard error, as
    :func:`imgcate.confounding.aipw` does with the object itself. Nothing for plain scores, a
    ``"bayes"`` propensity (no equations); past :data:`EQUATIONS_MAX_VALUES` the reason is
    kept instead (``constant_data.attrs["propensity_equations"]``), for the row to say."""
    equations = getattr(propensity, "equations", None)
    if equations is None:
        return
    if equations.estfun.size > EQUATIONS_MAX_VALUES:
        units, parameters = equations.estfun.shape
        idata.constant_data.attrs["propensity_equations"] = (
            f"not kept: {units:,} units x {parameters} parameters"
        )
        return
    dims = {
        "propensity_estfun": ("unit", "propensity_parameter"),
        "propensity_score_gradient": ("unit", "propensity_parameter"),
        "propensity_jacobian": ("propensity_parameter", "propensity_parameter_2"),
    }
    arrays = {
        name: (dims[name], np.asarray(getattr(equations, field), dtype=np.float64))
        for name, field in EQUATION_ARRAYS.items()
    }
    idata.constant_data = idata.constant_data.assign(arrays)
    idata.constant_data.attrs["propensity_method"] = str(propensity.method)
    idata.constant_data.attrs["propensity_clip"] = float(propensity.clip)


def check_equations(propensity: Any, n_units: int) -> None:
    """Refuse a :class:`~imgcate.confounding.Propensity` whose estimating equations are not
    one row per unit (one subset after it was estimated), before a fit runs."""
    equations = getattr(propensity, "equations", None)
    if equations is not None and len(equations.estfun) != n_units:
        raise InputError(
            f"the Propensity's estimating equations have {len(equations.estfun)} rows but its "
            f"scores {n_units}: estimate it again on these units, or pass its .scores (then "
            "treated as known)."
        )


def kept_propensity(fit: EffectFit, scores: np.ndarray) -> Any:
    """The scores a fit was given, as a :class:`~imgcate.confounding.Propensity` with its
    estimating equations where the fit kept them (:func:`keep_propensity_equations`), else
    the scores alone (treated as known)."""
    from imgcate.confounding import Propensity
    from imgcate.confounding.mestimation import EstimatingEquations

    const = fit.idata.constant_data
    if not all(name in const for name in EQUATION_ARRAYS):
        return scores
    equations = EstimatingEquations(
        **{field: np.asarray(const[name].values) for name, field in EQUATION_ARRAYS.items()}
    )
    return Propensity(
        scores=scores,
        treatment=np.asarray(const["treatment"].values, dtype=int),
        method=str(const.attrs.get("propensity_method", "cbps")),
        clip=float(const.attrs.get("propensity_clip", 1e-3)),
        equations=equations,
    )


#: Propensities outside this band mark units whose other arm is rare (Crump et al. 2009's
#: rule of thumb): there the model carries the effect from units unlike them.
OVERLAP_LIMITS = (0.1, 0.9)


def outside_overlap(propensity: np.ndarray) -> np.ndarray:
    """True where a propensity lies outside :data:`OVERLAP_LIMITS` (False for NaN).

    Examples
    --------
    >>> outside_overlap(np.array([0.05, 0.1, 0.5, 0.95])).tolist()
    [True, False, False, True]
    """
    lo, hi = OVERLAP_LIMITS
    propensity = np.asarray(propensity)
    return (propensity < lo) | (propensity > hi)


def overlap_note(scores: np.ndarray | None) -> str | None:
    """What limited overlap means for the unit effects, or None (no scores, or all inside
    :data:`OVERLAP_LIMITS`).

    Parameters
    ----------
    scores : ndarray (unit,) or None
        The propensity scores the fit was given (:func:`given_propensity`).

    Returns
    -------
    str or None
        Two sentences without a final full stop, for a warning or a summary's notes.

    Examples
    --------
    >>> overlap_note(np.array([0.05, 0.5, 0.6, 0.7]))[:56]
    '1 of 4 units (25%) have a propensity outside [0.1, 0.9]:'
    >>> overlap_note(np.array([0.1, 0.5, 0.9])) is None
    True
    """
    if scores is None:
        return None
    lo, hi = OVERLAP_LIMITS
    outside = outside_overlap(scores)
    if not outside.any():
        return None
    return (
        f"{int(outside.sum())} of {len(scores)} units ({outside.mean():.0%}) have a propensity "
        f"outside [{lo}, {hi}]: for them one arm is rare, so their effects are carried over "
        "from units unlike them, and their unit intervals can be far too narrow (docs/"
        "confounding.md, 'Limited overlap', gives the coverage measured). Read their effects "
        "(the propensity column of unit_effects()) as extrapolations, and report the average "
        "effect where the arms overlap, the model's beside the design's (ate(trim='crump'): "
        "the units Crump et al.'s rule keeps)"
    )


def targeting_slope_line(fit: EffectFit, prob: float = 0.9) -> str | None:
    """The targeting slope of a fit given a propensity, in words, or None (no slope).

    Parameters
    ----------
    fit : EffectFit
        A fitted effect model.
    prob : float
        Interval probability.

    Returns
    -------
    str or None
        θ's posterior mean and central ``prob`` interval: the effect's change per sd of the
        targeting score (docs/model.md, "The targeting slope"), in the outcome's units where
        the likelihood's mean is its linear predictor, else on the linear-predictor scale
        (for the hurdle, its positive part's).
    """
    from imgcate.likelihoods import IDENTITY_MEAN

    post = fit.idata.posterior
    if "targeting_slope" not in post:
        return None
    identity = fit.config.likelihood in IDENTITY_MEAN
    draws = flat(post["targeting_slope"].values) * (fit.standardizer.outcome_sd if identity else 1)
    lo, hi = quantiles(draws, prob)
    scale = "outcome units" if identity else "linear-predictor scale"
    return (
        f"Targeting slope (the effect's change per sd of the image's targeting score, {scale}): "
        f"{draws.mean():.3f}, {prob:.0%} interval {lo:.3f} to {hi:.3f}"
    )
