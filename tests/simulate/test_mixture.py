"""The simulator: reproducible, and its truth is consistent with what it generated."""

from __future__ import annotations

import numpy as np
import pytest

from imgcate import InputError
from imgcate.simulate import simulate_trial


def test_same_seed_same_trial_other_seed_other_trial():
    a, b, c = (simulate_trial(s, 300, 3) for s in (5, 5, 6))
    np.testing.assert_array_equal(a.trial.outcome_array, b.trial.outcome_array)
    np.testing.assert_array_equal(a.embeddings.values, b.embeddings.values)
    assert not np.allclose(a.trial.outcome_array, c.trial.outcome_array)


def test_truth_is_consistent():
    sim = simulate_trial(1, 2000, 3, separation=4.0)
    truth = sim.truth
    np.testing.assert_allclose(truth.tau_unit, truth.tau_cluster[truth.cluster])
    assert truth.ate == pytest.approx(truth.tau_unit.mean())
    np.testing.assert_allclose(truth.cluster_prob.sum(1), 1.0)
    emb = sim.embeddings.for_keys(sim.trial.image_keys)
    np.testing.assert_allclose(truth.cate_of(emb), truth.cate)
    # separation 4 puts ~97% of units in their most probable cluster (Bayes accuracy)
    accuracy = (truth.cluster_prob.argmax(1) == truth.cluster).mean()
    assert 0.94 < accuracy < 0.995
    # randomized: difference in means is unbiased for the ATE (4 SE tolerance)
    t, y = sim.trial.treatment_array, sim.trial.outcome_array
    se = np.sqrt(y[t == 1].var() / t.sum() + y[t == 0].var() / (1 - t).sum())
    assert abs(y[t == 1].mean() - y[t == 0].mean() - truth.ate) < 4 * se


def test_shared_images_strata_and_confounding():
    sim = simulate_trial(2, 400, 2, n_images=40, n_strata=4, assignment="confounded")
    assert len(sim.embeddings.image_ids) == 40
    assert sim.trial.data.groupby("image_id").size().min() >= 1
    assert sim.trial.codes("stratum").max() == 3
    p = sim.truth.propensity
    assert p.std() > 0.1
    # targeted on the high-effect direction: treated units have higher true effects
    t = sim.trial.treatment_array
    assert sim.truth.tau_unit[t == 1].mean() > sim.truth.tau_unit[t == 0].mean()


def test_binary_and_heavy_tailed_outcomes():
    assert set(np.unique(simulate_trial(3, 200, likelihood="bernoulli").trial.outcome_array)) == {
        0.0,
        1.0,
    }
    y = simulate_trial(3, 2000, likelihood="student_t").trial.outcome_array
    assert ((y - np.median(y)) ** 4).mean() / y.var() ** 2 > 4  # heavier than Gaussian (3)


def test_bad_arguments():
    with pytest.raises(InputError, match="increasing effects"):
        simulate_trial(0, 100, 2, tau=(1.0, 0.0))
    with pytest.raises(InputError, match="assignment='random' is not allowed"):
        simulate_trial(0, 100, assignment="random")
