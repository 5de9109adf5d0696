"""Sensitivity to hidden confounding against hand computations, the long regression and the
published Darfur numbers (Cinelli & Hazlett 2020)."""

from __future__ import annotations

import warnings

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from imgcate.confounding import (  # noqa: E402
    confounding_sensitivity,
    robustness_value,
)
from imgcate.errors import InputError  # noqa: E402


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
    assert robustness_value(4.18445, 783, prob=0.95) == pytest.approx(0.0763, abs=1e-4)
    assert robustness_value(1.0, 783, prob=0.95) == 0.0  # not significant to begin with


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
        y, d, x, benchmark="x1", names=["x0", "x1", "x2"], kd=(1, 2), prob=0.95
    )
    others = x[:, [0, 2]]
    r2dxj = _partial_r2_fwl(d, x[:, 1], others)
    r2yxj = _partial_r2_fwl(y, x[:, 1], np.column_stack([d, others]))
    for k, (_, row) in zip((1, 2), res.bounds.iterrows(), strict=True):
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
        assert row["adjusted_2.5%"] < row.adjusted_estimate < row["adjusted_97.5%"]
    # Stronger confounders remove more of the estimate.
    assert res.bounds["adjusted_estimate"].is_monotonic_decreasing


def test_sensitivity_on_the_image_simulation(sim):
    # Controlling for a few image features leaves the effect fairly robust; benchmark on one.
    res = confounding_sensitivity(sim.outcome, sim.treatment, sim.features[:, :4], benchmark=[0, 3])
    assert len(res.bounds) == 6
    assert 0 < res.rv_qa < res.rv_q < 1
    with pytest.raises(InputError, match="is not a covariate name"):
        confounding_sensitivity(sim.outcome, sim.treatment, sim.features[:, :2], benchmark="roads")
    flat = np.column_stack([sim.features[:, :2], np.full(len(sim.outcome), 0.1)])  # sd 1e-17
    with pytest.raises(InputError, match=r"covariates \['market'\] are constant"):
        confounding_sensitivity(sim.outcome, sim.treatment, flat, names=["a", "b", "market"])


# The Darfur example of Cinelli & Hazlett (2020, sec. 5), from published regression summaries
# only (no data): peacefactor on directlyharmed and the covariates (village fixed effects), the
# treatment coefficient 0.09731582 (se 0.02325654, 783 residual dof), and the benchmark
# covariate female's t-values as a regression summary prints them, to 3 decimals: 9.789 in the
# outcome regression (783 dof) and 2.680 in the regression of the treatment on the covariates
# (784 dof). sensemakr's published figures: estimate 0.0973, se 0.0233, t 4.18, partial R2 of
# the treatment 2.19 %, RV 13.9 %, RV_alpha 7.6 % (alpha = 0.05), and for a confounder as
# strong as female (kd = ky = 1): R2_D~Z|X 0.9 %, R2_Y~Z|D,X 12.5 %, adjusted estimate 0.0752.
DARFUR = {"estimate": 0.09731582, "std_err": 0.02325654, "dof": 783}


def test_darfur_published_figures_from_regression_summaries():
    from imgcate.confounding import confounding_sensitivity_from_summary, partial_r2

    female = (partial_r2(2.680, 784), partial_r2(9.789, 783))
    res = confounding_sensitivity_from_summary(
        **DARFUR, benchmarks={"female": female}, kd=(1, 2, 3)
    )
    # each figure to half a unit of its last printed digit (the t-values' 3 decimals move
    # them by less than 1e-5)
    assert res.estimate == pytest.approx(0.0973, abs=5e-5)
    assert res.std_err == pytest.approx(0.0233, abs=5e-5)
    assert res.t_stat == pytest.approx(4.18, abs=5e-3)
    assert res.partial_r2 == pytest.approx(0.0219, abs=5e-5)
    assert res.rv_q == pytest.approx(0.139, abs=5e-4)
    assert res.rv_qa == pytest.approx(0.076, abs=5e-4)
    one = res.bounds.iloc[0]
    assert one.r2dz_x == pytest.approx(0.009, abs=5e-4)
    assert one.r2yz_dx == pytest.approx(0.125, abs=5e-4)
    assert one.adjusted_estimate == pytest.approx(0.0752, abs=5e-5)
    assert not res.bounds["capped"].any()
    assert list(res.bounds["benchmark"]) == ["female"] * 3


def test_darfur_bounds_match_sensemakrs_table_to_its_precision():
    """sensemakr's test of its manual interface gives the bounds' full table for the same
    estimate, se and dof; with female's partial R2 values at full precision (recovered from
    that table's R2_D~Z|X and R2_Y~Z|D,X for kd = 1) every column matches to 1e-9, the
    intervals included (t quantile with the regression's 783 dof, as ovb_bounds)."""
    from imgcate.confounding import confounding_sensitivity_from_summary

    r2dz_1, r2yz_1 = 0.00916428667504862, 0.12464092303637
    r2dxj = r2dz_1 / (1 + r2dz_1)  # R2_D~Z = kd r2 / (1 - r2) at kd = 1
    eta = r2dxj**2 / (1 - r2dxj) ** 2
    ratio = r2yz_1 / ((1 + np.sqrt(eta)) / np.sqrt(1 - eta)) ** 2
    r2yxj = ratio / (1 + ratio)
    res = confounding_sensitivity_from_summary(
        **DARFUR, benchmarks={"female": (r2dxj, r2yxj)}, kd=(1, 2, 3)
    )
    published = {
        "r2dz_x": [0.00916428667504862, 0.0183285733500972, 0.0274928600251459],
        "r2yz_dx": [0.12464092303637, 0.249324064199975, 0.374050471038094],
        "adjusted_estimate": [0.0752202698486415, 0.0529151689180575, 0.0303960178770157],
        "adjusted_se": [0.0218733298036818, 0.0203500639944344, 0.0186700665753491],
        "adjusted_t": [3.43890347394571, 2.60024582392121, 1.62806156873318],
        "adjusted_2.5%": [0.0322829603180086, 0.0129680276030601, -0.00625329133645187],
        "adjusted_97.5%": [0.118157579379274, 0.092862310233055, 0.0670453270904833],
    }
    for column, values in published.items():
        np.testing.assert_allclose(res.bounds[column], values, rtol=1e-9, err_msg=column)
    # sensemakr's statistics from the model itself (unrounded estimate and se): the 8-digit
    # inputs move them by about 2e-8
    assert res.rv_q == pytest.approx(0.1387764, abs=1e-7)
    assert res.rv_qa == pytest.approx(0.07625797, abs=5e-8)
    assert res.partial_r2 == pytest.approx(0.02187309, abs=5e-8)


