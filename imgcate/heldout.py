"""Held-out units under a fit that did not see them: their log-likelihood per posterior draw
(the effect model's own likelihood, inputs on the fit's scale) and what puts held-out log
densities of fits with different standardizers on one scale. :mod:`imgcate.selection`'s
spatial K-fold comparison is built on it.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from imgcate.config import model_data
from imgcate.model import effect_model
from imgcate.posterior import fit_spec, site_draws
from imgcate.results import EffectFit
from imgcate.units import Trial

#: Sample sites of the random intercepts, by the trial's column role.
LEVEL_SITES = {"stratum": "stratum_raw", "cluster": "group_raw"}


def held_out_log_likelihood(
    result: EffectFit,
    train: Trial,
    test: Trial,
    test_embedding: np.ndarray,
    *,
    propensity: np.ndarray | None = None,
) -> np.ndarray:
    """Log-likelihood of held-out units' outcomes under every posterior draw of a fit.

    Parameters
    ----------
    result : EffectFit
        A fit to the ``train`` units.
    train, test : Trial
        The units the fit saw, and the held-out units.
    test_embedding : ndarray (unit, feature_in)
        Raw embeddings of the held-out units, as given to :func:`fit`.
    propensity : ndarray (unit,), optional
        The held-out units' propensity scores, when the fit took ``propensity=``.

    Returns
    -------
    ndarray (sample, unit)
        ``log p(y_i | draw)`` on the fit's model scale, from ``numpyro.infer.log_likelihood``
        of the effect model: the inputs are put on the fit's scale by its own standardizer
        and the likelihood is the model's. A held-out unit whose stratum or cluster the fit
        did not see gets that random intercept at its mean (0).
    """
    from numpyro.infer import log_likelihood

    if propensity is not None:  # the fit took it as a covariate (see fit)
        data = test.data.assign(propensity=np.asarray(propensity, dtype=float))
        test = replace(test, data=data, covariates=(*test.covariates, "propensity"))
    data = model_data(test, test_embedding, result.standardizer, result.config)
    spec = fit_spec(result)
    params = site_draws(result)
    codes = {}
    for role, site in LEVEL_SITES.items():
        n_levels = spec.n_strata if role == "stratum" else spec.n_groups
        codes[role], params, n_levels = _level_codes(train, test, role, site, n_levels, params)
        spec = _with_levels(spec, role, n_levels)
    inputs = data.inputs.with_basis()._replace(stratum=codes["stratum"], group=codes["cluster"])
    outcome = np.asarray(data.outcome)
    n_draws = len(next(iter(params.values())))
    chunk = max(1, int(2e7 // max(len(outcome), 1)))
    parts = []
    for start in range(0, n_draws, chunk):
        draws = {name: v[start : start + chunk] for name, v in params.items()}
        values = log_likelihood(effect_model, draws, inputs=inputs, outcome=outcome, spec=spec)
        parts.append(np.asarray(values["outcome"], dtype=float))
    return np.concatenate(parts)


def _with_levels(spec, role: str, n_levels: int):
    return replace(spec, **{"n_strata" if role == "stratum" else "n_groups": n_levels})


def _level_codes(train: Trial, test: Trial, role: str, site: str, n_levels: int, params: dict):
    """The held-out units' random-intercept codes in the fit's coding (levels the fit did
    not see get an extra level whose intercept is 0), the draws, and the number of levels."""
    column = getattr(train, role)
    if not n_levels or column is None:
        return None, params, n_levels
    seen = pd.factorize(train.data[column], sort=True)[1]  # the fit's coding (Trial.codes)
    codes = pd.Index(seen).get_indexer(test.data[column])
    if (codes < 0).any():
        codes = np.where(codes < 0, n_levels, codes)
        params = dict(params)
        for name in [n for n in params if n.endswith(site)]:
            zero = np.zeros(params[name].shape[:-1] + (1,), params[name].dtype)
            params[name] = np.concatenate([params[name], zero], -1)
        n_levels += 1
    return np.asarray(codes, np.int32), params, n_levels


def scale_shift(result: EffectFit, full: EffectFit, test: Trial) -> np.ndarray:
    """Per held-out unit, what puts its log density on the model scale of the fit to all
    units: ``log(sd_full / sd_fold)`` where the outcome has a density (the change of
    variables), 0 for the floor's point mass (hurdle, censored) and for bernoulli."""
    shift = np.log(full.standardizer.outcome_sd / result.standardizer.outcome_sd)
    y = test.outcome_array
    if result.config.likelihood == "bernoulli":
        return np.zeros(len(y))
    if result.config.likelihood in ("hurdle", "censored"):
        floor = result.standardizer.outcome_floor
        at_floor = np.abs(y - floor) <= 1e-9 * max(1.0, abs(floor))
        return np.where(at_floor, 0.0, shift)
    return np.full(len(y), shift)


def log_mean_exp(values: np.ndarray) -> np.ndarray:
    """log mean exp over the first axis (draws), stably."""
    top = values.max(0)
    return top + np.log(np.exp(values - top).mean(0))
