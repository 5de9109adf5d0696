"""Diagnostics reported with every fit: R-hat, bulk and tail ESS, divergences, and chains that
settled in different modes, over everything users read (the unit CATE and the membership
weights included); and a posterior predictive check of the outcome's distribution per arm."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import arviz as az

#: Posterior variables whose convergence is checked (raw non-centred weights are not read).
CHECKED = (
    "alpha",
    "hurdle_alpha",
    "beta",
    "hurdle_beta",
    "tau_cluster",
    "sigma",
    "membership_intercept",
    "membership",
    "ate",
    "cluster_share",
    "effect_share_clusters",
    "membership_dependence",
    "nu",
    "stratum_sd",
    "group_sd",
)

#: A chain whose mean log density is this far below the best chain's sits in another mode.
MODE_GAP = 5.0


def diagnostics_table(idata: az.InferenceData) -> pd.DataFrame:
    """R-hat and bulk/tail ESS, one row per scalar as ``az.summary`` names them, plus one row
    ``tau_unit[worst]`` with the worst value over the units' CATE (R-hat NaN with one chain)."""
    import arviz as az

    names = [v for v in CHECKED if v in idata.posterior]
    post = idata.posterior
    n_chains = post.sizes["chain"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = {}
        for method in ("bulk", "tail"):
            ess = az.ess(post[names], method=method)
            for name in names:
                for label, value in _labelled(name, ess[name].values):
                    rows.setdefault(label, {})[f"ess_{method}"] = float(value)
        if n_chains > 1:
            rhat = az.rhat(post[names])
            for name in names:
                for label, value in _labelled(name, rhat[name].values):
                    rows[label]["r_hat"] = float(value)
        if "tau_unit" in post:
            unit = post[["tau_unit"]]
            worst = {
                "ess_bulk": float(az.ess(unit, method="bulk")["tau_unit"].min()),
                "ess_tail": float(az.ess(unit, method="tail")["tau_unit"].min()),
            }
            if n_chains > 1:
                worst["r_hat"] = float(az.rhat(unit)["tau_unit"].max())
            rows["tau_unit[worst]"] = worst
    table = pd.DataFrame.from_dict(rows, orient="index")
    if "r_hat" not in table:
        table["r_hat"] = np.nan
    return table[["r_hat", "ess_bulk", "ess_tail"]]


def chain_modes(idata: az.InferenceData) -> list[int]:
    """Chains whose mean log density lies more than :data:`MODE_GAP` below the best chain's
    (empty when the chains agree or the log density was not recorded)."""
    stats = idata.get("sample_stats")
    if stats is None or "lp" not in stats or stats.sizes.get("chain", 1) < 2:
        return []
    means = stats["lp"].values.mean(1)
    return [int(c) for c in np.flatnonzero(means < means.max() - MODE_GAP)]


def convergence_problems(idata: az.InferenceData) -> list[str]:
    """What is wrong with the sampling, in words: chains in different modes, divergences,
    R-hat > 1.01, bulk ESS below 100 per chain (empty when nothing is)."""
    problems = []
    stuck = chain_modes(idata)
    if stuck:
        problems.append(
            f"chains {stuck} settled in a mode with a clearly lower log density than the best "
            "chain: the posterior has several modes and the results mix them. Compare fewer "
            "clusters (imgcate.compare_clusters), raise init_restarts, or drop those chains "
            "(idata.sel(chain=...))"
        )
    stats = idata.get("sample_stats")
    if stats is not None and "diverging" in stats:
        n_div = int(stats["diverging"].values.sum())
        if n_div:
            problems.append(f"{n_div} divergent transitions (raise target_accept)")
    n_chains = idata.posterior.sizes["chain"]
    table = diagnostics_table(idata)
    if n_chains > 1:
        bad = table[table["r_hat"] > 1.01]
        if len(bad):
            problems.append(
                f"R-hat > 1.01 for {list(bad.index[:5])} (run longer or more chains; weakly "
                "identified clusters if it persists: compare fewer)"
            )
    low = table[table["ess_bulk"] < 100 * n_chains]
    if len(low):
        problems.append(
            f"bulk ESS below {100 * n_chains} for {list(low.index[:5])} "
            "(raise num_samples / --draws)"
        )
    return problems


def _labelled(name: str, values: np.ndarray):
    """(label, value) pairs named as az.summary names them: ``tau[0]``, ``beta[1, 0]``."""
    values = np.asarray(values)
    if values.ndim == 0:
        yield name, values
        return
    for index in np.ndindex(values.shape):
        yield f"{name}[{', '.join(map(str, index))}]", values[index]


#: A point mass: at least this share of the observed outcomes sits at their minimum.
FLOOR_MASS = 0.02
#: Posterior predictive p-value below which a statistic counts as missed.
CHECK_LEVEL = 0.01


def _statistics(y: np.ndarray, floor: float | None, tol: float = 0.0) -> dict[str, np.ndarray]:
    """Statistics of outcomes ``y`` (..., unit) over their last axis (NaN where a draw's
    values are too large for them)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return _statistics_of(y, floor, tol)


def _statistics_of(y: np.ndarray, floor: float | None, tol: float) -> dict[str, np.ndarray]:
    mean = y.mean(-1)
    sd = y.std(-1)
    centred = (y - mean[..., None]) / np.where(sd > 0, sd, 1.0)[..., None]
    stats = {
        "mean": mean,
        "sd": sd,
        "q10": np.quantile(y, 0.1, axis=-1),
        "q50": np.quantile(y, 0.5, axis=-1),
        "q90": np.quantile(y, 0.9, axis=-1),
        "skew": (centred**3).mean(-1),
    }
    if floor is not None:
        stats["share_at_floor"] = (np.abs(y - floor) <= tol).mean(-1)
    return stats


def outcome_check(
    observed: np.ndarray, replicated: np.ndarray, treatment: np.ndarray
) -> pd.DataFrame:
    """Posterior predictive check of the outcome's distribution in each arm.

    Parameters
    ----------
    observed : ndarray (unit,)
        The outcome.
    replicated : ndarray (sample, unit)
        Outcomes replicated from the posterior (the ``posterior_predictive`` group), same scale.
    treatment : ndarray (unit,)
        0/1 arm of each unit.

    Returns
    -------
    pandas.DataFrame
        One row per arm and statistic (mean, sd, 10/50/90 % quantiles, skewness and, when at
        least 2 % of the outcomes sit at their minimum, the share exactly at that floor): the
        observed value, the replicated mean and 99 % interval, the two-sided posterior
        predictive p-value ``2 min(P(rep >= obs), P(rep <= obs))``, ``draws`` (replicated data
        sets whose statistic is finite: a heavy-tailed family can overflow, and those are left
        out) and ``missed`` (p < 0.01).
    """
    observed = np.asarray(observed, dtype=float)
    replicated = np.asarray(replicated, dtype=float)
    floor = float(observed.min())
    # a point mass: values at the floor to float32 rounding (replicated draws are float32)
    tol = 1e-5 * max(float(observed.std()), abs(floor), 1e-12)
    has_floor = np.mean(np.abs(observed - floor) <= tol) >= FLOOR_MASS
    rows = []
    for arm, name in ((0, "control"), (1, "treated")):
        units = np.asarray(treatment) == arm
        if units.sum() < 2:
            continue
        obs = _statistics(observed[units], floor if has_floor else None, tol)
        rep = _statistics(replicated[:, units], floor if has_floor else None, tol)
        for stat, value in obs.items():
            draws = rep[stat][np.isfinite(rep[stat])]
            p = 2 * min((draws >= value).mean(), (draws <= value).mean()) if len(draws) else 1.0
            rows.append(
                {
                    "arm": name,
                    "statistic": stat,
                    "observed": float(value),
                    "replicated": float(draws.mean()) if len(draws) else np.nan,
                    "0.5%": float(np.quantile(draws, 0.005)) if len(draws) else np.nan,
                    "99.5%": float(np.quantile(draws, 0.995)) if len(draws) else np.nan,
                    "p_value": float(min(p, 1.0)),
                    "draws": int(len(draws)),
                }
            )
    table = pd.DataFrame(rows).set_index(["arm", "statistic"])
    table["missed"] = table["p_value"] < CHECK_LEVEL
    return table


def outcome_problems(table: pd.DataFrame, likelihood: str) -> list[str]:
    """The missed statistics of :func:`outcome_check`, in words (empty when none is)."""
    missed = table[table["missed"]]
    if missed.empty:
        return []
    first = {"share_at_floor": 0, "skew": 1}  # the shape first: it names the family to try
    rows = sorted(missed.iterrows(), key=lambda item: first.get(item[0][1], 2))
    parts = [
        f"{arm} {stat} observed {row.observed:.3g}, replicated {row.replicated:.3g}"
        for (arm, stat), row in rows
    ]
    stats = {stat for _, stat in missed.index}
    hint = ""
    if "share_at_floor" in stats and likelihood not in ("hurdle", "censored"):
        hint = " A mass at the floor: try likelihood='hurdle' or 'censored'."
    elif "skew" in stats and likelihood in ("gaussian", "student_t"):
        hint = " Skewed: try likelihood='hurdle' (positive outcomes) or transform the outcome."
    elif "skew" in stats or "sd" in stats:
        hint = (
            " The tail is not the family's (e.g. a positive part less skewed than a "
            "log-normal): effects on the mean lean on that tail."
        )
    return [
        f"the {likelihood} likelihood does not reproduce the outcome ({'; '.join(parts[:4])})."
        f"{hint} Effects are differences of the model's means, so read them with care "
        "(EffectFit.check_outcome() has the table)."
    ]
