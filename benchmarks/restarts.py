"""How many MAP searches NUTS's chains need to start in the mode where the clusters are.

Before NUTS, ``fit`` runs ``init_restarts`` MAP searches from random memberships and starts the
chains at the best ends (``imgcate.chains.map_searches``, ``chain_starts``). For each
simulated trial (``simulate_trial``, K clusters, 16 features) and each number of searches this
runs the searches as ``fit`` does (same key) and prints one JSON line: the best end's
potential (the negative log posterior in the unconstrained space; lower is better), how many
searches ended within ``START_GAP`` of it (those the chains may start from), and how well the
best end's memberships sort the units into the true clusters:

- ``accuracy``: share of units whose most probable cluster (at the best end) is the one the
  true cluster maps to, matching each true cluster to its most frequent fitted one; 0 when two
  true clusters map to one fitted cluster (merged clusters). The ends are peaks of a
  posterior with many of similar height (``within_gap``), and the chains start at several:
  the best end's accuracy says little about the fit, ``--fit`` measures that;
- ``seconds``: wall time of the searches, compilation included (a fit pays it too).

A search's end is a peak, not the posterior's mass, so with ``--fit`` each trial is also
fitted with that many searches (``fit(seed=0)``, NUTS, ``--chains`` x ``--draws``) and the
row adds what a user reads: ``cover`` (share of units whose true CATE lies in the 90 %
interval), ``sqrt_pehe`` (root mean squared error of the unit CATE), ``max_r_hat`` and
``fit_seconds``.

Same settings every run:

    python benchmarks/restarts.py                      # K = 3, n = 1,000, seeds 0-5
    python benchmarks/restarts.py --clusters 2 --seeds 4 --units 2000
    python benchmarks/restarts.py --quick              # smoke run
    python benchmarks/restarts.py --fit --restarts 8,32  # and the NUTS fits from them
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import numpy as np

from imgcate.chains import START_GAP, map_searches
from imgcate.config import FitConfig, Standardizer, model_data
from imgcate.model import cluster_probabilities
from imgcate.simulate import simulate_trial


def accuracy(true_cluster: np.ndarray, fitted: np.ndarray, k: int) -> float:
    """Share of units sorted as the truth, each true cluster matched to its most frequent
    fitted cluster; 0 when two true clusters share one (merged)."""
    table = np.zeros((k, k), int)
    np.add.at(table, (true_cluster, fitted), 1)
    if len(set(table.argmax(1))) < k:
        return 0.0
    return float(table.max(1).sum() / len(true_cluster))


def searches(sim, k: int, restarts: int) -> dict:
    """The MAP searches ``fit(seed=0)`` would run on the simulated trial ``sim``."""
    trial = sim.trial
    embedding = sim.embeddings.unit_rows(trial.image_keys)
    config = FitConfig(n_clusters=k, seed=0, init_restarts=restarts).validate()
    std = Standardizer.fitted(
        trial.outcome_array, trial.covariate_matrix, embedding, config, trial.outcome
    )
    data = model_data(trial, embedding, std, config)
    # fit(seed=0)'s key for its searches: imgcate.inference.fit splits the seed's key into
    # the sampler's and the predictive's, and _run_nuts splits the sampler's into three
    key, _ = jax.random.split(jax.random.PRNGKey(0))
    _, key_start, _ = jax.random.split(key, 3)
    start = time.perf_counter()
    values, _, losses = map_searches(data, config, key_start)
    seconds = time.perf_counter() - start
    best = int(np.argmin(losses))
    params = {name: value[best] for name, value in values.items()}
    prob = np.asarray(cluster_probabilities(params, data.inputs.embedding, k))
    return {
        "restarts": restarts,
        "best_potential": round(float(losses[best]), 2),
        "within_gap": int(np.sum(losses <= losses[best] + START_GAP)),
        "accuracy": round(accuracy(sim.truth.cluster, prob.argmax(1), k), 3),
        "seconds": round(seconds, 2),
    }


def fitted(sim, k: int, restarts: int, chains: int, draws: int) -> dict:
    """Unit coverage, sqrt(PEHE) and largest R-hat of ``fit(seed=0)`` with ``restarts``
    searches on the simulated trial ``sim``."""
    import warnings

    from imgcate import fit

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = fit(
            sim.trial,
            sim.embeddings,
            n_clusters=k,
            seed=0,
            init_restarts=restarts,
            num_chains=chains,
            num_warmup=draws,
            num_samples=draws,
        )
    seconds = time.perf_counter() - start
    units = result.unit_effects(0.9)
    truth = np.asarray(sim.truth.cate)
    covered = (units["tau_5%"].to_numpy() <= truth) & (truth <= units["tau_95%"].to_numpy())
    diagnostics = result.diagnostics()
    return {
        "cover": round(float(covered.mean()), 3),
        "sqrt_pehe": round(float(np.sqrt(np.mean((units["tau_mean"] - truth) ** 2))), 3),
        "max_r_hat": round(float(diagnostics["r_hat"].max()), 3),
        "fit_seconds": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clusters", type=int, default=3)
    parser.add_argument("--units", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=6, help="trials: seeds 0..N-1")
    parser.add_argument("--restarts", default="8,16,32,64", help="comma-separated counts")
    parser.add_argument("--fit", action="store_true", help="also fit each trial (NUTS)")
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--draws", type=int, default=500, help="warm-up and kept, per chain")
    parser.add_argument("--quick", action="store_true", help="smoke run: n=300, seed 0, 8 and 32")
    args = parser.parse_args()
    if args.quick:
        args.units, args.seeds, args.restarts = 300, 1, "8,32"
    counts = [int(c) for c in args.restarts.split(",")]
    print(
        json.dumps(
            {
                "benchmark": "restarts",
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "clusters": args.clusters,
                "units": args.units,
                "seeds": args.seeds,
                "restarts": counts,
                "fit": args.fit,
                "chains": args.chains,
                "draws": args.draws,
            }
        ),
        flush=True,
    )
    rows = []
    for seed in range(args.seeds):
        sim = simulate_trial(seed, args.units, args.clusters)
        for count in counts:
            rows.append({"seed": seed} | searches(sim, args.clusters, count))
            if args.fit:
                rows[-1] |= fitted(sim, args.clusters, count, args.chains, args.draws)
            print(json.dumps(rows[-1]), flush=True)
    summary = {"summary": True}
    for count in counts:
        mine = [r for r in rows if r["restarts"] == count]
        summary[str(count)] = {
            "merged_or_missed": sum(r["accuracy"] < 0.85 for r in mine),
            "mean_accuracy": round(float(np.mean([r["accuracy"] for r in mine])), 3),
            "mean_seconds": round(float(np.mean([r["seconds"] for r in mine])), 2),
        }
        if args.fit:
            for key in ("cover", "sqrt_pehe", "fit_seconds"):
                summary[str(count)][f"mean_{key}"] = round(
                    float(np.mean([r[key] for r in mine])), 3
                )
            summary[str(count)]["r_hat_over_1.05"] = sum(r["max_r_hat"] > 1.05 for r in mine)
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
