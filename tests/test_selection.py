"""Choosing K by PSIS-LOO: the selected fit is checked, and the true K is found (slow).

Tolerances: a posterior mean is compared to the truth within 4 posterior sds. With ~500 units
the posterior sd approximates the estimator's sampling sd (Bernstein-von Mises), so a correct
model fails such a check with probability ~6e-5; the Monte Carlo error of the mean (sd/sqrt(ESS),
ESS >= 100) adds under 10% to that margin.
"""

from __future__ import annotations

import pytest

from imgcate import ConvergenceWarning
from imgcate.selection import compare_clusters
from imgcate.simulate import simulate_trial

FAST = {"num_warmup": 300, "num_samples": 300, "num_chains": 2}


def test_compare_clusters_warns_for_the_selected_fit():
    """Each K's fit is quiet during the comparison; the selected one is then checked."""
    sim = simulate_trial(5, 150, 1)
    with pytest.warns(ConvergenceWarning, match="bulk ESS") as record:
        comparison = compare_clusters(
            sim.trial, sim.embeddings, k_max=1, num_chains=1, num_warmup=30, num_samples=30, seed=0
        )
    assert comparison.best_k == 1
    assert all(
        "imgcate fit:" in str(w.message)
        for w in record
        if issubclass(w.category, ConvergenceWarning)
    )


@pytest.mark.slow
@pytest.mark.parametrize(("true_k", "tau"), [(1, (1.0,)), (2, None), (3, None)])
def test_k_selection_picks_true_k(true_k, tau):
    sim = simulate_trial(40 + true_k, 600, true_k, tau=tau, separation=5.0)
    comparison = compare_clusters(sim.trial, sim.embeddings, k_max=true_k + 1, **FAST)
    print(comparison.table)
    assert comparison.best_k == true_k
