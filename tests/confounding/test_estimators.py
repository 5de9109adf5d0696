"""ATE estimators: bias of the naive estimate, IPW and AIPW recovery, double robustness,
cluster-robust errors; single replications against their own standard error, averages over
replications against the standard error of the mean."""

from __future__ import annotations

import warnings

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from scipy import stats  # noqa: E402

from imgcate.confounding import (  # noqa: E402
    Propensity,
    aipw,
    ate_estimates,
    difference_in_means,
    hajek_ipw,
)
from imgcate.errors import InputError  # noqa: E402
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
    columns = ["estimate", "std_err", "2.5%", "97.5%", "n", "n_clusters", "vcov", "propensity"]
    assert list(table.columns) == columns
    assert table.index.name == "estimator"
    assert (table["n"] == 1000).all()
    assert table["n_clusters"].isna().all()
    assert table["vcov"].tolist() == ["HC2", "HC0", "HC0"]
    assert table["propensity"].tolist() == ["none", "estimated", "estimated"]
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


def test_singleton_clusters_reproduce_the_unclustered_se(sim, fitted):
    y, t, e = sim.outcome, sim.treatment, sim.truth.propensity
    n = len(y)
    ps, _ = fitted
    for propensity in (e, ps):
        plain = hajek_ipw(y, t, propensity)
        single = hajek_ipw(y, t, propensity, clusters=np.arange(n))
        assert single.estimate == plain.estimate
        assert single.std_err == pytest.approx(plain.std_err * np.sqrt(n / (n - 1)))
        assert single.n_clusters == n and single.vcov == "CR1" and single.df == n - 1
    # CR2 of the difference in means with every unit its own cluster is Neyman's HC2
    dim = difference_in_means(y, t)
    single = difference_in_means(y, t, clusters=np.arange(n))
    assert single.std_err == pytest.approx(dim.std_err, rel=1e-12)
    assert (dim.vcov, single.vcov) == ("HC2", "CR2")


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
    dim = difference_in_means(y, t, clusters=clusters)
    assert dim.std_err > 2.5 * difference_in_means(y, t).std_err
    # whole clusters assigned, equal sizes: CR2 is the Neyman SE of the cluster means
    means = np.bincount(clusters, weights=y) / 20
    arm = np.bincount(clusters, weights=t) / 20
    neyman = np.sqrt(means[arm == 1].var(ddof=1) / 25 + means[arm == 0].var(ddof=1) / 25)
    assert dim.std_err == pytest.approx(neyman, rel=1e-12)
    assert dim.lower == pytest.approx(dim.estimate - stats.t.ppf(0.975, 49) * dim.std_err)
    table = ate_estimates(
        sim.outcome,
        sim.treatment,
        sim.truth.propensity,
        features=sim.features,
        clusters=clusters,
        seed=1,
    )
    assert table["n"].eq(1000).all() and (table["std_err"] > 0).all()
    assert table["vcov"].tolist() == ["CR2", "CR1", "CR1"]
    assert table["n_clusters"].eq(50).all()


def test_difference_in_means_matches_neyman_se():
    rng = np.random.default_rng(0)
    t = rng.binomial(1, 0.4, size=400)
    y = rng.normal(size=400) + t
    res = difference_in_means(y, t)
    y1, y0 = y[t == 1], y[t == 0]
    neyman = np.sqrt(y1.var(ddof=1) / len(y1) + y0.var(ddof=1) / len(y0))
    assert res.estimate == pytest.approx(y1.mean() - y0.mean())
    assert res.std_err == pytest.approx(neyman, rel=1e-12)
    assert res.tidy()["vcov"].item() == "HC2"


