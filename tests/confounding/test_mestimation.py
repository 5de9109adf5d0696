"""Standard errors that account for the estimated propensity: the closed forms against the
stacked estimating equations differentiated numerically (the M-estimation sandwich computed
the slow, obvious way), and the covariate-balancing propensity's defining property."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit, logit

from imgcate.confounding import (
    aipw,
    balance_table,
    estimate_propensity,
    hajek_ipw,
)
from imgcate.confounding.mestimation import design_matrix
from imgcate.errors import InputError, OverlapWarning, PropensityBalanceWarning
from imgcate.simulate import simulate_confounded


def _numerical_sandwich(stacked, theta: np.ndarray, contrast: np.ndarray) -> float:
    """SE of ``contrast @ theta`` for the M-estimator solving ``mean stacked(theta) = 0``:
    ``J^{-1} B J^{-T} / n`` with ``J`` by central differences and ``B = mean psi psi'``."""
    psi = stacked(theta)
    n = psi.shape[0]
    jac = np.empty((len(theta), len(theta)))
    for k in range(len(theta)):
        step = np.zeros(len(theta))
        step[k] = 1e-6 * max(1.0, abs(theta[k]))
        jac[:, k] = (stacked(theta + step).mean(0) - stacked(theta - step).mean(0)) / (2 * step[k])
    inv = np.linalg.inv(jac)
    cov = inv @ (psi.T @ psi / n) @ inv.T / n
    return float(np.sqrt(contrast @ cov @ contrast))


@pytest.fixture(scope="module")
def small():
    sim = simulate_confounded(seed=3, n_units=600, n_features=6)
    ps = estimate_propensity(sim.features, sim.treatment, seed=0)  # the default: cbps
    return sim, ps


def test_cbps_balances_every_feature_exactly(small):
    sim, ps = small
    assert ps.method == "cbps" and ps.equations is not None
    after = balance_table(sim.features, sim.treatment, ps)["smd_after"].abs().max()
    assert after < 1e-8
    assert balance_table(sim.features, sim.treatment)["smd_before"].abs().max() > 0.5
    again = estimate_propensity(sim.features, sim.treatment, seed=99)
    np.testing.assert_array_equal(ps.scores, again.scores)  # no randomness in the fit
    penalized = estimate_propensity(sim.features, sim.treatment, C=0.01, seed=0)
    approx = balance_table(sim.features, sim.treatment, penalized)["smd_after"].abs().max()
    assert 1e-4 < approx < 0.5  # a penalty trades exact balance for smaller weights


def test_hajek_se_with_estimated_cbps_is_the_stacked_sandwich(small):
    sim, ps = small
    y, t = sim.outcome, sim.treatment.astype(float)
    design = design_matrix(sim.features)
    beta = np.linalg.lstsq(design, logit(ps.scores), rcond=None)[0]  # scores are unclipped

    def stacked(theta):
        b, m1, m0 = theta[:-2], theta[-2], theta[-1]
        e = expit(design @ b)
        balance = (t / e - (1 - t) / (1 - e))[:, None] * design
        return np.column_stack([balance, t * (y - m1) / e, (1 - t) * (y - m0) / (1 - e)])

    est = hajek_ipw(y, t, ps)
    w1, w0 = t / ps.scores, (1 - t) / (1 - ps.scores)
    theta = np.r_[beta, np.sum(w1 * y) / w1.sum(), np.sum(w0 * y) / w0.sum()]
    contrast = np.r_[np.zeros(len(beta)), 1.0, -1.0]
    assert est.std_err == pytest.approx(_numerical_sandwich(stacked, theta, contrast), rel=1e-5)
    assert est.propensity == "estimated"
    known = hajek_ipw(y, t, ps.scores)
    assert known.estimate == est.estimate and known.propensity == "known"
    assert known.std_err > 1.2 * est.std_err  # treating the scores as known overstates it


