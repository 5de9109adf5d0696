"""Unit-CATE accuracy of imgcate against peers, on the same data in the same run.

Methods (every one sees the same units; the peers' features are the unit embedding plus the
trial's covariates):

- ``imgcate``: the effect-cluster model, ``fit(..., n_clusters=K)`` with NUTS; unit CATE is
  ``unit_effects()["tau_mean"]``, its 90% interval ``tau_5%`` .. ``tau_95%``;
- ``causal_forest_dml``: EconML ``CausalForestDML`` (gradient boosting nuisance models,
  ``discrete_treatment=True``); interval from ``effect_interval(alpha=0.1)``;
- ``bcf``: stochtree's Bayesian causal forest (``BCFModel.sample`` with the known propensity
  0.5 and stochtree's default trees and draws); unit CATE is the posterior mean of tau over the
  retained draws, its 90% interval the 5% and 95% quantiles of those draws. Skipped, with a
  note in the output, where stochtree cannot be imported;
- ``t_learner``: two gradient boosting regressors, CATE = mu1 - mu0 (no interval);
- ``kmeans_dim``: k-means of the (standardized) embeddings into K clusters, then the
  difference in means within each cluster with a normal (Neyman) 90% interval.

Datasets: simulated image-cluster trials (``imgcate.simulate.simulate_trial``, K = 2 and 3);
two trials the effect model was not built from (``imgcate.simulate.simulate_scenario``, 8
embedding features, imgcate fitted with K = 2): ``smooth_tanh`` (``effect="tanh"``,
``baseline="linear"``: smooth heterogeneity) and ``nonlinear_baseline`` (``effect="constant"``,
``baseline="quadratic"``: no heterogeneity, a nonlinear untreated outcome); and the Landsat
semi-synthetic trial (``imgcate.simulate.landsat_trial`` on the shipped scene,
``imgcate.datasets.landsat_path()``, chips -> random convolutional features).

Metrics per dataset and method: sqrt(PEHE) = RMSE of the unit CATE against the true conditional
effect, signed ATE error, coverage and mean width of the 90% unit intervals, RATE (AUTOC) of the
CATE as priority, and the fit time of the full-sample fit. PEHE, ATE error and coverage use
each method fitted on all units (in-sample unit effects, as a user would report them).

RATE: the scores are AIPW scores with the known propensity 0.5 and cross-fitted (5-fold,
out-of-fold) gradient boosting outcome models mu0, mu1 on the same features, shared by all
methods. The priority is each method's 2-fold *out-of-fold* CATE (fit on one half, predict the
other), because an in-sample CATE reuses the outcome noise that is also in the scores and
inflates the AUTOC of overfitting learners. The ``oracle`` row ranks by the true CATE.

Prints one JSON object. Seeds are fixed, so the output is the same every run up to timing:

    python benchmarks/peers.py            # n = 1,000; seeds 0, 1 per simulated design; Landsat
    python benchmarks/peers.py --quick    # n = 300; seed 0 only; shorter chains (a smoke run)
    python benchmarks/peers.py --datasets sim_K2,sim_K3   # the simulated cluster trials only

Needs the ``bench`` extra (``pip install -e '.[bench]'``, i.e. EconML and stochtree); the
imgcate package itself never imports either.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
import warnings
from dataclasses import dataclass

import arviz as az
import numpy as np
from scipy import stats
from sklearn.cluster import KMeans
from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor
from sklearn.model_selection import KFold

from imgcate.datasets import landsat_path
from imgcate.errors import ConvergenceWarning
from imgcate.evaluate import aipw_scores, rate
from imgcate.inference import fit

PROB = 0.9
PROPENSITY = 0.5
METHODS = ("imgcate", "causal_forest_dml", "bcf", "t_learner", "kmeans_dim")
LANDSAT = landsat_path()


@dataclass
class Dataset:
    """One benchmark dataset: trial, embeddings, features for the peers, truth."""

    name: str
    trial: object
    embeddings: object
    n_clusters: int
    cate: np.ndarray  # true conditional effect per unit (trial order)
    ate: float  # true (sample) average effect
    info: dict

    @property
    def unit_embedding(self) -> np.ndarray:
        return self.embeddings.for_keys(self.trial.image_keys)

    @property
    def features(self) -> np.ndarray:
        return np.column_stack([self.unit_embedding, self.trial.covariate_matrix])


@dataclass
class Estimate:
    """A method's unit CATE, optional interval, ATE and fit time."""

    cate: np.ndarray
    lower: np.ndarray | None
    upper: np.ndarray | None
    ate: float
    seconds: float
    extra: dict


