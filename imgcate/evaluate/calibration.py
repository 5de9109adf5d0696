"""Omnibus calibration test of CATE predictions (grf's ``test_calibration``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from imgcate.errors import InputError
from imgcate.evaluate.regression import VCOV_TYPES, VcovType, vcov_label, wls
from imgcate.intervals import normal_interval, tidy_table
from imgcate.validation import (
    as_propensity,
    as_treatment,
    as_vector,
    check_choice,
    check_prob,
    cluster_codes,
)


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
    prob: float = 0.95,
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
        Sandwich correction; grf's default HC3, which with ``clusters`` is the cluster-robust
        HC3 of sandwich's ``vcovCL`` (as grf computes it).
    prob : float
        Probability of the central (t, df = units with positive weight − 2) intervals.

    Returns
    -------
    pandas.DataFrame
        Rows ``mean.forest.prediction`` and ``differential.forest.prediction`` in the tidy
        schema: term, estimate, std_err, the interval bounds named by percentile, then
        t_value, p_value (one-sided, H1: coefficient > 0, t with the residual degrees of
        freedom: units with positive weight − 2, as R's ``lm`` counts them), df and vcov
        (``"HC3"``, or ``"CR3"`` with clusters).

    Raises
    ------
    InputError
        For mismatched lengths, bad treatment or propensity, or fewer than 3 units with
        positive weight.

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
    prob = check_prob(prob)
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
    df = int(np.sum(w > 0)) - 2  # lm drops zero-weight rows from the residual dof
    if df < 1:
        raise InputError("test_calibration needs at least 3 units with positive weight.")
    beta, cov = wls(y - m, X, w, codes, vcov_type, terms)
    se = np.sqrt(np.diag(cov))
    tval = beta / se
    lower, upper = normal_interval(beta, se, prob, df=df)
    return tidy_table(
        terms,
        beta,
        se,
        lower,
        upper,
        prob,
        t_value=tval,
        p_value=stats.t.sf(tval, df),
        df=[df, df],
        vcov=[vcov_label(vcov_type, codes)] * 2,
    )


test_calibration.__test__ = False  # not a pytest test despite its name (grf's name is kept)
