"""Trimming: the Crump et al. rule against a brute-force grid, fixed thresholds."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from imgcate.confounding import (  # noqa: E402
    crump_alpha,
    trim,
)
from imgcate.errors import InputError  # noqa: E402


def _brute_force_crump(e: np.ndarray, step: float = 1e-5) -> float:
    """Scan alpha on a grid: roots of 1/(a(1-a)) - 2 E[g | g <= 1/(a(1-a))], best variance."""
    g = 1 / (e * (1 - e))
    if g.max() <= 2 * g.mean():
        return 0.0
    alphas = np.arange(step, 0.5, step)
    gamma = 1 / (alphas * (1 - alphas))
    order = np.sort(g)
    kept = np.searchsorted(order, gamma, side="right")
    cumsum = np.concatenate([[0.0], np.cumsum(order)])
    with np.errstate(invalid="ignore", divide="ignore"):
        resid = gamma - 2 * cumsum[kept] / kept
        variance = cumsum[kept] / kept.astype(float) ** 2
    # alpha decreasing means gamma increasing: a root is a sign change from - to +.
    a_desc, r_desc, v_desc = alphas[::-1], resid[::-1], variance[::-1]
    flips = np.flatnonzero((r_desc[:-1] < 0) & (r_desc[1:] >= 0))
    best = flips[np.argmin(v_desc[flips + 1])]
    return float(a_desc[best + 1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_crump_alpha_matches_brute_force_grid(seed):
    rng = np.random.default_rng(seed)
    e = 1 / (1 + np.exp(-rng.normal(0, 2.0, size=2000)))
    alpha = crump_alpha(e)
    assert 0.01 < alpha < 0.3
    assert alpha == pytest.approx(_brute_force_crump(e), abs=2e-5)
    # The chosen set (nearly) minimises the sample variance bound E[g 1_A] / P(A)^2.
    g = 1 / (e * (1 - e))

    def bound(a):
        keep = (e >= a) & (e <= 1 - a)
        return np.mean(g * keep) / np.mean(keep) ** 2

    grid = np.linspace(0.001, 0.3, 600)
    assert bound(alpha) <= min(bound(a) for a in grid) * 1.001


def test_crump_keeps_everyone_under_good_overlap():
    e = np.random.default_rng(0).uniform(0.3, 0.7, size=500)
    assert crump_alpha(e) == 0.0
    assert trim(e).n_dropped == 0


def test_trim_reports_dropped_units(fitted):
    ps, _ = fitted
    fixed = trim(ps, rule=0.2)
    assert fixed.n_dropped == int(np.sum((ps.scores < 0.2) | (ps.scores > 0.8)))
    assert fixed.n_dropped_by_arm["control"] + fixed.n_dropped_by_arm["treated"] == fixed.n_dropped
    assert "trimmed" in str(fixed)
    crump = trim(ps)
    assert crump.rule == "crump"
    assert crump.keep.sum() == 1000 - crump.n_dropped
    with pytest.raises(InputError, match="fixed threshold must lie in"):
        trim(ps, rule=0.7)
    with pytest.raises(InputError, match="rule='optimal' is not allowed"):
        trim(ps, rule="optimal")
