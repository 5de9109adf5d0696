"""The model-implied ATE beside design-based estimates of the same quantity.

The model's ATE is the average of its unit effects: it rests on the outcome model. Beside it
:func:`ate_table` puts what does not: the difference in means, which estimates the ATE in a
randomized trial, and, for a fit given a propensity score (an observational study, where the
difference in means is confounded by design), the doubly robust AIPW estimate with that
propensity and cross-fitted outcome regressions on the fit's own embedding and covariates.
:func:`imgcate.diagnostics.ate_gap` says when the model's ATE and the design's disagree.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from imgcate.errors import InputError
from imgcate.intervals import interval_names, quantiles
from imgcate.posterior import flat

if TYPE_CHECKING:
    from imgcate.results import EffectFit

#: Propensity scores are kept this far from 0 and 1 in the AIPW row (the fit's scores come
#: back from its float32 covariates; an unclipped score near 0 would make its weight absurd).
PROPENSITY_CLIP = 1e-3


def ate_table(fit: EffectFit, prob: float = 0.9, seed: int = 0) -> pd.DataFrame:
    """The rows of :meth:`imgcate.results.EffectFit.ate`: ``model_implied``, then ``aipw`` for
    a fit given a propensity score, then ``difference_in_means``; columns ``estimate``,
    ``std_err``, the interval (``prob``) and ``vcov`` (how the standard error was computed).

    Parameters
    ----------
    fit : EffectFit
    prob : float
        Interval probability.
    seed : int
        Seed of the AIPW row's cross-fitting folds.
    """
    from imgcate.confounding import aipw, difference_in_means

    lo_name, hi_name = interval_names(prob)
    draws = flat(fit.idata.posterior["ate"].values)
    lo, hi = quantiles(draws, prob)
    const = fit.idata.constant_data
    clusters = const["design_cluster"].values if "design_cluster" in const else None
    y, t = fit.observed_outcome(), const["treatment"].values
    rows = {"model_implied": (float(draws.mean()), float(draws.std()), lo, hi, "posterior")}
    scores, features = fit_propensity(fit)
    if scores is not None:
        dr = aipw(y, t, scores, features=features, clusters=clusters, prob=prob, seed=seed)
        rows["aipw"] = (dr.estimate, dr.std_err, dr.lower, dr.upper, f"{dr.vcov}, propensity given")
    try:
        dim = difference_in_means(y, t, clusters=clusters, prob=prob)
        rows["difference_in_means"] = (dim.estimate, dim.std_err, dim.lower, dim.upper, dim.vcov)
    except InputError:  # a cluster holds a whole arm: no design-based standard error
        diff = float(y[t == 1].mean() - y[t == 0].mean())
        why = "none: a cluster holds a whole arm"
        rows["difference_in_means"] = (diff, np.nan, np.nan, np.nan, why)
    columns = ["estimate", "std_err", lo_name, hi_name, "vcov"]
    table = pd.DataFrame.from_dict(rows, orient="index", columns=columns)
    return table.rename_axis("estimator").astype({c: float for c in columns[:4]})


def fit_propensity(fit: EffectFit) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The propensity score a fit was given (``fit(..., propensity=...)``), clipped to
    [:data:`PROPENSITY_CLIP`, 1 - :data:`PROPENSITY_CLIP`], and the fit's other adjustment
    features (its embedding and other covariates, model scale); (None, None) for a fit given
    none."""
    const = fit.idata.constant_data
    names = list(const.coords["covariate"].values) if "covariate" in const.coords else []
    if "propensity" not in names:
        return None, None
    j = names.index("propensity")
    std = fit.standardizer
    covariates = np.asarray(const["covariates"].values, dtype=float)
    scores = covariates[:, j] * std.covariate_sd[j] + std.covariate_mean[j]
    others = np.delete(covariates, j, axis=1)
    features = np.hstack([np.asarray(const["embedding"].values, dtype=float), others])
    return np.clip(scores, PROPENSITY_CLIP, 1 - PROPENSITY_CLIP), features