def _cr2_by_definition(y, t, clusters):
    """Bell-McCaffrey CR2 of the treatment coefficient of y ~ 1 + t: residuals of each cluster
    times (I - H_gg)^{-1/2} (an eigendecomposition per cluster), then the cluster sandwich."""
    X = np.column_stack([np.ones(len(y)), t])
    bread = np.linalg.inv(X.T @ X)
    resid = y - X @ (bread @ X.T @ y)
    meat = np.zeros((2, 2))
    for g in np.unique(clusters):
        i = clusters == g
        vals, vecs = np.linalg.eigh(np.eye(i.sum()) - X[i] @ bread @ X[i].T)
        adjust = vecs @ np.diag(vals**-0.5) @ vecs.T
        u = X[i].T @ adjust @ resid[i]
        meat += np.outer(u, u)
    return np.sqrt((bread @ meat @ bread)[1, 1])


def test_cluster_robust_difference_in_means_is_cr2():
    """Units sharing an image, treated or not within the image (mixed clusters), clusters of
    unequal size: the closed form equals CR2 computed from its definition."""
    rng = np.random.default_rng(5)
    clusters = rng.integers(0, 60, 700)
    t = rng.binomial(1, 0.3 + 0.4 * (clusters % 2))
    y = t + rng.normal(size=60)[clusters] + rng.normal(size=700)
    res = difference_in_means(y, t, clusters=clusters)
    assert res.std_err == pytest.approx(_cr2_by_definition(y, t, clusters), rel=1e-10)
    assert res.n_clusters == 60 and res.df == 59
    tidy = res.tidy()
    assert tidy["vcov"].item() == "CR2" and tidy["n_clusters"].item() == 60
    with pytest.raises(
        InputError, match="every treated unit is in one cluster.*at least 2 treated"
    ):
        difference_in_means([1.0, 2.0, 3.0, 4.0], [1, 1, 0, 0], clusters=[0, 0, 1, 2])


def test_propensity_object_is_accepted_everywhere(fitted, sim):
    ps, table = fitted
    assert isinstance(ps, Propensity)
    res = hajek_ipw(sim.outcome, sim.treatment, ps.scores)
    assert res.estimate == pytest.approx(table.loc["ipw_hajek", "estimate"])
    assert isinstance(res.tidy(), pd.DataFrame)
    assert list(res.tidy().columns)[:6] == ["term", "estimate", "std_err", "2.5%", "97.5%", "n"]
    assert res.propensity == "known"  # scores passed as an array are taken as given


def test_trimmed_estimates_are_those_of_the_kept_units():
    """ate_estimates(trim=...) is ate_estimates on the units trim() keeps, their scores given
    as known: the same rows, said in the propensity column and attrs."""
    from imgcate.confounding import estimate_propensity, trim

    sim = simulate_confounded(seed=1, n_units=400, strength=8.0)
    with pytest.warns(Warning):  # scores near 0 and 1 are what trimming is for
        ps = estimate_propensity(sim.features, sim.treatment, seed=1, C="auto")
    table = ate_estimates(
        sim.outcome, sim.treatment, ps, features=sim.features, seed=0, trim="crump"
    )
    keep = trim(ps, rule="crump").keep
    assert 0 < (~keep).sum() < len(keep)
    by_hand = ate_estimates(
        sim.outcome[keep],
        sim.treatment[keep],
        ps.scores[keep],
        features=sim.features[keep],
        seed=0,
    )
    cols = ["estimate", "std_err", "2.5%", "97.5%", "n"]
    pd.testing.assert_frame_equal(table[cols], by_hand[cols])
    assert list(table["propensity"]) == ["none", "known, trimmed", "known, trimmed"]
    info = table.attrs["trim"]
    assert info["rule"] == "crump" and 0 < info["alpha"] < 0.5
    assert info["n_kept"] == keep.sum() and info["n_dropped"] == (~keep).sum()
    assert sum(info["kept_by_arm"].values()) == keep.sum()
    fixed = ate_estimates(sim.outcome, sim.treatment, ps, seed=0, trim=0.1)
    assert fixed.attrs["trim"]["alpha"] == 0.1 and "aipw" not in fixed.index
    # clusters are trimmed with their units
    clusters = np.arange(400) // 4
    clustered = ate_estimates(
        sim.outcome,
        sim.treatment,
        ps,
        features=sim.features,
        clusters=clusters,
        seed=0,
        trim="crump",
    )
    by_hand = ate_estimates(
        sim.outcome[keep],
        sim.treatment[keep],
        ps.scores[keep],
        features=sim.features[keep],
        clusters=clusters[keep],
        seed=0,
    )
    pd.testing.assert_frame_equal(clustered[cols + ["n_clusters"]], by_hand[cols + ["n_clusters"]])


