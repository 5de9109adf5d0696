"""Calibration of the effect model on trials it was not built from (imgcate.simulate.scenarios).

For each scenario and replication: fit, then check the 90 % intervals of the unit CATE in
sample and for 400 new units drawn from the same population, the ATE interval, sqrt(PEHE),
the worst R-hat of the unit CATEs, and (K >= 2) how much the clusters explain and how
image-driven they are. Prints one JSON line per fit and one summary line per scenario
(``"summary": true``), with the Monte Carlo standard error of each coverage. Same settings
every run:

    python benchmarks/calibration.py                 # every scenario, 20 replications each
    python benchmarks/calibration.py --quick         # every scenario, 2 replications, short chains
    python benchmarks/calibration.py --scenario tanh/linear/gaussian --reps 5

Each fit's row also says whether an oracle's ATE interval covers on the same trial
(``ate_oracle_covered``: the difference in means of ``outcome - mu0``, which only the noise
moves): over 10 or 20 seeds the ATE coverage is noisy, and the oracle says how lucky the
seeds' noise was. ``--first-seed`` runs further seeds of a scenario.

A scenario is EFFECT/BASELINE/NOISE[/dD] (``d16``: 16 features instead of 4). On a machine
with more cores, ``--jobs N`` runs N fits at once (a fresh process for each fit).

``--form`` compares forms of the model's flexible parts on the same trials (issue 17):
``rff`` (the default model: Gaussian processes f in the baseline and g in the effect; the name
is from when their basis was random Fourier features),
``linear`` (no f or g: baseline and effect deviation linear in the embedding),
``prognostic`` (``linear`` plus a cross-fitted prognostic score as a covariate, as Bayesian
causal forests do: gradient boosting of the outcome on embedding and covariates, trained on the
control units outside each of 5 folds) and ``rff+prognostic``. The prognostic forms suit the
Gaussian scenarios (a new unit's covariates, the score among them, are set to the trial's means).
``own-baseline`` is ``baseline_clusters="own"`` (the baseline's cluster term gets memberships of
its own; the default since 2026-12-05, so now the same model as ``rff``) and
``shared-baseline`` is ``baseline_clusters="shared"`` (the baseline's cluster term on the effect
clusters' memberships, the default before).
``svi``, ``svi-full`` and ``svi-lowrank`` fit by SVI (``method="svi"``; every unit each step up
to 10,000 units) with its default guide, ``svi_guide="full"`` and ``svi_guide="lowrank"``
(SVI's intervals against NUTS's on the same trials; ``--chains`` and ``--draws`` do not apply,
and SVI's Gaussian processes have 48 basis functions where NUTS's have 160).
``image-noise`` is ``noise_scale="image"``; ``restarts-8`` and ``restarts-32`` set the MAP
searches before NUTS (``init_restarts``; by default 8 up to two clusters, 32 from three).
``--select`` also fits the constant-effect model of ``compare_clusters(k_max=K)`` on each trial
and measures the model that compare_clusters' rule selects between it and the K-cluster fit
(PSIS-LOO; keys ending ``_selected``, ``heterogeneity_claimed``): the intervals a user reads
who follows the rule rather than fixing K; and the two posteriors mixed by their stacking
weights (keys ending ``_averaged``; docs/model.md, "Calibration").
``--sources`` adds, per fit, where the unit intervals' width comes from (keys starting
``sd_``): the posterior sd of each unit's CATE (averaged over units), of the ATE, and of the
part each effect term adds (the clusters, the linear deviation, the smooth deviation: the
CATE less the CATE with that term set to zero), with the posterior medians of the terms'
scales beside their prior medians (``median_``, ``prior_median_``).
``--prior NAME=SCALE`` (repeatable) refits with a prior scale of ``imgcate.model.PRIOR`` changed,
e.g. ``--prior deviation_amp=0.15 --prior deviation_scale=0.25``; ``--target-accept P`` sets
NUTS's target acceptance probability (``FitConfig.target_accept``, 0.85 by default).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor

import numpy as np

SCENARIOS = (
    "constant/linear/gaussian",
    "constant/quadratic/gaussian",
    "constant/interaction/skewed",
    "constant/sine/heavy",
    "linear/linear/gaussian",
    "tanh/linear/gaussian",
    "tanh/quadratic/gaussian/d16",
    "quadratic/linear/skewed",
    "clusters/linear/gaussian",
    "clusters/sine/gaussian/d16",
    "constant/linear/zero_inflated",
    "clusters/linear/zero_inflated",
    "clusters/linear/zero_lognormal",
)
#: Likelihood used for each noise: the hurdle for a mass of exact zeros, else Gaussian.
LIKELIHOOD = {"zero_inflated": "hurdle", "zero_lognormal": "hurdle"}
PROB = 0.9
N_NEW = 400
#: Fit options of each form of the flexible parts (``--form``); "prognostic" adds the score.
FORMS = {
    "rff": {},
    "linear": {"n_basis": 0, "deviation": "linear"},
    "prognostic": {"n_basis": 0, "deviation": "linear"},
    "rff+prognostic": {},
    "own-baseline": {"baseline_clusters": "own"},
    "shared-baseline": {"baseline_clusters": "shared"},
    "image-noise": {"noise_scale": "image"},
    "restarts-32": {"init_restarts": 32},  # the default from three clusters (8 below)
    "restarts-8": {"init_restarts": 8},
    "svi": {"method": "svi"},
    "svi-full": {"method": "svi", "svi_guide": "full"},
    "svi-lowrank": {"method": "svi", "svi_guide": "lowrank"},
}


def parse(scenario: str) -> dict:
    """EFFECT/BASELINE/NOISE[/dD] as simulate_scenario's arguments."""
    parts = scenario.split("/")
    if len(parts) not in (3, 4):
        raise SystemExit(f"scenario {scenario!r}: write EFFECT/BASELINE/NOISE[/dD]")
    d = int(parts[3][1:]) if len(parts) == 4 else 4
    return {"effect": parts[0], "baseline": parts[1], "noise": parts[2], "n_features": d}


