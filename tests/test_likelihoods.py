"""The outcome families against their textbook definitions (scipy) and their means against
Monte Carlo."""

from __future__ import annotations

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from imgcate.likelihoods import (
    LIKELIHOODS,
    N_PARTS,
    HurdleGamma,
    LeftCensoredNormal,
    outcome_distribution,
    outcome_mean,
)


def test_censored_log_prob_is_the_tobit_likelihood():
    loc, scale, floor = np.array([-0.5, 0.3, 1.2]), np.array([0.7, 1.1, 0.4]), -0.2
    family = LeftCensoredNormal(jnp.asarray(loc), jnp.asarray(scale), floor)
    at_floor = np.asarray(family.log_prob(jnp.full(3, floor)))
    np.testing.assert_allclose(at_floor, stats.norm.logcdf(floor, loc, scale), rtol=1e-5)
    above = np.array([0.0, 0.9, 2.0])
    np.testing.assert_allclose(
        np.asarray(family.log_prob(jnp.asarray(above))),
        stats.norm.logpdf(above, loc, scale),
        rtol=1e-5,
    )


def test_hurdle_log_prob_is_bernoulli_times_gamma():
    logit, log_mean, cv = np.array([-1.0, 0.4]), np.array([0.2, -0.3]), np.array([0.5, 1.4])
    family = HurdleGamma(jnp.asarray(logit), jnp.asarray(log_mean), jnp.asarray(cv))
    p = 1 / (1 + np.exp(-logit))
    np.testing.assert_allclose(np.asarray(family.log_prob(jnp.zeros(2))), np.log(1 - p), rtol=1e-5)
    y = np.array([0.7, 2.5])
    shape = 1 / cv**2  # gamma with mean exp(log_mean): scale = mean / shape
    expected = np.log(p) + stats.gamma.logpdf(y, a=shape, scale=np.exp(log_mean) / shape)
    np.testing.assert_allclose(np.asarray(family.log_prob(jnp.asarray(y))), expected, rtol=1e-5)


def test_hurdle_mean_does_not_move_with_the_dispersion():
    """The positive part's mean is exp(eta_1) whatever sigma (no retransformation term)."""
    eta = jnp.asarray([[0.3], [0.7]])
    means = [float(outcome_mean("hurdle", eta, jnp.asarray(s))[0]) for s in (0.2, 1.0, 3.0)]
    np.testing.assert_allclose(means, 1 / (1 + np.exp(-0.3)) * np.exp(0.7), rtol=1e-6)


@pytest.mark.parametrize("cv", [0.3, 1.0, 2.5])
def test_hurdle_gamma_estimates_the_mean_of_a_positive_part_of_another_shape(cv):
    """The gamma's score for its log-mean is zero at log(sample mean) whatever the data's shape
    and the cv: on log-normal and Weibull draws its estimate of the mean is the sample mean
    (gamma pseudo-maximum likelihood)."""
    rng = np.random.default_rng(4)
    for y in (rng.lognormal(0.3, 1.1, 5_000), 2.0 * rng.weibull(0.7, 5_000)):

        def total(log_mean, y=y):
            family = HurdleGamma(jnp.asarray(2.0), log_mean, jnp.asarray(cv))
            return family.log_prob(jnp.asarray(y, jnp.float32)).sum()

        at_mean = jnp.asarray(np.log(y.mean()), jnp.float32)
        score = float(jax.grad(total)(at_mean))
        assert abs(score) < 1e-3 * len(y), score
        assert float(jax.grad(total)(at_mean + 0.05)) < 0 < float(jax.grad(total)(at_mean - 0.05))


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_mean_matches_monte_carlo(likelihood):
    """outcome_mean is the mean of outcome_distribution: 200,000 draws, within 4 MC se."""
    eta = jnp.asarray([[0.3, -0.8], [0.1, 0.5]])[: N_PARTS[likelihood]]
    scale = jnp.asarray([0.8, 1.3])
    family = outcome_distribution(likelihood, eta, scale, nu=jnp.asarray(5.0), floor=-0.4)
    draws = np.asarray(family.sample(jax.random.PRNGKey(0), (200_000,)), dtype=float)
    mean = np.asarray(outcome_mean(likelihood, eta, scale, floor=-0.4))
    se = draws.std(0) / np.sqrt(len(draws))
    assert np.all(np.abs(draws.mean(0) - mean) < 4 * se), (draws.mean(0), mean, se)


def test_censored_draws_never_below_the_floor():
    family = LeftCensoredNormal(jnp.zeros(1000), jnp.ones(1000), 0.3)
    draws = np.asarray(family.sample(jax.random.PRNGKey(1)))
    assert draws.min() == pytest.approx(0.3)
    assert 0.55 < (draws == np.float32(0.3)).mean() < 0.7  # P(N(0,1) < 0.3) = 0.618


@pytest.fixture(scope="module")
def floored_trial():
    """A trial whose outcome has a mass of exact zeros (hurdle, censored; > 0 for bernoulli)."""
    from imgcate.simulate import simulate_scenario

    return simulate_scenario(3, effect="linear", noise="zero_inflated", n_units=120)


