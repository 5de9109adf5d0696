"""What the gradient costs: the effect model's potential and its gradient, as NUTS calls them.

A NUTS fit's time is its leapfrog steps times the cost of one step: one evaluation of the
potential (the negative log joint in the unconstrained space) and its gradient, plus NUTS's
tree bookkeeping, which this leaves out. The number of steps is set by the posterior's shape
(``mean_leapfrog_steps`` in ``fit_speed.py``), the evaluation's cost by the model's
arithmetic. This prints that cost, as JSON, for ``fit_speed.py``'s trial
(``simulate_trial(seed, n, 3, n_features=16)``) and each model part of ``fit_speed.py``
(``full``: ``fit``'s defaults; ``linear``: without the Gaussian processes; ``clusters``: the
clusters alone), at points where NUTS starts (the two best ends of ``fit``'s MAP searches, run
here with the seed's own key):

- ``ms_pair_alone``: milliseconds per evaluation for a pair of chains (``fit`` advances chains
  in pairs, one ``jax.vmap``-ed call), in a compiled loop of ``--steps`` evaluations, the
  other device idle (XLA's CPU devices share one pool of threads, so the one pair may use
  every core); the median of ``--repeat`` loops, taken in turn with those below;
- ``ms_pair_two_devices``: the same with the same loop on the other device at the same time
  (as ``fit``'s four chains run on two cores), until both have finished;
- ``mflops``, ``mbytes``: XLA's cost analysis of one evaluation of the pair;
- ``basis_mb``: the Gaussian-process basis (unit, basis) in float32, which each evaluation
  reads twice (its product and its transpose's); against ``l2_cache_mb_per_core``.

    python benchmarks/gradient_cost.py                 # 2,000 units, every part
    python benchmarks/gradient_cost.py --units 500 2000 10000 --parts full
    python benchmarks/gradient_cost.py --quick         # smoke run (500 units, the full model)

The machine's speed drifts by a tenth or more over minutes: compare parts within one run, and
settings of XLA in runs that alternate (``machine["xla_flags"]`` records ``XLA_FLAGS`` as the
run saw it, with the device count imgcate adds on import). The script ranks model parts and
settings; it does not predict a fit's time: inside NUTS's compiled loop an evaluation has not
cost what it costs here (docs/benchmarks.md). ``ms_pair_two_devices`` is null with one device.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from fit_speed import PARTS  # the model parts fit_speed.py times (the fit's options)
from jax.flatten_util import ravel_pytree

from imgcate.chains import map_searches, model_args, potential
from imgcate.config import FitConfig, Standardizer, model_data
from imgcate.simulate import simulate_trial

#: The parts timed unless ``--parts`` names others.
DEFAULT_PARTS = ["full", "linear", "clusters"]


def l2_cache_mb() -> float | None:
    """The L2 cache of one core, in MB, as Linux reports it (None where it does not)."""
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            if (index / "level").read_text().strip() == "2":
                size = (index / "size").read_text().strip()
                return int(size.rstrip("K")) / 1024 if size.endswith("K") else None
        except (OSError, ValueError):
            continue
    return None


def pair_point(sim, config: FitConfig):
    """The model's data, its potential on a flat vector, and the two best MAP ends (the
    points two of ``fit``'s chains start from) as a (2, parameter) array."""
    trial = sim.trial
    embedding = sim.embeddings.unit_rows(trial.image_keys)
    std = Standardizer.fitted(
        trial.outcome_array, trial.covariate_matrix, embedding, config, trial.outcome
    )
    data = model_data(trial, embedding, std, config)
    _, free, losses = map_searches(data, config, jax.random.PRNGKey(config.seed))
    best = np.argsort(np.asarray(losses))[:2]
    flats = [ravel_pytree({k: v[i] for k, v in free.items()}) for i in best]
    unravel = flats[0][1]
    energy = potential(model_args(data))
    return data, (lambda x: energy(unravel(x))), jnp.stack([f for f, _ in flats])


