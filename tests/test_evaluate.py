"""Tests of imgcate.evaluate: RATE against its brute-force definition, BLP/GATES/CLAN recovery,
calibration, and spatial folds."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from scipy import stats  # noqa: E402

from imgcate.errors import InputError  # noqa: E402
from imgcate.evaluate import (  # noqa: E402
    aipw_scores,
    blp,
    gates,
    generic_ml,
    plot_toc,
    rate,
    rate_difference,
    spatial_blocks,
    spatial_folds,
    test_calibration,
    train_test_split_spatial,
)
from imgcate.units import read_units  # noqa: E402


def _linear_trial(n: int, seed: int, hetero: bool = True):
    """x ~ N(0, I_3); tau = 1 + x1 (or 1); y = x0 + t tau + heteroskedastic noise; p = 0.5."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    t = rng.integers(0, 2, n)
    tau = 1 + x[:, 1] if hetero else np.ones(n)
    noise = rng.normal(size=n) * (1 + 0.5 * np.abs(x[:, 2]))
    y = x[:, 0] + t * tau + noise
    return x, t, tau, y


# ----------------------------------------------------------------------------- AIPW


def test_aipw_scores_match_formula_and_accept_scalar_propensity():
    y = np.array([2.0, 1.0, 0.5])
    t = np.array([1, 0, 1])
    e = np.array([0.25, 0.5, 0.8])
    mu0 = np.array([0.0, 0.5, 1.0])
    mu1 = np.array([1.0, 1.5, 1.0])
    expected = [1.0 + (2.0 - 1.0) / 0.25, 1.0 - (1.0 - 0.5) / 0.5, 0.0 + (0.5 - 1.0) / 0.8]
    np.testing.assert_allclose(aipw_scores(y, t, e, mu0, mu1), expected)
    np.testing.assert_allclose(
        aipw_scores(y, t, 0.5, mu0, mu1), aipw_scores(y, t, np.full(3, 0.5), mu0, mu1)
    )


def test_aipw_mean_recovers_ate_with_wrong_outcome_model():
    x, t, tau, y = _linear_trial(20_000, seed=1)
    gamma = aipw_scores(y, t, 0.5, np.zeros_like(y), np.zeros_like(y))  # known p, bad mu
    se = gamma.std(ddof=1) / np.sqrt(len(gamma))
    assert abs(gamma.mean() - tau.mean()) < 4 * se


@pytest.mark.parametrize("bad", [0.0, 1.0, [0.5, 0.5]])
def test_aipw_rejects_bad_propensity(bad):
    with pytest.raises(InputError, match="propensity"):
        aipw_scores([1.0, 0.0, 1.0], [1, 0, 1], bad, [0, 0, 0], [1, 1, 1])


# ----------------------------------------------------------------------------- RATE: brute force


def _brute_force_rate(priority, scores, weights, target):
    """The published definition, as plain loops.

    Tie groups (equal priority) share the weighted mean of their scores. Units are taken in
    decreasing priority (input order among ties); after unit i the fraction treated is
    q_i = (sum of weights so far) / W and TOC(q_i) = weighted mean of the tie-averaged scores
    so far − the overall weighted mean. AUTOC = sum_i TOC(q_i) (q_i − q_{i−1});
    Qini = sum_i q_i TOC(q_i) (q_i − q_{i−1}). Unweighted, q_i = i / n (the unit grid).
    """
    n = len(scores)
    tied = []
    for i in range(n):
        num = den = 0.0
        for j in range(n):
            if priority[j] == priority[i]:
                num += weights[j] * scores[j]
                den += weights[j]
        tied.append(num / den)
    total = sum(weights)
    overall = sum(w * s for w, s in zip(weights, scores, strict=True)) / total
    order = sorted(range(n), key=lambda i: -priority[i])  # Python's sort is stable
    value, cum_w, cum_ws, q_prev, tocs = 0.0, 0.0, 0.0, 0.0, []
    for i in order:
        cum_w += weights[i]
        cum_ws += weights[i] * tied[i]
        q = cum_w / total
        toc = cum_ws / cum_w - overall
        tocs.append((q, toc))
        value += (toc if target == "AUTOC" else q * toc) * (q - q_prev)
        q_prev = q
    return value, tocs


