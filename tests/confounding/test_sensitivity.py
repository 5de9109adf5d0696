"""Sensitivity to hidden confounding against hand computations, the long regression and the
published Darfur numbers (Cinelli & Hazlett 2020)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
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