def test_aipw_se_with_a_wrong_outcome_model_is_the_stacked_sandwich(small):
    """With mu0 = mu1 = 0 (plainly wrong) AIPW is IPW and the propensity's estimation matters;
    the stacked correction gets the SE right in that case too."""
    sim, ps = small
    y, t = sim.outcome, sim.treatment.astype(float)
    design = design_matrix(sim.features)
    beta = np.linalg.lstsq(design, logit(ps.scores), rcond=None)[0]
    zero = np.zeros(len(y))

    def stacked(theta):
        b, tau = theta[:-1], theta[-1]
        e = expit(design @ b)
        balance = (t / e - (1 - t) / (1 - e))[:, None] * design
        return np.column_stack([balance, t * y / e - (1 - t) * y / (1 - e) - tau])

    est = aipw(y, t, ps, mu0=zero, mu1=zero)
    theta = np.r_[beta, est.estimate]
    contrast = np.r_[np.zeros(len(beta)), 1.0]
    assert est.std_err == pytest.approx(_numerical_sandwich(stacked, theta, contrast), rel=1e-5)
    # with the true outcome model the correction vanishes (Neyman orthogonality)
    right = aipw(y, t, ps, mu0=sim.truth.mu0, mu1=sim.truth.mu1)
    as_known = aipw(y, t, ps.scores, mu0=sim.truth.mu0, mu1=sim.truth.mu1)
    assert right.std_err == pytest.approx(as_known.std_err, rel=0.02)


def test_logistic_propensity_carries_its_penalized_equations(small):
    """The cross-fitted logistic model is linearized at a full-sample fit with the folds'
    per-unit penalty; its penalized score equations hold there."""
    sim, _ = small
    ps = estimate_propensity(sim.features, sim.treatment, method="logistic", C=0.5, seed=1)
    eq = ps.equations
    assert eq is not None and eq.estfun.shape == (600, 7)
    assert np.abs(eq.estfun.mean(axis=0)).max() < 1e-6
    assert np.all(np.linalg.eigvalsh(eq.jacobian) < 0)  # a concave penalized likelihood
    est = hajek_ipw(sim.outcome, sim.treatment, ps)
    assert est.propensity == "estimated"
    assert est.std_err < hajek_ipw(sim.outcome, sim.treatment, ps.scores).std_err


def test_bayes_and_arrays_are_treated_as_known(small):
    sim, ps = small
    res = hajek_ipw(sim.outcome, sim.treatment, ps.scores)
    assert res.propensity == "known"
    other = sim.treatment.copy()
    other[0] = 1 - other[0]
    with pytest.raises(InputError, match="fitted to another treatment vector"):
        hajek_ipw(sim.outcome, other, ps)


def test_cbps_reports_features_that_separate_the_arms():
    rng = np.random.default_rng(0)
    t = np.repeat([0, 1], 50)
    x = np.column_stack([t + 0.01 * rng.normal(size=100), rng.normal(size=100)])
    with pytest.raises(InputError, match="separate treated from control.*C='auto'.*trim='crump'"):
        estimate_propensity(x, t, seed=0)
    # a penalty too weak to keep the log-odds finite: the advice is a smaller C, not "a C"
    with pytest.raises(InputError, match=r"fit with C=100 found no solution.*e\.g\. C=10\b"):
        estimate_propensity(x, t, C=100.0, seed=0)
    # a penalty keeps it finite, and then the weights cannot balance the separating feature:
    # said, with the feature, where before only diagnostics held it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OverlapWarning)
        with pytest.warns(PropensityBalanceWarning, match="leave 1 of 2 features apart.*ndvi"):
            penalized = estimate_propensity(
                pd.DataFrame(x, columns=["ndvi", "elev"]), t, C=0.01, seed=0
            )
    assert np.isfinite(penalized.scores).all()
    assert penalized.diagnostics["max_abs_smd"] > 0.25


def test_balanced_scores_are_not_warned_of():
    """Where the weights balance the features (the exact CBPS, overlap fine), no
    BalanceWarning, and the diagnostics say how close the balance is."""
    sim = simulate_confounded(seed=0, n_units=400)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PropensityBalanceWarning)
        ps = estimate_propensity(sim.features, sim.treatment, seed=0)
    assert ps.diagnostics["max_abs_smd"] < 0.05