@pytest.mark.parametrize("target", ["AUTOC", "QINI"])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_rate_equals_brute_force_definition(target, ties, weighted):
    rng = np.random.default_rng(3)
    n = 157
    priority = rng.integers(0, 12, n).astype(float) if ties else rng.normal(size=n)
    scores = rng.normal(size=n) + priority
    weights = rng.uniform(0.2, 3.0, n) if weighted else np.ones(n)
    expected, _ = _brute_force_rate(priority.tolist(), scores.tolist(), weights.tolist(), target)
    res = rate(
        priority,
        scores,
        target=target,
        weights=weights if weighted else None,
        n_bootstrap=2,
        seed=0,
    )
    assert res.estimate == pytest.approx(expected, abs=1e-10)
    assert len(np.unique(priority)) < n if ties else len(np.unique(priority)) == n


@pytest.mark.parametrize("ties", [False, True])
def test_toc_curve_on_unit_grid_equals_brute_force(ties):
    rng = np.random.default_rng(4)
    n = 40
    priority = rng.integers(0, 5, n).astype(float) if ties else rng.normal(size=n)
    scores = rng.normal(size=n) - priority
    _, tocs = _brute_force_rate(priority.tolist(), scores.tolist(), [1.0] * n, "AUTOC")
    grid = np.arange(1, n + 1) / n
    res = rate(priority, scores, q=grid, n_bootstrap=2, seed=0)
    np.testing.assert_allclose(res.toc, [toc for _, toc in tocs], atol=1e-10)
    assert res.toc[-1] == pytest.approx(0.0, abs=1e-12)


def test_toc_between_grid_points_uses_a_fraction_of_the_next_unit():
    # 4 units, priorities distinct; at q = 0.375 (1.5 units) the top unit counts fully and
    # the second one by half: TOC = (s1 + 0.5 s2) / 1.5 - mean.
    scores = np.array([4.0, 1.0, 0.0, -1.0])
    res = rate([4, 3, 2, 1], scores, q=[0.375, 1.0], n_bootstrap=2, seed=0)
    assert res.toc[0] == pytest.approx((4.0 + 0.5) / 1.5 - scores.mean())


def test_ties_are_averaged_so_order_within_ties_does_not_matter():
    rng = np.random.default_rng(5)
    priority = np.repeat([3.0, 2.0, 1.0], 20)
    scores = rng.normal(size=60)
    perm = rng.permutation(60)
    a = rate(priority, scores, n_bootstrap=2, seed=0)
    b = rate(priority[perm], scores[perm], n_bootstrap=2, seed=0)
    assert a.estimate == pytest.approx(b.estimate, abs=1e-12)
    # a constant priority has no targeting value at all
    assert rate(np.zeros(60), scores, n_bootstrap=2, seed=0).estimate == pytest.approx(0, abs=1e-12)


# ----------------------------------------------------------------------------- RATE: inference


def test_rate_seed_reproducible_and_detects_heterogeneity():
    x, t, tau, y = _linear_trial(2000, seed=6)
    gamma = aipw_scores(y, t, 0.5, x[:, 0], x[:, 0] + tau)
    a = rate(tau, gamma, seed=11)
    b = rate(tau, gamma, seed=11)
    c = rate(tau, gamma, seed=12)
    assert a.std_err == b.std_err and np.array_equal(a.toc_std_err, b.toc_std_err)
    assert a.std_err != c.std_err
    lo, hi = a.ci(0.95)
    assert lo > 0 and hi > lo
    assert a.tidy().loc[0, "p_value"] < 1e-6
    null = rate(x[:, 2], gamma, seed=11)  # a priority unrelated to tau
    assert abs(null.estimate) < 4 * null.std_err


def test_half_sample_se_matches_monte_carlo_spread():
    # SD of the estimate over 150 fresh data sets vs the mean half-sample SE; with 150 draws
    # the SD itself has relative SE ~ 1/sqrt(2 * 149) ~ 6 %, so 25 % is a wide margin.
    estimates, ses = [], []
    for rep in range(150):
        rng = np.random.default_rng(1000 + rep)
        priority = rng.normal(size=300)
        scores = 0.5 * priority + rng.normal(size=300) * 2
        res = rate(priority, scores, n_bootstrap=100, seed=rep)
        estimates.append(res.estimate)
        ses.append(res.std_err)
    assert np.mean(ses) == pytest.approx(np.std(estimates, ddof=1), rel=0.25)


def test_singleton_clusters_give_the_unclustered_bootstrap():
    rng = np.random.default_rng(7)
    priority, scores = rng.normal(size=200), rng.normal(size=200)
    plain = rate(priority, scores, n_bootstrap=50, seed=3)
    singles = rate(priority, scores, clusters=np.arange(200), n_bootstrap=50, seed=3)
    assert singles.std_err == pytest.approx(plain.std_err, abs=1e-14)
    # clusters of 10 units sharing a score shock and a priority level inflate the SE
    cl = np.repeat(np.arange(20), 10)
    cl_priority = rng.normal(size=20)[cl] + 0.1 * priority
    shocked = scores + 3 * rng.normal(size=20)[cl]
    naive = rate(cl_priority, shocked, n_bootstrap=200, seed=3)
    robust = rate(cl_priority, shocked, clusters=cl, n_bootstrap=200, seed=3)
    assert robust.estimate == naive.estimate
    assert robust.std_err > 1.3 * naive.std_err


