"""BLP, GATES and CLAN recovery; the median rule of generic ML inference."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from imgcate.errors import InputError  # noqa: E402
from imgcate.evaluate import (  # noqa: E402
    blp,
    clan,
    gates,
    generic_ml,
    quantile_groups,
)


def test_blp_recovers_ate_and_unit_loading_for_true_cate(linear_trial):
    x, t, tau, y = linear_trial(4000, seed=10)
    tab = blp(y, t, 0.5, tau, baseline=x[:, 0]).set_index("term")
    assert list(tab.columns) == ["estimate", "std_err", "2.5%", "97.5%", "p_value", "vcov"]
    assert (tab["vcov"] == "HC1").all()
    assert abs(tab.loc["ate", "estimate"] - tau.mean()) < 4 * tab.loc["ate", "std_err"]
    assert abs(tab.loc["hte", "estimate"] - 1.0) < 4 * tab.loc["hte", "std_err"]
    assert tab.loc["hte", "std_err"] < 0.1
    # a proxy at half scale gets loading 2; an irrelevant proxy gets 0
    half = blp(y, t, 0.5, 0.5 * tau, baseline=x[:, 0]).set_index("term")
    assert abs(half.loc["hte", "estimate"] - 2.0) < 4 * half.loc["hte", "std_err"]
    noise = blp(y, t, 0.5, x[:, 2], baseline=x[:, 0]).set_index("term")
    assert abs(noise.loc["hte", "estimate"]) < 4 * noise.loc["hte", "std_err"]


def test_singleton_clusters_equal_hc1_and_clusters_widen_se(linear_trial):
    x, t, tau, y = linear_trial(600, seed=11)
    plain = blp(y, t, 0.5, tau)
    singles = blp(y, t, 0.5, tau, clusters=np.arange(600))
    np.testing.assert_allclose(singles["std_err"], plain["std_err"], rtol=1e-12)
    cl = np.repeat(np.arange(30), 20)
    shocked = y + 2 * t * np.random.default_rng(0).normal(size=30)[cl]
    naive = blp(shocked, t, 0.5, tau).set_index("term")
    robust = blp(shocked, t, 0.5, tau, clusters=cl).set_index("term")
    assert robust.loc["ate", "std_err"] > 1.5 * naive.loc["ate", "std_err"]
    assert (robust["vcov"] == "CR1").all()
    assert (gates(shocked, t, 0.5, tau, clusters=cl)["vcov"] == "CR1").all()


def test_gates_recover_known_group_means():
    rng = np.random.default_rng(12)
    n = 5000
    s = rng.normal(size=n)
    group = np.searchsorted(np.quantile(s, [0.25, 0.5, 0.75]), s, side="right")
    effects = np.array([-1.0, 0.0, 0.5, 2.0])
    p = rng.uniform(0.3, 0.7, n)  # a stratified design with known, varying propensity
    t = (rng.uniform(size=n) < p).astype(int)
    y = s + t * effects[group] + rng.normal(size=n)
    tab = gates(y, t, p, s, baseline=s, n_groups=4).set_index("term")
    est, se = tab["estimate"].to_numpy(), tab["std_err"].to_numpy()
    assert np.all(np.abs(est[:4] - effects) < 4 * se[:4])
    assert tab.loc["gate_4-gate_1", "estimate"] == pytest.approx(est[3] - est[0])
    assert abs(tab.loc["gate_4-gate_1", "estimate"] - 3.0) < 4 * tab.loc["gate_4-gate_1", "std_err"]


def test_blp_rejects_constant_score_and_bad_vcov(linear_trial):
    x, t, tau, y = linear_trial(100, seed=13)
    with pytest.raises(InputError, match="collinear"):
        blp(y, t, 0.5, np.ones(100))
    with pytest.raises(InputError, match="vcov_type='HC2'"):
        blp(y, t, 0.5, tau, vcov_type="HC2")
    with pytest.raises(InputError, match="treatment must be binary"):
        blp(y, t * 2, 0.5, tau)


def _blp_null_rejection_rate(n_reps: int, linear_trial) -> float:
    rejections = 0
    for rep in range(n_reps):
        x, t, _, y = linear_trial(400, seed=50_000 + rep, hetero=False)
        tab = blp(y, t, 0.5, x[:, 0] + x[:, 2], baseline=x[:, 0]).set_index("term")
        rejections += tab.loc["hte", "p_value"] < 0.05
    return rejections / n_reps


def test_blp_null_rejection_rate_fast(linear_trial):
    # 200 reps: binomial SE of a 5 % rate is sqrt(.05 * .95 / 200) = 1.5 %; 1-9 % is > 2.5 SE.
    assert 0.01 <= _blp_null_rejection_rate(200, linear_trial) <= 0.09


@pytest.mark.slow
def test_blp_null_rejection_rate_nominal(linear_trial):
    # 2000 reps: binomial SE = sqrt(.05 * .95 / 2000) = 0.49 %; accept 3.5-6.5 % (about 3 SE),
    # which also allows HC1's small finite-sample excess at n = 400.
    assert 0.035 <= _blp_null_rejection_rate(2000, linear_trial) <= 0.065


def _oracle(x_train, t_train, y_train, x_predict, seed):
    return x_predict[:, 0], 1 + x_predict[:, 1]


def _linear_t_learner(x_train, t_train, y_train, x_predict, seed):
    design = np.column_stack([np.ones(len(x_train)), x_train])
    pred = []
    for arm in (0, 1):
        coef = np.linalg.lstsq(design[t_train == arm], y_train[t_train == arm], rcond=None)[0]
        pred.append(np.column_stack([np.ones(len(x_predict)), x_predict]) @ coef)
    return pred[0], pred[1] - pred[0]


def test_generic_ml_with_oracle_proxy_and_median_rule(linear_trial):
    x, t, tau, y = linear_trial(2000, seed=14)
    res = generic_ml(
        y, t, x, 0.5, n_splits=7, learner=_oracle, seed=5, feature_names=["a", "b", "c"]
    )
    again = generic_ml(
        y, t, x, 0.5, n_splits=7, learner=_oracle, seed=5, feature_names=["a", "b", "c"]
    )
    pd.testing.assert_frame_equal(res.tidy(), again.tidy())
    b = res.blp.set_index("term")
    assert abs(b.loc["hte", "estimate"] - 1) < 4 * b.loc["hte", "std_err"]
    assert abs(b.loc["ate", "estimate"] - tau.mean()) < 4 * b.loc["ate", "std_err"]
    assert res.prob == 0.95 and res.guaranteed_prob == pytest.approx(0.9)
    assert b.loc["hte", "2.5%"] < b.loc["hte", "estimate"] < b.loc["hte", "97.5%"]
    g = res.gates["estimate"].to_numpy()
    assert np.all(np.diff(g[:5]) > 0)  # sorted effects: the proxy is the true CATE
    clan = res.clan.set_index("term")
    assert clan.loc["b[most-least]", "estimate"] > 2  # tau = 1 + b: top vs bottom fifth
    assert abs(clan.loc["c[most-least]", "estimate"]) < 4 * clan.loc["c[most-least]", "std_err"]


def test_generic_ml_aggregates_splits_by_the_papers_median_rule(linear_trial):
    """CDDF (2018, sec. 4): median estimate, the *upper* median of the lower bounds, the *lower*
    median of the upper bounds, p-value min(1, 2 median p). An even number of splits makes the
    lower and upper medians differ."""
    x, t, _, y = linear_trial(300, seed=15, hetero=False)
    res = generic_ml(y, t, x, 0.5, n_splits=8, learner=_linear_t_learner, seed=1)
    splits = []
    rng = np.random.default_rng(1)  # replay the same splits as generic_ml draws them
    for _ in range(8):
        aux = np.zeros(300, dtype=bool)
        aux[rng.choice(300, size=150, replace=False)] = True
        b, s = _linear_t_learner(x[aux], t[aux], y[aux], x[~aux], int(rng.integers(2**31 - 1)))
        splits.append(blp(y[~aux], t[~aux], 0.5, s, b).set_index("term").loc["hte"])
    lows = sorted(row["2.5%"] for row in splits)
    highs = sorted(row["97.5%"] for row in splits)
    assert lows[3] < lows[4] and highs[3] < highs[4]
    hte = res.blp.set_index("term").loc["hte"]
    assert hte["2.5%"] == pytest.approx(lows[4])  # upper median: the 5th of 8
    assert hte["97.5%"] == pytest.approx(highs[3])  # lower median: the 4th of 8
    assert hte["estimate"] == pytest.approx(np.median([row["estimate"] for row in splits]))
    med_p = np.median([row["p_value"] for row in splits])
    assert hte["p_value"] == pytest.approx(min(1.0, 2 * med_p))


def test_lower_and_upper_medians_follow_their_definitions():
    from imgcate.evaluate.genericml import lower_median, upper_median

    rng = np.random.default_rng(3)
    for size in (1, 2, 5, 8):
        values = rng.normal(size=(size, 3))
        for j in range(3):
            v = values[:, j]
            # inf{x: F(x) >= 1/2} and sup{x: P(X >= x) >= 1/2} over the sample's values
            low = min(x for x in v if np.mean(v <= x) >= 0.5)
            high = max(x for x in v if np.mean(v >= x) >= 0.5)
            assert lower_median(values)[j] == low
            assert upper_median(values)[j] == high


def test_generic_ml_keeps_clusters_whole_and_default_learner_runs():
    rng = np.random.default_rng(16)
    n = 300
    cl = np.repeat(np.arange(30), 10)
    x = np.column_stack([cl.astype(float), rng.normal(size=n)])
    t = rng.integers(0, 2, n)
    y = x[:, 1] + t * (1 + x[:, 1]) + rng.normal(size=n)

    def checking_learner(x_train, t_train, y_train, x_predict, seed):
        assert not set(x_train[:, 0]) & set(x_predict[:, 0]), "a cluster was split"
        return _linear_t_learner(x_train, t_train, y_train, x_predict, seed)

    generic_ml(y, t, x, 0.5, n_splits=4, learner=checking_learner, clusters=cl, seed=2)
    res = generic_ml(y, t, x, 0.5, n_splits=2, n_groups=3, clusters=cl, seed=2)
    assert res.blp.set_index("term").loc["hte", "estimate"] > 0
    assert len(res.gates) == 4


def _groups_by_definition(score, n_groups):
    """Group k holds l_k <= S < l_(k+1), l_k the k/K quantile by linear interpolation between
    order statistics (position (n - 1) k / K), computed one unit at a time."""
    ordered = sorted(score)
    cuts = []
    for k in range(1, n_groups):
        pos = (len(score) - 1) * k / n_groups
        lo = int(np.floor(pos))
        hi = min(lo + 1, len(score) - 1)
        cuts.append(ordered[lo] + (pos - lo) * (ordered[hi] - ordered[lo]))
    return np.array([sum(s >= c for c in cuts) for s in score])


def test_gates_groups_are_quantile_groups_that_ignore_row_order():
    """A 9-level proxy on 1,003 units: groups by the proxy's quantiles keep ties together, so a
    permutation of the rows moves no unit to another group and leaves GATES unchanged."""
    rng = np.random.default_rng(22)
    n = 1003
    s = rng.integers(0, 9, n).astype(float)
    t = rng.integers(0, 2, n)
    y = s + t * (1 + 0.3 * s) + rng.normal(size=n)
    groups = quantile_groups(s, 5)
    np.testing.assert_array_equal(groups, _groups_by_definition(s, 5))
    for level in np.unique(s):
        assert len(np.unique(groups[s == level])) == 1  # tied units share a group
    perm = rng.permutation(n)
    np.testing.assert_array_equal(quantile_groups(s[perm], 5), groups[perm])
    tab = gates(y, t, 0.5, s, n_groups=5)
    again = gates(y[perm], t[perm], 0.5, s[perm], n_groups=5)
    pd.testing.assert_frame_equal(tab, again, rtol=1e-10)
    # without ties the groups are equal-sized (to one unit) and match the definition
    cont = rng.normal(size=n)
    sizes = np.bincount(quantile_groups(cont, 5))
    assert sizes.max() - sizes.min() <= 1
    np.testing.assert_array_equal(quantile_groups(cont, 5), _groups_by_definition(cont, 5))
    with pytest.raises(InputError, match="takes 2 distinct values.*empty"):
        gates(y, t, 0.5, (s > 4).astype(float), n_groups=5)


def test_clan_with_clusters_is_the_cluster_robust_regression():
    """CLAN with clusters: the means of the top and bottom groups and their difference from
    the regression on the two group indicators, with vcovCL's HC1 (G/(G-1) (n-1)/(n-k)) over
    the clusters of those units; Welch without clusters; cluster shocks widen the SEs."""
    rng = np.random.default_rng(23)
    n, n_cl = 1000, 50
    cl = rng.integers(0, n_cl, n)
    score = rng.normal(size=n) + rng.normal(size=n_cl)[cl]
    feature = rng.normal(size=n) + 2 * rng.normal(size=n_cl)[cl]  # spatially clustered
    robust = clan(feature, score, clusters=cl, feature_names=["f"]).set_index("term")
    groups = quantile_groups(score, 5)
    top, bot = groups == 4, groups == 0
    keep = top | bot
    X = np.column_stack([top, bot])[keep].astype(float)
    f = feature[keep]
    coef = np.linalg.solve(X.T @ X, X.T @ f)
    bread = np.linalg.inv(X.T @ X)
    codes = cl[keep]
    sums = np.array([X[codes == g].T @ (f - X @ coef)[codes == g] for g in np.unique(codes)])
    g_n, m = len(np.unique(codes)), keep.sum()
    cov = g_n / (g_n - 1) * (m - 1) / (m - 2) * bread @ sums.T @ sums @ bread
    contrast = np.array([1.0, -1.0])
    np.testing.assert_allclose(robust["estimate"], [*coef, coef[0] - coef[1]], rtol=1e-12)
    expected = np.sqrt([cov[0, 0], cov[1, 1], contrast @ cov @ contrast])
    np.testing.assert_allclose(robust["std_err"], expected, rtol=1e-10)
    assert (robust["vcov"] == "CR1").all()
    welch = clan(feature, score, feature_names=["f"]).set_index("term")
    se_top = feature[top].std(ddof=1) / np.sqrt(top.sum())
    assert welch.loc["f[most]", "std_err"] == pytest.approx(se_top)
    assert (welch["vcov"] == "Welch").all()
    assert robust.loc["f[most-least]", "std_err"] > 2 * welch.loc["f[most-least]", "std_err"]


def test_generic_ml_clan_uses_the_clusters():
    rng = np.random.default_rng(24)
    n = 400
    cl = np.repeat(np.arange(40), 10)
    x = rng.normal(size=(n, 2)) + rng.normal(size=(40, 2))[cl]
    t = rng.integers(0, 2, n)
    y = x[:, 0] + t * (1 + x[:, 1]) + rng.normal(size=n)
    res = generic_ml(y, t, x, 0.5, n_splits=3, learner=_linear_t_learner, clusters=cl, seed=4)
    for table in (res.blp, res.gates, res.clan):
        assert (table["vcov"] == "CR1").all()
    plain = generic_ml(y, t, x, 0.5, n_splits=3, learner=_linear_t_learner, seed=4)
    assert (plain.clan["vcov"] == "Welch").all()


def test_generic_ml_errors(linear_trial):
    x, t, _, y = linear_trial(100, seed=17)
    with pytest.raises(InputError, match="features must have shape"):
        generic_ml(y, t, x[:50], 0.5, seed=0)
    with pytest.raises(InputError, match="n_groups=1"):
        generic_ml(y, t, x, 0.5, n_groups=1, seed=0)
    with pytest.raises(InputError, match=r"prob=0.3 must lie in \(0.5, 1\)"):
        generic_ml(y, t, x, 0.5, prob=0.3, seed=0)


@pytest.mark.slow
def test_generic_ml_median_rule_is_conservative_under_no_heterogeneity(linear_trial):
    # the 2 * median p-value is valid but conservative: over 200 reps at 5 % the rate must
    # not exceed 5 % + 2.5 binomial SEs (1.5 % each), i.e. 8.8 %.
    rejections = 0
    for rep in range(200):
        x, t, _, y = linear_trial(400, seed=70_000 + rep, hetero=False)
        res = generic_ml(y, t, x, 0.5, n_splits=15, learner=_linear_t_learner, seed=rep)
        rejections += res.blp.set_index("term").loc["hte", "p_value"] < 0.05
    assert rejections / 200 <= 0.088
