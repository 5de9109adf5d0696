"""What the posterior implies at any size: the chunked passes against one pass over everything,
and a fit too large to keep per-draw unit arrays."""

from __future__ import annotations

import warnings

import jax.numpy as jnp
import numpy as np
import pytest

import imgcate.inference
import imgcate.posterior
from imgcate import ConvergenceWarning, fit
from imgcate.config import FitConfig
from imgcate.errors import FitError
from imgcate.inference import svi_schedule
from imgcate.posterior import (
    cluster_summaries,
    evaluate,
    finish_parts,
    fit_spec,
    merge_parts,
    site_draws,
    summary_parts,
    trial_inputs,
)
from imgcate.simulate import simulate_trial


def test_summaries_in_jax_equal_numpy_float64():
    rng = np.random.default_rng(0)
    cate = rng.normal(1.0, 0.7, size=(30, 500)).astype(np.float32)
    prob = rng.dirichlet(np.ones(3), size=(30, 500)).astype(np.float32)
    slow = cluster_summaries(cate, prob)
    fast = cluster_summaries(jnp.asarray(cate), jnp.asarray(prob), jnp)
    assert set(slow) == set(fast)
    for name, values in slow.items():
        np.testing.assert_allclose(np.asarray(fast[name]), values, rtol=2e-5, atol=1e-6)
    constant = np.full((4, 500), 2.5, np.float32)
    share = cluster_summaries(jnp.asarray(constant), jnp.asarray(prob[:4]), jnp)
    assert np.all(np.asarray(share["effect_share_clusters"]) == 0)


def test_summaries_merged_over_chunks_of_units_equal_one_pass():
    """The derived pass's streaming summaries (chunks of units merged) against the direct
    definition over every unit: float64 to 1e-12, float32 chunks in JAX to rounding."""
    rng = np.random.default_rng(3)
    cate = rng.normal(1.0, 0.7, size=(30, 500))
    prob = rng.dirichlet(np.ones(3), size=(30, 500))
    prob[:5, :, 2] = 1e-9  # no unit most probably in cluster 2 under five draws
    prob /= prob.sum(-1, keepdims=True)
    whole = cluster_summaries(cate, prob)
    assert np.all(whole["tau_cluster"][:5, 2] != 0)  # the weighted average stands in
    edges = [0, 1, 7, 200, 499, 500]  # uneven, with one-unit chunks
    for xp, dtype, tol in ((np, np.float64, 1e-12), (jnp, np.float32, 2e-5)):
        parts = [
            {
                name: np.asarray(v, np.float64)
                for name, v in summary_parts(
                    xp.asarray(cate[:, a:b], dtype), xp.asarray(prob[:, a:b], dtype), xp
                ).items()
            }
            for a, b in zip(edges[:-1], edges[1:], strict=True)
        ]
        merged = parts[0]
        for part in parts[1:]:
            merged = merge_parts(merged, part)
        got = finish_parts(merged)
        assert set(got) == set(whole)
        for name, values in whole.items():
            np.testing.assert_allclose(got[name], values, rtol=tol, atol=tol, err_msg=name)
    constant = np.full((4, 500), 2.5)
    merged = merge_parts(
        summary_parts(constant[:, :9], prob[:4, :9]), summary_parts(constant[:, 9:], prob[:4, 9:])
    )
    assert np.all(finish_parts(merged)["effect_share_clusters"] == 0)


def test_unit_effects_by_chunks_of_units_equal_one_pass(k2, monkeypatch):
    _, result = k2
    whole = result.unit_effects()
    monkeypatch.setattr(imgcate.posterior, "DRAW_CHUNK_VALUES", 600 * 2 * 7)  # 7-unit chunks
    chunked = result.unit_effects()
    # float32 arithmetic in other batch shapes: equal to rounding
    np.testing.assert_allclose(
        chunked.drop(columns="unit"), whole.drop(columns="unit"), rtol=1e-5, atol=1e-6
    )


def test_the_basis_is_computed_again_from_the_stored_embedding(k2):
    """A fit does not store its Gaussian-process basis (183 MB at 10^6 units): the basis
    computed from the stored embedding is the one the model saw, bit for bit, and a fit that
    stored it (saved before 2026-12-05) reads it and gives the same effects."""
    from dataclasses import replace

    from imgcate.config import model_data

    sim, result = k2
    const = result.idata.constant_data
    assert "basis_features" not in const
    rows = sim.embeddings.for_keys(sim.trial.image_keys)
    seen = model_data(sim.trial, rows, result.standardizer, result.config).inputs.basis
    assert seen.shape == (600, result.standardizer.n_basis) and seen.shape[1] > 0
    np.testing.assert_array_equal(np.asarray(trial_inputs(result).basis), np.asarray(seen))

    def storing(basis):
        idata = result.idata.copy()
        idata.constant_data = const.assign(basis_features=(("unit", "basis"), basis))
        return replace(result, idata=idata)

    assert storing(np.asarray(seen)).unit_effects().equals(result.unit_effects())
    zeros = np.zeros_like(np.asarray(seen))  # read from the fit, not computed again
    np.testing.assert_array_equal(np.asarray(trial_inputs(storing(zeros)).basis), zeros)


