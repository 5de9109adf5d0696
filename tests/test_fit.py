"""The effect-cluster model: recovery, intervals, prediction, persistence, diagnostics.

Tolerances: a posterior mean is compared to the truth within 4 posterior sds. With ~500 units
the posterior sd approximates the estimator's sampling sd (Bernstein-von Mises), so a correct
model fails such a check with probability ~6e-5; the Monte Carlo error of the mean (sd/sqrt(ESS),
ESS >= 100) adds under 10% to that margin.
"""

from __future__ import annotations

import pickle
import shutil
import warnings
import zipfile

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from imgcate import ConvergenceWarning, FitError, InputError
from imgcate.inference import fit
from imgcate.results import load_fit
from imgcate.selection import compare_clusters
from imgcate.simulate import simulate_trial

FAST = {"num_warmup": 300, "num_samples": 300, "num_chains": 2}


@pytest.fixture(scope="module")
def k2():
    sim = simulate_trial(11, 600, 2, separation=4.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        result = fit(sim.trial, sim.embeddings, n_clusters=2, seed=1, **FAST)
    return sim, result


def assert_recovers(result, truth, n_sd=4.0):
    table = result.cluster_effects()
    err = np.abs(table["tau_mean"].to_numpy() - truth.tau_cluster)
    assert (err < n_sd * table["tau_sd"].to_numpy()).all(), (table, truth.tau_cluster)


def test_k2_recovers_effects_and_clusters(k2):
    sim, result = k2
    assert_recovers(result, sim.truth)
    units = result.unit_effects()
    # separation 4.5: Bayes accuracy ~98.8%, so ARI of the true assignment is ~0.95
    assert adjusted_rand_score(sim.truth.cluster, units["cluster"]) >= 0.8
    np.testing.assert_allclose(units.filter(like="cluster_prob_").sum(axis=1), 1.0, atol=1e-5)


def test_k3_recovers_effects_and_clusters():
    sim = simulate_trial(12, 900, 3, separation=5.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        result = fit(sim.trial, sim.embeddings, n_clusters=3, seed=2, **FAST)
    assert_recovers(result, sim.truth)
    assert adjusted_rand_score(sim.truth.cluster, result.unit_effects()["cluster"]) >= 0.8


def test_implied_ate_agrees_with_difference_in_means(k2):
    sim, result = k2
    table = result.ate()
    model, dim = table.loc["model_implied"], table.loc["difference_in_means"]
    assert abs(model.estimate - dim.estimate) < 3 * dim.std_err
    assert abs(model.estimate - sim.truth.ate) < 4 * dim.std_err
    assert list(table.columns) == ["estimate", "std_err", "5%", "95%"]


def test_tables_and_idata_dims(k2):
    _, result = k2
    tidy = result.tidy(prob=0.8)
    assert list(tidy.columns) == ["term", "estimate", "std_err", "10%", "90%"]
    assert (tidy["10%"] < tidy["estimate"]).all() and (tidy["estimate"] < tidy["90%"]).all()
    post = result.idata.posterior
    assert post["tau_cluster"].dims == ("chain", "draw", "cluster")
    assert post["membership"].dims == ("chain", "draw", "feature", "cluster_contrast")
    assert post["membership_local"].dims == ("chain", "draw", "feature")
    weights = post["membership_scale"] * post["membership_local"] * post["membership_raw"]
    np.testing.assert_allclose(
        post["membership"], weights.transpose(*post["membership"].dims), rtol=1e-6
    )
    assert result.idata.log_likelihood["outcome"].dims == ("chain", "draw", "unit")
    assert "Cluster effects" in result.summary()
    assert result.loo().elpd_loo < 0


def test_membership_weights_in_the_input_basis(k2):
    sim, result = k2
    table = result.membership_weights()
    assert table.index.names == ["feature", "contrast"] and len(table) == 16
    # exact: input-basis weights give the model's logits on raw (standardized) embeddings
    rng = np.random.default_rng(0)
    raw = sim.embeddings.values[:50] + rng.normal(size=(50, 16))
    std = result.standardizer
    draws = result._param("membership")
    model_logit = std.embedding(raw) @ draws[0]
    weights_in = std.projection @ draws[0]
    np.testing.assert_allclose(
        (raw - std.embedding_mean) / std.embedding_sd @ weights_in,
        model_logit,
        rtol=1e-6,
        atol=1e-6,
    )
    # the weights point along the direction that separates the true clusters: the Bayes log-odds
    # of cluster 1 against 0 are (c1 - c0) . e, i.e. (c1 - c0) * sd per sd of each feature
    centers = sim.truth.centers
    truth_direction = (centers[1] - centers[0]) * std.embedding_sd
    mean = table["weight_mean"].to_numpy()
    corr = np.corrcoef(mean, truth_direction)[0, 1]
    print(f"correlation of membership weights with the true direction: {corr:.3f}")
    assert corr > 0.9, corr
    assert table["prob_positive"].between(0, 1).all()
    assert (table["5%"] <= table["weight_mean"]).all()
    model = result.membership_weights(basis="model", prob=0.8)
    assert list(model.columns) == ["weight_mean", "weight_sd", "10%", "90%", "prob_positive"]
    named = result.membership_weights(names=[f"f{i}" for i in range(16)])
    assert named.index.get_level_values("feature")[0] == "f0"
    with pytest.raises(InputError, match="names"):
        result.membership_weights(names=["a", "b"])
    with pytest.raises(InputError, match="basis"):
        result.membership_weights(basis="pixels")


def test_predict_matches_in_sample_and_truth(k2):
    sim, result = k2
    emb = sim.embeddings.for_keys(sim.trial.image_keys)
    pred = result.predict(emb)
    units = result.unit_effects()
    np.testing.assert_allclose(pred.cate.mean(0), units["tau_mean"], atol=1e-5)
    # new images from the same mixture: the posterior CATE tracks their true conditional effect
    rng = np.random.default_rng(5)
    centers = sim.truth.centers
    new_emb = centers[rng.integers(0, 2, 300)] + rng.normal(size=(300, centers.shape[1]))
    frame = result.predict(new_emb).to_frame()
    assert np.corrcoef(frame["tau_mean"], sim.truth.cate_of(new_emb))[0, 1] > 0.9
    assert {"tau_5%", "tau_95%", "prob_positive", "cluster_prob_1"} <= set(frame.columns)
    far = result.predict(emb[:3] * 0 + 50.0)
    assert far.outside_support.all() and not pred.outside_support.mean() > 0.05


def test_save_load_predict_identical(k2, tmp_path):
    sim, result = k2
    path = result.save(tmp_path / "fit.imgcate")
    loaded = load_fit(path)
    emb = sim.embeddings.values
    a, b = result.predict(emb), loaded.predict(emb)
    np.testing.assert_array_equal(a.cate, b.cate)
    np.testing.assert_array_equal(a.cluster_prob, b.cluster_prob)
    assert loaded.cluster_effects().equals(result.cluster_effects())
    # The loaded posterior lives in memory: saving it again, pickling it (as Dask does) and
    # reading it after the temporary file is gone all work.
    fresh = load_fit(path)
    again = load_fit(fresh.save(tmp_path / "again" / "fit.imgcate"))
    assert fresh.cluster_effects().equals(result.cluster_effects())
    assert again.cluster_effects().equals(result.cluster_effects())
    assert (
        pickle.loads(pickle.dumps(load_fit(path)))
        .cluster_effects()
        .equals(result.cluster_effects())
    )
    shutil.rmtree(tmp_path / "again")
    with pytest.raises(Exception, match="exists; pass overwrite=True"):
        result.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["fit.imgcate"]  # no temporary left
    (tmp_path / "bad.imgcate").write_bytes(b"garbage")
    with pytest.raises(InputError, match="not a readable imgcate fit"):
        load_fit(tmp_path / "bad.imgcate")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp_path / "meta.imgcate", "w") as dst:
        for item in src.namelist():  # the same fit, its settings replaced by a JSON list
            dst.writestr(item, "[1, 2]" if item == "meta.json" else src.read(item))
    with pytest.raises(InputError, match="meta.json is not a fit's settings"):
        load_fit(tmp_path / "meta.imgcate")


def test_same_seed_same_posterior():
    sim = simulate_trial(3, 200, 2)
    opts = {"num_warmup": 100, "num_samples": 100, "num_chains": 1}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        a = fit(sim.trial, sim.embeddings, seed=7, **opts)
        b = fit(sim.trial, sim.embeddings, seed=7, **opts)
        c = fit(sim.trial, sim.embeddings, seed=8, **opts)
    np.testing.assert_array_equal(a.idata.posterior["tau"].values, b.idata.posterior["tau"].values)
    assert not np.array_equal(a.idata.posterior["tau"].values, c.idata.posterior["tau"].values)


def test_too_short_a_run_warns():
    sim = simulate_trial(4, 200, 2)
    with pytest.warns(ConvergenceWarning, match="ESS|R-hat|divergent"):
        fit(sim.trial, sim.embeddings, num_warmup=20, num_samples=20, num_chains=2)


def test_svi_recovers_effects():
    sim = simulate_trial(13, 2000, 2, separation=4.5)
    result = fit(
        sim.trial,
        sim.embeddings,
        method="svi",
        seed=0,
        svi_steps=3000,
        svi_batch_size=500,
        svi_draws=500,
    )
    table = result.cluster_effects()
    # SVI posteriors are approximate (often too narrow): absolute tolerance of 0.3
    # (about 4 sampling sds of a cluster effect at n=2000, noise sd 1)
    np.testing.assert_allclose(table["tau_mean"], sim.truth.tau_cluster, atol=0.3)
    assert "svi_loss" in result.idata.groups()


@pytest.mark.parametrize("likelihood", ["student_t", "bernoulli"])
def test_other_likelihoods_recover_effects(likelihood):
    sim = simulate_trial(
        14,
        1200 if likelihood == "bernoulli" else 600,
        2,
        likelihood=likelihood,
        separation=4.5,
        tau=(-1.0, 2.0) if likelihood == "bernoulli" else None,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        result = fit(sim.trial, sim.embeddings, likelihood=likelihood, seed=0, **FAST)
    assert_recovers(result, sim.truth)
    if likelihood == "bernoulli":
        ate = result.ate()
        assert (
            abs(ate.loc["model_implied", "estimate"] - ate.loc["difference_in_means", "estimate"])
            < 3 * ate.loc["difference_in_means", "std_err"]
        )


def test_strata_random_effects_and_k1():
    sim = simulate_trial(15, 400, 1, tau=(1.5,), n_strata=5, stratum_sd=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        result = fit(sim.trial, sim.embeddings, n_clusters=1, seed=0, **FAST)
    assert "stratum_sd" in result.idata.posterior
    assert_recovers(result, sim.truth)
    assert result.cluster_effects().shape[0] == 1
    with pytest.raises(FitError, match="K=1"):
        result.membership_weights()


def test_fit_input_errors(k2):
    sim, _ = k2
    with pytest.raises(InputError, match="unknown fit option"):
        fit(sim.trial, sim.embeddings, num_draws=10)
    with pytest.raises(InputError, match="method='mcmc' is not allowed"):
        fit(sim.trial, sim.embeddings, method="mcmc")
    with pytest.raises(InputError, match="rows but the trial has"):
        fit(sim.trial, np.zeros((3, 4)))
    with pytest.raises(InputError, match="no embedding for image ids"):
        fit(
            sim.trial.subset(np.arange(10)),
            sim.embeddings.__class__(
                values=sim.embeddings.values[:2], image_ids=np.array([-1, -2])
            ),
        )
    with pytest.raises(InputError, match="needs a 0/1 outcome"):
        fit(sim.trial, sim.embeddings, likelihood="bernoulli")


def test_propensity_adjusted_fit_on_confounded_data():
    """Targeting on the image plus a baseline that moves with the propensity: the adjusted
    model (propensity in the baseline, as in BCF) recovers the cluster effects."""
    from scipy.special import expit

    sim = simulate_trial(21, 800, 2, assignment="confounded", confounding=2.0, separation=4.5)
    p = sim.truth.propensity
    shifted = sim.trial.data.assign(outcome=sim.trial.outcome_array + 3.0 * expit(8 * (p - 0.5)))
    trial = sim.trial.__class__(**{**sim.trial.__dict__, "data": shifted})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        result = fit(trial, sim.embeddings, propensity=p, seed=0, **FAST)
    assert "propensity" in result.idata.posterior["beta"].coords["covariate"].values
    assert_recovers(result, sim.truth)
    with pytest.raises(InputError, match="strictly between 0 and 1"):
        fit(trial, sim.embeddings, propensity=np.r_[p[:-1], 1.0])


def test_compare_clusters_warns_for_the_selected_fit():
    """Each K's fit is quiet during the comparison; the selected one is then checked."""
    sim = simulate_trial(5, 150, 1)
    with pytest.warns(ConvergenceWarning, match="bulk ESS") as record:
        comparison = compare_clusters(
            sim.trial, sim.embeddings, k_max=1, num_chains=1, num_warmup=30, num_samples=30, seed=0
        )
    assert comparison.best_k == 1
    assert all(
        "imgcate fit:" in str(w.message)
        for w in record
        if issubclass(w.category, ConvergenceWarning)
    )
