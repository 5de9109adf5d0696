"""Slow statistical checks of the effect-cluster model (run with `make test-all`)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from imgcate import ConvergenceWarning
from imgcate.inference import fit
from imgcate.selection import compare_clusters
from imgcate.simulate import simulate_trial

pytestmark = pytest.mark.slow
OPTS = {"num_warmup": 300, "num_samples": 300, "num_chains": 2}


def test_interval_calibration_over_replications():
    """90% intervals of cluster effects and of unit CATE cover 80-97% over 40 replications.

    With 80 cluster-effect intervals the binomial sd of the coverage at 0.9 is 0.034, so the
    band [0.80, 0.97] is about -3 to +2 sd; unit-CATE coverage pools 40 x 300 units, but units
    of one replication share its cluster-effect draws, so its spread is close to the former.
    """
    covered_tau, covered_cate = [], []
    for rep in range(40):
        sim = simulate_trial(1000 + rep, 300, 2, separation=4.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            result = fit(
                sim.trial, sim.embeddings, seed=rep, num_warmup=300, num_samples=400, num_chains=1
            )
        table = result.cluster_effects(prob=0.9)
        covered_tau += list(
            (table["tau_5%"] <= sim.truth.tau_cluster) & (sim.truth.tau_cluster <= table["tau_95%"])
        )
        units = result.unit_effects(prob=0.9)
        covered_cate += list(
            (units["tau_5%"] <= sim.truth.cate + 1e-9) & (sim.truth.cate - 1e-9 <= units["tau_95%"])
        )
    cov_tau, cov_cate = np.mean(covered_tau), np.mean(covered_cate)
    print(f"coverage of 90% intervals: cluster effects {cov_tau:.3f}, unit CATE {cov_cate:.3f}")
    assert 0.80 <= cov_tau <= 0.97
    assert 0.80 <= cov_cate <= 0.97


@pytest.mark.parametrize(("true_k", "tau"), [(1, (1.0,)), (2, None), (3, None)])
def test_k_selection_picks_true_k(true_k, tau):
    sim = simulate_trial(40 + true_k, 600, true_k, tau=tau, separation=5.0)
    comparison = compare_clusters(sim.trial, sim.embeddings, k_max=true_k + 1, **OPTS)
    print(comparison.table)
    assert comparison.best_k == true_k