def test_a_fit_too_large_for_per_draw_unit_arrays(monkeypatch):
    # the limits lowered so that 300 units x 200 draws exceed them: the fit keeps its
    # summaries, computed a few units at a time (43 chunks), and says why loo() cannot run
    monkeypatch.setattr(imgcate.inference, "MAX_PREDICTIVE_VALUES", 1000)
    monkeypatch.setattr(imgcate.posterior, "MAX_STORED_UNIT_DRAWS", 1000)
    monkeypatch.setattr(imgcate.posterior, "DRAW_CHUNK_VALUES", 300 * 2 * 9)
    monkeypatch.setattr(imgcate.posterior, "DERIVED_CHUNK_VALUES", 200 * 2 * 7)
    sim = simulate_trial(5, 300, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        result = fit(sim.trial, sim.embeddings, method="svi", svi_steps=500, svi_draws=200)
    groups = result.idata.groups()
    assert "log_likelihood" not in groups and "posterior_predictive" not in groups
    assert "tau_unit" not in result.idata.posterior
    with pytest.raises(FitError, match=r"300 units x 200 draws .*\(1,000\); .*at most 3 draws"):
        result.loo()
    summary = result.summary()  # says what it could not check, claims nothing it did not
    assert "not checked: convergence (SVI" in summary and "R-hat" not in summary
    assert "not checked: replicated outcomes" in summary
    assert "replicated outcomes match" not in summary
    q = evaluate(site_draws(result), trial_inputs(result), fit_spec(result))
    slow = cluster_summaries(q["cate"] * result.standardizer.outcome_sd, q["cluster_prob"])
    for name, values in slow.items():  # every summary, not only the cluster effects
        stored = result.idata.posterior[name].values.reshape(values.shape)
        np.testing.assert_allclose(stored, values, rtol=1e-4, atol=1e-5, err_msg=name)
    assert len(result.unit_effects()) == 300


def test_svi_step_size_holds_then_decays_to_a_hundredth():
    step = svi_schedule(FitConfig(svi_steps=1000, svi_learning_rate=0.02))
    assert float(step(0)) == pytest.approx(0.02) and float(step(500)) == pytest.approx(0.02)
    assert float(step(750)) == pytest.approx(0.002)
    assert float(step(1000)) == pytest.approx(0.0002)


def test_assigned_truth_is_the_average_cate_of_each_most_probable_cluster():
    truth = simulate_trial(2, 400, 3).truth
    slow = []
    for k in range(3):
        units = [
            u for u in range(400) if max(range(3), key=lambda j: truth.cluster_prob[u, j]) == k
        ]
        slow.append(sum(truth.cate[u] for u in units) / len(units))
    np.testing.assert_allclose(truth.tau_cluster_assigned, slow, rtol=1e-12)
    # overlapping clusters pull each towards the others, inside the simulated effects
    assert np.all(np.diff(truth.tau_cluster_assigned) > 0)
    assert truth.tau_cluster[0] < truth.tau_cluster_assigned[0]
    assert truth.tau_cluster_assigned[-1] < truth.tau_cluster[-1]


def test_a_cluster_effect_is_the_average_cate_of_the_units_most_probably_in_it():
    """Per draw, the obvious loops: each unit to its most probable cluster, the clusters'
    mean CATE, and the share of the CATE's variance those means explain (R^2 on the
    clusters); a cluster no unit is most probably in falls back on the membership-weighted
    average. Soft memberships do not pull the effects together: the same assignment under
    sharper probabilities gives the same effects (the draws where every cluster has units)."""
    rng = np.random.default_rng(1)
    cate = rng.normal(1.0, 0.7, size=(5, 60))
    prob = rng.dirichlet(np.ones(3), size=(5, 60))
    prob[4, :, 2] *= 0.01  # no unit most probably in cluster 2 under the last draw
    prob[4] /= prob[4].sum(1, keepdims=True)
    got = cluster_summaries(cate, prob)
    for s in range(5):
        labels = [int(np.argmax(prob[s, u])) for u in range(60)]
        for k in range(3):
            members = [cate[s, u] for u in range(60) if labels[u] == k]
            if members:
                want = sum(members) / len(members)
            else:
                want = sum(cate[s] * prob[s, :, k]) / sum(prob[s, :, k])
            assert got["tau_cluster"][s, k] == pytest.approx(want, rel=1e-12)
        fitted = np.array([got["tau_cluster"][s, labels[u]] for u in range(60)])
        r2 = 1 - np.var(cate[s] - fitted) / np.var(cate[s])
        assert got["effect_share_clusters"][s] == pytest.approx(r2, rel=1e-10)
    sharp = prob[:4] ** 8 / (prob[:4] ** 8).sum(-1, keepdims=True)
    again = cluster_summaries(cate[:4], sharp)["tau_cluster"]
    np.testing.assert_allclose(again, got["tau_cluster"][:4], rtol=1e-12)
