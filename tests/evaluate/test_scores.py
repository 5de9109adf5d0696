"""AIPW scores against their formula; double robustness of their mean."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from imgcate.errors import InputError  # noqa: E402
from imgcate.evaluate import (  # noqa: E402
    aipw_scores,
)


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


def test_aipw_mean_recovers_ate_with_wrong_outcome_model(linear_trial):
    x, t, tau, y = linear_trial(20_000, seed=1)
    gamma = aipw_scores(y, t, 0.5, np.zeros_like(y), np.zeros_like(y))  # known p, bad mu
    se = gamma.std(ddof=1) / np.sqrt(len(gamma))
    assert abs(gamma.mean() - tau.mean()) < 4 * se


@pytest.mark.parametrize("bad", [0.0, 1.0, [0.5, 0.5]])
def test_aipw_rejects_bad_propensity(bad):
    with pytest.raises(InputError, match="propensity"):
        aipw_scores([1.0, 0.0, 1.0], [1, 0, 1], bad, [0, 0, 0], [1, 1, 1])
