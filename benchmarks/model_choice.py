"""How often compare_clusters claims heterogeneity that is not there, and finds it when it is.

For each scenario of ``imgcate.simulate.simulate_scenario`` and replication: run
``compare_clusters`` (the constant-effect model K = 0, the smooth model K = 1 and K = 2..k_max
clusters; PSIS-LOO, or spatial K-fold where Pareto k says so, as a user gets it) and record
the table, the selected model, and how well the selected model's 90 % unit-CATE intervals cover
the truth. Prints one JSON line per replication and one summary line per scenario
(``"summary": true``):

- ``heterogeneity_rate``: share of replications where a model other than the constant one was
  selected (the false-heterogeneity rate when the scenario's effect is constant), with its
  Monte Carlo standard error;
- ``selected``: how often each model was selected (``true_k_rate`` for the cluster scenarios,
  whose truth is K = 2);
- ``rules``: the heterogeneity rate (or true-K rate) of other rules, recomputed from the same
  tables: ``"gain/z"`` selects the first model with ``elpd_diff <= max(gain, z * dse)`` in
  ``imgcate.selection.preference_order`` (constant, 2, 3, ... clusters, smooth), as
  ``compare_clusters`` does. Rows record their ``rule`` and ``order``; rows without them ran
  the rule of 2026-12-02 (4/2, smallest K first), and ``rule_reproduced`` checks each row
  against its own.

Same settings every run:

    python benchmarks/model_choice.py                  # every scenario, 20 replications
    python benchmarks/model_choice.py --quick          # 2 replications, short chains
    python benchmarks/model_choice.py --scenario constant/sine/heavy --reps 5 --jobs 2
    python benchmarks/model_choice.py --criterion loo --draws 300   # no K-fold refits

``--criterion loo`` keeps PSIS-LOO where ``auto`` would refit on spatial folds (five times
the fits); each row's ``pareto_problem`` says whether ``auto`` would have, and
``pareto_problem_share`` how often.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
import warnings

import numpy as np
from calibration import LIKELIHOOD, PROB, covers, parse, replication_parser, run_replications

from imgcate.config import FitConfig

#: Constant effects with every baseline and every noise kind, then the alternatives.
SCENARIOS = (
    "constant/linear/gaussian",
    "constant/quadratic/gaussian",
    "constant/interaction/skewed",
    "constant/sine/heavy",
    "constant/linear/zero_inflated",
    "clusters/linear/gaussian",
    "tanh/linear/gaussian",
)
#: The true model of the scenarios with clusters (CLUSTER_TAU has two effects).
TRUE_K = {"clusters": 2}
#: Rules recomputed from the tables: (min_elpd_gain, se_multiple); (4, 1) is the default
#: (``imgcate.selection``; it was (4, 2) until 2026-12-03, and rows without a "rule" ran it).
RULES = (
    (2.0, 1.0),
    (2.0, 2.0),
    (3.0, 1.0),
    (4.0, 1.0),
    (4.0, 1.5),
    (4.0, 2.0),
    (4.0, 3.0),
    (6.0, 2.0),
    (8.0, 2.0),
)
#: The rule of rows that do not name theirs.
EARLIER_RULE = (4.0, 2.0)


def select(table: list[dict], gain: float, z: float, order: str = "smooth_last") -> int:
    """The first model with ``elpd_diff <= max(gain, z * dse)``, in ``compare_clusters``'
    order (``"smooth_last"``) or by number of clusters (``"smallest_k"``, before 2026-12-03)."""
    from imgcate.selection import preference_order

    ok = {row["K"] for row in table if row["elpd_diff"] <= max(gain, z * row["dse"])}
    ks = [row["K"] for row in table]
    return next(
        k for k in (preference_order(ks) if order == "smooth_last" else sorted(ks)) if k in ok
    )


def one_comparison(
    scenario: str, seed: int, n_units: int, k_max: int, chains: int, draws: int, criterion: str
) -> dict:
    """Run compare_clusters on one replication (in a worker process) and measure it."""
    import imgcate
    from imgcate.selection import MIN_ELPD_GAIN, SE_MULTIPLE
    from imgcate.simulate import simulate_scenario

    args = parse(scenario)
    sim = simulate_scenario(seed, n_units=n_units, **args)
    likelihood = LIKELIHOOD.get(args["noise"], "gaussian")
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        comparison = imgcate.compare_clusters(
            sim.trial,
            sim.embeddings,
            k_max=k_max,
            criterion=criterion,
            likelihood=likelihood,
            seed=seed,
            num_chains=chains,
            num_warmup=draws,
            num_samples=draws,
            progress=False,
        )
    seconds = time.perf_counter() - start
    lo, hi = f"{50 * (1 - PROB):g}%", f"{100 - 50 * (1 - PROB):g}%"
    cover_by_k = {}  # every model's unit coverage: any rule's can be recomputed
    for k, one_fit in comparison.fits.items():
        units = one_fit.unit_effects(PROB)
        cover_by_k[str(k)] = covers(units[f"tau_{lo}"], units[f"tau_{hi}"], sim.truth.cate)
    units = comparison.fits[comparison.best_k].unit_effects(PROB)
    columns = ["elpd", "se", "elpd_diff", "dse", "n_bad_pareto_k", "stacking_weight"]
    table = comparison.table.reset_index()[["K", *columns]]
    return {
        "scenario": scenario,
        "seed": seed,
        "likelihood": likelihood,
        "seconds": round(seconds, 1),
        "method": comparison.method,
        "pareto_problem": "ParetoKWarning" in {type(w.message).__name__ for w in caught},
        "best_k": comparison.best_k,
        "rule": [MIN_ELPD_GAIN, SE_MULTIPLE],
        "order": "smooth_last",
        "cover_in": covers(units[f"tau_{lo}"], units[f"tau_{hi}"], sim.truth.cate),
        "sqrt_pehe": float(np.sqrt(((units["tau_mean"] - sim.truth.cate) ** 2).mean())),
        "cover_by_k": cover_by_k,
        "warnings": sorted({type(w.message).__name__ for w in caught}),
        "table": [json_row(row) for row in table.to_dict("records")],
    }


def json_row(row: dict) -> dict:
    """A table row with plain ints and floats (not rounded: the rules are recomputed from
    them, and rounding could turn a tie)."""
    counts = ("K", "n_bad_pareto_k")
    return {key: int(v) if key in counts else float(v) for key, v in row.items()}


def summarize(rows: list[dict]) -> dict:
    """Rates over replications, with Monte Carlo standard errors."""
    scenario = rows[0]["scenario"]
    effect = scenario.split("/")[0]
    n = len(rows)

    def rate(flags) -> tuple[float, float]:
        p = float(np.mean(flags))
        return round(p, 4), round(float(np.sqrt(p * (1 - p) / n)), 4)

    def upper(flags) -> float:  # one-sided 95 % Clopper-Pearson bound (the MCSE is 0 at 0/n)
        from scipy.stats import beta

        hits = int(np.sum(flags))
        return 1.0 if hits == n else round(float(beta.ppf(0.95, hits + 1, n - hits)), 4)

    picks = [r["best_k"] for r in rows]
    out = {"scenario": scenario, "summary": True, "reps": n}
    out["heterogeneity_rate"], out["heterogeneity_rate_mcse"] = rate([k > 0 for k in picks])
    out["heterogeneity_rate_upper95"] = upper([k > 0 for k in picks])
    # a false-heterogeneity rate where the effect is constant, else the power to see it
    out["heterogeneity_is"] = "false" if effect == "constant" else "true"
    out["rule_reproduced"] = all(
        select(r["table"], *r.get("rule", EARLIER_RULE), r.get("order", "smallest_k"))
        == r["best_k"]
        for r in rows
    )
    out["selected"] = {str(k): picks.count(k) for k in sorted(set(picks))}
    if effect in TRUE_K:
        out["true_k_rate"], out["true_k_rate_mcse"] = rate([k == TRUE_K[effect] for k in picks])
    out["cover_in"] = round(float(np.mean([r["cover_in"] for r in rows])), 4)
    out["sqrt_pehe"] = round(float(np.mean([r["sqrt_pehe"] for r in rows])), 4)
    out["kfold_share"] = round(float(np.mean([r["method"] != "psis-loo" for r in rows])), 4)
    out["pareto_problem_share"] = round(float(np.mean([r["pareto_problem"] for r in rows])), 4)
    out["seconds"] = round(float(np.mean([r["seconds"] for r in rows])), 1)
    out["rules"] = {}
    for gain, z in RULES:
        chosen = [select(r["table"], gain, z) for r in rows]
        hit = [k == TRUE_K[effect] for k in chosen] if effect in TRUE_K else [k > 0 for k in chosen]
        out["rules"][f"{gain:g}/{z:g}"] = rate(hit)[0]
    out["rules_measure"] = "true_k_rate" if effect in TRUE_K else "heterogeneity_rate"
    return out


def main(argv: list[str] | None = None) -> None:
    parser = replication_parser(__doc__.splitlines()[0])
    parser.add_argument("--k-max", type=int, default=3)
    parser.add_argument(
        "--criterion",
        choices=["auto", "loo", "kfold"],
        default="auto",
        help="compare_clusters' criterion; 'loo' never refits on folds (cheaper); the rows "
        "still count the units with bad Pareto k, so how often 'auto' would refit is known",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.reps, args.draws = 2, 200
    scenarios = args.scenario or list(SCENARIOS)
    for scenario in scenarios:
        parse(scenario)
    header = {"benchmark": "model_choice", "python": platform.python_version()}
    header |= {"cpus": os.cpu_count(), "units": args.units, "k_max": args.k_max}
    header |= {"chains": args.chains, "draws": args.draws, "reps": args.reps}
    header |= {"first_seed": args.first_seed, "prob": PROB, "criterion": args.criterion}
    header["baseline_clusters"] = FitConfig().baseline_clusters  # the model compared (default)
    print(json.dumps(header), flush=True)
    jobs = [
        (s, seed, args.units, args.k_max, args.chains, args.draws, args.criterion)
        for s in scenarios
        for seed in range(args.first_seed, args.first_seed + args.reps)
    ]
    rows = run_replications(one_comparison, jobs, args.jobs, scenarios)
    for scenario in scenarios:
        print(json.dumps(summarize(rows[scenario])), flush=True)


if __name__ == "__main__":
    sys.exit(main())
