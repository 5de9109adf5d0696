"""Tests of confounder adjustment: propensity, overlap, trimming, IPW/AIPW, balance, sensitivity.

Tolerances are justified by Monte Carlo error: a single replication is compared with its own
standard error; averages over replications with the standard error of the mean.
"""

from __future__ import annotations

import warnings

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from imgcate.confounding import (  # noqa: E402
    Propensity,
    aipw,
    ate_estimates,
    balance_table,
    confounding_sensitivity,
    crump_alpha,
    difference_in_means,
    estimate_propensity,
    hajek_ipw,
    plot_love,
    robustness_value,
    trim,
)
from imgcate.errors import ConvergenceWarning, InputError, OverlapWarning  # noqa: E402
from imgcate.simulate import simulate_confounded  # noqa: E402

TRUE_ATE = 2.0


@pytest.fixture(scope="module")
def sim():
    return simulate_confounded(seed=11, n_units=1000, ate=TRUE_ATE)


@pytest.fixture(scope="module")
def fitted(sim):
    ps = estimate_propensity(sim.features, sim.treatment, seed=11)
    table = ate_estimates(sim.outcome, sim.treatment, ps, features=sim.features, seed=11)
    return ps, table


# ------------------------------------------------------------------ simulation, single replication


def test_difference_in_means_is_badly_biased(fitted):
    _, table = fitted
    dim = table.loc["difference_in_means"]
    # Confounding by the latent built-up share pushes the naive estimate up by ~0.8.
    assert dim["estimate"] - TRUE_ATE > 0.4
    assert dim["ci_lower"] > TRUE_ATE  # the naive interval excludes the truth
    print("\n" + table.round(3).to_string())


def test_ipw_and_aipw_recover_the_ate_in_one_replication(fitted):
    _, table = fitted
    for name in ("ipw_hajek", "aipw"):
        row = table.loc[name]
        # 3 standard errors: a correct estimator fails this with probability ~0.3%.
        assert abs(row["estimate"] - TRUE_ATE) < 3 * row["std_err"], name
        assert 0.03 < row["std_err"] < 0.3
        assert row["ci_lower"] < row["estimate"] < row["ci_upper"]
    assert list(table.columns) == ["estimate", "std_err", "ci_lower", "ci_upper", "n"]
    assert (table["n"] == 1000).all()
    assert table.attrs["prob"] == 0.95


def test_interval_width_follows_prob(sim):
    e = sim.truth.propensity
    wide = hajek_ipw(sim.outcome, sim.treatment, e, prob=0.95)
    narrow = hajek_ipw(sim.outcome, sim.treatment, e, prob=0.5)
    ratio = (narrow.ci_upper - narrow.ci_lower) / (wide.ci_upper - wide.ci_lower)
    assert ratio == pytest.approx(0.6745 / 1.95996, rel=1e-3)


def test_propensity_tracks_truth_and_overlap_summary(fitted, sim):
    ps, _ = fitted
    assert ps.method == "logistic"
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
    a = estimate_propensity(x, t, C=1.0, clusters=clusters, seed=3).scores
    flipped = t.copy()
    flipped[7] = 1 - flipped[7]
    b = estimate_propensity(x, flipped, C=1.0, clusters=clusters, seed=3).scores
    assert a[7] == b[7]
    assert not np.allclose(a, b)  # the other folds' models did change


def test_balance_tuning_picks_the_best_balanced_penalty(sim):
    """The default C is the grid value with the smallest max |SMD| after weighting, and the
    recorded imbalance is what balance_table reports for those scores."""
    x, t = sim.features, sim.treatment
    ps = estimate_propensity(x, t, seed=0)
    imbalance = ps.diagnostics["max_abs_smd_by_C"]
    chosen = ps.diagnostics["C_by_fold"][0]
    assert chosen == min(imbalance, key=imbalance.get)
    fixed = estimate_propensity(x, t, C=chosen, seed=0)  # same folds, same C: same scores
    np.testing.assert_array_equal(fixed.scores, ps.scores)
    table = balance_table(x, t, ps)
    assert table["smd_after"].abs().max() == pytest.approx(imbalance[chosen], rel=1e-10)
    assert imbalance[chosen] < balance_table(x, t)["smd_before"].abs().max() / 10


