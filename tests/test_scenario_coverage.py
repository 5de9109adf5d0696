"""Interval calibration on trials the model was not built from (issue 17; slow).

``imgcate.simulate.simulate_scenario`` draws trials whose effect and baseline are not of the
model's form: a smooth tanh-shaped effect (the old mixture model covered 0.65-0.72 on smooth
effects), and a constant effect over a quadratic baseline (where the old model reported two
sharp, false clusters). Each scenario is fitted 20 times (n = 300, d = 4, K = 2, one chain of
300 + 300 draws). A smooth effect over a quadratic baseline, and 16 features, are not yet
calibrated (``benchmarks/calibration.py``; issue 17): they are not claimed here.

Tolerances. Units of one replication share its posterior, so a replication's unit coverage moves
as one: on the calibration benchmark its spread over replications is about 0.08, so the mean of
20 has a Monte Carlo sd of about 0.02, and [0.80, 0.98] is about -4 to +3 sds around 0.9 (the
old model's 0.24-0.72 fails it). The ATE interval is one Bernoulli per replication: at 0.9 the
count of 20 has sd 1.3, so >= 15 is about -2.3 sds. Measured 2026-12-02 (68 minutes on 2
cores shared with other runs): tanh effect 0.86 / 0.86, ATE 17 / 20; constant effect
0.96 / 0.96, ATE 16 / 20.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from imgcate.inference import fit
from imgcate.simulate import simulate_scenario

REPS = 20
SCENARIOS = {
    "smooth effect, linear baseline": {"effect": "tanh", "baseline": "linear"},
    "constant effect, quadratic baseline": {"effect": "constant", "baseline": "quadratic"},
}


def _covers(lo, hi, truth) -> np.ndarray:
    return (np.asarray(lo) <= truth) & (truth <= np.asarray(hi))


@pytest.mark.slow
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_unit_and_ate_intervals_cover_on_misspecified_trials(scenario):
    cover_in, cover_new, ate_hits, shares = [], [], 0, []
    for rep in range(REPS):
        sim = simulate_scenario(500 + rep, n_units=300, **SCENARIOS[scenario])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = fit(
                sim.trial,
                sim.embeddings,
                n_clusters=2,
                seed=rep,
                num_chains=1,
                num_warmup=300,
                num_samples=300,
            )
        units = result.unit_effects(0.9)
        cover_in.append(_covers(units["tau_5%"], units["tau_95%"], sim.truth.cate).mean())
        new = sim.truth.new_embeddings(300, 9_000 + rep)
        predicted = result.predict(new).to_frame(0.9)
        cover_new.append(
            _covers(predicted["tau_5%"], predicted["tau_95%"], sim.truth.cate_of(new)).mean()
        )
        ate = result.ate(0.9).loc["model_implied"]
        ate_hits += int(ate["5%"] <= sim.truth.cate.mean() <= ate["95%"])
        shares.append(result.heterogeneity(0.9).loc["effect_share_clusters", "mean"])
    print(
        f"{scenario}: unit coverage {np.mean(cover_in):.3f} in sample, "
        f"{np.mean(cover_new):.3f} new units; ATE {ate_hits}/{REPS}; "
        f"cluster share of effect variance {np.mean(shares):.2f}"
    )
    assert 0.80 <= np.mean(cover_in) <= 0.98
    assert 0.80 <= np.mean(cover_new) <= 0.98
    assert ate_hits >= 15