def loop_ms(loop, x, steps: int, other=None) -> float:
    """Ms per evaluation of one run of ``loop(x)`` (``steps`` evaluations); with ``other`` (a
    second device's input) the same loop runs there at the same time, and the run's time is
    until both have finished."""
    failed: list[Exception] = []

    def beside() -> None:
        try:
            jax.block_until_ready(loop(other))
        except Exception as err:  # re-raised in the main thread below
            failed.append(err)

    threads = [] if other is None else [threading.Thread(target=beside)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    jax.block_until_ready(loop(x))
    for t in threads:
        t.join()
    if failed:
        raise failed[0]
    return (time.perf_counter() - start) / steps * 1e3


def pair_times(loop, xs: list, repeat: int, steps: int) -> tuple[float, float | None]:
    """Median ms per evaluation with the other device idle and with it running the same loop
    (None with one device), over ``repeat`` runs of each, the two kinds taken in turn so
    that both see the same drift of the machine's speed."""
    alone, beside = [], []
    for _ in range(repeat):
        alone.append(loop_ms(loop, xs[0], steps))
        if len(xs) > 1:
            beside.append(loop_ms(loop, xs[0], steps, other=xs[1]))
    return statistics.median(alone), statistics.median(beside) if beside else None


def part_cost(n_units: int, part: str, seed: int, steps: int, repeat: int) -> dict:
    """The cost of one evaluation of the potential and its gradient, for a pair of chains."""
    config = FitConfig(n_clusters=3, seed=seed, **PARTS[part]).validate()
    sim = simulate_trial(seed, n_units, 3, n_features=16)
    data, fn, x = pair_point(sim, config)
    pair = jax.vmap(jax.value_and_grad(fn))

    @jax.jit
    def loop(z):  # steps evaluations, each from the last one's gradient (no dead code)
        return jax.lax.fori_loop(0, steps, lambda _, c: c - 1e-7 * pair(c)[1], z)

    devices = jax.devices()
    xs = [jax.device_put(x, d) for d in devices[:2]]
    for z in xs:
        jax.block_until_ready(loop(z))  # compiled for each device
    alone, beside = pair_times(loop, xs, repeat, steps)
    cost = jax.jit(pair).lower(x).compile().cost_analysis() or {}
    cost = (cost[0] if cost else {}) if isinstance(cost, list) else cost
    basis = data.inputs.basis
    return {
        "n_units": n_units,
        "part": part,
        "seed": seed,
        "parameters": int(x.shape[1]),
        "ms_pair_alone": round(alone, 4),
        "ms_pair_two_devices": None if beside is None else round(beside, 4),
        "steps": steps,
        "repeat": repeat,
        "mflops": round(float(cost.get("flops", float("nan"))) / 1e6, 3),
        "mbytes": round(float(cost.get("bytes accessed", float("nan"))) / 1e6, 3),
        "basis_mb": round(0 if basis is None else basis.size * 4 / 1e6, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--units", type=int, nargs="+", default=[2000], help="trial sizes (default 2000; >= 50)"
    )
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=list(PARTS),
        default=DEFAULT_PARTS,
        help="model parts of fit_speed.py: full (fit's defaults), linear (no Gaussian "
        "processes), clusters (the clusters alone), ...; default full linear clusters",
    )
    parser.add_argument("--seed", type=int, default=0, help="the trial's and the fit's seed")
    parser.add_argument("--steps", type=int, default=500, help="evaluations per timed loop")
    parser.add_argument("--repeat", type=int, default=7, help="timed loops (median)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 500 units, the full model, 3 loops of 100 (--units, --parts, --steps "
        "and --repeat ignored)",
    )
    args = parser.parse_args()
    if args.quick:
        args.units, args.parts, args.repeat, args.steps = [500], ["full"], 3, 100
    if min(args.units) < 50:
        parser.error(f"--units {min(args.units)}: a trial needs at least 50 units")
    for name in ("steps", "repeat"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} {getattr(args, name)}: must be at least 1")
    if args.seed < 0:
        parser.error(f"--seed {args.seed}: must be 0 or more")
    rows = [
        part_cost(n, part, args.seed, args.steps, args.repeat)
        for n in args.units
        for part in args.parts
    ]
    print(
        json.dumps(
            {
                "benchmark": "gradient_cost",
                "machine": {
                    "cpu": platform.processor() or platform.machine(),
                    "devices": len(jax.devices()),
                    "l2_cache_mb_per_core": l2_cache_mb(),
                    "jax": jax.__version__,
                    "xla_flags": os.environ.get("XLA_FLAGS", ""),
                },
                "rows": rows,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
