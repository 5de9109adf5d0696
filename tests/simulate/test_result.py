"""Every simulator returns one result type, whose truth is consistent with its trial."""

from __future__ import annotations

import numpy as np
import pytest

from imgcate.errors import InputError
from imgcate.simulate import (
    ConfoundedTruth,
    MixtureTruth,
    SceneTruth,
    SimulatedTrial,
    Truth,
    simulate_confounded,
    simulate_scene_trial,
    simulate_trial,
    synthetic_scene,
)


def _check(sim, truth_type):
    assert isinstance(sim, SimulatedTrial)
    assert isinstance(sim.truth, Truth) and isinstance(sim.truth, truth_type)
    n = sim.trial.n_units
    for name in ("tau_unit", "cate", "propensity", "mu0"):
        assert getattr(sim.truth, name).shape == (n,), name
    assert sim.truth.ate == pytest.approx(sim.truth.tau_unit.mean())
    np.testing.assert_array_equal(sim.treatment, sim.trial.treatment_array)
    np.testing.assert_array_equal(sim.outcome, sim.trial.outcome_array)


def test_mixture_trial():
    sim = simulate_trial(seed=0, n_units=120)
    _check(sim, MixtureTruth)
    assert sim.features.shape == (120, 16)


def test_confounded_study_matches_its_truth():
    sim = simulate_confounded(seed=1, n_units=300, ate=1.5)
    _check(sim, ConfoundedTruth)
    assert sim.features.shape == (300, 16)
    np.testing.assert_allclose(sim.truth.mu1 - sim.truth.mu0, 1.5)
    assert sim.truth.ate == 1.5
    # the same seed gives the same study
    again = simulate_confounded(seed=1, n_units=300, ate=1.5)
    np.testing.assert_array_equal(again.features, sim.features)
    np.testing.assert_array_equal(again.outcome, sim.outcome)


def test_scene_trial_has_no_embeddings_but_says_how_to_make_them(tmp_path):
    path = tmp_path / "scene.tif"
    synthetic_scene(path, seed=0, width=128, height=128)
    sim = simulate_scene_trial(path, seed=1, n_units=40, chip_size=16)
    _check(sim, SceneTruth)
    assert sim.embeddings is None and sim.scene == path
    assert sim.land_cover.shape == (128, 128)
    np.testing.assert_array_equal(sim.truth.cate, sim.truth.tau_unit)
    with pytest.raises(InputError, match="extract_chips"):
        sim.features  # noqa: B018


def test_difference_in_means_is_the_oracles_and_its_errors_are_its_standard_errors():
    """Over the true clusters (where the realised effect is the cluster's), the oracle's
    differences in means fall within their standard errors of the cluster effects as often as
    normal errors do: over 100 trials of 2,000 units, 90 % intervals hold 0.85-0.95 of the 200
    cluster effects (0.90 expected; the band is about 2.4 binomial sds). A group's estimate is
    its own difference in means (against the obvious computation); a group with one untreated
    unit, or none, gets NaN."""
    held = []
    for seed in range(100):
        sim = simulate_trial(seed, 2000, 2)
        estimate, se = sim.difference_in_means(sim.truth.cluster)
        held.extend(np.abs(estimate - sim.truth.tau_cluster) <= 1.6449 * se)
    assert 0.85 <= np.mean(held) <= 0.95, np.mean(held)

    sim = simulate_trial(0, 200, 2)
    groups = np.random.default_rng(1).integers(0, 4, 200)
    untreated = np.flatnonzero(sim.treatment == 0)
    groups[np.isin(groups, 3) & (sim.treatment == 0)] = 0
    groups[untreated[:1]] = 3  # one untreated unit alone in group 3
    estimate, se = sim.difference_in_means(groups, n_groups=5)  # group 4 has no units
    residual = sim.outcome - sim.truth.mu0
    treated = sim.treatment == 1
    for g in range(3):  # the obvious computation
        a, b = residual[(groups == g) & treated], residual[(groups == g) & ~treated]
        assert estimate[g] == pytest.approx(a.mean() - b.mean(), rel=1e-12)
        want = np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
        assert se[g] == pytest.approx(want, rel=1e-12)
    assert np.isnan(estimate[3:]).all() and np.isnan(se[3:]).all()
    with pytest.raises(InputError, match="one integer per unit"):
        sim.difference_in_means(np.zeros(10, int))
    with pytest.raises(InputError, match="negative"):
        sim.difference_in_means(groups - 1)
    with pytest.raises(InputError, match="beyond n_groups=2"):
        sim.difference_in_means(groups, n_groups=2)
    binary = simulate_trial(1, 400, 2, likelihood="bernoulli")  # its truth is in log-odds
    with pytest.raises(InputError, match="log-odds"):
        binary.difference_in_means(binary.truth.cluster)
