"""Balance: standardized mean differences before and after weighting."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from imgcate.confounding import (  # noqa: E402
    balance_table,
)


def test_balance_improves_after_weighting(fitted, sim):
    ps, _ = fitted
    table = balance_table(sim.features, sim.treatment, weights=ps)
    before = table["smd_before"].abs().max()
    after = table["smd_after"].abs().max()
    print(f"\nmax |SMD| before weighting {before:.3f}, after {after:.3f}")
    assert after < before / 3
    assert before > 0.5
    # The denominator is the unweighted pooled sd, computed here by hand for one feature.
    x, t = sim.features[:, 0], sim.treatment
    sd = np.sqrt((x[t == 1].var(ddof=1) + x[t == 0].var(ddof=1)) / 2)
    w = ps.ipw_weights
    diff = np.average(x[t == 1], weights=w[t == 1]) - np.average(x[t == 0], weights=w[t == 0])
    assert table["smd_after"].iloc[0] == pytest.approx(diff / sd)


def test_balance_table_without_weights_and_names():
    x = np.array([[0.0, 1.0], [1.0, 1.0], [1.0, 2.0], [2.0, 4.0]])
    table = balance_table(x, [0, 0, 1, 1], names=["roof", "ndvi"])
    assert list(table.index) == ["roof", "ndvi"]
    assert "smd_after" not in table
    assert table.loc["roof", "smd_before"] == pytest.approx(1 / np.sqrt(0.5))