def test_rate_difference_is_paired():
    x, t, tau, y = _linear_trial(1500, seed=8)
    gamma = aipw_scores(y, t, 0.5, x[:, 0], x[:, 0] + tau)
    rng = np.random.default_rng(9)
    prio_b = tau + 0.1 * rng.normal(size=len(tau))  # nearly the same rule
    diff = rate_difference(tau, prio_b, gamma, target="QINI", seed=4)
    a = rate(tau, gamma, target="QINI", seed=4)
    b = rate(prio_b, gamma, target="QINI", seed=4)
    assert diff.estimate == pytest.approx(a.estimate - b.estimate, abs=1e-12)
    np.testing.assert_allclose(diff.toc, a.toc - b.toc, atol=1e-12)
    # pairing removes the shared noise: far below the independent-samples SE
    assert diff.std_err < 0.3 * np.hypot(a.std_err, b.std_err)
    assert diff.target == "QINI difference"


def test_rate_errors_name_the_argument():
    with pytest.raises(InputError, match="target='auc'.*'AUTOC', 'QINI'"):
        rate([1, 2, 3, 4], [1, 2, 3, 4], target="auc", seed=0)
    with pytest.raises(InputError, match="priority has 3 entries"):
        rate([1, 2, 3], [1, 2, 3, 4], seed=0)
    with pytest.raises(InputError, match="at least 4 clusters"):
        rate(np.arange(8.0), np.arange(8.0), clusters=[0, 0, 0, 0, 1, 1, 1, 2], seed=0)
    with pytest.raises(InputError, match="seed"):
        rate([1, 2, 3, 4], [1, 2, 3, 4], seed=None)


def test_plot_toc_draws_the_curve():
    res = rate(np.arange(50.0), np.arange(50.0), n_bootstrap=20, seed=0)
    ax = plot_toc(res)
    np.testing.assert_allclose(ax.lines[0].get_ydata(), res.toc)
    assert "AUTOC" in ax.get_title()


# ----------------------------------------------------------------------------- BLP / GATES


def test_blp_recovers_ate_and_unit_loading_for_true_cate():
    x, t, tau, y = _linear_trial(4000, seed=10)
    tab = blp(y, t, 0.5, tau, baseline=x[:, 0]).set_index("term")
    assert list(tab.columns) == ["estimate", "std_err", "p_value", "ci_lower", "ci_upper"]
    assert abs(tab.loc["ate", "estimate"] - tau.mean()) < 4 * tab.loc["ate", "std_err"]
    assert abs(tab.loc["hte", "estimate"] - 1.0) < 4 * tab.loc["hte", "std_err"]
    assert tab.loc["hte", "std_err"] < 0.1
    # a proxy at half scale gets loading 2; an irrelevant proxy gets 0
    half = blp(y, t, 0.5, 0.5 * tau, baseline=x[:, 0]).set_index("term")
    assert abs(half.loc["hte", "estimate"] - 2.0) < 4 * half.loc["hte", "std_err"]
    noise = blp(y, t, 0.5, x[:, 2], baseline=x[:, 0]).set_index("term")
    assert abs(noise.loc["hte", "estimate"]) < 4 * noise.loc["hte", "std_err"]


def test_singleton_clusters_equal_hc1_and_clusters_widen_se():
    x, t, tau, y = _linear_trial(600, seed=11)
    plain = blp(y, t, 0.5, tau)
    singles = blp(y, t, 0.5, tau, clusters=np.arange(600))
    np.testing.assert_allclose(singles["std_err"], plain["std_err"], rtol=1e-12)
    cl = np.repeat(np.arange(30), 20)
    shocked = y + 2 * t * np.random.default_rng(0).normal(size=30)[cl]
    naive = blp(shocked, t, 0.5, tau).set_index("term")
    robust = blp(shocked, t, 0.5, tau, clusters=cl).set_index("term")
    assert robust.loc["ate", "std_err"] > 1.5 * naive.loc["ate", "std_err"]


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


