"""Replication study of the confounder adjustment: bias, SE/SD, coverage per design and estimator.

Every design is an observational study confounded by what the images show, with a known ATE:

- ``latent``: :func:`imgcate.simulate.simulate_confounded`, 16 features that are noisy
  nonlinear functions of a latent built-up share (no encoder involved);
- ``built_share``: :func:`imgcate.simulate.simulate_scene_confounded`, treatment targeted on
  the built-up share of each unit's 32-pixel chip of a synthetic scene;
- ``vegetation_targeting``: :func:`imgcate.simulate.simulate_scene_trial` with
  ``targeting=1.5`` (the vegetated share drives targeting and the untreated outcome, and the
  effect differs between land-cover clusters: the estimand is the sample ATE);
- ``pattern_clustering``, ``pattern_orientation``, ``pattern_position``:
  :func:`imgcate.simulate.simulate_pattern_confounded`, the confounder a spatial pattern with
  the land-cover composition held fixed;
- ``pattern_position_nested``: the position design adjusted with two embeddings, of the
  32-pixel chip and of a 12-pixel chip around the unit (what a user can do when the
  arrangement around the location matters).

The scene designs are adjusted with the default embedding (``imgcate.embed``) of the chips
and the trial's covariates. Estimators: difference in means; Hajek IPW with the true
propensity, the default covariate-balancing propensity (``cbps``), cross-fitted logistic
regression tuned for balance and for log loss; AIPW with the default propensity; and Hajek
IPW with entropy-balancing weights (Hainmueller 2012, ATE version, computed here; no
standard error). ``recovery_r2`` is the cross-validated R2 of the latent confounder from the
adjustment features (ridge), what the features know about it (the latent is the logit of the
true propensity, a linear function of the confounder in every design).

Run the same way every time (seeds are fixed per design and replication)::

    .venv/bin/python benchmarks/confounding.py            # 20 replications, about 15 min on 2 cores
    .venv/bin/python benchmarks/confounding.py --quick    # smoke run: 2 replications of 400 units
    .venv/bin/python benchmarks/confounding.py --reps 5 --designs latent built_share

It prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import minimize

from imgcate.chips import extract_chips
from imgcate.confounding import aipw, difference_in_means, estimate_propensity, hajek_ipw
from imgcate.embeddings import embed
from imgcate.errors import OverlapWarning, PropensityBalanceWarning
from imgcate.simulate import (
    simulate_confounded,
    simulate_pattern_confounded,
    simulate_scene_confounded,
    simulate_scene_trial,
    synthetic_scene,
)

DESIGNS = (
    "latent",
    "built_share",
    "vegetation_targeting",
    "pattern_clustering",
    "pattern_orientation",
    "pattern_position",
    "pattern_position_nested",
)
ESTIMATORS = (
    "difference_in_means",
    "ipw_true",
    "ipw_cbps",
    "aipw_cbps",
    "ipw_logistic_balance",
    "ipw_logistic_log_loss",
    "ipw_entropy",
)


def _embedded(sim, size: int, seed: int, extra_sizes: tuple[int, ...] = ()) -> np.ndarray:
    """Default embedding of each unit's chip (and of smaller chips), plus the covariates."""
    blocks = []
    for s in (size, *extra_sizes):
        chips = extract_chips(sim.trial, sim.scene, s)
        blocks.append(embed(chips, seed=seed).for_keys(sim.trial.image_keys))
    return np.column_stack([*blocks, sim.trial.covariate_matrix])


def draw(design: str, seed: int, n_units: int, workdir: Path) -> dict:
    """One replication of a design: features, treatment, outcome, truth."""
    scene = workdir / f"{design}.tif"
    if design == "latent":
        sim = simulate_confounded(seed=seed, n_units=n_units)
        x = sim.features
    elif design == "built_share":
        sim = simulate_scene_confounded(scene, seed=seed, n_units=n_units)
        x = _embedded(sim, 32, seed)
    elif design == "vegetation_targeting":
        synthetic_scene(scene, seed=seed, width=512, height=512)
        sim = simulate_scene_trial(scene, seed=seed, n_units=n_units, targeting=1.5)
        x = _embedded(sim, 32, seed)
    else:
        pattern = design.split("_")[1]
        sim = simulate_pattern_confounded(scene, seed=seed, n_units=n_units, pattern=pattern)
        x = _embedded(sim, 32, seed, (12,) if design.endswith("nested") else ())
    e = sim.truth.propensity
    return {
        "x": x,
        "t": sim.treatment,
        "y": sim.outcome,
        "e": sim.truth.propensity,
        "ate": sim.truth.ate,
        "latent": np.log(e / (1 - e)),  # the confounder, on the scale it drives targeting
    }


def entropy_weights(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Entropy balancing for the ATE: within each arm, the weights closest to uniform (in
    Kullback-Leibler divergence) whose weighted feature means equal the full sample's."""
    sd = x.std(axis=0)
    z = (x[:, sd > 0] - x[:, sd > 0].mean(axis=0)) / sd[sd > 0]
    weights = np.zeros(len(t))
    for arm in (0, 1):
        zs = z[t == arm]

        def dual(lam, zs=zs):
            a = zs @ lam
            top = a.max()
            p = np.exp(a - top)
            return top + np.log(p.sum()), zs.T @ (p / p.sum())

        res = minimize(dual, np.zeros(z.shape[1]), jac=True, method="BFGS", options={"gtol": 1e-9})
        a = zs @ res.x
        weights[t == arm] = np.exp(a - a.max()) / np.exp(a - a.max()).sum()
    return weights


def recovery_r2(x: np.ndarray, latent: np.ndarray, seed: int) -> float:
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import KFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13)))
    pred = cross_val_predict(model, x, latent, cv=KFold(5, shuffle=True, random_state=seed))
    return float(1 - np.mean((pred - latent) ** 2) / latent.var())