# --------------------------------------------------------------------------- datasets


def simulated(seed: int, n_units: int, n_clusters: int) -> Dataset:
    from imgcate.simulate import simulate_trial

    sim = simulate_trial(seed, n_units, n_clusters)
    return Dataset(
        name=f"sim_K{n_clusters}_seed{seed}",
        trial=sim.trial,
        embeddings=sim.embeddings,
        n_clusters=n_clusters,
        cate=np.asarray(sim.truth.cate, float),
        ate=float(sim.truth.ate),
        info={
            "source": "simulate_trial",
            "seed": seed,
            "n_units": n_units,
            "n_features": int(sim.embeddings.values.shape[1]),
            "tau_cluster": np.asarray(sim.truth.tau_cluster).tolist(),
            "truth": "truth.cate = sum_k P(k | embedding) tau_k",
        },
    )


def scenario(name: str, seed: int, n_units: int, effect: str, baseline: str) -> Dataset:
    from imgcate.simulate import simulate_scenario

    sim = simulate_scenario(seed, effect=effect, baseline=baseline, n_units=n_units, n_features=8)
    cate = np.asarray(sim.truth.cate, float)
    return Dataset(
        name=f"{name}_seed{seed}",
        trial=sim.trial,
        embeddings=sim.embeddings,
        n_clusters=2,
        cate=cate,
        ate=float(cate.mean()),
        info={
            "source": f"simulate_scenario(effect={effect!r}, baseline={baseline!r})",
            "seed": seed,
            "n_units": n_units,
            "n_features": int(sim.embeddings.values.shape[1]),
            "truth": "truth.cate = the effect function of the latent image coordinates",
        },
    )


def landsat(seed: int, n_units: int) -> Dataset:
    from imgcate.chips import extract_chips
    from imgcate.embeddings import embed
    from imgcate.simulate import landsat_trial

    sim = landsat_trial(
        LANDSAT, seed=seed, n_units=n_units, n_clusters=2, chip_size=16, margin=0.05
    )
    chips = extract_chips(sim.trial, LANDSAT, 16)
    emb = embed(chips, n_features=256, n_components=16, seed=seed)
    tau = np.asarray(sim.truth.tau_unit, float)
    return Dataset(
        name=f"landsat_K2_seed{seed}",
        trial=sim.trial,
        embeddings=emb,
        n_clusters=2,
        cate=tau,
        ate=float(tau.mean()),
        info={
            "source": "landsat_trial (L7_ETMs.tif, chips 16 px, rcf 256 -> 16 PCA)",
            "seed": seed,
            "n_units": n_units,
            "tau_cluster": np.asarray(sim.truth.tau_cluster).tolist(),
            "truth": "truth.tau_unit = tau_cluster[digitize(vegetated share of the chip)], "
            "a deterministic function of the chip",
        },
    )


# --------------------------------------------------------------------------- methods


def run_imgcate(data: Dataset, chains: int, draws: int, seed: int) -> Estimate:
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        result = fit(
            data.trial,
            data.embeddings,
            n_clusters=data.n_clusters,
            seed=seed,
            num_warmup=draws,
            num_samples=draws,
            num_chains=chains,
        )
        units = result.unit_effects(PROB)
        ate = float(result.ate(PROB).loc["model_implied", "estimate"])
    seconds = time.perf_counter() - start
    assert np.array_equal(units["unit"].to_numpy(), data.trial.ids)
    n_div = int(result.idata.sample_stats["diverging"].values.sum())
    diag = result.diagnostics()
    return Estimate(
        cate=units["tau_mean"].to_numpy(),
        lower=units["tau_5%"].to_numpy(),
        upper=units["tau_95%"].to_numpy(),
        ate=ate,
        seconds=seconds,
        extra={
            "chains": chains,
            "warmup": draws,
            "draws": draws,
            "divergences": n_div,
            "max_r_hat": _r(diag["r_hat"].max(), 3),
            "convergence_warnings": sum(issubclass(w.category, ConvergenceWarning) for w in caught),
        },
    )


