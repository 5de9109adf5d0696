"""Fixtures of the confounding tests: one simulated observational study and its estimates."""

from __future__ import annotations

import pytest

from imgcate.confounding import ate_estimates, estimate_propensity
from imgcate.simulate import simulate_confounded


@pytest.fixture(scope="module")
def sim():
    return simulate_confounded(seed=11, n_units=1000, ate=2.0)


@pytest.fixture(scope="module")
def fitted(sim):
    ps = estimate_propensity(sim.features, sim.treatment, seed=11)
    table = ate_estimates(sim.outcome, sim.treatment, ps, features=sim.features, seed=11)
    return ps, table
