"""ATE estimators: bias of the naive estimate, IPW and AIPW recovery, double robustness,
cluster-robust errors; single replications against their own standard error, averages over
replications against the standard error of the mean."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from imgcate.confounding import (  # noqa: E402
    Propensity,
    aipw,
    ate_estimates,
    balance_table,
    difference_in_means,
    estimate_propensity,
    hajek_ipw,
)
from imgcate.simulate import simulate_confounded  # noqa: E402

TRUE_ATE = 2.0  # the ATE of the simulated study of the ``sim`` fixture (conftest.py)


def test_difference_in_means_is_badly_biased(fitted):
    _, table = fitted
    dim = table.loc["difference_in_means"]
    # Confounding by the latent built-up share pushes the naive estimate up by ~0.8.
    assert dim["estimate"] - TRUE_ATE > 0.4
    assert dim["2.5%"] > TRUE_ATE  # the naive interval excludes the truth
    print("\n" + table.round(3).to_string())


def test_ipw_and_aipw_recover_the_ate_in_one_replication(fitted):
    _, table = fitted
    for name in ("ipw_hajek", "aipw"):
        row = table.loc[name]
        # 3 standard errors: a correct estimator fails this with probability ~0.3%.
        assert abs(row["estimate"] - TRUE_ATE) < 3 * row["std_err"], name
        assert 0.03 < row["std_err"] < 0.3
        assert row["2.5%"] < row["estimate"] < row["97.5%"]
    assert list(table.columns) == ["estimate", "std_err", "2.5%", "97.5%", "n"]
    assert table.index.name == "estimator"
    assert (table["n"] == 1000).all()
    assert table.attrs["prob"] == 0.95


def test_interval_width_follows_prob(sim):
    e = sim.truth.propensity
    wide = hajek_ipw(sim.outcome, sim.treatment, e, prob=0.95)
    narrow = hajek_ipw(sim.outcome, sim.treatment, e, prob=0.5)
    ratio = (narrow.upper - narrow.lower) / (wide.upper - wide.lower)
    assert ratio == pytest.approx(0.6745 / 1.95996, rel=1e-3)


def test_aipw_double_robust_wrong_outcome_model():
    """Correct propensity + outcome model mu0 = mu1 = 0 (plainly wrong): AIPW stays unbiased."""
    est, plug_in = [], []
    for rep in range(200):
        sim = simulate_confounded(seed=1000 + rep, n_units=500)
        zero = np.zeros(500)
        res = aipw(sim.outcome, sim.treatment, sim.truth.propensity, mu0=zero, mu1=zero)
        est.append(res.estimate)
        plug_in.append(np.mean(zero - zero))  # the outcome model alone says "no effect"
    est = np.asarray(est)
    mc_se = est.std(ddof=1) / np.sqrt(len(est))
    assert abs(est.mean() - TRUE_ATE) < 3.5 * mc_se
    assert abs(np.mean(plug_in) - TRUE_ATE) > 1.9


def test_aipw_double_robust_wrong_propensity():
    """Correct outcome model + constant propensity 0.5 (ignores confounding): still unbiased."""
    est, ipw = [], []
    for rep in range(100):
        sim = simulate_confounded(seed=2000 + rep, n_units=500)
        half = np.full(500, 0.5)
        res = aipw(sim.outcome, sim.treatment, half, mu0=sim.truth.mu0, mu1=sim.truth.mu1)
        est.append(res.estimate)
        ipw.append(hajek_ipw(sim.outcome, sim.treatment, half).estimate)
    est = np.asarray(est)
    mc_se = est.std(ddof=1) / np.sqrt(len(est))
    assert abs(est.mean() - TRUE_ATE) < 3.5 * mc_se
    assert np.mean(ipw) - TRUE_ATE > 0.4  # the wrong propensity alone is biased


def test_singleton_clusters_reproduce_the_unclustered_se(sim):
    y, t, e = sim.outcome, sim.treatment, sim.truth.propensity
    n = len(y)
    plain = hajek_ipw(y, t, e)
    single = hajek_ipw(y, t, e, clusters=np.arange(n))
    assert single.estimate == plain.estimate
    assert single.std_err == pytest.approx(plain.std_err * np.sqrt(n / (n - 1)))
    assert single.n_clusters == n


def test_cluster_robust_se_grows_with_cluster_shocks(sim):
    """Cluster-randomized: treatment and a shared shock are constant within each cluster."""
    rng = np.random.default_rng(4)
    clusters = np.repeat(np.arange(50), 20)
    t = rng.permutation(np.repeat([0, 1], 25))[clusters]
    y = 2.0 * t + 2.0 * rng.normal(size=50)[clusters] + rng.normal(size=1000)
    e = np.full(1000, 0.5)
    plain = hajek_ipw(y, t, e)
    robust = hajek_ipw(y, t, e, clusters=clusters)
    assert robust.n_clusters == 50
    # design effect 1 + (m - 1) rho with m = 20, rho = 4 / 5: the SE grows about 4-fold
    assert robust.std_err > 2.5 * plain.std_err
    table = ate_estimates(
        sim.outcome,
        sim.treatment,
        sim.truth.propensity,
        features=sim.features,
        clusters=clusters,
        seed=1,
    )
    assert table["n"].eq(1000).all() and (table["std_err"] > 0).all()


def test_difference_in_means_matches_neyman_se():
    rng = np.random.default_rng(0)
    t = rng.binomial(1, 0.4, size=400)
    y = rng.normal(size=400) + t
    res = difference_in_means(y, t)
    y1, y0 = y[t == 1], y[t == 0]
    neyman = np.sqrt(y1.var(ddof=0) / len(y1) + y0.var(ddof=0) / len(y0))
    assert res.estimate == pytest.approx(y1.mean() - y0.mean())
    assert res.std_err == pytest.approx(neyman)


def test_propensity_object_is_accepted_everywhere(fitted, sim):
    ps, table = fitted
    assert isinstance(ps, Propensity)
    res = hajek_ipw(sim.outcome, sim.treatment, ps.scores)
    assert res.estimate == pytest.approx(table.loc["ipw_hajek", "estimate"])
    assert isinstance(res.tidy(), pd.DataFrame)
    assert list(res.tidy().columns) == ["term", "estimate", "std_err", "2.5%", "97.5%", "n"]


@pytest.mark.slow
def test_ipw_and_aipw_unbiased_with_coverage_over_replications():
    n_reps = 20
    rows = []
    for rep in range(n_reps):
        sim = simulate_confounded(seed=100 + rep, n_units=1000, ate=TRUE_ATE)
        ps = estimate_propensity(sim.features, sim.treatment, seed=rep)
        table = ate_estimates(sim.outcome, sim.treatment, ps, features=sim.features, seed=rep)
        table["covered"] = (table["2.5%"] <= TRUE_ATE) & (TRUE_ATE <= table["97.5%"])
        rows.append(table.assign(rep=rep))
    results = pd.concat(rows)
    results["error"] = results["estimate"] - TRUE_ATE
    report = results.groupby(level=0).agg(
        bias=("error", "mean"),
        mc_se=("error", "sem"),
        coverage=("covered", "mean"),
        mean_se=("std_err", "mean"),
        sd_est=("estimate", "std"),
    )
    print("\n" + report.round(4).to_string())
    for name in ("ipw_hajek", "aipw"):
        assert abs(report.loc[name, "bias"]) < 0.1, name
        assert report.loc[name, "coverage"] >= 0.85, name
    assert report.loc["difference_in_means", "bias"] > 0.5
    assert report.loc["difference_in_means", "coverage"] < 0.2


@pytest.mark.slow
def test_ipw_and_aipw_unbiased_when_the_confounder_is_in_real_chips(tmp_path):
    """The issue's design on rasters: n = 1,000 units on a synthetic scene, treatment targeted on
    each chip's built-up share (logit = standardized share), outcome 1 + 2 z + 2 t + N(0, 1).
    The estimators see only the default embedding of the chips read from the GeoTIFF.
    20 replications: the mean bias has Monte Carlo SE about 0.07 / sqrt(20) = 0.016, so
    |bias| < 0.1 leaves room for the embedding's small residual confounding."""
    from scipy.special import expit

    from imgcate.chips import extract_chips
    from imgcate.embeddings import embed
    from imgcate.simulate import simulate_scene_trial, synthetic_scene

    rows = []
    for rep in range(20):
        scene = tmp_path / f"scene{rep}.tif"
        synthetic_scene(scene, seed=100 + rep, width=512, height=512)
        sim = simulate_scene_trial(scene, seed=rep, n_units=1000, chip_size=32, margin=0.0)
        rng = np.random.default_rng(1000 + rep)
        share = sim.truth.share
        z = (share - share.mean()) / share.std()
        t = rng.binomial(1, expit(z))
        y = 1.0 + 2.0 * z + TRUE_ATE * t + rng.normal(size=len(z))
        trial = sim.trial.__class__(
            **{**sim.trial.__dict__, "data": sim.trial.data.assign(treatment=t, outcome=y)}
        )
        features = embed(extract_chips(trial, scene, 32), seed=rep).for_keys(trial.image_keys)
        ps = estimate_propensity(features, t, seed=rep)
        table = ate_estimates(y, t, ps, features=features, seed=rep)
        table["covered"] = (table["2.5%"] <= TRUE_ATE) & (TRUE_ATE <= table["97.5%"])
        table["max_abs_smd_before"] = balance_table(features, t)["smd_before"].abs().max()
        table["max_abs_smd_after"] = balance_table(features, t, ps)["smd_after"].abs().max()
        rows.append(table.assign(rep=rep))
    results = pd.concat(rows)
    results["error"] = results["estimate"] - TRUE_ATE
    report = results.groupby(level=0).agg(
        bias=("error", "mean"),
        mc_se=("error", "sem"),
        coverage=("covered", "mean"),
        smd_before=("max_abs_smd_before", "mean"),
        smd_after=("max_abs_smd_after", "mean"),
    )
    print("\n" + report.round(4).to_string())
    for name in ("ipw_hajek", "aipw"):
        assert abs(report.loc[name, "bias"]) < 0.1, name
        assert report.loc[name, "coverage"] >= 0.85, name
    assert report.loc["difference_in_means", "bias"] > 1.0
    assert report.loc["ipw_hajek", "smd_after"] < report.loc["ipw_hajek", "smd_before"] / 3
