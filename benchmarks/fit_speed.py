"""Fit speed of the effect-cluster model: compile time, sampling time, ESS/s of cluster effects.

Prints one JSON object. Same settings every run:

    python benchmarks/fit_speed.py              # n = 2,000 and 10,000; d=16; K=3; NUTS 4x1000; SVI
    python benchmarks/fit_speed.py --sizes 2000 # n = 2,000 only
    python benchmarks/fit_speed.py --quick      # n = 2,000 only, NUTS 2x500 (a smoke run)

Chains run side by side on JAX's CPU devices (one per core, ``chain_method="parallel"``, the
default); at the smallest size the full model is also timed with the chains one after another
(``"sequential"``). NUTS keeps 1,000 draws per chain after the package's default warm-up
(500 iterations, as ``fit`` uses unless told otherwise); ``--warmup`` changes it.

What the model's flexible parts cost: at the smallest size NUTS also fits the same trial with
the Gaussian processes left out (``parts="linear"``: ``n_basis=0``, linear effect deviation) and
with no continuous deviation at all (``parts="clusters"``: ``n_basis=0, deviation="none"``, the
clusters-only mean model); ``parts="full"`` is the default model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings

import arviz as az
import jax
import numpy as np

from imgcate import ConvergenceWarning
from imgcate.config import FitConfig
from imgcate.inference import fit
from imgcate.simulate import simulate_trial

#: Fit options of each set of model parts timed at the smallest size.
PARTS = {
    "full": {},
    "linear": {"n_basis": 0, "deviation": "linear"},
    "clusters": {"n_basis": 0, "deviation": "none"},
}


def timed_fit(sim, **options):
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        result = fit(sim.trial, sim.embeddings, n_clusters=3, seed=0, **options)
    return result, time.perf_counter() - start


def bench_nuts(
    n_units: int,
    chains: int,
    draws: int,
    warmup: int,
    parts: str = "full",
    chain_method: str = "parallel",
) -> dict:
    sim = simulate_trial(0, n_units, 3, n_features=16)
    options = {**PARTS[parts], "chain_method": chain_method}
    _, compile_s = timed_fit(sim, num_warmup=2, num_samples=2, num_chains=1, **options)
    result, total_s = timed_fit(
        sim, num_warmup=warmup, num_samples=draws, num_chains=chains, **options
    )
    sampling_s = max(total_s - compile_s, 1e-9)
    ess = az.ess(result.idata, var_names=["tau_cluster"])["tau_cluster"].values
    table = result.cluster_effects()
    return {
        "method": "nuts",
        "parts": parts,
        "chain_method": chain_method,
        "n_units": n_units,
        "chains": chains,
        "warmup": warmup,
        "draws": draws,
        "compile_s": round(compile_s, 2),
        "sampling_s": round(sampling_s, 2),
        "total_s": round(total_s, 2),
        "min_ess_tau_cluster": round(float(ess.min()), 1),
        "ess_per_s_tau_cluster": round(float(ess.min()) / sampling_s, 2),
        "divergences": int(result.idata.sample_stats["diverging"].values.sum()),
        "tau_abs_error_max": round(
            float(np.abs(table["tau_mean"] - sim.truth.tau_cluster).max()), 3
        ),
    }


def bench_svi(n_units: int, steps: int) -> dict:
    sim = simulate_trial(0, n_units, 3, n_features=16)
    result, total_s = timed_fit(
        sim, method="svi", svi_steps=steps, svi_batch_size=1000, svi_draws=1000
    )
    table = result.cluster_effects()
    return {
        "method": "svi",
        "n_units": n_units,
        "steps": steps,
        "batch_size": 1000,
        "total_s": round(total_s, 2),
        "tau_abs_error_max": round(
            float(np.abs(table["tau_mean"] - sim.truth.tau_cluster).max()), 3
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n=2,000 only, NUTS 2 x 500")
    parser.add_argument(
        "--warmup",
        type=int,
        default=FitConfig().num_warmup,
        help="NUTS warm-up iterations per chain (default: fit's default)",
    )
    parser.add_argument(
        "--sizes", type=int, nargs="+", help="numbers of units (default 2000 10000)"
    )
    args = parser.parse_args()
    sizes = args.sizes or ([2000] if args.quick else [2000, 10000])
    chains, draws = (2, 500) if args.quick else (4, 1000)
    results = []
    for n in sizes:
        for parts in PARTS if n == min(sizes) else ["full"]:
            results.append(bench_nuts(n, chains, draws, args.warmup, parts))
        if n == min(sizes):  # the chains one after another: what the devices add
            results.append(bench_nuts(n, chains, draws, args.warmup, "full", "sequential"))
        results.append(bench_svi(n, 3000))
    print(
        json.dumps(
            {
                "benchmark": "fit_speed",
                "d": 16,
                "K": 3,
                "machine": {
                    "cpus": os.cpu_count(),
                    "cpu_devices": len(jax.devices("cpu")),
                    "platform": platform.platform(),
                    "jax": jax.__version__,
                    "backend": jax.default_backend(),
                },
                "target": (
                    "NUTS n=2,000 (4 chains x 1,000 draws) in <= 60 s total, on the way to 30 s"
                ),
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
