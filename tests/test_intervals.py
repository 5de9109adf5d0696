"""One interval convention: ``prob`` everywhere, columns named by percentile, one tidy schema.

EffectFit.tidy() (posterior, prob=0.9 by default) is checked in tests/test_results.py; here the
helpers and the design-based results of confounding and evaluation (prob=0.95 by default).
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import imgcate.confounding as confounding
import imgcate.evaluate as evaluate
from imgcate.errors import InputError
from imgcate.intervals import interval_names, normal_interval, quantiles, tidy_table
from imgcate.simulate import simulate_confounded

SCHEMA = ["term", "estimate", "std_err", "2.5%", "97.5%"]


def test_interval_names_and_bounds():
    assert interval_names(0.9) == ("5%", "95%")
    assert interval_names(0.95) == ("2.5%", "97.5%")
    assert interval_names(0.5) == ("25%", "75%")
    with pytest.raises(InputError, match="prob=1.5 must lie strictly between 0 and 1"):
        interval_names(1.5)
    lo, hi = normal_interval(1.0, 0.5, 0.95)
    assert lo == pytest.approx(1.0 - 1.959964 * 0.5) and hi == pytest.approx(1.0 + 1.959964 * 0.5)
    lo_t, hi_t = normal_interval(1.0, 0.5, 0.95, df=5)  # Student-t is wider
    assert lo_t < lo and hi < hi_t
    draws = np.arange(1001.0)
    assert quantiles(draws, 0.9) == (pytest.approx(50.0), pytest.approx(950.0))


def test_tidy_table_schema():
    table = tidy_table(["a", "b"], [1, 2], [0.1, 0.2], [0.8, 1.6], [1.2, 2.4], 0.9, p_value=[0, 1])
    assert list(table.columns) == ["term", "estimate", "std_err", "5%", "95%", "p_value"]


def test_every_tidy_has_the_same_schema():
    sim = simulate_confounded(seed=3, n_units=300)
    ate = confounding.hajek_ipw(sim.outcome, sim.treatment, sim.truth.propensity)
    assert list(ate.tidy().columns) == [*SCHEMA, "n", "n_clusters", "vcov", "propensity"]
    assert ate.lower < ate.estimate < ate.upper
    sens = confounding.confounding_sensitivity(sim.outcome, sim.treatment, sim.features[:, :3])
    tidy = sens.tidy()
    assert list(tidy.columns)[:5] == SCHEMA
    assert tidy.loc[0, "2.5%"] < tidy.loc[0, "estimate"] < tidy.loc[0, "97.5%"]
    scores = sim.outcome - sim.outcome.mean()
    rate = evaluate.rate(sim.features[:, 0], scores, n_bootstrap=20, seed=0)
    assert list(rate.tidy().columns) == [*SCHEMA, "p_value"]
    assert list(rate.tidy(prob=0.9).columns)[3:5] == ["5%", "95%"]
    blp = evaluate.blp(sim.outcome, sim.treatment, 0.5, sim.features[:, 0])
    assert list(blp.columns) == [*SCHEMA, "p_value", "vcov"]


#: Functions of these modules whose ``prob`` is of posterior intervals (default 0.9).
POSTERIOR_INTERVALS = {"crossfit_cate"}


@pytest.mark.parametrize("module", [confounding, evaluate])
def test_no_alpha_or_conf_level_arguments(module):
    """Interval probabilities are ``prob`` everywhere, defaulting to 0.95 for design-based and
    frequentist estimates."""
    for name in module.__all__:
        obj = getattr(module, name)
        if not callable(obj) or inspect.isclass(obj):
            continue
        params = inspect.signature(obj).parameters
        assert "alpha" not in params and "conf_level" not in params, name
        if "prob" in params and params["prob"].default is not None:
            # crossfit_cate's prob is of its per-unit posterior intervals (imgcate fits), so
            # it follows the posterior summaries' 0.9; its tests' methods take 0.95
            expected = 0.9 if name in POSTERIOR_INTERVALS else 0.95
            assert params["prob"].default == expected, name