def test_a_trim_that_leaves_no_overlap_is_refused():
    rng = np.random.default_rng(0)
    t = np.repeat([0, 1], 50)
    scores = np.where(t == 1, 0.95, 0.3) + rng.uniform(-0.01, 0.01, 100)
    with pytest.raises(InputError, match="keeps 0 treated and 50 control units"):
        ate_estimates(rng.normal(size=100), t, scores, seed=0, trim=0.1)
    for bad in (0.7, "Crump", "0.1", True):  # named as given, with what to give
        with pytest.raises(InputError, match=r"trim=.*give 'crump'.*such as 0\.1"):
            ate_estimates(rng.normal(size=100), t, scores, seed=0, trim=bad)


def test_a_trim_that_keeps_a_handful_of_an_arm_is_refused_and_says_what_to_give():
    """Fewer than ten units of an arm leave nothing to estimate on (a user's trim=0.49 kept 5
    units and printed intervals): refused, with the rule of thumb to try."""
    rng = np.random.default_rng(1)
    t = np.repeat([0, 1], 200)
    scores = np.clip(rng.normal(np.where(t == 1, 0.7, 0.3), 0.1), 0.01, 0.99)
    with pytest.raises(InputError, match=r"at least 10 of each.*give trim=0\.1, the rule"):
        ate_estimates(rng.normal(size=400), t, scores, seed=0, trim=0.49)


def test_an_untrimmed_table_on_scores_near_0_and_1_warns_and_names_the_remedy():
    from imgcate.confounding import estimate_propensity
    from imgcate.errors import OverlapWarning

    steep = simulate_confounded(seed=1, n_units=400, strength=8.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ps = estimate_propensity(steep.features, steep.treatment, seed=1, C="auto")
    with pytest.warns(
        OverlapWarning, match=r"units \(\d+%\) have a propensity outside.*trim='crump'"
    ):
        ate_estimates(steep.outcome, steep.treatment, ps, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", OverlapWarning)  # trimmed, or overlap fine: no warning
        ate_estimates(steep.outcome, steep.treatment, ps, seed=0, trim="crump")
        mild = simulate_confounded(seed=1, n_units=400)
        ate_estimates(mild.outcome, mild.treatment, mild.truth.propensity, seed=0)


def test_a_propensity_that_leaves_the_arms_apart_is_said_again_beside_the_estimates():
    """A penalized CBPS whose weights leave features apart: estimate_propensity warns, and
    so does the table built on it, trimmed or not, with the penalty named; the warning at
    estimation no longer suggests C='auto' to a user who passed it."""
    from imgcate.confounding import estimate_propensity
    from imgcate.errors import OverlapWarning, PropensityBalanceWarning

    steep = simulate_confounded(seed=0, n_units=300, strength=12.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OverlapWarning)
        with pytest.warns(PropensityBalanceWarning, match="drop the features") as caught:
            ps = estimate_propensity(steep.features, steep.treatment, seed=0, C="auto")
    assert not any("Try C='auto'" in str(w.message) for w in caught)
    for rule in (None, "crump"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OverlapWarning)
            with pytest.warns(PropensityBalanceWarning, match=r"\(cbps, C=0\.03\) leaves"):
                ate_estimates(steep.outcome, steep.treatment, ps, seed=0, trim=rule)