def covers(lo, hi, truth) -> float:
    return float(((lo <= truth) & (truth <= hi)).mean())


def with_prognostic_score(trial, embeddings, seed: int, folds: int = 5):
    """The trial with a cross-fitted prognostic score column ``prognostic`` as a covariate:
    each unit's score comes from gradient boosting of the outcome on (embedding, covariates)
    fitted on the control units outside its fold."""
    from sklearn.ensemble import GradientBoostingRegressor
    from sklearn.model_selection import KFold

    from imgcate.units import read_units

    features = np.column_stack([embeddings.values, trial.covariate_matrix])
    y, control = trial.outcome_array, trial.treatment_array == 0
    score = np.empty(len(y))
    for train, test in KFold(folds, shuffle=True, random_state=seed).split(features):
        keep = train[control[train]]
        model = GradientBoostingRegressor(max_depth=3, n_estimators=200, random_state=seed)
        score[test] = model.fit(features[keep], y[keep]).predict(features[test])
    data = trial.data.assign(prognostic=score)
    covariates = [*trial.covariates, "prognostic"]
    return read_units(data, covariates=covariates, image_id="image_id")


def one_fit(
    scenario: str,
    seed: int,
    n_units: int,
    k: int,
    chains: int,
    draws: int,
    form: str = "rff",
    prior: dict | None = None,
    select: bool = False,
    sources: bool = False,
    target_accept: float | None = None,
) -> dict:
    """Fit one replication and measure it (runs in a worker process); ``prior`` overrides
    entries of :data:`imgcate.model.PRIOR` in this process; ``select`` also fits the
    constant-effect model and measures the one ``compare_clusters``' rule selects;
    ``sources`` adds :func:`width_sources`; ``target_accept`` is NUTS's (the fit's default
    where None)."""
    import imgcate
    from imgcate.diagnostics import chain_restarts
    from imgcate.model import PRIOR
    from imgcate.simulate import simulate_scenario

    PRIOR.update(prior or {})
    args = parse(scenario)
    sim = simulate_scenario(seed, n_units=n_units, **args)
    likelihood = LIKELIHOOD.get(args["noise"], "gaussian")
    trial = sim.trial
    start = time.perf_counter()
    if form.endswith("prognostic"):
        trial = with_prognostic_score(trial, sim.embeddings, seed)
    nuts = {"num_chains": chains, "num_warmup": draws, "num_samples": draws}
    options = {
        "likelihood": likelihood,
        "seed": seed,
        **(nuts if FORMS[form].get("method", "nuts") == "nuts" else {}),
        **FORMS[form],
        **({} if target_accept is None else {"target_accept": target_accept}),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = imgcate.fit(trial, sim.embeddings, n_clusters=k, **options)
    seconds = time.perf_counter() - start
    new = sim.truth.new_embeddings(N_NEW, 10_000 + seed)
    measured = interval_measures(result, sim, new)
    diag = result.diagnostics()
    row = {
        "scenario": scenario,
        "form": form,
        "seed": seed,
        "likelihood": likelihood,
        "seconds": round(seconds, 1),
        **measured,
        "ate_oracle_covered": oracle_ate_covered(sim),
        "r_hat_unit": r_hat(diag["r_hat"].get("tau_unit[worst]", np.nan)),
        "r_hat_max": r_hat(diag["r_hat"].max()),
        "divergences": divergences(result),
        **chain_restarts(result.idata),
    }
    if result.config.method == "svi":
        row["guide"] = result.config.svi_guide
    if k > 1:
        het = result.heterogeneity(PROB)
        row["effect_share_clusters"] = float(het.loc["effect_share_clusters", "mean"])
        row["membership_dependence"] = float(het.loc["membership_dependence", "mean"])
    if select:
        row.update(selected_measures(result, measured, trial, sim, new, k, options))
    if sources:
        row.update(width_sources(result))
    return row


def prior_overrides(items: list[str]) -> dict[str, float]:
    """``--prior NAME=VALUE`` options as entries of :data:`imgcate.model.PRIOR` to override
    (also read by ``landsat_coverage.py``); an unknown name or a missing value stops the run."""
    from imgcate.model import PRIOR

    prior = {}
    for item in items:
        name, _, value = item.partition("=")
        if name not in PRIOR or not value:
            raise SystemExit(f"--prior {item!r}: write NAME=VALUE with NAME one of {list(PRIOR)}")
        prior[name] = float(value)
    return prior


def r_hat(value: float) -> float | None:
    """An R-hat for the JSON rows; None where it is undefined (SVI's one set of draws) or
    not computed (no unit draws kept above 20 million units x draws)."""
    return None if np.isnan(value) else float(value)


def divergences(result) -> int | None:
    """NUTS's divergent transitions; None for SVI."""
    stats = result.idata.get("sample_stats")
    if stats is None or "diverging" not in stats:
        return None
    return int(stats["diverging"].values.sum())


#: The effect's terms (``--sources``): the sites that scale each, one of them set to zero.
TERMS = {"clusters": "tau_step", "linear": "deviation_scale", "smooth": "deviation_amp"}


def width_sources(result) -> dict:
    """Where the unit CATE's posterior spread comes from (``--sources``): the posterior sd of
    each unit's CATE on the outcome scale, averaged over units (``sd_unit``), of the ATE
    (``sd_ate``) and of what each effect term adds (``sd_clusters``, ``sd_linear``,
    ``sd_smooth``: the CATE less the CATE with that term's scale set to zero, draw by draw),
    and each term's scale: posterior and prior median (the last part's sites)."""
    import jax

    from imgcate.model import PRIOR, unit_quantities
    from imgcate.posterior import fit_spec, site_draws, trial_inputs

    spec, params, inputs = fit_spec(result), site_draws(result), trial_inputs(result)
    scale = result.standardizer.outcome_sd
    cate = jax.jit(jax.vmap(lambda p: unit_quantities(p, inputs, spec)["cate"] * scale))
    full = np.asarray(cate(params))
    out = {
        "sd_unit": float(full.std(0).mean()),
        "sd_ate": float(full.mean(1).std()),
    }
    prior_scale = {
        "clusters": PRIOR["tau"],
        "linear": PRIOR["deviation_scale"],
        "smooth": PRIOR["deviation_amp"],
    }
    for term, site in TERMS.items():
        if site not in params:
            continue
        without = np.asarray(cate({**params, site: np.zeros_like(params[site])}))
        out[f"sd_{term}"] = float((full - without).std(0).mean())
        out[f"median_{site}"] = float(np.median(params[site]))
        out[f"prior_median_{site}"] = float(prior_scale[term] * 0.6745)  # half-normal
    return out


def interval_measures(result, sim, new) -> dict:
    """A fit's 90 % intervals against the truth: unit CATE in sample and for the new units
    ``new``, the ATE, sqrt(PEHE) and the mean interval width."""
    lo_name, hi_name = f"{50 * (1 - PROB):g}%", f"{100 - 50 * (1 - PROB):g}%"
    units = result.unit_effects(PROB)
    cate = sim.truth.cate
    predicted = result.predict(new).to_frame(PROB)
    ate = result.ate(PROB).loc["model_implied"]
    return {
        "cover_in": covers(units[f"tau_{lo_name}"], units[f"tau_{hi_name}"], cate),
        "cover_new": covers(
            predicted[f"tau_{lo_name}"], predicted[f"tau_{hi_name}"], sim.truth.cate_of(new)
        ),
        "ate_covered": bool(ate[lo_name] <= cate.mean() <= ate[hi_name]),
        "ate_error": float(ate["estimate"] - cate.mean()),
        "sqrt_pehe": float(np.sqrt(((units["tau_mean"] - cate) ** 2).mean())),
        "interval_width": float((units[f"tau_{hi_name}"] - units[f"tau_{lo_name}"]).mean()),
    }


def selected_measures(result, measured_k: dict, trial, sim, new, k: int, options: dict) -> dict:
    """``--select``: fit the constant-effect model of ``compare_clusters(k_max=k)`` (K = 0:
    one effect, k clusters shaping the baseline only) on the same trial, compare it with the
    k-cluster fit ``result`` (whose :func:`interval_measures` are ``measured_k``) by
    PSIS-LOO, apply compare_clusters' rule (the constant model unless its elpd is clearly
    worse: ``imgcate.selection.rule_margin``) and measure the
    selected model's intervals (keys ending ``_selected``)."""
    import arviz as az

    import imgcate
    from imgcate.selection import (
        MIN_ELPD_GAIN,
        SE_MULTIPLE,
        model_options,
        preference_order,
        rule_margin,
    )

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        null = imgcate.fit(trial, sim.embeddings, **{**options, **model_options(0, k)})
        loos = {0: null.loo(), k: result.loo()}
        table = az.compare({str(m): v for m, v in loos.items()}, ic="loo", scale="log")
    table.index = table.index.astype(int)
    ok = table["elpd_diff"] <= rule_margin(table, MIN_ELPD_GAIN, SE_MULTIPLE)
    chosen = next(m for m in preference_order(table.index) if ok[m])
    measured = interval_measures(null, sim, new) if chosen == 0 else measured_k
    threshold = float(loos[0].good_k)
    weight = float(table.loc[k, "weight"])  # the K-cluster model's stacking weight
    return {
        "selected": chosen,
        "heterogeneity_claimed": chosen != 0,
        "elpd_null_minus_k": round(float(loos[0].elpd_loo - loos[k].elpd_loo), 2),
        "dse": round(float(table["dse"].max()), 2),
        "n_bad_pareto_k": int(
            max((np.asarray(v.pareto_k.values) > threshold).sum() for v in loos.values())
        ),
        **{f"{key}_selected": value for key, value in measured.items()},
        "stacking_weight_k": round(weight, 4),
        **{
            f"{key}_averaged": value
            for key, value in averaged_measures(null, result, weight, sim, new).items()
        },
    }


def averaged_measures(null, result, weight: float, sim, new) -> dict:
    """The 90 % intervals of the two models' posteriors mixed with the K-cluster model's
    stacking ``weight`` (Bayesian stacking, Yao et al. 2018): unit CATE in sample and for the
    new units, the ATE, and the mean interval width."""
    units = [fit._draws("tau_unit") for fit in (null, result)]
    newer = [fit.predict(new).cate for fit in (null, result)]
    ates = [fit._draws("ate")[:, None] for fit in (null, result)]
    lo, hi = mixture_interval(*units, weight)
    lo_new, hi_new = mixture_interval(*newer, weight)
    lo_ate, hi_ate = mixture_interval(*ates, weight)
    return {
        "cover_in": covers(lo, hi, sim.truth.cate),
        "cover_new": covers(lo_new, hi_new, sim.truth.cate_of(new)),
        "ate_covered": bool(lo_ate[0] <= sim.truth.cate.mean() <= hi_ate[0]),
        "interval_width": float((hi - lo).mean()),
    }


def mixture_interval(a: np.ndarray, b: np.ndarray, weight_b: float) -> tuple:
    """Equal-tailed PROB interval of each column of the mixture ``(1 - weight_b) a + weight_b
    b`` of two sets of draws (draw, column): the inverse of the mixture's CDF."""
    values = np.concatenate([a, b])
    mass = np.concatenate(
        [np.full(len(a), (1 - weight_b) / len(a)), np.full(len(b), weight_b / len(b))]
    )
    order = np.argsort(values, axis=0)
    ordered = np.take_along_axis(values, order, axis=0)
    cdf = np.cumsum(mass[order], axis=0)
    columns = np.arange(values.shape[1])
    bounds = []
    for level in ((1 - PROB) / 2, 1 - (1 - PROB) / 2):
        at = np.minimum((cdf < level - 1e-12).sum(axis=0), len(values) - 1)
        bounds.append(ordered[at, columns])
    return tuple(bounds)


def oracle_ate_covered(sim) -> bool:
    """Whether the 90 % interval of an oracle who knows every unit's untreated mean covers
    the ATE: the difference in means of ``outcome - mu0`` by arm, with its Neyman standard
    error. It sees only the noise, so over replications it covers about 90 %; on a given set
    of seeds it says how lucky the noise was (e.g. 5 of the first 10 heavy-tailed trials
    have noise that moves the ATE more than 1.645 standard errors)."""
    from scipy.stats import norm

    y, t = sim.trial.outcome_array, sim.trial.treatment_array
    resid = y - sim.truth.mu0  # mu0: the untreated mean, so resid has mean t * cate
    a, b = resid[t == 1], resid[t == 0]
    est = a.mean() - b.mean()
    se = np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    half = norm.ppf(0.5 + PROB / 2) * se
    return bool(abs(est - sim.truth.cate.mean()) <= half)


def summarize(rows: list[dict]) -> dict:
    """Means over replications; coverages with their Monte Carlo standard errors."""
    out = {
        "scenario": rows[0]["scenario"],
        "form": rows[0].get("form", "rff"),
        "summary": True,
        "reps": len(rows),
    }
    for key in rows[0]:
        values = [r[key] for r in rows if r.get(key) is not None]
        if key in ("scenario", "form", "seed", "likelihood") or not values:
            continue
        if isinstance(values[0], str):  # SVI's guide: which, in how many fits
            out[key] = {v: values.count(v) for v in sorted(set(values))}
            continue
        if isinstance(values[0], list):  # chain restarts: in how many fits
            out[f"fits_with_{key}"] = sum(bool(v) for v in values)
            continue
        mean = float(np.mean(values))
        out[key] = round(mean, 4)
        if key.startswith("cover") or key.startswith("ate_") and "covered" in key:
            out[key + "_mcse"] = round(float(np.std(values, ddof=1) / np.sqrt(len(values))), 4)
    return out


def replication_parser(description: str) -> argparse.ArgumentParser:
    """The options every replication benchmark takes (this one and model_choice.py)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--scenario", action="append", help="EFFECT/BASELINE/NOISE[/dD]")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first..first+reps-1")
    parser.add_argument("--units", type=int, default=400)
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--draws", type=int, default=500, help="warm-up and kept draws per chain")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="2 replications, 200 draws")
    return parser


def run_replications(function, jobs: list[tuple], n_jobs: int, scenarios: list[str]) -> dict:
    """``function(*job)`` for every job (one JSON row each, printed as it comes), in ``n_jobs``
    processes; the rows by scenario."""
    rows: dict[str, list[dict]] = {s: [] for s in scenarios}

    def keep(results) -> None:
        for row in results:  # in the jobs' order, each as soon as it and those before are done
            print(json.dumps(row), flush=True)
            rows[row["scenario"]].append(row)

    if n_jobs > 1:
        # a fresh process per replication: one process compiling hundreds of models ran out
        # of memory, and many compilations in one process crashed XLA
        with ProcessPoolExecutor(n_jobs, max_tasks_per_child=1) as pool:
            keep(pool.map(function, *zip(*jobs, strict=True)))
    else:
        keep(function(*job) for job in jobs)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = replication_parser(__doc__.splitlines()[0])
    parser.add_argument("--clusters", type=int, default=2)
    parser.add_argument("--form", choices=list(FORMS), default="rff", help="flexible parts")
    parser.add_argument(
        "--select",
        action="store_true",
        help="also fit the constant-effect model and measure the one compare_clusters' rule "
        "selects between it and the K-cluster model (keys ending _selected)",
    )
    parser.add_argument(
        "--sources",
        action="store_true",
        help="also measure where the unit intervals' width comes from (keys starting sd_)",
    )
    parser.add_argument(
        "--prior",
        action="append",
        default=[],
        metavar="NAME=SCALE",
        help="override a prior scale of imgcate.model.PRIOR (e.g. deviation_amp=0.15)",
    )
    parser.add_argument(
        "--target-accept",
        type=float,
        default=None,
        help="NUTS's target acceptance probability (default: the fit's, FitConfig.target_accept)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.reps, args.draws = 2, 200
    from imgcate.config import FitConfig
    from imgcate.model import PRIOR

    prior = prior_overrides(args.prior)
    scenarios = args.scenario or list(SCENARIOS)
    for scenario in scenarios:
        parse(scenario)
    print(
        json.dumps(
            {
                "benchmark": "calibration",
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "units": args.units,
                "clusters": args.clusters,
                "chains": args.chains,
                "draws": args.draws,
                "reps": args.reps,
                "first_seed": args.first_seed,
                "form": args.form,
                "select": args.select,
                "sources": args.sources,
                "prior": prior,
                "prior_scales": {**PRIOR, **prior},
                "target_accept": FitConfig.target_accept
                if args.target_accept is None
                else args.target_accept,
                "n_basis": FitConfig(**FORMS[args.form]).basis_size,
                "basis": "kernel eigenfunctions (imgcate.config.kernel_basis)",
                "prob": PROB,
            }
        ),
        flush=True,
    )
    jobs = [
        (
            s,
            seed,
            args.units,
            args.clusters,
            args.chains,
            args.draws,
            args.form,
            prior,
            args.select,
            args.sources,
            args.target_accept,
        )
        for s in scenarios
        for seed in range(args.first_seed, args.first_seed + args.reps)
    ]
    rows = run_replications(one_fit, jobs, args.jobs, scenarios)
    for scenario in scenarios:
        print(json.dumps(summarize(rows[scenario])), flush=True)


if __name__ == "__main__":
    sys.exit(main())
