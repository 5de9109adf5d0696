"""Propensity scores: tracking the truth, cross-fitting, balance tuning, reproducibility
(the covariate-balancing default is checked in test_mestimation.py)."""

from __future__ import annotations

import warnings

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from imgcate.confounding import (  # noqa: E402
    balance_table,
    estimate_propensity,
    hajek_ipw,
)
from imgcate.errors import ConvergenceWarning, OverlapWarning  # noqa: E402
from imgcate.simulate import simulate_confounded  # noqa: E402

TRUE_ATE = 2.0  # the ATE of the simulated study of the ``sim`` fixture (conftest.py)


def test_propensity_tracks_truth_and_overlap_summary(fitted, sim):
    ps, _ = fitted
    assert ps.method == "cbps"  # the default: covariate balancing
    assert np.corrcoef(ps.scores, sim.truth.propensity)[0, 1] > 0.95
    summary = ps.overlap_summary()
    assert list(summary.index) == ["control", "treated"]
    assert summary["n"].sum() == 1000
    t = sim.treatment
    w = np.where(t == 1, 1 / ps.scores, 1 / (1 - ps.scores))
    kish_treated = w[t == 1].sum() ** 2 / np.sum(w[t == 1] ** 2)
    assert summary.loc["treated", "ess"] == pytest.approx(kish_treated)
    assert summary.loc["treated", "ess"] < summary.loc["treated", "n"]
    assert summary.loc["control", "min"] == pytest.approx(ps.scores[t == 0].min())


def test_logistic_propensity_is_cross_fitted(sim):
    """A unit's score must not depend on its own label (its fold's model never saw it)."""
    x, t = sim.features[:300], sim.treatment[:300].copy()
    clusters = np.arange(300) // 3  # folds by cluster: assignment does not depend on t
    a = estimate_propensity(x, t, method="logistic", C=1.0, clusters=clusters, seed=3).scores
    flipped = t.copy()
    flipped[7] = 1 - flipped[7]
    b = estimate_propensity(x, flipped, method="logistic", C=1.0, clusters=clusters, seed=3).scores
    assert a[7] == b[7]
    assert not np.allclose(a, b)  # the other folds' models did change


def test_balance_tuning_picks_the_best_balanced_penalty(sim):
    """The default C is the grid value with the smallest max |SMD| after weighting, and the
    recorded imbalance is what balance_table reports for those scores."""
    x, t = sim.features, sim.treatment
    ps = estimate_propensity(x, t, method="logistic", seed=0)
    imbalance = ps.diagnostics["max_abs_smd_by_C"]
    chosen = ps.diagnostics["C_by_fold"][0]
    assert chosen == min(imbalance, key=imbalance.get)
    fixed = estimate_propensity(x, t, method="logistic", C=chosen, seed=0)  # same folds and C
    np.testing.assert_array_equal(fixed.scores, ps.scores)
    table = balance_table(x, t, ps)
    assert table["smd_after"].abs().max() == pytest.approx(imbalance[chosen], rel=1e-10)
    assert imbalance[chosen] < balance_table(x, t)["smd_before"].abs().max() / 10


def test_propensity_is_reproducible(sim):
    x, t = sim.features[:300], sim.treatment[:300]
    a = estimate_propensity(x, t, method="logistic", C=1.0, seed=5).scores
    b = estimate_propensity(x, t, method="logistic", C=1.0, seed=5).scores
    c = estimate_propensity(x, t, method="logistic", C=1.0, seed=6).scores
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_bayes_propensity_small_fit_tracks_truth():
    sim = simulate_confounded(seed=8, n_units=300, n_features=6)
    kwargs = dict(method="bayes", num_warmup=150, num_samples=150, num_chains=1)
    ps = estimate_propensity(sim.features, sim.treatment, seed=8, **kwargs)
    assert ps.method == "bayes"
    assert {"max_r_hat", "divergences"} <= set(ps.diagnostics)
    assert np.corrcoef(ps.scores, sim.truth.propensity)[0, 1] > 0.9


def test_extreme_propensities_warn_and_are_clipped():
    sim = simulate_confounded(seed=2, n_units=400, strength=25.0)
    said = r"propensity scores lie outside .* before clipping to \[0.02, 0.98\]\).*\[0.05, 0.95\]"
    with pytest.warns(OverlapWarning, match=said):
        ps = estimate_propensity(
            sim.features, sim.treatment, method="logistic", C=100.0, seed=2, clip=0.02
        )
    assert ps.scores.min() >= 0.02 and ps.scores.max() <= 0.98
    assert ps.n_clipped > 0
    assert ps.overlap_summary()["frac_outside"].max() > 0.1


@pytest.mark.slow
def test_bayes_propensity_supports_ipw():
    sim = simulate_confounded(seed=21, n_units=1000)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        ps = estimate_propensity(sim.features, sim.treatment, method="bayes", seed=21)
    assert ps.method == "bayes"
    assert ps.diagnostics["max_r_hat"] < 1.05
    conv = [w for w in record if issubclass(w.category, ConvergenceWarning)]
    assert len(conv) == (1 if ps.diagnostics["divergences"] > 0 else 0)
    assert np.corrcoef(ps.scores, sim.truth.propensity)[0, 1] > 0.95
    again = estimate_propensity(sim.features, sim.treatment, method="bayes", seed=21)
    np.testing.assert_array_equal(ps.scores, again.scores)  # same seed, same result
    res = hajek_ipw(sim.outcome, sim.treatment, ps)
    print(
        f"\nbayes propensity: Hajek IPW {res.estimate:.3f} (se {res.std_err:.3f}), "
        f"diagnostics {ps.diagnostics}"
    )
    assert abs(res.estimate - TRUE_ATE) < 3 * res.std_err
