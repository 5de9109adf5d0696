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


#: Known failure with the effect model of issue 17, for issue 18 (model choice with error
#: control) to settle: on this K = 3 trial the rule "smallest K with elpd_diff <= max(4, 2 dse)"
#: keeps K = 2 (elpd_diff 8.7 against K = 4; the continuous deviation absorbs part of the third
#: cluster, and K >= 3 fits have 27-29 bad Pareto-k). Not strict: a better rule may pass it.
K3_KNOWN_FAILURE = pytest.mark.xfail(
    reason="issue 18: the K rule keeps K = 2 on the K = 3 trial under the new model",
    strict=False,
)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("true_k", "tau"),
    [(1, (1.0,)), (2, None), pytest.param(3, None, marks=K3_KNOWN_FAILURE)],
)
def test_k_selection_picks_true_k(true_k, tau):
    sim = simulate_trial(40 + true_k, 600, true_k, tau=tau, separation=5.0)
    comparison = compare_clusters(sim.trial, sim.embeddings, k_max=true_k + 1, **FAST)
    print(comparison.table)
    assert comparison.best_k == true_k