def test_overlap_warning_prints_enough_digits():
    from imgcate.confounding.propensity import format_probability

    assert format_probability(0.998) == "0.998"
    assert format_probability(0.9999975) == "0.9999975"
    assert format_probability(2.5e-6) == "2.5e-06"
    assert format_probability(0.5) == "0.5"
    sim = simulate_confounded(seed=2, n_units=400, strength=25.0)
    with pytest.warns(OverlapWarning, match=r"max 0\.99\d*[1-9] before clipping"):
        estimate_propensity(sim.features, sim.treatment, method="logistic", C=100.0, seed=2)


def test_cbps_auto_is_exact_where_it_can_be_and_else_the_weakest_penalty_that_fits():
    """C="auto": the exact fit where the features allow one; where they separate the arms,
    the first penalty of the grid (weakest first) with a solution, the same scores as that C
    given by hand, while the next weaker one has none."""
    from imgcate.confounding.balancing import CBPS_AUTO_C_GRID
    from imgcate.errors import SeparationError

    sim = simulate_confounded(seed=0, n_units=300)
    exact = estimate_propensity(sim.features, sim.treatment, seed=0)
    auto = estimate_propensity(sim.features, sim.treatment, seed=0, C="auto")
    assert auto.diagnostics["C"] is None
    np.testing.assert_array_equal(auto.scores, exact.scores)

    steep = simulate_confounded(seed=0, n_units=300, strength=12.0)
    with pytest.raises(SeparationError):
        estimate_propensity(steep.features, steep.treatment, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (OverlapWarning, PropensityBalanceWarning))
        auto = estimate_propensity(steep.features, steep.treatment, seed=0, C="auto")
        chosen = auto.diagnostics["C"]
        assert chosen in CBPS_AUTO_C_GRID and chosen != CBPS_AUTO_C_GRID[0]
        by_hand = estimate_propensity(steep.features, steep.treatment, seed=0, C=chosen)
        np.testing.assert_array_equal(auto.scores, by_hand.scores)
        weaker = CBPS_AUTO_C_GRID[CBPS_AUTO_C_GRID.index(chosen) - 1]
        with pytest.raises(SeparationError):
            estimate_propensity(steep.features, steep.treatment, seed=0, C=weaker)
        # a stronger penalty's weights balance the features less
        stronger = estimate_propensity(steep.features, steep.treatment, seed=0, C=chosen / 10)
    assert auto.diagnostics["max_abs_smd"] < stronger.diagnostics["max_abs_smd"]
    # numbers of numpy's types are penalties as before
    for c in (np.float64(chosen), np.float32(chosen)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", (OverlapWarning, PropensityBalanceWarning))
            same = estimate_propensity(steep.features, steep.treatment, seed=0, C=c)
        np.testing.assert_allclose(same.scores, by_hand.scores, rtol=1e-6)


def test_cbps_auto_says_when_no_penalty_of_its_grid_has_a_solution():
    """At 100,000 units the per-unit penalty of C=0.001 is still weak: a feature that is the
    treatment up to noise separates the arms at every penalty, and the message says so and
    what to do, not a C the user never gave."""
    from imgcate.errors import SeparationError

    rng = np.random.default_rng(0)
    t = np.repeat([0, 1], 50_000)
    x = np.column_stack([t + 0.01 * rng.normal(size=t.size), rng.normal(size=t.size)])
    with pytest.raises(SeparationError, match="no penalty down to C=0.001.*method='logistic'"):
        estimate_propensity(x, t, seed=0, C="auto")


@pytest.mark.parametrize(
    ("C", "method", "message"),
    [
        ("x", "cbps", "must be a positive number, 'auto' or None"),
        (-1.0, "cbps", "must be a positive number, 'auto' or None"),
        ("auto", "logistic", "C='auto' is for method='cbps'"),
    ],
)
def test_bad_penalties_are_refused(C, method, message):
    sim = simulate_confounded(seed=0, n_units=100)
    with pytest.raises(InputError, match=message):
        estimate_propensity(sim.features, sim.treatment, seed=0, C=C, method=method)