def test_from_data_equals_from_its_summary():
    from imgcate.confounding import confounding_sensitivity_from_summary, partial_r2

    y, d, x, _ = _small_linear_example(seed=4, n=300)
    res = confounding_sensitivity(y, d, x, benchmark="b", names=["a", "b", "c"], kd=(1, 2))
    n = len(y)
    others = np.column_stack([np.ones(n), x[:, [0, 2]]])
    t_d = _t_value(d, np.column_stack([others, x[:, 1]]))
    t_y = _t_value(y, np.column_stack([others, d, x[:, 1]]))
    again = confounding_sensitivity_from_summary(
        res.estimate,
        res.std_err,
        res.dof,
        benchmarks={"b": (partial_r2(t_d, n - 4), partial_r2(t_y, n - 5))},
        kd=(1, 2),
    )
    pd.testing.assert_frame_equal(res.bounds, again.bounds, rtol=1e-10)
    pd.testing.assert_frame_equal(res.summary(), again.summary(), rtol=1e-10)


def _t_value(y: np.ndarray, X: np.ndarray) -> float:
    """t-statistic of the last column of X in the OLS of y on X."""
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    resid = y - X @ coef
    dof = len(y) - X.shape[1]
    return float(coef[-1] / np.sqrt(resid @ resid / dof * np.linalg.inv(X.T @ X)[-1, -1]))


def test_capped_bounds_warn_exactly_when_the_implied_r2_exceeds_one():
    """sensemakr warns, and sets R2_Y~Z|D,X to 1, exactly when the implied value exceeds 1;
    the rows say so (capped) and the message says what to do."""
    from imgcate.confounding import confounding_sensitivity_from_summary
    from imgcate.errors import SensitivityWarning

    r2dxj, r2yxj = 0.01, 0.2

    def implied(k):  # the formula, for kd = ky = k
        eta = k * r2dxj**2 / ((1 - k * r2dxj) * (1 - r2dxj))
        return ((np.sqrt(k) + np.sqrt(eta)) / np.sqrt(1 - eta)) ** 2 * r2yxj / (1 - r2yxj)

    below, above = 3.9, 4.1
    assert implied(below) < 1 < implied(above)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning below the threshold
        ok = confounding_sensitivity_from_summary(
            **DARFUR, benchmarks={"x": (r2dxj, r2yxj)}, kd=below
        )
    assert not ok.bounds["capped"].any()
    with pytest.warns(SensitivityWarning, match=r"4\.1x/4\.1x x.*try lower kd and/or ky"):
        res = confounding_sensitivity_from_summary(
            **DARFUR, benchmarks={"x": (r2dxj, r2yxj)}, kd=(1, above)
        )
    assert res.bounds["capped"].tolist() == [False, True]
    capped = res.bounds.iloc[1]
    assert capped.r2yz_dx == 1.0 and capped.adjusted_se == 0.0
    with pytest.raises(InputError, match=r"kd=200 is impossible for benchmark 'x'.*below 99"):
        confounding_sensitivity_from_summary(**DARFUR, benchmarks={"x": (r2dxj, r2yxj)}, kd=200)


def test_impossible_kd_among_several_gives_nan_rows_and_a_warning():
    """Of several kd, those that would make the confounder explain all of the treatment are
    marked (NaN bounds, impossible=True) with a warning naming them and the largest possible
    kd; the possible rows are those a single-kd call gives. A single impossible kd raises."""
    from imgcate.confounding import confounding_sensitivity_from_summary
    from imgcate.errors import SensitivityWarning

    r2dxj, r2yxj = 0.3, 0.05  # kd must be below 0.7 / 0.3 = 2.33
    with pytest.warns(SensitivityWarning, match=r"kd=3, 4 is impossible for benchmark 'x'.*2\.33"):
        res = confounding_sensitivity_from_summary(
            **DARFUR, benchmarks={"x": (r2dxj, r2yxj)}, kd=(1, 2, 3, 4)
        )
    assert res.bounds["impossible"].tolist() == [False, False, True, True]
    assert res.bounds.loc[2:, ["r2dz_x", "adjusted_estimate", "adjusted_2.5%"]].isna().all().all()
    for k in (1, 2):
        alone = confounding_sensitivity_from_summary(
            **DARFUR, benchmarks={"x": (r2dxj, r2yxj)}, kd=k
        )
        pd.testing.assert_frame_equal(
            res.bounds.iloc[[k - 1]].reset_index(drop=True), alone.bounds, rtol=1e-12
        )
    with pytest.raises(InputError, match=r"kd=3 is impossible.*below 2\.33"):
        confounding_sensitivity_from_summary(**DARFUR, benchmarks={"x": (r2dxj, r2yxj)}, kd=3)
