"""Covariate and embedding balance before and after weighting (standardized mean differences)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from imgcate.confounding.propensity import Propensity
from imgcate.confounding.weights import smd, weighted_mean
from imgcate.errors import InputError
from imgcate.optional import axes
from imgcate.validation import as_features, as_float_array, as_treatment, check_lengths


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
    table["smd_before"] = smd(x, t, np.ones(len(t)))
    if w is not None:
        table["mean_treated_weighted"] = weighted_mean(x1, w[t == 1])
        table["mean_control_weighted"] = weighted_mean(x0, w[t == 0])
        table["smd_after"] = smd(x, t, w)
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
    ax = axes(ax)
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
