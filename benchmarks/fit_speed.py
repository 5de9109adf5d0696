"""Fit speed of the effect-cluster model: compile time, sampling time, ESS/s of cluster effects.

Prints one JSON object. Same settings every run:

    python benchmarks/fit_speed.py              # n = 2,000 and 10,000; d=16; K=3; NUTS 4x1000; SVI
    python benchmarks/fit_speed.py --sizes 2000 # n = 2,000 only
    python benchmarks/fit_speed.py --quick      # n = 2,000 only, NUTS 2x500 (a smoke run)
    python benchmarks/fit_speed.py --sizes 2000 --draws 500 --parts full --no-sequential --no-svi
                                                # the default model with fit's own 4x500 draws
    python benchmarks/fit_speed.py --sizes 2000 --draws 500 --parts full --no-sequential --no-svi \
        --trial-seeds 3                         # the same on the trials of seeds 0, 1 and 2
    python benchmarks/fit_speed.py --large      # SVI at n = 10^5 and 10^6 (3 seeds each) and
                                                # SVI against NUTS at n = 5,000 (3 seeds)
    python benchmarks/fit_speed.py --large --pairs  # only SVI against NUTS at n = 5,000
    python benchmarks/fit_speed.py --large --pairs --seeds 4 --batches 250 --unanchored
                                                # the pairs with SVI on minibatches of 250 too,
                                                # with and without the minibatches' anchors
    python benchmarks/fit_speed.py --large --fits   # only the SVI fits at 10^5 and 10^6
    python benchmarks/fit_speed.py --large --fits --sizes 1000000 --seeds 1 --raw-features 256
                                                # one 10^6 fit whose embedding has 256 raw
                                                # features (reduced to 16 components)
    python benchmarks/fit_speed.py --large --fits --seeds 3 --first-seed 3 --guides lowrank
                                                # the large fits of seeds 3-5, low-rank guide
    python benchmarks/fit_speed.py --large --guides lowrank full
                                                # the large runs with each of SVI's guides

Each fit runs twice, each time in a fresh process: first with an empty JAX compilation cache
(``first_fit_s``: it compiles everything, as the first fit of a model of that shape on a
machine does), then with the cache the first filled (``total_s``: what later fits take;
``imgcate.compilation``); ``compile_s`` is the difference.

Chains run side by side on JAX's CPU devices (one per core, ``chain_method="parallel"``, the
default); at the smallest size the full model is also timed with the chains one after another
(``"sequential"``). NUTS keeps 1,000 draws per chain (``--draws``; ``fit`` keeps 500 unless
told otherwise) after the package's default warm-up (500 iterations, as ``fit`` uses unless
told otherwise; ``--warmup``). Each NUTS row reports the mean number of leapfrog steps per
kept iteration (and per chain: chains advance in pairs, and a pair takes as long as its
slower chain), the smallest bulk ESS of any checked quantity (the cluster effects, the
memberships, the worst unit CATE; ``min_ess_bulk_of`` names it) and the largest R-hat.
``--trial-seeds N`` also fits the trials of seeds 1..N-1 (once each, compiled), under
``"then"`` in the full model's row (``"runs": "once, compiled"``): one trial's time is not
the model's (in one run the trials of seeds 1 and 2 took 2.0 and 2.6 times as many leapfrog
steps per iteration as seed 0's).

What the model's flexible parts cost: at the smallest size NUTS also fits the same trial with
the Gaussian processes left out (``parts="linear"``: ``n_basis=0``, linear effect deviation) and
with no continuous deviation at all (``parts="clusters"``: ``n_basis=0, deviation="none"``, the
clusters-only mean model), and with the baseline's cluster term on the effect clusters'
memberships (``parts="shared"``: ``baseline_clusters="shared"``, the default before 2026-12-05);
``parts="full"`` is the default model.

``--large`` fits each large trial in a fresh process (``peak_rss_mb``: the process's peak,
simulation included; ``rss_before_fit_mb``: what is resident when the fit starts, the
simulated trial and its embeddings; ``fit_peak_above_inputs_mb``: the fit's own peak above
that, the peak counted again from the fit's start) with the package's SVI defaults
(``method="svi"``: 5,000 Adam steps on minibatches of 1,000 units, the guide
``svi_guide="auto"`` chooses (a full covariance for this model), 1,000 draws; ``--guides``
names others). A cluster's effect is, by the model's definition, the average unit CATE of
the trial's units most probably in it; its truth here is that average of the true CATE over
the units the simulation's own membership probabilities put in it (``truth_assigned``;
before 2026-12-05 the membership-weighted average, ``truth_weighted``; the clusters overlap,
so it sits inside the simulated cluster effects -1, 1, 3, reported as
``error_vs_simulated``). Coverage is that of the 90 % intervals of the three cluster
effects, over seeds; ``oracle_covered`` says whether the oracle's difference in means over
each cluster's units (the outcome less its true baseline) held the same truth, which on some
seeds the noise alone puts outside, and ``sd_over_oracle_se`` compares the fit's sds with its
standard errors. ``derived_error_max`` checks the fit's own arithmetic: its stored
cluster effects against the same over every unit at once in float64
(first 40 draws; measured after the peak memory is read).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import tempfile
import time
import warnings

import arviz as az
import jax
import numpy as np

import imgcate.anchors
from imgcate import ConvergenceWarning
from imgcate.compilation import ENV
from imgcate.config import FitConfig
from imgcate.diagnostics import chain_restarts, diagnostics_table
from imgcate.inference import fit
from imgcate.simulate import simulate_trial

#: Fit options of each set of model parts timed at the smallest size.
PARTS = {
    "full": {},
    "shared": {"baseline_clusters": "shared"},
    "linear": {"n_basis": 0, "deviation": "linear"},
    "clusters": {"n_basis": 0, "deviation": "none"},
    "image-noise": {"noise_scale": "image"},
}


def timed_fit(sim, seed: int = 0, **options):
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        result = fit(sim.trial, sim.embeddings, n_clusters=3, seed=seed, **options)
    return result, time.perf_counter() - start


def nuts_fit(
    n_units: int,
    chains: int,
    draws: int,
    warmup: int,
    parts: str,
    chain_method: str,
    target_accept: float | None = None,
    seed: int = 0,
) -> dict:
    """One NUTS fit of the n-unit trial of ``seed`` (the fit's seed too; run in a fresh
    process: :func:`first_and_again`); ``target_accept`` is NUTS's target acceptance
    probability (the fit's default where None)."""
    sim = simulate_trial(seed, n_units, 3, n_features=16)
    options = {**PARTS[parts], "chain_method": chain_method}
    if target_accept is not None:
        options["target_accept"] = target_accept
    result, total_s = timed_fit(
        sim, seed, num_warmup=warmup, num_samples=draws, num_chains=chains, **options
    )
    ess = az.ess(result.idata, var_names=["tau_cluster"])["tau_cluster"].values
    table = result.cluster_effects()
    checks = diagnostics_table(result.idata)
    steps = result.idata.sample_stats["n_steps"].values
    return {
        "method": "nuts",
        "parts": parts,
        "chain_method": chain_method,
        "seed": seed,
        "n_units": n_units,
        "chains": chains,
        "warmup": warmup,
        "draws": draws,
        "target_accept": result.config.target_accept,
        "total_s": round(total_s, 2),
        "min_ess_tau_cluster": round(float(ess.min()), 1),
        "ess_per_s_tau_cluster": round(float(ess.min()) / total_s, 2),
        "divergences": int(result.idata.sample_stats["diverging"].values.sum()),
        "mean_leapfrog_steps": round(float(steps.mean()), 1),
        "leapfrog_steps_by_chain": steps.mean(axis=1).round(1).tolist(),
        "min_ess_bulk": round(float(checks["ess_bulk"].min()), 1),
        "min_ess_bulk_of": str(checks["ess_bulk"].idxmin()),
        "max_r_hat": round(float(checks["r_hat"].max()), 3),
        "tau_abs_error_max": round(
            float(np.abs(table["tau_mean"] - sim.truth.tau_cluster).max()), 3
        ),
        "tau_mean": table["tau_mean"].round(6).tolist(),
    }


def svi_fit(n_units: int, steps: int) -> dict:
    """One SVI fit of the n-unit trial (run in a fresh process: :func:`first_and_again`)."""
    sim = simulate_trial(0, n_units, 3, n_features=16)
    result, total_s = timed_fit(
        sim, method="svi", svi_steps=steps, svi_batch_size=1000, svi_draws=1000
    )
    table = result.cluster_effects()
    return {
        "method": "svi",
        "guide": result.config.svi_guide,
        "n_units": n_units,
        "steps": steps,
        "batch_size": 1000,
        "total_s": round(total_s, 2),
        "tau_abs_error_max": round(
            float(np.abs(table["tau_mean"] - sim.truth.tau_cluster).max()), 3
        ),
        "tau_mean": table["tau_mean"].round(6).tolist(),
    }


def first_and_again(fn, *args, then: tuple = ()) -> dict:
    """``fn(*args)`` in a fresh process with an empty compilation cache, then in another that
    finds the first's compiled code there: the second's row, with the first's time
    (``first_fit_s``), their difference (``compile_s``, what the cache saves) and whether the
    two fits gave the same cluster effects. ``then``: more argument tuples, each run once in
    a fresh process with the same cache (compiled already where their shapes are the same),
    their rows under ``"then"``."""
    cache = tempfile.mkdtemp(prefix="imgcate-bench-cache-")
    try:
        first = in_fresh_process(fn, *args, cache=cache)
        again = in_fresh_process(fn, *args, cache=cache)
        more = [
            {**in_fresh_process(fn, *other, cache=cache), "runs": "once, compiled"}
            for other in then
        ]
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    row = {
        **again,
        "first_fit_s": first["total_s"],
        "compile_s": round(first["total_s"] - again["total_s"], 2),
        "same_as_first": first["tau_mean"] == again["tau_mean"],
    }
    return {**row, "then": more} if then else row


def machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "cpu_devices": len(jax.devices("cpu")),
        "platform": platform.platform(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
    }


def status_mb(field: str = "VmHWM") -> int:
    """This process's peak (``VmHWM``) or current (``VmRSS``) resident memory in MB."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) // 1024 for line in status if line.startswith(field))


def peak_rss_mb() -> int:
    return status_mb("VmHWM")


def reset_peak() -> bool:
    """Start ``VmHWM`` again from the current resident memory (Linux); False where the
    kernel does not allow it (the fit's own peak is then not measured)."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        return False
    return True


def interval_record(table, truth: np.ndarray) -> dict:
    lo, hi = table["tau_5%"].to_numpy(), table["tau_95%"].to_numpy()
    return {
        "tau_mean": table["tau_mean"].round(4).tolist(),
        "tau_sd": table["tau_sd"].round(4).tolist(),
        "covered": ((lo <= truth) & (truth <= hi)).tolist(),
        "z": ((table["tau_mean"].to_numpy() - truth) / table["tau_sd"].to_numpy())
        .round(3)
        .tolist(),
    }


def raw_embeddings(embeddings, features: int, seed: int):
    """The trial's 16 embedding features seen through ``features`` raw ones, as a foundation
    model's embedding would hold them: a random linear map (orthonormal rows) plus noise of sd
    0.05, keyed by the same image ids."""
    from imgcate.embeddings import Embeddings

    rng = np.random.default_rng([seed, features])
    lift = np.linalg.qr(rng.normal(size=(features, embeddings.values.shape[1])))[0].T
    values = embeddings.values @ lift
    for start in range(0, len(values), 65_536):  # the noise a chunk at a time: no second copy
        rows = values[start : start + 65_536]
        rows += 0.05 * rng.standard_normal(rows.shape)
    return Embeddings(values=values, image_ids=embeddings.image_ids)


def large_svi(
    n_units: int, seed: int, raw_features: int | None = None, guide: str | None = None
) -> dict:
    """One SVI fit of a large trial (run in its own process); ``raw_features``: its embedding
    lifted to that many raw features (:func:`raw_embeddings`); ``guide``: the SVI guide (None:
    the default)."""
    sim = simulate_trial(seed, n_units, 3, n_features=16)
    truth = sim.truth.tau_cluster_assigned
    embeddings = sim.embeddings
    if raw_features:
        embeddings = raw_embeddings(embeddings, raw_features, seed)
    simulated_peak = peak_rss_mb()
    reset = reset_peak()  # the fit's own peak from here: its inputs are what is resident now
    inputs = status_mb("VmRSS")
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        options = {"svi_guide": guide} if guide else {}
        result = fit(sim.trial, embeddings, n_clusters=3, seed=seed, method="svi", **options)
    seconds = time.perf_counter() - start
    fit_peak = peak_rss_mb()  # before the check below, which holds 40 draws x every unit
    peak = max(simulated_peak, fit_peak)
    table = result.cluster_effects()
    error = table["tau_mean"].to_numpy() - truth
    return {
        "derived_error_max": derived_error(result),
        "method": "svi",
        "guide": result.config.svi_guide,
        "n_units": n_units,
        "raw_features": raw_features or 16,
        "seed": seed,
        "steps": result.config.svi_steps,
        "batch_size": result.config.svi_batch_size,
        "fit_s": round(seconds, 1),
        "peak_rss_mb": peak,
        "rss_before_fit_mb": inputs,
        "fit_peak_above_inputs_mb": fit_peak - inputs if reset else None,
        "truth_assigned": truth.round(4).tolist(),
        "tau_abs_error_max": round(float(np.abs(error).max()), 4),
        "error_vs_simulated": round(
            float(np.abs(table["tau_mean"] - sim.truth.tau_cluster).max()), 3
        ),
        **interval_record(table, truth),
        **oracle_record(sim, table, truth),
    }


def oracle_record(sim, table, truth: np.ndarray) -> dict:
    """The oracle's difference in means over each cluster's units (the outcome less its true
    baseline, treated against untreated; ``SimulatedTrial.difference_in_means``) beside a
    fit's cluster effects: whether its 90 % interval holds the same truth (on these seeds the
    noise alone may put it outside), and the fit's sds over its standard errors. Those are
    about the sds a cluster effect's posterior has (NUTS's at 5,000 units, seeds 0-3, are
    0.92-1.02 of them: results/fit-speed-pairs-guides-2026-12-06.json), a yardstick for SVI's
    where NUTS cannot run."""
    prob = sim.truth.cluster_prob
    estimate, se = sim.difference_in_means(prob.argmax(1), n_groups=prob.shape[1])
    half = 1.6449 * se
    return {
        "oracle_covered": ((estimate - half <= truth) & (truth <= estimate + half)).tolist(),
        "sd_over_oracle_se": (table["tau_sd"].to_numpy() / se).round(3).tolist(),
    }


def derived_error(result, draws: int = 40) -> float:
    """Largest difference between the cluster effects the fit stored (its derived pass,
    chunks of units merged) and the same computed over every unit at once in float64, over
    its first ``draws`` draws."""
    from imgcate.posterior import cluster_summaries, evaluate, fit_spec, site_draws, trial_inputs

    params = {k: v[:draws] for k, v in site_draws(result).items()}
    q = evaluate(params, trial_inputs(result), fit_spec(result))
    exact = cluster_summaries(q["cate"] * result.standardizer.outcome_sd, q["cluster_prob"])
    stored = result.idata.posterior["tau_cluster"].values.reshape(-1, result.config.n_clusters)
    return float(np.abs(stored[:draws] - exact["tau_cluster"]).max())


def guide_key(guide: str) -> str:
    """A guide's key in :func:`svi_against_nuts`'s record: "svi" for the package's default."""
    return "svi" if guide == FitConfig().svi_guide else f"svi_{guide}"


def svi_against_nuts(
    n_units: int,
    seed: int,
    guides: tuple[str, ...] = (),
    batches: tuple[int, ...] = (),
    unanchored: bool = False,
) -> dict:
    """SVI (with each of ``guides``; none: the default guide) and NUTS (the defaults: 4 x 500
    draws) on the same trial: their intervals. ``batches``: SVI with the default guide on
    minibatches of each of these sizes too (key ``svi_batch<size>``), and with
    ``unanchored`` also without the minibatches' anchors (``svi_batch<size>_unanchored``;
    the steps SVI on minibatches took before 2026-12-06 (evening), :mod:`imgcate.anchors`)."""
    sim = simulate_trial(seed, n_units, 3, n_features=16)
    truth = sim.truth.tau_cluster_assigned
    out = {"n_units": n_units, "seed": seed, "truth_assigned": truth.round(4).tolist()}
    runs = [
        (guide_key(g), "svi", {"svi_guide": g}, True) for g in guides or (FitConfig().svi_guide,)
    ]
    for size in batches:
        runs.append((f"svi_batch{size}", "svi", {"svi_batch_size": size}, True))
        if unanchored:
            runs.append((f"svi_batch{size}_unanchored", "svi", {"svi_batch_size": size}, False))
    default_anchor_at = imgcate.anchors.ANCHOR_AT
    for key, method, options, anchored in [*runs, ("nuts", "nuts", {}, True)]:
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            imgcate.anchors.ANCHOR_AT = default_anchor_at if anchored else ()
            try:
                result = fit(
                    sim.trial, sim.embeddings, n_clusters=3, seed=seed, method=method, **options
                )
            finally:
                imgcate.anchors.ANCHOR_AT = default_anchor_at
        units = result.unit_effects()
        lo, hi = units["tau_5%"].to_numpy(), units["tau_95%"].to_numpy()
        out[key] = {
            "fit_s": round(time.perf_counter() - start, 1),
            **interval_record(result.cluster_effects(), truth),
            "unit_coverage_90": round(
                float(np.mean((lo <= sim.truth.cate) & (sim.truth.cate <= hi))), 3
            ),
            **chain_restarts(result.idata),
            "warnings": sorted(
                {f"{w.category.__name__}: {str(w.message).splitlines()[0][:200]}" for w in caught}
            ),
        }
    nuts = np.asarray(out["nuts"]["tau_sd"])
    for key, *_ in runs:
        svi = np.asarray(out[key]["tau_sd"])
        shift = np.asarray(out[key]["tau_mean"]) - np.asarray(out["nuts"]["tau_mean"])
        suffix = key.removeprefix("svi")
        out[f"sd_ratio_svi{suffix}_over_nuts"] = (svi / nuts).round(3).tolist()
        out[f"mean_shift{suffix}_in_nuts_sd"] = (shift / nuts).round(3).tolist()
    return out


def in_fresh_process(fn, *args, cache: str | None = None) -> dict:
    """``fn(*args)`` in a fresh Python process whose JAX compilation cache is the folder
    ``cache`` (None: a new empty one, so that it compiles everything, as a first fit does)."""
    folder = cache or tempfile.mkdtemp(prefix="imgcate-bench-cache-")
    os.environ[ENV] = folder  # the spawned process starts with this environment
    try:
        context = multiprocessing.get_context("spawn")
        with context.Pool(1, maxtasksperchild=1) as pool:
            return pool.apply(fn, args)
    finally:
        if cache is None:
            shutil.rmtree(folder, ignore_errors=True)


def coverage(records: list[dict], key: str = "covered") -> float:
    covered = [c for r in records for c in r[key]]
    return round(float(np.mean(covered)), 3)


def z_rms(records: list[dict]) -> float:
    """Root mean square of the cluster effects' errors in posterior sds, (mean - truth) / sd,
    over every cluster of ``records``: about 1 when the intervals are as wide as the errors
    (mean of z^2 has standard error sqrt(2 / count) there); above 1, too narrow."""
    z = np.array([x for r in records for x in r["z"]])
    return round(float(np.sqrt(np.mean(z**2))), 3)


def pair_summary(pairs: list[dict]) -> dict:
    """What the SVI/NUTS pairs at 5,000 units show, over their seeds (for each SVI fit:
    keys ``svi`` for the default guide, ``svi_<guide>`` for others, ``svi_batch<size>`` and
    ``svi_batch<size>_unanchored`` for minibatches, ``--batches``)."""
    keys = [k for k in pairs[0] if k.startswith("svi") and isinstance(pairs[0][k], dict)]
    out = {f"coverage_90_{k}": coverage([p[k] for p in pairs]) for k in keys}
    out["coverage_90_nuts"] = coverage([p["nuts"] for p in pairs])
    for key in [*keys, "nuts"]:
        out[f"z_rms_{key}"] = z_rms([p[key] for p in pairs])
    for key in keys:
        suffix = key.removeprefix("svi")
        ratios = [r for p in pairs for r in p[f"sd_ratio_svi{suffix}_over_nuts"]]
        out[f"sd_ratio_range{suffix}"] = [min(ratios), max(ratios)]
        out[f"unit_coverage_90_{key}"] = [p[key]["unit_coverage_90"] for p in pairs]
        out[f"abs_mean_shift{suffix}_in_nuts_sd_max"] = max(
            abs(x) for p in pairs for x in p[f"mean_shift{suffix}_in_nuts_sd"]
        )
    out["unit_coverage_90_nuts"] = [p["nuts"]["unit_coverage_90"] for p in pairs]
    out["nuts_restarted_chains"] = [p["nuts"]["restarted_chains"] for p in pairs]
    return out


def large_runs(
    seeds: int,
    pairs_only: bool = False,
    fits_only: bool = False,
    sizes: tuple[int, ...] = (100_000, 1_000_000),
    raw_features: int | None = None,
    guides: tuple[str, ...] = (),
    first_seed: int = 0,
    batches: tuple[int, ...] = (),
    unanchored: bool = False,
) -> dict:
    seed_range = range(first_seed, first_seed + seeds)
    pairs = (
        []
        if fits_only
        else [
            in_fresh_process(svi_against_nuts, 5_000, s, guides, batches, unanchored)
            for s in seed_range
        ]
    )
    if pairs_only:
        return {"summary": {"5000_svi_vs_nuts": pair_summary(pairs)}, "svi_vs_nuts": pairs}
    fits = [
        in_fresh_process(large_svi, n, s, raw_features, g)
        for g in guides or (None,)
        for n in sizes
        for s in seed_range
    ]
    summary = {}
    for guide in guides or (None,):
        for n in sizes:
            runs = [r for r in fits if r["n_units"] == n and guide in (None, r["guide"])]
            summary[f"{n}_{guide}" if guide else str(n)] = {
                "fit_s_max": max(r["fit_s"] for r in runs),
                "peak_rss_mb_max": max(r["peak_rss_mb"] for r in runs),
                "fit_peak_above_inputs_mb_max": max(
                    (r["fit_peak_above_inputs_mb"] or 0) for r in runs
                ),
                "tau_abs_error_max": max(r["tau_abs_error_max"] for r in runs),
                "coverage_90": coverage(runs),
                "oracle_coverage_90": coverage(runs, "oracle_covered"),
                "z_rms": z_rms(runs),
                "sd_over_oracle_se_range": [
                    min(x for r in runs for x in r["sd_over_oracle_se"]),
                    max(x for r in runs for x in r["sd_over_oracle_se"]),
                ],
            }
    if pairs:
        summary["5000_svi_vs_nuts"] = pair_summary(pairs)
    return {
        "target": "n = 10^6 in <= 600 s with peak RSS <= 4,096 MB and |tau error| < 0.05",
        "summary": summary,
        "fits": fits,
        "svi_vs_nuts": pairs,
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
    parser.add_argument(
        "--target-accept",
        type=float,
        default=None,
        help="NUTS's target acceptance probability (default: fit's, FitConfig.target_accept)",
    )
    parser.add_argument(
        "--large", action="store_true", help="only SVI at 10^5 and 10^6 units, SVI vs NUTS"
    )
    parser.add_argument("--seeds", type=int, default=3, help="seeds of each --large trial")
    parser.add_argument(
        "--trial-seeds",
        type=int,
        default=1,
        help="NUTS at the smallest size, the full model: trials (and fit seeds) 0..N-1; "
        "seed 0 fitted twice (first fit and compiled), the others once, compiled (default 1)",
    )
    parser.add_argument(
        "--first-seed", type=int, default=0, help="--large: seeds first..first+seeds-1"
    )
    only = parser.add_mutually_exclusive_group()
    only.add_argument(
        "--pairs", action="store_true", help="with --large: only the SVI/NUTS pairs at 5,000"
    )
    only.add_argument(
        "--fits", action="store_true", help="with --large: only the fits at 10^5 and 10^6"
    )
    parser.add_argument(
        "--draws",
        type=int,
        default=1000,
        help=f"NUTS draws kept per chain (default 1,000; fit's own default is "
        f"{FitConfig().num_samples:,})",
    )
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=list(PARTS),
        default=list(PARTS),
        help="model parts timed at the smallest size (default all), chains side by side",
    )
    parser.add_argument(
        "--no-sequential", action="store_true", help="leave out the chains-one-after-another row"
    )
    parser.add_argument("--no-svi", action="store_true", help="leave out the SVI rows")
    parser.add_argument(
        "--raw-features",
        type=int,
        help="with --large --fits: the embedding lifted to this many raw features (a "
        "foundation model's), which the fit reduces to 16 components",
    )
    parser.add_argument(
        "--guides",
        nargs="+",
        choices=("full", "lowrank", "normal"),
        default=[],
        help="with --large: SVI with each of these guides (default: the package's default)",
    )
    parser.add_argument(
        "--batches",
        type=int,
        nargs="+",
        default=[],
        help="with --large --pairs: SVI on minibatches of these sizes too, beside NUTS",
    )
    parser.add_argument(
        "--unanchored",
        action="store_true",
        help="with --batches: each also without the minibatches' anchors (as before)",
    )
    args = parser.parse_args()
    if args.unanchored and not args.batches:
        parser.error("--unanchored goes with --batches")
    if args.batches and (args.fits or not args.large):
        parser.error("--batches goes with --large (the SVI/NUTS pairs; not --fits)")
    if (args.pairs or args.fits or args.guides) and not args.large:
        parser.error("--pairs, --fits and --guides go with --large")
    if args.raw_features and not args.fits:
        parser.error("--raw-features goes with --large --fits")
    if args.trial_seeds < 1:
        parser.error("--trial-seeds must be at least 1")
    if args.trial_seeds > 1 and (args.large or "full" not in args.parts):
        parser.error(
            "--trial-seeds times NUTS on the full model: not with --large, and with "
            "full among --parts"
        )
    if args.large:
        print(
            json.dumps(
                {
                    "benchmark": "fit_speed_large",
                    "d": 16,
                    "K": 3,
                    "machine": machine(),
                    "raw_features": args.raw_features or 16,
                    **large_runs(
                        args.seeds,
                        args.pairs,
                        args.fits,
                        tuple(args.sizes or (100_000, 1_000_000)),
                        args.raw_features,
                        tuple(args.guides),
                        args.first_seed,
                        tuple(args.batches),
                        args.unanchored,
                    ),
                },
                indent=2,
            )
        )
        return
    sizes = args.sizes or ([2000] if args.quick else [2000, 10000])
    chains, draws = (2, 500) if args.quick else (4, args.draws)
    results = []
    for n in sizes:
        for parts in args.parts if n == min(sizes) else ["full"]:
            nuts = (n, chains, draws, args.warmup, parts, "parallel", args.target_accept)
            others = range(1, args.trial_seeds) if n == min(sizes) and parts == "full" else ()
            results.append(first_and_again(nuts_fit, *nuts, then=tuple((*nuts, s) for s in others)))
        if n == min(sizes) and not args.no_sequential:  # what the devices add
            results.append(
                first_and_again(
                    nuts_fit,
                    n,
                    chains,
                    draws,
                    args.warmup,
                    "full",
                    "sequential",
                    args.target_accept,
                )
            )
        if not args.no_svi:
            results.append(first_and_again(svi_fit, n, 3000))
    print(
        json.dumps(
            {
                "benchmark": "fit_speed",
                "d": 16,
                "K": 3,
                "machine": machine(),
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
