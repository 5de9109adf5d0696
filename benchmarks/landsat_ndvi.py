"""Unit-CATE coverage on a new user's trial on the Landsat scene: a smooth effect of chip NDVI
over a baseline that the covariate describes only linearly.

A trial the package's simulators do not make (a helper built it as a new user would, and it
covered far less than ``landsat_coverage.py --ramp``): 500 villages at random land pixels of the
shipped scene (chips mostly water are skipped), half treated; the effect
``0.5 + 1.5 expit(1.5 z)`` with ``z`` the standardized mean NDVI of the village's 16 x 16-px
chip; the baseline ``1 + 1.2 sin(1.8 e) + 0.5 e^2`` with ``e`` the standardized elevation
(the shipped elevation model), given to the fit as a linear covariate; Gaussian noise of sd 1.
Chips are embedded with random convolutional features (``--features``, 128) reduced to
``--components`` (8), and fitted with ``fit``'s defaults and K = 2.

With ``--targeting T`` (0: the randomized trial above) the study is observational, as a
second new user's was: treatment ``Bernoulli(expit(T z - 0.3))``, targeted on the chip's NDVI,
and the baseline gets ``+ 0.8 z`` too, so that the difference in means is confounded; the fit
is given the propensity the package estimates (``estimate_propensity``, covariate balancing,
on the embedding and the elevation, ``C="auto"``; ``--true-propensity``: the true one). Rows
then add the AIPW estimate that ``EffectFit.ate()`` puts beside the model's, unit coverage by
band of the true propensity and outside the band where ``fit`` warns of limited overlap, and
``ate(trim="crump")``'s model and AIPW rows on the units Crump et al.'s rule keeps by the
scores the fit was given (``trimmed_*``, against those units' mean effect).

Prints JSON: one row per trial (coverage of the 90 % unit intervals, by third of the true
effects too; sqrt(PEHE); the sd of the posterior means against the truth's; the model-implied
ATE and its interval against the sample ATE), then a summary.

    python benchmarks/landsat_ndvi.py                      # seeds 0-3, 2 processes
    python benchmarks/landsat_ndvi.py --components 16 --features 256   # the default encoder
    python benchmarks/landsat_ndvi.py --targeting 1.3      # observational, targeted on NDVI
    python benchmarks/landsat_ndvi.py --quick              # seed 0, 2 x 200 draws (smoke run)
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
from landsat_coverage import coverage_by_thirds, summarize  # benchmarks/ is sys.path[0]

CHIP, UNITS, PROB = 16, 500, 0.9


#: A trimmed row's estimate and 90 % interval (``trimmed_ate``, ``trimmed_aipw``).
COLUMNS = ("estimate", "5%", "95%")

#: Bands of the true propensity over which an observational study's unit coverage is given.
PROPENSITY_BANDS = ((0.0, 0.2), (0.2, 0.8), (0.8, 1.0))


def trial_table(seed: int, targeting: float = 0.0, effect: str = "ndvi"):
    """The trial's units table (lon, lat, treatment, outcome, elevation), its true effects and
    its true propensities (``targeting`` 0: a randomized half; ``effect``: see ``--effect``)."""
    import pandas as pd
    import rasterio
    from rasterio.warp import transform as warp
    from scipy.special import expit

    from imgcate.datasets import elevation_path, landsat_path
    from imgcate.simulate.landsat import ndvi

    rng = np.random.default_rng([seed, 2024])
    with rasterio.open(landsat_path()) as src:
        bands = src.read().astype(float)
        transform, crs, height, width = src.transform, src.crs, src.height, src.width
    index, nir = ndvi(bands[2], bands[3]), bands[3]
    rows, cols = [], []
    while len(rows) < UNITS:
        r, c = rng.integers(CHIP, height - CHIP), rng.integers(CHIP, width - CHIP)
        if (nir[r - 8 : r + 8, c - 8 : c + 8] < 20).mean() > 0.5:  # mostly water
            continue
        rows.append(r)
        cols.append(c)
    rows, cols = np.array(rows), np.array(cols)
    chip_ndvi = np.array(
        [index[r - 8 : r + 8, c - 8 : c + 8].mean() for r, c in zip(rows, cols, strict=True)]
    )
    xs, ys = rasterio.transform.xy(transform, rows, cols)
    lon, lat = warp(crs, "EPSG:4326", np.asarray(xs), np.asarray(ys))
    with rasterio.open(elevation_path()) as dem:
        heights = dem.read(1).astype(float)
        er, ec = rasterio.transform.rowcol(dem.transform, xs, ys)
    elevation = heights[np.clip(er, 0, heights.shape[0] - 1), np.clip(ec, 0, heights.shape[1] - 1)]
    z = (chip_ndvi - np.median(chip_ndvi)) / chip_ndvi.std()
    tau = 0.5 + 1.5 * expit(1.5 * z)
    if effect == "constant":
        tau = np.full(UNITS, 1.3)
    elif effect == "texture":  # the chip's NIR texture: nearly uncorrelated with its NDVI
        rough = np.array(
            [nir[r - 8 : r + 8, c - 8 : c + 8].std() for r, c in zip(rows, cols, strict=True)]
        )
        tau = 0.5 + 1.5 * expit(1.5 * (rough - np.median(rough)) / rough.std())
    e = (elevation - elevation.mean()) / elevation.std()
    baseline = 1.0 + 1.2 * np.sin(1.8 * e) + 0.5 * e**2
    if targeting:
        propensity = expit(targeting * z - 0.3)
        treated = (rng.random(UNITS) < propensity).astype(int)
        baseline = baseline + 0.8 * z  # what targeting saw moves the outcome too
    else:
        propensity = np.full(UNITS, 0.5)
        treated = np.zeros(UNITS, int)
        treated[rng.permutation(UNITS)[: UNITS // 2]] = 1
    outcome = baseline + treated * tau + rng.normal(0, 1, UNITS)
    table = pd.DataFrame(
        {
            "village": [f"U{i:03d}" for i in range(UNITS)],
            "lon": lon,
            "lat": lat,
            "treatment": treated,
            "y": outcome,
            "elevation_m": elevation,
        }
    )
    return table, tau, propensity


def one_trial(
    seed: int,
    features: int,
    components: int,
    draws: dict,
    targeting=0.0,
    true_ps=False,
    effect="ndvi",
) -> dict:
    """Simulate, embed, fit and measure one trial (in a worker process); ``draws``: NUTS's
    settings where not ``fit``'s defaults; ``targeting``, ``true_ps``: an observational study
    (module docstring)."""
    import imgcate
    from imgcate.ates import outside_overlap
    from imgcate.confounding import estimate_propensity, trim
    from imgcate.datasets import landsat_path

    table, tau, propensity = trial_table(seed, targeting, effect)
    trial = imgcate.read_units(table, id="village", outcome="y", covariates=["elevation_m"])
    chips = imgcate.extract_chips(trial, landsat_path(), CHIP)
    embeddings = imgcate.embed(
        chips, "rcf", n_features=features, n_components=components, seed=seed
    )
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        given = None
        if targeting and true_ps:
            given = propensity
        elif targeting:  # estimated only where used: at strong targeting it may not balance
            features_ps = np.hstack([embeddings.for_keys(trial.image_keys), trial.covariate_matrix])
            given = estimate_propensity(
                features_ps, trial.treatment_array, seed=seed, C="auto"
            ).scores
        result = imgcate.fit(
            trial, embeddings, n_clusters=2, seed=seed, progress=False, propensity=given, **draws
        )
    seconds = time.perf_counter() - start
    units = result.unit_effects(prob=PROB)
    truth = tau[np.searchsorted(table["village"].to_numpy(), units["unit"].to_numpy())]
    low, high = units["tau_5%"].to_numpy(), units["tau_95%"].to_numpy()
    covered = (low <= truth) & (truth <= high)
    table_ate = result.ate(prob=PROB)
    ate = table_ate.loc["model_implied"]
    means = units["tau_mean"].to_numpy()
    extra = {}
    if targeting:
        dr = table_ate.loc["aipw"]
        p = propensity[np.searchsorted(table["village"].to_numpy(), units["unit"].to_numpy())]
        # where the arms overlap: Crump et al.'s rule on the scores the fit was given
        trimmed = result.ate(prob=PROB, trim="crump")
        keep = trim(units["propensity"].to_numpy(), rule="crump").keep
        kept_ate = float(truth[keep].mean())
        # the band fit warns of, by the true propensity (fit sees the scores it is given)
        outside = outside_overlap(p)
        extra = {
            "aipw": round(float(dr["estimate"]), 4),
            "aipw_interval": [round(float(dr["5%"]), 4), round(float(dr["95%"]), 4)],
            "trimmed_units": int(keep.sum()),
            "cover_trimmed_units": round(float(covered[keep].mean()), 4),
            "trimmed_sample_ate": round(kept_ate, 4),
            **{
                f"trimmed_{name}": [round(float(trimmed.loc[row, c]), 4) for c in COLUMNS]
                for name, row in (("ate", "model_implied"), ("aipw", "aipw"))
            },
            "cover_by_propensity": {
                f"{a}-{b}": [round(float(covered[(p >= a) & (p < b)].mean()), 4), int(n)]
                for a, b in PROPENSITY_BANDS
                if (n := ((p >= a) & (p < b)).sum())
            },
            "cover_outside_overlap": [
                round(float(covered[outside].mean()), 4) if outside.any() else None,
                int(outside.sum()),
            ],
            "cover_inside_overlap": round(float(covered[~outside].mean()), 4),
            "treated_share": round(float(trial.treatment_array.mean()), 4),
        }
    return {
        "seed": seed,
        "seconds": round(seconds, 1),
        "cover": round(float(covered.mean()), 4),
        **coverage_by_thirds(truth, covered),
        "sqrt_pehe": round(float(np.sqrt(np.mean((means - truth) ** 2))), 4),
        "sd_of_means": round(float(means.std()), 4),
        "ate": round(float(ate["estimate"]), 4),
        "ate_interval": [round(float(ate["5%"]), 4), round(float(ate["95%"]), 4)],
        "sample_ate": round(float(tau.mean()), 4),
        "membership_dependence": round(
            float(result.heterogeneity(PROB).loc["membership_dependence", "mean"]), 4
        ),
        "divergences": int(result.idata.sample_stats["diverging"].values.sum()),
        **extra,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--features", type=int, default=128, help="raw RCF features (128)")
    parser.add_argument("--components", type=int, default=8, help="components kept (8)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="seed 0, 2 chains x 200 draws")
    parser.add_argument("--targeting", type=float, default=0.0, help="0: randomized (0)")
    parser.add_argument(
        "--true-propensity", action="store_true", help="give the fit the true propensity"
    )
    parser.add_argument(
        "--effect",
        choices=["ndvi", "constant", "texture"],
        default="ndvi",
        help="the true effect: a curve in NDVI (default), 1.3 everywhere, or a curve in the "
        "chip's near-infrared texture (its sd), nearly uncorrelated with NDVI",
    )
    args = parser.parse_args(argv)
    if min(args.features, args.components, args.jobs) < 1 or min(args.seeds) < 0:
        parser.error("--features, --components and --jobs must be >= 1, seeds >= 0")
    draws = {}
    if args.quick:
        args.seeds = args.seeds[:1]
        draws = {"num_chains": 2, "num_warmup": 200, "num_samples": 200}
    header = {"benchmark": "landsat_ndvi", "python": platform.python_version(), **vars(args)}
    print(json.dumps(header), flush=True)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
        futures = [
            pool.submit(
                one_trial,
                s,
                args.features,
                args.components,
                draws,
                args.targeting,
                args.true_propensity,
                args.effect,
            )
            for s in args.seeds
        ]
        rows = []
        for future in futures:
            rows.append(future.result())
            print(json.dumps(rows[-1]), flush=True)
    summary = {
        **summarize(rows),
        "ate_covered": int(
            sum(lo <= r["sample_ate"] <= hi for r in rows for lo, hi in [r["ate_interval"]])
        ),
    }
    if args.targeting:
        summary["aipw_covered"] = int(
            sum(lo <= r["sample_ate"] <= hi for r in rows for lo, hi in [r["aipw_interval"]])
        )
        for name in ("ate", "aipw"):  # against the kept units' mean effect
            summary[f"trimmed_{name}_covered"] = int(
                sum(
                    r["trimmed_sample_ate"] - lo >= 0 >= r["trimmed_sample_ate"] - hi
                    for r in rows
                    for _, lo, hi in [r[f"trimmed_{name}"]]
                )
            )
        n_out = [r["cover_outside_overlap"][1] for r in rows]
        hits = sum(c * n for r in rows for c, n in [r["cover_outside_overlap"]] if n)
        summary["cover_outside_overlap"] = [round(hits / max(sum(n_out), 1), 4), sum(n_out)]
        summary["cover_inside_overlap_range"] = [
            min(r["cover_inside_overlap"] for r in rows),
            max(r["cover_inside_overlap"] for r in rows),
        ]
        summary["cover_outside_overlap_range"] = [
            min((c for c, n in (r["cover_outside_overlap"] for r in rows) if n), default=None),
            max((c for c, n in (r["cover_outside_overlap"] for r in rows) if n), default=None),
        ]
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