def test_propensity_is_reproducible(sim):
    x, t = sim.features[:300], sim.treatment[:300]
    a = estimate_propensity(x, t, C=1.0, seed=5).scores
    b = estimate_propensity(x, t, C=1.0, seed=5).scores
    c = estimate_propensity(x, t, C=1.0, seed=6).scores
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
    with pytest.warns(OverlapWarning, match="propensity scores lie outside"):
        ps = estimate_propensity(sim.features, sim.treatment, C=100.0, seed=2, clip=0.02)
    assert ps.scores.min() >= 0.02 and ps.scores.max() <= 0.98
    assert ps.n_clipped > 0
    assert ps.overlap_summary()["frac_outside"].max() > 0.1


def test_balance_improves_after_weighting(fitted, sim):
    ps, _ = fitted
    table = balance_table(sim.features, sim.treatment, weights=ps)
    before = table["smd_before"].abs().max()
    after = table["smd_after"].abs().max()
    print(f"\nmax |SMD| before weighting {before:.3f}, after {after:.3f}")
    assert after < before / 3
    assert before > 0.5
    # The denominator is the unweighted pooled sd, computed here by hand for one feature.
    x, t = sim.features[:, 0], sim.treatment
    sd = np.sqrt((x[t == 1].var(ddof=1) + x[t == 0].var(ddof=1)) / 2)
    w = ps.ipw_weights
    diff = np.average(x[t == 1], weights=w[t == 1]) - np.average(x[t == 0], weights=w[t == 0])
    assert table["smd_after"].iloc[0] == pytest.approx(diff / sd)


def test_balance_table_without_weights_and_names():
    x = np.array([[0.0, 1.0], [1.0, 1.0], [1.0, 2.0], [2.0, 4.0]])
    table = balance_table(x, [0, 0, 1, 1], names=["roof", "ndvi"])
    assert list(table.index) == ["roof", "ndvi"]
    assert "smd_after" not in table
    assert table.loc["roof", "smd_before"] == pytest.approx(1 / np.sqrt(0.5))


# ------------------------------------------------------------------ double robustness


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


# ------------------------------------------------------------------ cluster-robust errors


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


# ------------------------------------------------------------------ trimming


