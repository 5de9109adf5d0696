"""One interval convention for every result: a ``prob`` argument and columns named by percentile.

``prob`` is the probability of a central interval, as ArviZ's ``hdi_prob``: 0.9 gives the
columns ``"5%"`` and ``"95%"``. Posterior summaries (fits, maps, segment sensitivity) default
to ``prob=0.9``; design-based and frequentist estimates (confounding, evaluation) to 0.95.

Every ``tidy()`` returns the same schema (:func:`tidy_table`): ``term``, ``estimate``,
``std_err``, the two interval bounds named by percentile, then any extra columns
(``p_value``, ``n``, ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from imgcate.validation import check_prob

#: The first columns of every tidy table, before the two interval columns.
TIDY_COLUMNS = ("term", "estimate", "std_err")


def interval_names(prob: float) -> tuple[str, str]:
    """Column names of a central interval, by percentile: 0.9 -> ("5%", "95%").

    Examples
    --------
    >>> interval_names(0.95)
    ('2.5%', '97.5%')
    """
    prob = check_prob(prob)
    lo = 100 * (1 - prob) / 2
    return f"{lo:g}%", f"{100 - lo:g}%"


def quantiles(draws: np.ndarray, prob: float, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds of the central ``prob`` interval of draws along ``axis``."""
    lo = (1 - prob) / 2
    q = np.quantile(draws, [lo, 1 - lo], axis=axis)
    return q[0], q[1]


def normal_interval(
    estimate: Any, std_err: Any, prob: float, df: float | None = None
) -> tuple[Any, Any]:
    """``estimate -+ c * std_err`` with ``c`` the normal (or Student-t with ``df``) quantile."""
    dist = stats.norm if df is None else stats.t(df)
    crit = dist.ppf(0.5 + check_prob(prob) / 2)
    return estimate - crit * std_err, estimate + crit * std_err


def tidy_table(
    terms: Sequence[Any],
    estimate: Any,
    std_err: Any,
    lower: Any,
    upper: Any,
    prob: float,
    **extra: Any,
) -> pd.DataFrame:
    """The tidy schema: term, estimate, std_err, the interval named by percentile, extras.

    Examples
    --------
    >>> tidy_table(["ate"], [1.0], [0.5], [0.02], [1.98], 0.95, n=[100]).columns.tolist()
    ['term', 'estimate', 'std_err', '2.5%', '97.5%', 'n']
    """
    lo_name, hi_name = interval_names(prob)
    columns = {
        "term": list(terms),
        "estimate": np.asarray(estimate, dtype=float).reshape(-1),
        "std_err": np.asarray(std_err, dtype=float).reshape(-1),
        lo_name: np.asarray(lower, dtype=float).reshape(-1),
        hi_name: np.asarray(upper, dtype=float).reshape(-1),
    }
    for name, values in extra.items():
        columns[name] = np.asarray(values).reshape(-1)
    return pd.DataFrame(columns)
