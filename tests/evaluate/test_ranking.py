"""RATE and the TOC curve against their brute-force definitions, and their bootstrap inference."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from imgcate.errors import InputError  # noqa: E402
from imgcate.evaluate import (  # noqa: E402
    aipw_scores,
    plot_toc,
    rate,
    rate_difference,
)


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


def test_rate_seed_reproducible_and_detects_heterogeneity(linear_trial):
    x, t, tau, y = linear_trial(2000, seed=6)
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


def test_rate_difference_is_paired(linear_trial):
    x, t, tau, y = linear_trial(1500, seed=8)
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
