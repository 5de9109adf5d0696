"""Inverse-probability weights and the weighted mean differences that balance is judged by."""

from __future__ import annotations

import numpy as np


def weighted_mean(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    return (w[:, None] * x).sum(axis=0) / w.sum()


def ipw_weights(t: np.ndarray, e: np.ndarray) -> np.ndarray:
    return np.where(t == 1, 1 / e, 1 / (1 - e))


def pooled_sd(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Unweighted pooled SD per feature (NaN where it is 0)."""
    x1, x0 = x[t == 1], x[t == 0]
    pooled = np.sqrt((x1.var(axis=0, ddof=1) + x0.var(axis=0, ddof=1)) / 2)
    return np.where(pooled > 0, pooled, np.nan)


def smd(x: np.ndarray, t: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted standardized mean differences, unweighted pooled SD."""
    diff = weighted_mean(x[t == 1], w[t == 1]) - weighted_mean(x[t == 0], w[t == 0])
    return diff / pooled_sd(x, t)