def test_blp_rejects_constant_score_and_bad_vcov():
    x, t, tau, y = _linear_trial(100, seed=13)
    with pytest.raises(InputError, match="collinear"):
        blp(y, t, 0.5, np.ones(100))
    with pytest.raises(InputError, match="vcov_type='HC2'"):
        blp(y, t, 0.5, tau, vcov_type="HC2")
    with pytest.raises(InputError, match="treatment must be binary"):
        blp(y, t * 2, 0.5, tau)


def _blp_null_rejection_rate(n_reps: int) -> float:
    rejections = 0
    for rep in range(n_reps):
        x, t, _, y = _linear_trial(400, seed=50_000 + rep, hetero=False)
        tab = blp(y, t, 0.5, x[:, 0] + x[:, 2], baseline=x[:, 0]).set_index("term")
        rejections += tab.loc["hte", "p_value"] < 0.05
    return rejections / n_reps


def test_blp_null_rejection_rate_fast():
    # 200 reps: binomial SE of a 5 % rate is sqrt(.05 * .95 / 200) = 1.5 %; 1-9 % is > 2.5 SE.
    assert 0.01 <= _blp_null_rejection_rate(200) <= 0.09


@pytest.mark.slow
def test_blp_null_rejection_rate_nominal():
    # 2000 reps: binomial SE = sqrt(.05 * .95 / 2000) = 0.49 %; accept 3.5-6.5 % (about 3 SE),
    # which also allows HC1's small finite-sample excess at n = 400.
    assert 0.035 <= _blp_null_rejection_rate(2000) <= 0.065


# ----------------------------------------------------------------------------- generic ML


def _oracle(x_train, t_train, y_train, x_predict, seed):
    return x_predict[:, 0], 1 + x_predict[:, 1]


def _linear_t_learner(x_train, t_train, y_train, x_predict, seed):
    design = np.column_stack([np.ones(len(x_train)), x_train])
    pred = []
    for arm in (0, 1):
        coef = np.linalg.lstsq(design[t_train == arm], y_train[t_train == arm], rcond=None)[0]
        pred.append(np.column_stack([np.ones(len(x_predict)), x_predict]) @ coef)
    return pred[0], pred[1] - pred[0]


def test_generic_ml_with_oracle_proxy_and_median_rule():
    x, t, tau, y = _linear_trial(2000, seed=14)
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
    assert res.conf_level == pytest.approx(0.9)
    assert b.loc["hte", "ci_lower"] < b.loc["hte", "estimate"] < b.loc["hte", "ci_upper"]
    g = res.gates["estimate"].to_numpy()
    assert np.all(np.diff(g[:5]) > 0)  # sorted effects: the proxy is the true CATE
    clan = res.clan.set_index("term")
    assert clan.loc["b[most-least]", "estimate"] > 2  # tau = 1 + b: top vs bottom fifth
    assert abs(clan.loc["c[most-least]", "estimate"]) < 4 * clan.loc["c[most-least]", "std_err"]


def test_generic_ml_median_rule_doubles_the_median_p_value():
    x, t, _, y = _linear_trial(300, seed=15, hetero=False)
    res = generic_ml(y, t, x, 0.5, n_splits=9, learner=_linear_t_learner, seed=1)
    splits = []
    rng = np.random.default_rng(1)  # replay the same splits as generic_ml draws them
    for _ in range(9):
        aux = np.zeros(300, dtype=bool)
        aux[rng.choice(300, size=150, replace=False)] = True
        b, s = _linear_t_learner(x[aux], t[aux], y[aux], x[~aux], int(rng.integers(2**31 - 1)))
        splits.append(blp(y[~aux], t[~aux], 0.5, s, b).set_index("term").loc["hte"])
    med_p = np.median([row["p_value"] for row in splits])
    hte = res.blp.set_index("term").loc["hte"]
    assert hte["p_value"] == pytest.approx(min(1.0, 2 * med_p))
    assert hte["ci_lower"] == pytest.approx(np.median([row["ci_lower"] for row in splits]))


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


def test_generic_ml_errors():
    x, t, _, y = _linear_trial(100, seed=17)
    with pytest.raises(InputError, match="features must have shape"):
        generic_ml(y, t, x[:50], 0.5, seed=0)
    with pytest.raises(InputError, match="n_groups=1"):
        generic_ml(y, t, x, 0.5, n_groups=1, seed=0)
    with pytest.raises(InputError, match="alpha"):
        generic_ml(y, t, x, 0.5, alpha=0.7, seed=0)


