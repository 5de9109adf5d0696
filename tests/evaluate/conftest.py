"""Fixtures of the evaluation tests."""

from __future__ import annotations

import numpy as np
import pytest


def _linear_trial(n: int, seed: int, hetero: bool = True):
    """x ~ N(0, I_3); tau = 1 + x1 (or 1); y = x0 + t tau + heteroskedastic noise; p = 0.5."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    t = rng.integers(0, 2, n)
    tau = 1 + x[:, 1] if hetero else np.ones(n)
    noise = rng.normal(size=n) * (1 + 0.5 * np.abs(x[:, 2]))
    y = x[:, 0] + t * tau + noise
    return x, t, tau, y


@pytest.fixture
def linear_trial():
    """A simulated randomized trial with known CATE (see ``_linear_trial``)."""
    return _linear_trial
