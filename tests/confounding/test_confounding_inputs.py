"""Bad inputs to the confounding estimators get errors that name them."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from imgcate.confounding import (  # noqa: E402
    aipw,
    crump_alpha,
    difference_in_means,
    estimate_propensity,
    hajek_ipw,
)
from imgcate.errors import InputError  # noqa: E402


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