def _brute_force_crump(e: np.ndarray, step: float = 1e-5) -> float:
    """Scan alpha on a grid: roots of 1/(a(1-a)) - 2 E[g | g <= 1/(a(1-a))], best variance."""
    g = 1 / (e * (1 - e))
    if g.max() <= 2 * g.mean():
        return 0.0
    alphas = np.arange(step, 0.5, step)
    gamma = 1 / (alphas * (1 - alphas))
    order = np.sort(g)
    kept = np.searchsorted(order, gamma, side="right")
    cumsum = np.concatenate([[0.0], np.cumsum(order)])
    with np.errstate(invalid="ignore", divide="ignore"):
        resid = gamma - 2 * cumsum[kept] / kept
        variance = cumsum[kept] / kept.astype(float) ** 2
    # alpha decreasing means gamma increasing: a root is a sign change from - to +.
    a_desc, r_desc, v_desc = alphas[::-1], resid[::-1], variance[::-1]
    flips = np.flatnonzero((r_desc[:-1] < 0) & (r_desc[1:] >= 0))
    best = flips[np.argmin(v_desc[flips + 1])]
    return float(a_desc[best + 1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_crump_alpha_matches_brute_force_grid(seed):
    rng = np.random.default_rng(seed)
    e = 1 / (1 + np.exp(-rng.normal(0, 2.0, size=2000)))
    alpha = crump_alpha(e)
    assert 0.01 < alpha < 0.3
    assert alpha == pytest.approx(_brute_force_crump(e), abs=2e-5)
    # The chosen set (nearly) minimises the sample variance bound E[g 1_A] / P(A)^2.
    g = 1 / (e * (1 - e))

    def bound(a):
        keep = (e >= a) & (e <= 1 - a)
        return np.mean(g * keep) / np.mean(keep) ** 2

    grid = np.linspace(0.001, 0.3, 600)
    assert bound(alpha) <= min(bound(a) for a in grid) * 1.001


def test_crump_keeps_everyone_under_good_overlap():
    e = np.random.default_rng(0).uniform(0.3, 0.7, size=500)
    assert crump_alpha(e) == 0.0
    assert trim(e).n_dropped == 0


def test_trim_reports_dropped_units(fitted):
    ps, _ = fitted
    fixed = trim(ps, rule=0.2)
    assert fixed.n_dropped == int(np.sum((ps.scores < 0.2) | (ps.scores > 0.8)))
    assert fixed.n_dropped_by_arm["control"] + fixed.n_dropped_by_arm["treated"] == fixed.n_dropped
    assert "trimmed" in str(fixed)
    crump = trim(ps)
    assert crump.rule == "crump"
    assert crump.keep.sum() == 1000 - crump.n_dropped
    with pytest.raises(InputError, match="fixed threshold must lie in"):
        trim(ps, rule=0.7)
    with pytest.raises(InputError, match="rule='optimal' is not allowed"):
        trim(ps, rule="optimal")


# ------------------------------------------------------------------ confounding sensitivity


def _small_linear_example(seed: int = 0, n: int = 200):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    z = rng.normal(size=n)  # the "unobserved" confounder
    d = (x[:, 0] + 0.3 * x[:, 1] + 0.8 * z + rng.normal(size=n) > 0).astype(float)
    y = 0.5 * d + x @ np.array([1.0, -0.5, 0.2]) + 0.7 * z + rng.normal(size=n)
    return y, d, x, z


def test_robustness_value_matches_hand_computation():
    y, d, x, _ = _small_linear_example()
    n = len(y)
    design = np.column_stack([np.ones(n), d, x])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - design @ coef
    dof = n - design.shape[1]
    se = np.sqrt(resid @ resid / dof * np.linalg.inv(design.T @ design)[1, 1])
    t_stat = coef[1] / se
    f = abs(t_stat) / np.sqrt(dof)
    rv_hand = 0.5 * (np.sqrt(f**4 + 4 * f**2) - f**2)
    fq = 0.5 * f
    rv_half = 0.5 * (np.sqrt(fq**4 + 4 * fq**2) - fq**2)

    res = confounding_sensitivity(y, d, x, q=1)
    assert res.estimate == pytest.approx(coef[1])
    assert res.dof == dof
    assert res.t_stat == pytest.approx(t_stat)
    assert res.partial_r2 == pytest.approx(t_stat**2 / (t_stat**2 + dof))
    assert res.rv_q == pytest.approx(rv_hand)
    assert confounding_sensitivity(y, d, x, q=0.5).rv_q == pytest.approx(rv_half)
    summary = res.summary()
    assert summary.loc["treatment", "rv_q"] == pytest.approx(rv_hand)
    assert 0 < summary.loc["treatment", "rv_qa"] < rv_hand


def test_robustness_value_matches_published_darfur_numbers():
    # Cinelli & Hazlett (2020), Darfur example: t = 4.18445, dof = 783 give
    # RV_{q=1} = 13.88% and RV_{q=1, alpha=0.05} = 7.63% (sensemakr's printed summary).
    assert robustness_value(4.18445, 783) == pytest.approx(0.1388, abs=1e-4)
    assert robustness_value(4.18445, 783, alpha=0.05) == pytest.approx(0.0763, abs=1e-4)
    assert robustness_value(1.0, 783, alpha=0.05) == 0.0  # not significant to begin with


def _partial_r2_fwl(a: np.ndarray, b: np.ndarray, controls: np.ndarray) -> float:
    """Squared correlation of a and b after residualizing both on the controls (FWL)."""
    c = np.column_stack([np.ones(len(a)), controls])
    ra = a - c @ np.linalg.lstsq(c, a, rcond=None)[0]
    rb = b - c @ np.linalg.lstsq(c, b, rcond=None)[0]
    return float((ra @ rb) ** 2 / ((ra @ ra) * (rb @ rb)))


def test_adjusted_estimate_equals_the_long_regression():
    """Omitted-variable-bias identity: the short estimate minus the bias implied by the partial
    R2 of the omitted Z is exactly the estimate of the regression that includes Z."""
    y, d, x, z = _small_linear_example(seed=1, n=500)
    res = confounding_sensitivity(y, d, x)
    r2dz = _partial_r2_fwl(d, z, x)
    r2yz = _partial_r2_fwl(y, z, np.column_stack([d, x]))
    long = np.linalg.lstsq(np.column_stack([np.ones(len(y)), d, x, z]), y, rcond=None)[0][1]
    assert long < res.estimate  # Z inflated the estimate
    assert res.adjusted_estimate(r2dz, r2yz) == pytest.approx(long, rel=1e-8)


def test_benchmark_bounds_follow_the_published_formulas():
    y, d, x, _ = _small_linear_example(seed=2, n=400)
    res = confounding_sensitivity(
        y, d, x, benchmark="x1", names=["x0", "x1", "x2"], kd=(1, 2), alpha=0.05
    )
    others = x[:, [0, 2]]
    r2dxj = _partial_r2_fwl(d, x[:, 1], others)
    r2yxj = _partial_r2_fwl(y, x[:, 1], np.column_stack([d, others]))
    for k, row in zip((1, 2), res.bounds.itertuples(), strict=True):
        r2dz = k * r2dxj / (1 - r2dxj)
        r2zxj = k * r2dxj**2 / ((1 - k * r2dxj) * (1 - r2dxj))
        r2yz = min(
            1.0, ((np.sqrt(k) + np.sqrt(r2zxj)) / np.sqrt(1 - r2zxj)) ** 2 * r2yxj / (1 - r2yxj)
        )
        bias = res.std_err * np.sqrt(res.dof) * np.sqrt(r2yz * r2dz / (1 - r2dz))
        assert row.benchmark == "x1" and row.kd == k
        assert row.r2dz_x == pytest.approx(r2dz)
        assert row.r2yz_dx == pytest.approx(r2yz)
        assert row.adjusted_estimate == pytest.approx(res.estimate - bias)
        assert row.adjusted_lower < row.adjusted_estimate < row.adjusted_upper
    # Stronger confounders remove more of the estimate.
    assert res.bounds["adjusted_estimate"].is_monotonic_decreasing


def test_sensitivity_on_the_image_simulation(sim):
    # Controlling for a few image features leaves the effect fairly robust; benchmark on one.
    res = confounding_sensitivity(sim.outcome, sim.treatment, sim.features[:, :4], benchmark=[0, 3])
    assert len(res.bounds) == 6
    assert 0 < res.rv_qa < res.rv_q < 1
    with pytest.raises(InputError, match="is not a covariate name"):
        confounding_sensitivity(sim.outcome, sim.treatment, sim.features[:, :2], benchmark="roads")


# ------------------------------------------------------------------ plots


def test_plots_draw_what_they_say(fitted, sim):
    ps, _ = fitted
    fig, axes = plt.subplots(1, 3)
    ax = ps.plot_overlap(ax=axes[0])
    assert ax.get_xlabel() == "propensity"
    assert len(ax.patches) == 60  # 30 bins per arm
    table = balance_table(sim.features, sim.treatment, weights=ps)
    ax = plot_love(table, ax=axes[1])
    assert len(ax.collections) == 2 and len(ax.get_yticks()) == table.shape[0]
    res = confounding_sensitivity(sim.outcome, sim.treatment, sim.features[:, :4], benchmark=0)
    ax = res.plot_contour(ax=axes[2])
    assert len(ax.lines) == 1 + len(res.bounds)  # unadjusted point + one per benchmark bound
    plt.close(fig)


# ------------------------------------------------------------------ errors


def test_non_binary_treatment_is_rejected():
    with pytest.raises(InputError, match=r"treatment must be binary \(0/1\); found value\(s\) \[2"):
        difference_in_means([1.0, 2.0, 3.0], [0, 1, 2])
    with pytest.raises(InputError, match="must contain both treated"):
        estimate_propensity(np.ones((4, 2)), [1, 1, 1, 1], seed=0)


def test_propensity_outside_unit_interval_is_rejected():
    with pytest.raises(InputError, match="propensity must lie strictly between 0 and 1; 1 value"):
        hajek_ipw([1.0, 2.0, 3.0, 4.0], [0, 1, 0, 1], [0.5, 0.5, 1.0, 0.5])
    with pytest.raises(InputError, match="propensity must lie strictly between 0 and 1"):
        crump_alpha([0.0, 0.5])


def test_mismatched_lengths_are_rejected():
    with pytest.raises(InputError, match="outcome has 3 units but treatment has 4"):
        aipw([1.0, 2.0, 3.0], [0, 1, 0, 1], [0.5] * 4, mu0=[0.0] * 4, mu1=[0.0] * 4)
    with pytest.raises(InputError, match="features has 5 units but treatment has 4"):
        estimate_propensity(np.ones((5, 2)), [0, 1, 0, 1], seed=0)
    with pytest.raises(InputError, match="clusters has 2 entries but there are 4 units"):
        hajek_ipw([1.0, 2.0, 3.0, 4.0], [0, 1, 0, 1], [0.5] * 4, clusters=[0, 1])


def test_bad_options_are_rejected(sim):
    x, t = sim.features, sim.treatment
    with pytest.raises(InputError, match="method='probit' is not allowed; use one of"):
        estimate_propensity(x, t, method="probit", seed=0)
    with pytest.raises(InputError, match="seed is required"):
        estimate_propensity(x, t, seed=None)
    with pytest.raises(InputError, match="outcome_model='forest' is not allowed"):
        aipw(sim.outcome, t, sim.truth.propensity, features=x, outcome_model="forest", seed=0)
    with pytest.raises(InputError, match="needs features"):
        aipw(sim.outcome, t, sim.truth.propensity)
    with pytest.raises(InputError, match="prob=1.5 must lie strictly between 0 and 1"):
        hajek_ipw(sim.outcome, t, sim.truth.propensity, prob=1.5)


def test_propensity_object_is_accepted_everywhere(fitted, sim):
    ps, table = fitted
    assert isinstance(ps, Propensity)
    res = hajek_ipw(sim.outcome, sim.treatment, ps.scores)
    assert res.estimate == pytest.approx(table.loc["ipw_hajek", "estimate"])
    assert isinstance(res.tidy(), pd.DataFrame)


# ------------------------------------------------------------------ slow checks


@pytest.mark.slow
def test_ipw_and_aipw_unbiased_with_coverage_over_replications():
    n_reps = 20
    rows = []
    for rep in range(n_reps):
        sim = simulate_confounded(seed=100 + rep, n_units=1000, ate=TRUE_ATE)
        ps = estimate_propensity(sim.features, sim.treatment, seed=rep)
        table = ate_estimates(sim.outcome, sim.treatment, ps, features=sim.features, seed=rep)
        table["covered"] = (table["ci_lower"] <= TRUE_ATE) & (TRUE_ATE <= table["ci_upper"])
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
        table["covered"] = (table["ci_lower"] <= TRUE_ATE) & (TRUE_ATE <= table["ci_upper"])
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


def test_resolution_check_on_a_scene_with_a_visible_confounder(tmp_path):
    """Targeting on the built-up share of each chip, which only the image shows: the fine
    chips remove most of the difference-in-means bias; the table reports every factor."""
    from scipy.special import expit

    from imgcate.chips import extract_chips
    from imgcate.confounding import resolution_check
    from imgcate.simulate import simulate_scene_trial, synthetic_scene

    scene = tmp_path / "scene.tif"
    synthetic_scene(scene, seed=2, width=384, height=384)
    sim = simulate_scene_trial(scene, seed=3, n_units=600, chip_size=32, margin=0.0)
    rng = np.random.default_rng(0)
    share = sim.truth.share
    z = (share - share.mean()) / share.std()
    t = rng.binomial(1, expit(1.5 * z))
    y = 1.0 + 2.0 * z + 2.0 * t + rng.normal(size=len(z))
    trial = sim.trial.__class__(
        **{**sim.trial.__dict__, "data": sim.trial.data.assign(treatment=t, outcome=y)}
    )
    chips = extract_chips(trial, scene, 32)
    table = resolution_check(trial, chips, factors=(1, 4), seed=0)
    assert list(table["factor"].unique()) == [1, 4]
    fine = table[table.factor == 1].set_index("estimator")
    assert fine.loc["difference_in_means", "estimate"] - 2.0 > 0.8  # badly biased
    assert (
        abs(fine.loc["aipw", "estimate"] - 2.0)
        < abs(fine.loc["difference_in_means", "estimate"] - 2.0) / 2
    )
    pixel = table.groupby("factor")["pixel_size"].first()
    assert pixel[4] == pytest.approx(4 * pixel[1])