@pytest.mark.filterwarnings("ignore::imgcate.ConvergenceWarning")  # short chains on purpose
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_unit_effects_and_predict_agree_on_the_trials_units(floored_trial, likelihood):
    """One source of truth: the trial's own units predicted as new images (with their own
    covariates) get exactly their in-sample CATE draws, for every family."""
    import imgcate

    sim = floored_trial
    trial = sim.trial
    if likelihood == "bernoulli":
        data = trial.data.assign(**{trial.outcome: (trial.outcome_array > 0).astype(float)})
        trial = dataclasses.replace(trial, data=data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", imgcate.ModelCheckWarning)
        fit = imgcate.fit(
            trial,
            sim.embeddings,
            n_clusters=2,
            likelihood=likelihood,
            num_chains=1,
            num_warmup=30,
            num_samples=200,  # the outcome check needs 200 draws to call a miss
            init_restarts=2,
            init_steps=50,
            n_basis=8,
            seed=1,
        )
    checks = [str(w.message) for w in caught if w.category is imgcate.ModelCheckWarning]
    if likelihood in ("gaussian", "student_t"):  # 35 % exact zeros: a symmetric family misses
        assert any("share_at_floor" in m and "hurdle" in m for m in checks), checks
    if likelihood == "hurdle":  # the hurdle reproduces them (its gamma tail need not)
        assert "likelihood=hurdle (gamma positive part)" in fit.summary()
        table = fit.check_outcome()
        assert not table.loc[(slice(None), "share_at_floor"), "missed"].any(), table
        assert not any("likelihood='hurdle'" in m for m in checks), checks
    units = fit.unit_effects()
    assert list(sim.embeddings.image_ids) == list(units["unit"])  # one image per unit, in order
    values = sim.embeddings.values
    predicted = fit.predict(values, covariates=trial.covariate_matrix).to_frame()
    np.testing.assert_allclose(predicted["tau_mean"], units["tau_mean"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(predicted["tau_5%"], units["tau_5%"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        predicted["cluster_prob_1"], units["cluster_prob_1"], rtol=1e-4, atol=1e-6
    )
    if likelihood in ("gaussian", "student_t"):  # the effect does not depend on covariates
        plain = fit.predict(values).to_frame()
        np.testing.assert_allclose(plain["tau_mean"], units["tau_mean"], rtol=1e-4, atol=1e-5)


def test_outcome_check_flags_a_missed_floor_and_passes_a_matching_model():
    """The posterior predictive check against data with a known answer."""
    from imgcate.outcome_checks import outcome_check, outcome_problems

    rng = np.random.default_rng(0)
    treatment = np.repeat([0, 1], 200)
    observed = rng.normal(size=400)
    replicated = rng.normal(size=(300, 400))
    table = outcome_check(observed, replicated, treatment)
    assert not table["missed"].any() and "share_at_floor" not in table.index.levels[1]
    assert outcome_problems(table, "gaussian") == []
    floored = np.maximum(observed, 0.0)  # half the outcomes at 0
    table = outcome_check(floored, replicated, treatment)
    assert table.loc[("treated", "share_at_floor"), "missed"]
    assert table.loc[("control", "share_at_floor"), "observed"] == pytest.approx(
        (floored[:200] == 0).mean()
    )
    (message,) = outcome_problems(table, "gaussian")
    assert "likelihood='hurdle' or 'censored'" in message
    assert "outcome (control share_at_floor" in message  # the shape named first
    matching = np.maximum(replicated, 0.0)
    assert not outcome_check(floored, matching, treatment)["missed"].any()
    # from fewer than 200 draws nothing can be called missed: p is at least 2 / (draws + 1)
    few = outcome_check(floored, replicated[:199], treatment)
    assert few.loc[("treated", "share_at_floor"), "p_value"] == pytest.approx(2 / 200)
    assert not few["missed"].any()
    assert outcome_check(floored, replicated[:200], treatment)["missed"].any()


def test_outcome_check_leaves_out_overflowing_draws():
    """Replicated draws of a heavy-tailed family can overflow: their statistics are dropped
    (and counted), with no numpy warning."""
    from imgcate.outcome_checks import outcome_check

    rng = np.random.default_rng(1)
    observed, treatment = rng.normal(size=100), np.repeat([0, 1], 50)
    replicated = rng.normal(size=(200, 100))
    replicated[:5, 0] = np.inf
    replicated[5:10, 1] = 1e200  # finite, but its square overflows
    embedding = rng.normal(size=(100, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = outcome_check(observed, replicated, treatment, embedding)
    assert table.loc[("control", "sd"), "draws"] == 190
    assert table.loc[("treated", "sd"), "draws"] == 200
    # the spread's centre is each unit's median over its finite draws
    assert table.loc[("control", "spread_on_image"), "draws"] == 190
    assert not table["missed"].any()
    replicated[:, 2] = np.inf  # a unit with no finite draw: no centre, no spread statistic
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = outcome_check(observed, replicated, treatment, embedding)
    assert ("control", "spread_on_image") not in table.index
    assert ("treated", "spread_on_image") in table.index
