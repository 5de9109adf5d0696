"""Unit-CATE coverage on semi-synthetic trials on the shipped Landsat scene.

The trials are ``imgcate.simulate.landsat_trial`` (300 villages on the real Olinda scene,
half treated at random, 16 x 16-px chips): the effect is 2 where more than 30 % of a village's
chip is vegetated (NDVI > 0.2) and 0 elsewhere, a step in a quantity of the real image that
the model is not told and that none of its parts is built from. Seed 15 is the trial shipped
in ``data/landsat/villages.csv``. Each trial is embedded with the default encoder (random
convolutional features, 256 features, 16 components) and fitted with ``fit``'s defaults and
K = 2.

Prints JSON: one row per trial, then a summary. Per trial: the coverage of the 90 % unit
intervals (all units, the units whose true effect is 0 and those whose effect is 2); the
units whose true effect is 0 but whose interval lies above 0 (``false_positive``); sqrt(PEHE);
the mean interval width; ``membership_dependence`` and ``effect_share_clusters`` of
``heterogeneity()``; and the R^2 of the vegetated share on the embedding (linear least
squares): how much of what drives the effect the embedding holds.

    python benchmarks/landsat_coverage.py                      # seeds 15, 1-7, 2 processes
    python benchmarks/landsat_coverage.py --prior membership_scale_df=inf
    python benchmarks/landsat_coverage.py --quick              # seeds 15 and 1, 2 x 200 draws
    python benchmarks/landsat_coverage.py --ramp 0.15          # a smooth effect, no step

With ``--ramp`` the effect rises smoothly with the vegetated share (a logistic curve between 0
and 2, centred on 30 %) and units are placed at every share; per trial the coverage in each
third of the true effects replaces the step's two sides.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor

import numpy as np

PROB = 0.9
CHIP = 16


def one_trial(seed: int, n_units: int, prior: dict, draws: dict, ramp: float | None = None) -> dict:
    """Simulate, embed, fit and measure one trial (in a worker process); ``ramp``: the
    effect a logistic ramp in the vegetated share (``landsat_trial(ramp=...)``, units at
    every share) instead of the step."""
    import imgcate
    from imgcate.datasets import landsat_path
    from imgcate.model import PRIOR
    from imgcate.simulate import landsat_trial

    PRIOR.update(prior)
    scene = landsat_path()
    shape = {"ramp": ramp, "margin": 0.0} if ramp is not None else {}
    sim = landsat_trial(scene, seed=seed, n_units=n_units, chip_size=CHIP, **shape)
    chips = imgcate.extract_chips(sim.trial, scene, CHIP)
    embeddings = imgcate.embed(chips, "rcf", seed=0)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = imgcate.fit(
            sim.trial, embeddings, n_clusters=2, seed=seed, progress=False, **draws
        )
    seconds = time.perf_counter() - start
    units = result.unit_effects(prob=PROB)
    truth = np.asarray(sim.truth.tau_unit, float)
    low, high = units["tau_5%"].to_numpy(), units["tau_95%"].to_numpy()
    covered = (low <= truth) & (truth <= high)
    none = truth == 0
    z = np.asarray(embeddings.for_keys(sim.trial.image_keys), float)
    share = np.asarray(sim.truth.share, float)
    design = np.column_stack([np.ones(len(z)), z])
    coef, *_ = np.linalg.lstsq(design, share, rcond=None)
    het = result.heterogeneity(PROB)
    return {
        "seed": seed,
        "units": n_units,
        "seconds": round(seconds, 1),
        "cover": round(float(covered.mean()), 4),
        **(
            coverage_by_thirds(truth, covered) if ramp is not None else _by_side(none, low, covered)
        ),
        "sqrt_pehe": round(float(np.sqrt(np.mean((units["tau_mean"].to_numpy() - truth) ** 2))), 4),
        "interval_width": round(float(np.mean(high - low)), 4),
        "membership_dependence": round(float(het.loc["membership_dependence", "mean"]), 4),
        "effect_share_clusters": round(float(het.loc["effect_share_clusters", "mean"]), 4),
        "r2_share_on_embedding": round(float(1 - np.var(share - design @ coef) / np.var(share)), 4),
        "divergences": int(result.idata.sample_stats["diverging"].values.sum()),
    }


def _by_side(none: np.ndarray, low: np.ndarray, covered: np.ndarray) -> dict:
    """The step's two sides: coverage of the units whose effect is 0 and 2, and the units of
    effect 0 whose interval lies above 0."""
    return {
        "cover_effect_0": round(float(covered[none].mean()), 4),
        "cover_effect_2": round(float(covered[~none].mean()), 4),
        "false_positive": int((none & (low > 0)).sum()),
        "units_effect_0": int(none.sum()),
    }


def coverage_by_thirds(truth: np.ndarray, covered: np.ndarray) -> dict:
    """The ramp's coverage in the thirds of the units' true effects, lowest first."""
    third = np.searchsorted(np.quantile(truth, [1 / 3, 2 / 3]), truth, side="right")
    return {
        "cover_by_effect_third": [round(float(covered[third == i].mean()), 4) for i in range(3)],
        "truth_sd": round(float(truth.std()), 4),
    }


def summarize(rows: list[dict]) -> dict:
    """Means over the trials, with the coverage's Monte Carlo standard error over trials."""
    cover = np.array([r["cover"] for r in rows])
    return {
        "summary": True,
        "trials": len(rows),
        "cover": round(float(cover.mean()), 4),
        "cover_mcse": round(float(cover.std(ddof=1) / np.sqrt(len(cover))), 4)
        if len(cover) > 1
        else None,
        "cover_range": [float(cover.min()), float(cover.max())],
        **{
            key: np.round(np.mean([r[key] for r in rows], axis=0), 4).tolist()
            for key in (
                "cover_effect_0",
                "cover_effect_2",
                "cover_by_effect_third",
                "false_positive",
                "sqrt_pehe",
                "interval_width",
                "membership_dependence",
                "r2_share_on_embedding",
                "divergences",
            )
            if key in rows[0]
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[15, 1, 2, 3, 4, 5, 6, 7])
    parser.add_argument("--units", type=int, default=300)
    parser.add_argument(
        "--ramp",
        type=float,
        default=None,
        metavar="SCALE",
        help="a smooth effect: a logistic ramp in the vegetated share of this scale (e.g. "
        "0.15) instead of the step, units at every share",
    )
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument(
        "--quick", action="store_true", help="seeds 15 and 1, 2 chains x 200 draws (smoke run)"
    )
    parser.add_argument(
        "--prior",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override an entry of imgcate.model.PRIOR (e.g. membership_scale_df=inf)",
    )
    args = parser.parse_args(argv)
    draws = {}
    if args.quick:
        args.seeds = args.seeds[:2]
        draws = {"num_chains": 2, "num_warmup": 200, "num_samples": 200}
    from calibration import prior_overrides  # benchmarks/ is this script's sys.path[0]

    from imgcate.model import PRIOR

    prior = prior_overrides(args.prior)
    print(
        json.dumps(
            {
                "benchmark": "landsat_coverage",
                "python": platform.python_version(),
                "seeds": args.seeds,
                "units": args.units,
                "effect": "step" if args.ramp is None else f"logistic ramp, scale {args.ramp}",
                "prior": prior,
                "prior_used": {**PRIOR, **prior},
                "draws": draws or "fit's defaults",
                "prob": PROB,
            }
        ),
        flush=True,
    )
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
        futures = [
            pool.submit(one_trial, s, args.units, prior, draws, args.ramp) for s in args.seeds
        ]
        rows = []
        for future in futures:
            rows.append(future.result())
            print(json.dumps(rows[-1]), flush=True)
    print(json.dumps(summarize(rows)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
