"""The omnibus calibration test (grf's test_calibration)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
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
    with pytest.raises(InputError, match="HC3.*clusters"):
        test_calibration(y, t, 0.5, m, tau, clusters=np.arange(4000) // 10)