@pytest.mark.slow
def test_generic_ml_median_rule_is_conservative_under_no_heterogeneity():
    # the 2 * median p-value is valid but conservative: over 200 reps at 5 % the rate must
    # not exceed 5 % + 2.5 binomial SEs (1.5 % each), i.e. 8.8 %.
    rejections = 0
    for rep in range(200):
        x, t, _, y = _linear_trial(400, seed=70_000 + rep, hetero=False)
        res = generic_ml(y, t, x, 0.5, n_splits=15, learner=_linear_t_learner, seed=rep)
        rejections += res.blp.set_index("term").loc["hte", "p_value"] < 0.05
    assert rejections / 200 <= 0.088


# ----------------------------------------------------------------------------- calibration


def test_calibration_with_true_functions_gives_unit_coefficients():
    x, t, tau, y = _linear_trial(4000, seed=18)
    e = 0.5
    m = x[:, 0] + e * tau  # E[Y | x]
    tab = test_calibration(y, t, e, m, tau).set_index("term")
    for term in ("mean.forest.prediction", "differential.forest.prediction"):
        assert abs(tab.loc[term, "estimate"] - 1) < 4 * tab.loc[term, "std_err"]
        assert tab.loc[term, "p_value"] < 1e-6
    tval = tab["estimate"] / tab["std_err"]
    np.testing.assert_allclose(tab["t_value"], tval)
    np.testing.assert_allclose(tab["p_value"], stats.t.sf(tval, 4000 - 2))


def test_calibration_of_uninformative_predictions():
    x, t, tau, y = _linear_trial(4000, seed=19)
    m = x[:, 0] + 0.5 * tau
    fake = 1 - x[:, 2]  # right mean, unrelated heterogeneity
    tab = test_calibration(y, t, 0.5, m, fake, vcov_type="HC1").set_index("term")
    diff = tab.loc["differential.forest.prediction"]
    assert abs(diff["estimate"]) < 4 * diff["std_err"]
    flipped = test_calibration(y, t, 0.5, m, 1 - x[:, 1]).set_index("term")
    assert flipped.loc["differential.forest.prediction", "p_value"] > 0.99  # one-sided
    with pytest.raises(InputError, match="HC3.*clusters"):
        test_calibration(y, t, 0.5, m, tau, clusters=np.arange(4000) // 10)


# ----------------------------------------------------------------------------- spatial


def test_spatial_blocks_follow_the_grid():
    blocks = spatial_blocks([0.0, 9.9, 10.0, 0.0, 25.0], [0.0, 9.9, 0.0, 10.0, 25.0], 10.0)
    assert blocks[0] == blocks[1]
    assert len({blocks[0], blocks[2], blocks[3], blocks[4]}) == 4
    with pytest.raises(InputError, match="block_size"):
        spatial_blocks([0.0], [0.0], 0.0)


def test_spatial_folds_keep_blocks_whole_and_balanced():
    rng = np.random.default_rng(20)
    xy = rng.uniform(0, 1000, size=(3000, 2))
    folds = spatial_folds(xy[:, 0], xy[:, 1], 5, 100.0, seed=1)
    blocks = spatial_blocks(xy[:, 0], xy[:, 1], 100.0)
    for b in np.unique(blocks):
        assert len(np.unique(folds[blocks == b])) == 1
    counts = np.bincount(folds, minlength=5)
    assert counts.min() > 0.9 * counts.max()
    assert np.array_equal(folds, spatial_folds(xy[:, 0], xy[:, 1], 5, 100.0, seed=1))
    assert not np.array_equal(folds, spatial_folds(xy[:, 0], xy[:, 1], 5, 100.0, seed=2))
    with pytest.raises(InputError, match="n_folds=200"):
        spatial_folds(xy[:, 0], xy[:, 1], 200, 100.0, seed=1)


def test_train_test_split_spatial_on_a_trial():
    rng = np.random.default_rng(21)
    n = 800
    df = pd.DataFrame(
        {
            "id": range(n),
            "lon": rng.uniform(0, 50_000, n),
            "lat": rng.uniform(0, 50_000, n),
            "treatment": rng.integers(0, 2, n),
            "outcome": rng.normal(size=n),
        }
    )
    trial = read_units(df, crs="EPSG:32636")
    train, test = train_test_split_spatial(trial, 0.25, 5_000.0, seed=3)
    assert np.array_equal(np.sort(np.r_[train, test]), np.arange(n))
    blocks = spatial_blocks(df["lon"], df["lat"], 5_000.0)
    assert not set(blocks[train]) & set(blocks[test])
    assert abs(len(test) / n - 0.25) < 0.03  # blocks hold ~8 units: within half a block
    again = train_test_split_spatial(trial, 0.25, 5_000.0, seed=3)
    assert np.array_equal(again[1], test)
    with pytest.raises(InputError, match="test_fraction=1.5"):
        train_test_split_spatial(trial, 1.5, 5_000.0, seed=3)
