"""The omnibus calibration test (grf's test_calibration)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from scipy import stats  # noqa: E402

from imgcate.errors import InputError  # noqa: E402
from imgcate.evaluate import (  # noqa: E402
    test_calibration,
)


def test_calibration_with_true_functions_gives_unit_coefficients(linear_trial):
    x, t, tau, y = linear_trial(4000, seed=18)
    e = 0.5
    m = x[:, 0] + e * tau  # E[Y | x]
    tab = test_calibration(y, t, e, m, tau).set_index("term")
    for term in ("mean.forest.prediction", "differential.forest.prediction"):
        assert abs(tab.loc[term, "estimate"] - 1) < 4 * tab.loc[term, "std_err"]
        assert tab.loc[term, "p_value"] < 1e-6
    tval = tab["estimate"] / tab["std_err"]
    np.testing.assert_allclose(tab["t_value"], tval)
    np.testing.assert_allclose(tab["p_value"], stats.t.sf(tval, 4000 - 2))


def test_calibration_of_uninformative_predictions(linear_trial):
    x, t, tau, y = linear_trial(4000, seed=19)
    m = x[:, 0] + 0.5 * tau
    fake = 1 - x[:, 2]  # right mean, unrelated heterogeneity
    tab = test_calibration(y, t, 0.5, m, fake, vcov_type="HC1").set_index("term")
    diff = tab.loc["differential.forest.prediction"]
    assert abs(diff["estimate"]) < 4 * diff["std_err"]
    flipped = test_calibration(y, t, 0.5, m, 1 - x[:, 1]).set_index("term")
    assert flipped.loc["differential.forest.prediction", "p_value"] > 0.99  # one-sided


def _hc3_by_definition(target, X, w, clusters):
    """sandwich's vcovCL(type = "HC3"): per cluster, (I - H_gg)^{-1} applied to the weighted
    residuals, H_gg = X_g (X'WX)^{-1} X_g' W_g; the G/(G-1) adjustment cancels for HC3."""
    bread = np.linalg.inv(X.T @ (X * w[:, None]))
    beta = bread @ (X * w[:, None]).T @ target
    resid = target - X @ beta
    meat = np.zeros((2, 2))
    for g in np.unique(clusters):
        i = clusters == g
        hat = X[i] @ bread @ X[i].T @ np.diag(w[i])
        u = X[i].T @ np.linalg.solve(np.eye(i.sum()) - hat, w[i] * resid[i])
        meat += np.outer(u, u)
    return beta, np.sqrt(np.diag(bread @ meat @ bread))


def test_cluster_robust_hc3_follows_its_definition(linear_trial):
    """grf's test_calibration uses vcovCL(type = "HC3") with the forest's clusters."""
    x, t, tau, y = linear_trial(600, seed=20)
    m = x[:, 0] + 0.5 * tau
    clusters = np.random.default_rng(0).integers(0, 40, 600)
    w = np.random.default_rng(1).uniform(0.5, 2.0, 600)
    tab = test_calibration(y, t, 0.5, m, tau, clusters=clusters, weights=w)
    mean_tau = np.sum(w * tau) / w.sum()
    X = np.column_stack([(t - 0.5) * mean_tau, (t - 0.5) * (tau - mean_tau)])
    beta, se = _hc3_by_definition(y - m, X, w, clusters)
    np.testing.assert_allclose(tab["estimate"], beta, rtol=1e-12)
    np.testing.assert_allclose(tab["std_err"], se, rtol=1e-10)
    assert (tab["vcov"] == "CR3").all()
    # every unit its own cluster: the unclustered HC3 (leverage-adjusted residuals)
    singles = test_calibration(y, t, 0.5, m, tau, clusters=np.arange(600), weights=w)
    plain = test_calibration(y, t, 0.5, m, tau, weights=w)
    np.testing.assert_allclose(singles["std_err"], plain["std_err"], rtol=1e-10)
    assert (plain["vcov"] == "HC3").all()


def test_zero_weights_do_not_count_as_degrees_of_freedom(linear_trial):
    """R's lm drops zero-weight rows from the residual degrees of freedom; the whole test then
    equals the test on the units with positive weight."""
    x, t, tau, y = linear_trial(400, seed=21)
    m = x[:, 0] + 0.5 * tau
    w = np.ones(400)
    w[::4] = 0.0
    tab = test_calibration(y, t, 0.5, m, tau, weights=w)
    keep = w > 0
    sub = test_calibration(y[keep], t[keep], 0.5, m[keep], tau[keep])
    assert (tab["df"] == 300 - 2).all()
    pd.testing.assert_frame_equal(tab, sub, rtol=1e-10)
    np.testing.assert_allclose(tab["p_value"], stats.t.sf(tab["t_value"], 298))
    with pytest.raises(InputError, match="at least 3 units with positive weight"):
        test_calibration(
            [1.0, 2.0, 3.0, 4.0],
            [0, 1, 0, 1],
            0.5,
            np.zeros(4),
            [0.0, 1.0, 2.0, 3.0],
            weights=[1.0, 1.0, 0.0, 0.0],
        )