def estimate_all(d: dict, seed: int, prob: float, estimators: tuple[str, ...]) -> list[dict]:
    x, t, y = d["x"], d["t"], d["y"]
    rows = []

    def add(name, res, extra=None):
        rows.append(
            {
                "estimator": name,
                "estimate": res.estimate,
                "std_err": res.std_err,
                "lower": res.lower,
                "upper": res.upper,
                **(extra or {}),
            }
        )

    if "difference_in_means" in estimators:
        add("difference_in_means", difference_in_means(y, t, prob=prob))
    if "ipw_true" in estimators:
        add("ipw_true", hajek_ipw(y, t, d["e"], prob=prob))
    if {"ipw_cbps", "aipw_cbps"} & set(estimators):
        ps = estimate_propensity(x, t, seed=seed)
        add("ipw_cbps", hajek_ipw(y, t, ps, prob=prob))
        add("aipw_cbps", aipw(y, t, ps, features=x, prob=prob, seed=seed))
    if "ipw_logistic_balance" in estimators:
        ps = estimate_propensity(x, t, method="logistic", seed=seed)
        add(
            "ipw_logistic_balance",
            hajek_ipw(y, t, ps, prob=prob),
            {"C": ps.diagnostics["C_by_fold"][0]},
        )
    if "ipw_logistic_log_loss" in estimators:
        ps = estimate_propensity(x, t, method="logistic", tune="log_loss", seed=seed)
        add("ipw_logistic_log_loss", hajek_ipw(y, t, ps, prob=prob))
    if "ipw_entropy" in estimators:
        w = entropy_weights(x, t)
        est = np.sum(t * w * y) / np.sum(t * w) - np.sum((1 - t) * w * y) / np.sum((1 - t) * w)
        rows.append(
            {
                "estimator": "ipw_entropy",
                "estimate": est,
                "std_err": np.nan,
                "lower": np.nan,
                "upper": np.nan,
            }
        )
    return rows


def summarize(results: pd.DataFrame) -> list[dict]:
    out = []
    for (design, estimator), g in results.groupby(["design", "estimator"], sort=False):
        err = g["estimate"] - g["ate"]
        sd = float(g["estimate"].std(ddof=1)) if len(g) > 1 else float("nan")
        sd_err = float(err.std(ddof=1)) if len(g) > 1 else float("nan")
        row = {
            "design": design,
            "estimator": estimator,
            "n_reps": int(len(g)),
            "true_ate": float(g["ate"].mean()),
            "bias": float(err.mean()),
            "relative_bias": float(err.mean() / abs(g["ate"].mean())),
            "mc_se": sd_err / np.sqrt(len(g)),
            "sd": sd,
            "sd_error": sd_err,
            "mean_se": float(g["std_err"].mean()),
            "se_over_sd": float(g["std_err"].mean() / sd_err) if sd_err > 0 else float("nan"),
            "coverage": float(((g["lower"] <= g["ate"]) & (g["ate"] <= g["upper"])).mean())
            if g["lower"].notna().all()
            else float("nan"),
        }
        if "C" in g and g["C"].notna().any():
            row["C_chosen"] = sorted(float(c) for c in g["C"].dropna().unique())
        out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--n-units", type=int, default=1000)
    parser.add_argument("--prob", type=float, default=0.9)
    parser.add_argument("--designs", nargs="+", default=list(DESIGNS), choices=DESIGNS)
    parser.add_argument("--estimators", nargs="+", default=list(ESTIMATORS), choices=ESTIMATORS)
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 2 replications of 400 units"
    )
    args = parser.parse_args()
    if args.quick:
        args.reps, args.n_units = min(args.reps, 2), 400
    warnings.simplefilter("ignore", OverlapWarning)
    warnings.simplefilter("ignore", PropensityBalanceWarning)  # would repeat each replication
    rows, recovery, started = [], {}, time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for design in args.designs:
            offset = zlib.crc32(design.encode()) % 100_000 * 100
            r2 = []
            for rep in range(args.reps):
                seed = offset + rep
                d = draw(design, seed, args.n_units, Path(tmp))
                r2.append(recovery_r2(d["x"], d["latent"], seed))
                for row in estimate_all(d, seed, args.prob, tuple(args.estimators)):
                    rows.append({"design": design, "rep": rep, "ate": d["ate"], **row})
            recovery[design] = {"mean": float(np.mean(r2)), "min": float(np.min(r2))}
    results = pd.DataFrame(rows)
    print(
        json.dumps(
            {
                "benchmark": "confounding",
                "settings": {
                    "reps": args.reps,
                    "n_units": args.n_units,
                    "prob": args.prob,
                    "designs": args.designs,
                    "estimators": args.estimators,
                },
                "seconds": round(time.time() - started, 1),
                "recovery_r2": recovery,
                "results": summarize(results),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
