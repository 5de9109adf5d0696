"""The misspecification scenarios: their truth is what generated them."""

from __future__ import annotations

import numpy as np
import pytest

from imgcate import InputError
from imgcate.simulate import simulate_scenario
from imgcate.simulate.scenarios import BASELINES, EFFECTS, NOISES, ZERO_NOISES


@pytest.mark.parametrize("effect", EFFECTS)
def test_truth_of_new_embeddings_matches_the_trial(effect):
    sim = simulate_scenario(3, effect=effect, n_units=200, n_features=5)
    truth = sim.truth
    np.testing.assert_allclose(truth.cate_of(sim.features), truth.cate, rtol=1e-9, atol=1e-12)
    new = truth.new_embeddings(300, seed=1)
    assert new.shape == (300, 5)
    # new units come from the same population: the CATE's mean agrees within 5 se
    cate_new = truth.cate_of(new)
    se = np.hypot(cate_new.std() / np.sqrt(300), truth.cate.std() / np.sqrt(200))
    assert abs(cate_new.mean() - truth.cate.mean()) < 5 * se + 1e-12


def test_same_seed_same_trial_and_every_kind_runs():
    a = simulate_scenario(1, effect="tanh", baseline="sine", noise="heavy")
    b = simulate_scenario(1, effect="tanh", baseline="sine", noise="heavy")
    np.testing.assert_array_equal(a.outcome, b.outcome)
    for baseline in BASELINES:
        for noise in NOISES:
            sim = simulate_scenario(
                2, effect="constant", baseline=baseline, noise=noise, n_units=50
            )
            assert np.isfinite(sim.outcome).all()


def test_constant_effect_has_a_constant_cate():
    sim = simulate_scenario(0, effect="constant", baseline="quadratic")
    assert np.ptp(sim.truth.cate) == 0 and sim.truth.ate == 1.0


@pytest.mark.parametrize("noise", ZERO_NOISES)
def test_zero_inflated_outcome_has_its_floor_and_its_mean_effect(noise):
    """65 % zeros; the effect on the mean is the CATE (gamma or log-normal positive part):
    with a constant effect of 1, the difference in means over 40,000 units is within 4 se
    of 1."""
    sim = simulate_scenario(5, effect="constant", noise=noise, n_units=40_000)
    y, t = sim.outcome, sim.treatment
    assert abs((y == 0).mean() - 0.65) < 0.01 and sim.truth.floor_share == (y == 0).mean()
    assert y.min() == 0.0
    diff = y[t == 1].mean() - y[t == 0].mean()
    se = np.sqrt(y[t == 1].var() / (t == 1).sum() + y[t == 0].var() / (t == 0).sum())
    assert abs(diff - 1.0) < 4 * se


@pytest.mark.parametrize("effect", ["tanh", "clusters"])
def test_heteroskedastic_noise_grows_along_the_baseline_with_unit_variance_on_average(effect):
    """Residuals about the truth have variance 1 over 40,000 units (within 4 se of the
    sample variance of a scale mixture) and an sd that grows with the untreated outcome's
    direction: in its top quarter of units over 3 times that of its bottom quarter (the
    quarters' middles, +-1.15 sd, give exp(0.5 * 2.3) = 3.2; their sds 3.7 here). With
    clusters, whose centres shift that direction (seed 4: by 1.7 sd either way), too."""
    seed = 4 if effect == "clusters" else 7
    sim = simulate_scenario(seed, effect=effect, noise="heteroskedastic", n_units=40_000)
    truth = sim.truth
    resid = sim.outcome - truth.mu0 - sim.treatment * truth.cate
    sq = resid**2
    assert abs(sq.mean() - 1.0) < 4 * sq.std() / np.sqrt(len(sq))
    level = truth.latent_of(sim.features)[:, 1]
    low, high = level < np.quantile(level, 0.25), level > np.quantile(level, 0.75)
    assert resid[high].std() > 3 * resid[low].std()


def test_bad_scenarios_are_refused():
    with pytest.raises(InputError, match="effect='wavy' is not allowed"):
        simulate_scenario(0, effect="wavy")
    with pytest.raises(InputError, match="n_features >= 3"):
        simulate_scenario(0, n_features=2)
    with pytest.raises(InputError, match="positive part negative"):
        simulate_scenario(0, effect="linear", noise="zero_inflated", positive_share=0.1)
