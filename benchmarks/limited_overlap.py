"""ATE estimates where treated and control units barely overlap: the full-sample ATE against
the effect where the arms overlap (``ate_estimates(..., trim=...)``), and the propensity's
penalty (``estimate_propensity(C=...)``).

The studies are ``landsat_ndvi.py``'s observational ones (villages at random land pixels of
the shipped Landsat scene; treatment ``Bernoulli(expit(T z - 0.3))`` on the chip's
standardized NDVI ``z``; the effect ``0.5 + 1.5 expit(1.5 z)``, so it changes along the
targeting; the baseline a sine and square of elevation plus ``0.8 z``), adjusted for an RCF
embedding of each chip (128 features, 8 components) and the elevation. No NUTS: each study
takes a second or two.

For each study, AIPW (``ate_estimates``, cross-fitted ridge outcome regressions, 90 %
intervals) with the propensity

- ``true``: the true one (given as known);
- ``cbps``: the exact covariate-balancing one (``C=None``; where the features separate the
  arms it cannot be fitted, and the row is missing);
- ``cbps_auto``: ``C="auto"`` (exact where it can be, else the weakest penalty with a
  solution);
- ``cbps_C0.01``: a strong fixed penalty (what the separation message advised before);
- ``logistic``: cross-fitted logistic regression, penalty tuned for balance;

against the sample ATE; and, trimmed (``trim="crump"`` and ``trim=0.1``), with the true and
the ``C="auto"`` propensity, against the mean effect of the kept units. Prints one JSON
document: per (targeting, units) the bias, root mean squared error, mean standard error and
coverage (with its Monte Carlo standard error) of each, and the rows.

    python benchmarks/limited_overlap.py           # T = 2.5 and 4, 350 and 500 units, 30 each
    python benchmarks/limited_overlap.py --quick   # T = 4, 350 units, 3 studies
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings

import landsat_ndvi  # benchmarks/ is sys.path[0]
import numpy as np

PROB = 0.9
#: The rows of one study (module docstring).
ESTIMATES = (
    "true",
    "cbps",
    "cbps_auto",
    "cbps_C0.01",
    "logistic",
    "true_trim_crump",
    "true_trim_0.1",
    "cbps_auto_trim_crump",
    "cbps_auto_trim_0.1",
)


def one_study(seed: int, targeting: float, units: int) -> dict:
    """Every estimate of one study (module docstring): estimate minus its target, standard
    error, whether the interval holds the target; for trimmed rows also the units kept."""
    import imgcate
    from imgcate.confounding import ate_estimates, estimate_propensity, trim
    from imgcate.datasets import landsat_path
    from imgcate.errors import InputError

    landsat_ndvi.UNITS = units
    table, tau, propensity = landsat_ndvi.trial_table(seed, targeting, "ndvi")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # shared chips, extreme scores: what is measured
        trial = imgcate.read_units(table, id="village", outcome="y", covariates=["elevation_m"])
        chips = imgcate.extract_chips(trial, landsat_path(), landsat_ndvi.CHIP)
        embeddings = imgcate.embed(chips, "rcf", n_features=128, n_components=8, seed=seed)
        x = np.hstack([embeddings.for_keys(trial.image_keys), trial.covariate_matrix])
        y, t = trial.outcome_array, trial.treatment_array
        scores = {"true": propensity}
        for name, C in (("cbps", None), ("cbps_auto", "auto"), ("cbps_C0.01", 0.01)):
            try:
                scores[name] = estimate_propensity(x, t, seed=seed, C=C)
            except InputError:
                scores[name] = None
        scores["logistic"] = estimate_propensity(x, t, method="logistic", seed=seed)
        row: dict = {
            "seed": seed,
            "outside_overlap": int(np.sum((propensity < 0.1) | (propensity > 0.9))),
            "sample_ate": round(float(tau.mean()), 4),
            "auto_C": None if scores["cbps_auto"] is None else scores["cbps_auto"].diagnostics["C"],
        }

        def measure(name, ps, rule, target):
            aipw = ate_estimates(y, t, ps, features=x, prob=PROB, seed=seed, trim=rule).loc["aipw"]
            low, high = aipw[f"{(1 - PROB) / 2:.0%}"], aipw[f"{(1 + PROB) / 2:.0%}"]
            row[name] = {
                "error": round(float(aipw["estimate"] - target), 4),
                "std_err": round(float(aipw["std_err"]), 4),
                "covered": bool(low <= target <= high),
                "n": int(aipw["n"]),
            }

        for name, ps in scores.items():
            if ps is None:
                row[name] = None
                continue
            measure(name, ps, None, float(tau.mean()))
        for base in ("true", "cbps_auto"):
            for rule in ("crump", 0.1):
                if scores[base] is None:  # C="auto" found no solution
                    row[f"{base}_trim_{rule}"] = None
                    continue
                keep = trim(scores[base], rule=rule).keep
                measure(f"{base}_trim_{rule}", scores[base], rule, float(tau[keep].mean()))
    return row


def summarize(rows: list[dict]) -> dict:
    """Per estimator: studies, bias, RMSE, mean SE, coverage and its Monte Carlo SE."""
    out = {}
    for name in ESTIMATES:
        got = [r[name] for r in rows if r.get(name)]
        if not got:
            out[name] = {"studies": 0}
            continue
        err = np.array([g["error"] for g in got])
        cover = np.mean([g["covered"] for g in got])
        out[name] = {
            "studies": len(got),
            "bias": round(float(err.mean()), 3),
            "rmse": round(float(np.sqrt(np.mean(err**2))), 3),
            "mean_std_err": round(float(np.mean([g["std_err"] for g in got])), 3),
            "coverage": round(float(cover), 3),
            "coverage_mcse": round(float(np.sqrt(cover * (1 - cover) / len(got))), 3),
            "mean_units": round(float(np.mean([g["n"] for g in got])), 1),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targeting", type=float, nargs="+", default=[2.5, 4.0])
    parser.add_argument("--units", type=int, nargs="+", default=[350, 500])
    parser.add_argument("--reps", type=int, default=30, help="studies per design (30)")
    parser.add_argument("--quick", action="store_true", help="T = 4, 350 units, 3 studies")
    args = parser.parse_args(argv)
    if args.quick:
        args.targeting, args.units, args.reps = [4.0], [350], 3
    start = time.perf_counter()
    designs = []
    for targeting in args.targeting:
        for units in args.units:
            rows = [one_study(seed, targeting, units) for seed in range(args.reps)]
            designs.append(
                {
                    "targeting": targeting,
                    "units": units,
                    "mean_outside_overlap": round(
                        float(np.mean([r["outside_overlap"] for r in rows])), 1
                    ),
                    "exact_cbps_fitted": sum(r["cbps"] is not None for r in rows),
                    "auto_C": [r["auto_C"] for r in rows],
                    "summary": summarize(rows),
                    "rows": rows,
                }
            )
            print(f"targeting {targeting}, {units} units: done", file=sys.stderr, flush=True)
    print(
        json.dumps(
            {
                "benchmark": "limited_overlap",
                "prob": PROB,
                "reps": args.reps,
                "python": platform.python_version(),
                "seconds": round(time.perf_counter() - start, 1),
                "designs": designs,
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