def _gbr(seed: int) -> GradientBoostingRegressor:
    return GradientBoostingRegressor(
        n_estimators=200, max_depth=3, learning_rate=0.05, subsample=0.8, random_state=seed
    )


def _forest(n_trees: int, seed: int):
    from econml.dml import CausalForestDML

    return CausalForestDML(
        model_y=_gbr(seed),
        model_t=GradientBoostingClassifier(n_estimators=100, max_depth=2, random_state=seed),
        discrete_treatment=True,
        cv=5,
        n_estimators=n_trees,
        min_samples_leaf=5,
        random_state=seed,
        n_jobs=1,
    )


def run_forest(data: Dataset, n_trees: int, seed: int) -> Estimate:
    x = data.features
    y, t = data.trial.outcome_array, data.trial.treatment_array
    start = time.perf_counter()
    est = _forest(n_trees, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(y, t, X=x)
        cate = est.effect(x)
        lower, upper = est.effect_interval(x, alpha=1 - PROB)
    seconds = time.perf_counter() - start
    return Estimate(
        cate=cate,
        lower=lower,
        upper=upper,
        ate=float(cate.mean()),
        seconds=seconds,
        extra={"n_estimators": n_trees, "cv": 5, "nuisance": "GradientBoosting (y: reg, t: clf)"},
    )


def bcf_missing() -> str | None:
    """Why stochtree's BCF cannot run here, or None where it can."""
    try:
        import stochtree  # noqa: F401
    except Exception as err:  # an import of a compiled extension can fail in many ways
        return (
            f"bcf not run: stochtree cannot be imported ({err!r}); "
            "pip install 'stochtree>=0.4.5' (or the bench extra)"
        )
    return None


def _bcf_tau(
    x: np.ndarray,
    t: np.ndarray,
    y: np.ndarray,
    seed: int,
    new: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, dict]:
    """Posterior draws of tau, shape (unit, draw), and the settings.

    The draws are at the training units, or at ``new = (features, treatment)`` (the CATE does
    not depend on the treatment given; stochtree's ``predict`` asks for it).
    """
    from importlib.metadata import version

    from stochtree import BCFModel

    model = BCFModel()
    model.sample(
        X_train=x,
        Z_train=t,
        y_train=y,
        propensity_train=np.full(len(y), PROPENSITY),
        general_params={"random_seed": seed},
    )
    if new is None:
        draws = model.tau_hat_train
    else:
        draws = model.predict(
            X=new[0],
            Z=new[1],
            propensity=np.full(len(new[0]), PROPENSITY),
            type="posterior",
            terms="cate",
        )
    settings = {
        "stochtree": version("stochtree"),
        "num_gfr": model.num_gfr,
        "num_burnin": model.num_burnin,
        "num_mcmc": model.num_mcmc,
        "retained_draws": model.num_samples,
        "trees": "stochtree defaults (prognostic 250, treatment effect 100)",
        "propensity": PROPENSITY,
        "random_seed": seed,
    }
    return np.asarray(draws, float).reshape(len(draws), -1), settings


def run_bcf(data: Dataset, seed: int) -> Estimate:
    x = data.features
    y, t = data.trial.outcome_array, data.trial.treatment_array
    start = time.perf_counter()
    draws, settings = _bcf_tau(x, t, y, seed)
    cate = draws.mean(1)
    lower, upper = np.quantile(draws, [(1 - PROB) / 2, (1 + PROB) / 2], axis=1)
    seconds = time.perf_counter() - start
    return Estimate(
        cate=cate, lower=lower, upper=upper, ate=float(cate.mean()), seconds=seconds, extra=settings
    )


def run_t_learner(data: Dataset, seed: int) -> Estimate:
    x = data.features
    y, t = data.trial.outcome_array, data.trial.treatment_array
    start = time.perf_counter()
    mu1 = _gbr(seed).fit(x[t == 1], y[t == 1]).predict(x)
    mu0 = _gbr(seed).fit(x[t == 0], y[t == 0]).predict(x)
    cate = mu1 - mu0
    seconds = time.perf_counter() - start
    return Estimate(
        cate=cate,
        lower=None,
        upper=None,
        ate=float(cate.mean()),
        seconds=seconds,
        extra={"model": "GradientBoostingRegressor x 2, in-sample predictions"},
    )


def run_kmeans(data: Dataset, seed: int) -> Estimate:
    e = data.unit_embedding
    y, t = data.trial.outcome_array, data.trial.treatment_array
    z = stats.norm.ppf(0.5 + PROB / 2)
    start = time.perf_counter()
    labels = KMeans(data.n_clusters, n_init=10, random_state=seed).fit_predict(
        (e - e.mean(0)) / e.std(0)
    )
    cate, lower, upper = (np.full(len(y), np.nan) for _ in range(3))
    sizes = []
    for k in range(data.n_clusters):
        m = labels == k
        y1, y0 = y[m & (t == 1)], y[m & (t == 0)]
        sizes.append(int(m.sum()))
        if len(y1) < 2 or len(y0) < 2:
            continue
        diff = y1.mean() - y0.mean()
        se = np.sqrt(y1.var(ddof=1) / len(y1) + y0.var(ddof=1) / len(y0))
        cate[m], lower[m], upper[m] = diff, diff - z * se, diff + z * se
    seconds = time.perf_counter() - start
    return Estimate(
        cate=cate,
        lower=lower,
        upper=upper,
        ate=float(np.nanmean(cate)),
        seconds=seconds,
        extra={"cluster_sizes": sorted(sizes)},
    )


# ------------------------------------------------ out-of-fold CATE (the RATE priorities)


def oof_imgcate(
    data: Dataset, train: np.ndarray, test: np.ndarray, chains: int, draws: int, seed: int
) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = fit(
            data.trial.subset(train),
            data.embeddings,
            n_clusters=data.n_clusters,
            seed=seed,
            num_warmup=draws,
            num_samples=draws,
            num_chains=chains,
        )
    return result.predict(data.unit_embedding[test]).cate.mean(0)


def oof_forest(
    data: Dataset, train: np.ndarray, test: np.ndarray, n_trees: int, seed: int
) -> np.ndarray:
    x, y, t = data.features, data.trial.outcome_array, data.trial.treatment_array
    est = _forest(n_trees, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(y[train], t[train], X=x[train])
        return est.effect(x[test])


def oof_bcf(data: Dataset, train: np.ndarray, test: np.ndarray, seed: int) -> np.ndarray:
    x, y, t = data.features, data.trial.outcome_array, data.trial.treatment_array
    draws, _ = _bcf_tau(x[train], t[train], y[train], seed, new=(x[test], t[test]))
    return draws.mean(1)


def oof_t_learner(data: Dataset, train: np.ndarray, test: np.ndarray, seed: int) -> np.ndarray:
    x, y, t = data.features, data.trial.outcome_array, data.trial.treatment_array
    tr1, tr0 = train[t[train] == 1], train[t[train] == 0]
    return _gbr(seed).fit(x[tr1], y[tr1]).predict(x[test]) - _gbr(seed).fit(x[tr0], y[tr0]).predict(
        x[test]
    )


def oof_kmeans(data: Dataset, train: np.ndarray, test: np.ndarray, seed: int) -> np.ndarray:
    e, y, t = data.unit_embedding, data.trial.outcome_array, data.trial.treatment_array
    mean, sd = e[train].mean(0), e[train].std(0)
    km = KMeans(data.n_clusters, n_init=10, random_state=seed).fit((e[train] - mean) / sd)
    lab_tr, lab_te = km.labels_, km.predict((e[test] - mean) / sd)
    ytr, ttr = y[train], t[train]
    diff = np.full(data.n_clusters, np.nan)
    for k in range(data.n_clusters):
        m = lab_tr == k
        if (m & (ttr == 1)).sum() and (m & (ttr == 0)).sum():
            diff[k] = ytr[m & (ttr == 1)].mean() - ytr[m & (ttr == 0)].mean()
    return diff[lab_te]


def out_of_fold(data: Dataset, args: argparse.Namespace, seed: int) -> dict[str, np.ndarray]:
    """2-fold cross-fitted CATE of every method: fit on one half, predict the other."""
    n = data.trial.n_units
    out = {m: np.full(n, np.nan) for m in args.methods}
    for train, test in KFold(2, shuffle=True, random_state=seed).split(np.zeros(n)):
        out["imgcate"][test] = oof_imgcate(data, train, test, 1, args.oof_draws, seed)
        out["causal_forest_dml"][test] = oof_forest(data, train, test, args.trees, seed)
        if "bcf" in out:
            out["bcf"][test] = oof_bcf(data, train, test, seed)
        out["t_learner"][test] = oof_t_learner(data, train, test, seed)
        out["kmeans_dim"][test] = oof_kmeans(data, train, test, seed)
    return out


# --------------------------------------------------------------------------- scoring


def rate_scores(data: Dataset, seed: int) -> np.ndarray:
    """AIPW scores, known propensity 0.5, cross-fitted (5-fold) gradient boosting mu0/mu1."""
    x = data.features
    y, t = data.trial.outcome_array, data.trial.treatment_array
    mu0, mu1 = np.zeros(len(y)), np.zeros(len(y))
    for train, test in KFold(5, shuffle=True, random_state=seed).split(x):
        tr1, tr0 = train[t[train] == 1], train[t[train] == 0]
        mu1[test] = _gbr(seed).fit(x[tr1], y[tr1]).predict(x[test])
        mu0[test] = _gbr(seed).fit(x[tr0], y[tr0]).predict(x[test])
    return aipw_scores(y, t, PROPENSITY, mu0, mu1)


def _r(value, digits: int = 4):
    return None if value is None or not np.isfinite(value) else round(float(value), digits)


def score(
    data: Dataset, est: Estimate, priority: np.ndarray, scores: np.ndarray, seed: int
) -> dict:
    ok = np.isfinite(est.cate)
    pehe = np.sqrt(np.mean((est.cate[ok] - data.cate[ok]) ** 2))
    out = {"sqrt_pehe": _r(pehe), "ate_error": _r(est.ate - data.ate)}
    if est.lower is None:
        out["coverage_90"] = None
        out["interval_width"] = None
    else:
        inside = (est.lower[ok] <= data.cate[ok]) & (data.cate[ok] <= est.upper[ok])
        out["coverage_90"] = _r(inside.mean(), 3)
        out["interval_width"] = _r(np.mean(est.upper[ok] - est.lower[ok]), 3)
    priority = np.where(np.isfinite(priority), priority, np.nanmean(priority))
    res = rate(priority, scores, target="AUTOC", n_bootstrap=200, seed=seed)
    out["rate_autoc"] = _r(res.estimate)
    out["rate_autoc_se"] = _r(res.std_err)
    out["fit_seconds"] = round(est.seconds, 2)
    if not ok.all():
        out["units_without_estimate"] = int((~ok).sum())
    out.update(est.extra)
    return out


def bench(data: Dataset, args: argparse.Namespace) -> dict:
    seed = 0
    scores = rate_scores(data, seed)
    methods = {
        "imgcate": run_imgcate(data, args.chains, args.draws, seed),
        "causal_forest_dml": run_forest(data, args.trees, seed),
        "bcf": run_bcf(data, seed) if "bcf" in args.methods else None,
        "t_learner": run_t_learner(data, seed),
        "kmeans_dim": run_kmeans(data, seed),
    }
    methods = {name: est for name, est in methods.items() if est is not None}
    oof = out_of_fold(data, args, seed)
    table = {name: score(data, est, oof[name], scores, seed) for name, est in methods.items()}
    oracle = rate(data.cate, scores, target="AUTOC", n_bootstrap=200, seed=seed)
    table["oracle"] = {"rate_autoc": _r(oracle.estimate), "rate_autoc_se": _r(oracle.std_err)}
    return {
        "dataset": data.name,
        **data.info,
        "true_ate": _r(data.ate),
        "true_cate_sd": _r(data.cate.std()),
        "methods": table,
    }


def summarize(results: list[dict], methods: list[str]) -> dict:
    """Mean over seeds per dataset family; the issue's target on the cluster trials."""
    families: dict[str, list[dict]] = {}
    for r in results:
        if "methods" in r:
            families.setdefault(r["dataset"].rsplit("_seed", 1)[0], []).append(r)
    out = {}
    for fam, rows in families.items():
        entry = {}
        for m in methods:
            vals = [r["methods"][m] for r in rows]
            cov = [v["coverage_90"] for v in vals if v["coverage_90"] is not None]
            width = [v["interval_width"] for v in vals if v["interval_width"] is not None]
            entry[m] = {
                "sqrt_pehe": _r(np.mean([v["sqrt_pehe"] for v in vals])),
                "abs_ate_error": _r(np.mean([abs(v["ate_error"]) for v in vals])),
                "coverage_90": _r(np.mean(cov), 3) if cov else None,
                "interval_width": _r(np.mean(width), 3) if width else None,
                "rate_autoc": _r(np.mean([v["rate_autoc"] for v in vals])),
                "fit_seconds": round(float(np.mean([v["fit_seconds"] for v in vals])), 2),
            }
        ratio = entry["imgcate"]["sqrt_pehe"] / entry["causal_forest_dml"]["sqrt_pehe"]
        entry["pehe_ratio_imgcate_to_forest"] = _r(ratio, 3)
        entry["n_datasets"] = len(rows)
        out[fam] = entry
    return out


#: The ``simulate_scenario`` families: (name, effect, baseline).
SCENARIO_FAMILIES = (
    ("smooth_tanh", "tanh", "linear"),
    ("nonlinear_baseline", "constant", "quadratic"),
)
#: Dataset families, in the order they run (``--datasets``).
DATASETS = ("sim_K2", "sim_K3", *(name for name, _, _ in SCENARIO_FAMILIES), "landsat_K2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: n=300, seed 0 only, NUTS 2 x 200, 200 trees",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=2,
        help="simulated trials per K: seeds 0..N-1 (default 2; about 45 s each)",
    )
    parser.add_argument(
        "--datasets",
        default=",".join(DATASETS),
        help=f"comma-separated families to run (default all: {','.join(DATASETS)})",
    )
    args = parser.parse_args()
    if args.seeds < 1:
        parser.error("--seeds must be >= 1")
    families = [f.strip() for f in args.datasets.split(",") if f.strip()]
    unknown = sorted(set(families) - set(DATASETS))
    if unknown or not families:
        parser.error(f"--datasets: unknown {unknown}; choose from {','.join(DATASETS)}")
    # the 1-chain fold fits have no R-hat; arviz logs that through its own (non-global) logger
    getattr(az, "_log", logging.getLogger("arviz")).setLevel(logging.ERROR)
    if args.quick:
        n_units, seeds = 300, [0]
        args.chains, args.draws, args.oof_draws, args.trees = 2, 200, 150, 200
    else:
        n_units, seeds = 1000, list(range(args.seeds))
        args.chains, args.draws, args.oof_draws, args.trees = 2, 500, 300, 500
    skipped = {}
    args.methods = list(METHODS)
    if (why := bcf_missing()) is not None:
        print(why, file=sys.stderr)
        skipped["bcf"] = why
        args.methods.remove("bcf")
    start = time.perf_counter()
    results = []
    for k in (2, 3):
        if f"sim_K{k}" in families:
            for s in seeds:
                results.append(bench(simulated(s, n_units, k), args))
    for name, effect, baseline in SCENARIO_FAMILIES:
        if name in families:
            for s in seeds:
                results.append(bench(scenario(name, s, n_units, effect, baseline), args))
    if "landsat_K2" in families:
        results.append(bench(landsat(0, n_units), args))
    print(
        json.dumps(
            {
                "benchmark": "peers",
                "quick": args.quick,
                "interval_prob": PROB,
                "settings": {
                    "datasets": families,
                    "n_units": n_units,
                    "seeds": seeds,
                    "nuts_chains": args.chains,
                    "nuts_warmup": args.draws,
                    "nuts_draws": args.draws,
                    "forest_trees": args.trees,
                    "bcf": "stochtree BCFModel defaults: 5 grow-from-root warm-start sweeps, "
                    "0 burn-in, 100 MCMC draws kept; 250 prognostic and 100 treatment-effect "
                    "trees; known propensity 0.5; random_seed 0 (per-fit settings in the "
                    "bcf rows)"
                    if "bcf" in args.methods
                    else None,
                },
                "methods": args.methods,
                "skipped": skipped,
                "rate": "AUTOC; scores = AIPW with known propensity 0.5 and 5-fold cross-fitted "
                "GradientBoosting mu0/mu1 on embedding + covariates (shared by all methods); "
                "priority = each method's 2-fold out-of-fold CATE (imgcate folds: NUTS 1 x "
                f"{args.oof_draws}); oracle = true CATE as priority",
                "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                "summary": summarize(results, args.methods),
                "datasets": results,
                "total_seconds": round(time.perf_counter() - start, 1),
            },
            indent=2,
            allow_nan=False,
        )
    )


if __name__ == "__main__":
    main()
