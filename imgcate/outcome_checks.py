"""A posterior predictive check of the outcome's distribution in each arm (mean, spread,
quantiles, skewness, the share at a floor, the spread's dependence on the image), and the
family or noise scale to try where it misses."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

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


def spread_on_image(y: np.ndarray, centre: np.ndarray, design: np.ndarray) -> np.ndarray:
    """R² of the absolute deviations ``|y - centre|`` (..., unit) regressed on ``design``
    (unit, 1 + feature): how much of the outcome's spread about each unit's centre the image
    explains (about ``feature / unit`` where the noise does not depend on it). NaN for a row
    of ``y`` with a value too large for it (an overflowing replicated draw)."""
    with np.errstate(all="ignore"):
        resid = np.abs(y - centre)
        explained = resid @ np.linalg.pinv(design).T @ design.T
        centred = resid - resid.mean(-1, keepdims=True)
        return 1.0 - ((resid - explained) ** 2).sum(-1) / (centred**2).sum(-1)


def _finite_median(replicated: np.ndarray) -> np.ndarray:
    """Each unit's posterior predictive median over its finite draws (the mean of a
    heavy-tailed family's draws can be infinite, or not exist); NaN for a unit with none.
    NumPy's nanmedian only for the units that need it: it is 8 times slower."""
    finite = np.isfinite(replicated)
    centre = np.median(np.where(finite, replicated, 0.0), axis=0)
    bad = ~finite.all(0)
    if bad.any():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN units: NaN
            centre[bad] = np.nanmedian(np.where(finite[:, bad], replicated[:, bad], np.nan), 0)
    return centre


def outcome_check(
    observed: np.ndarray,
    replicated: np.ndarray,
    treatment: np.ndarray,
    embedding: np.ndarray | None = None,
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
    embedding : ndarray (unit, feature), optional
        The units' embeddings: adds ``spread_on_image``, the R² of the outcome's absolute
        deviation from its posterior predictive median (over the finite replicated draws)
        regressed on the embedding (:func:`spread_on_image`), where an arm has more than
        twice as many units as features: a noise whose spread varies with the image, which
        a fit with one noise sd per arm does not replicate.

    Returns
    -------
    pandas.DataFrame
        One row per arm and statistic (mean, sd, 10/50/90 % quantiles, skewness, the
        ``spread_on_image`` R² and, when at
        least 2 % of the outcomes sit at their minimum, the share exactly at that floor): the
        observed value, the replicated mean and 99 % interval, the two-sided posterior
        predictive p-value ``2 (min(#(rep >= obs), #(rep <= obs)) + 1) / (draws + 1)`` (at
        most 1), ``draws`` (replicated data sets whose statistic is finite: a heavy-tailed
        family can overflow, and those are left out) and ``missed`` (p < 0.01; with fewer than
        200 draws no statistic can be missed: they cannot tell).
    """
    observed = np.asarray(observed, dtype=float)
    replicated = np.asarray(replicated, dtype=float)
    floor = float(observed.min())
    # a point mass: values at the floor to float32 rounding (replicated draws are float32)
    tol = 1e-5 * max(float(observed.std()), abs(floor), 1e-12)
    has_floor = np.mean(np.abs(observed - floor) <= tol) >= FLOOR_MASS
    centre = _finite_median(replicated)
    rows = []
    for arm, name in ((0, "control"), (1, "treated")):
        units = np.asarray(treatment) == arm
        if units.sum() < 2:
            continue
        obs = _statistics(observed[units], floor if has_floor else None, tol)
        rep = _statistics(replicated[:, units], floor if has_floor else None, tol)
        sized = embedding is not None and units.sum() > 2 * (np.shape(embedding)[1] + 1)
        if sized and np.isfinite(centre[units]).all():
            design = np.column_stack([np.ones(units.sum()), np.asarray(embedding)[units]])
            obs["spread_on_image"] = spread_on_image(observed[units], centre[units], design)
            rep["spread_on_image"] = spread_on_image(replicated[:, units], centre[units], design)
        for stat, value in obs.items():
            draws = rep[stat][np.isfinite(rep[stat])]
            # the Monte Carlo p-value (counts + 1 over draws + 1): an observed value beyond
            # all of B draws gets 2 / (B + 1), not 0, so that a check from few draws (a
            # short test fit) cannot call a statistic missed by chance
            tail = min((draws >= value).sum(), (draws <= value).sum())
            p = 2 * (tail + 1) / (len(draws) + 1)
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


def outcome_problems(table: pd.DataFrame, likelihood: str, noise_scale: str = "arm") -> list[str]:
    """The missed statistics of :func:`outcome_check`, in words (empty when none is), with
    the likelihood or ``noise_scale`` to try."""
    missed = table[table["missed"]]
    if missed.empty:
        return []
    # the shape first: it names the family (or noise scale) to try
    first = {"share_at_floor": 0, "spread_on_image": 1, "skew": 2}
    rows = sorted(missed.iterrows(), key=lambda item: first.get(item[0][1], 3))
    parts = [
        f"{arm} {stat} observed {row.observed:.3g}, replicated {row.replicated:.3g}"
        for (arm, stat), row in rows
    ]
    stats = {stat for _, stat in missed.index}
    hint = ""
    if "share_at_floor" in stats and likelihood not in ("hurdle", "censored"):
        hint = " A mass at the floor: try likelihood='hurdle' or 'censored'."
    elif likelihood != "bernoulli" and noise_scale == "arm" and _spread_grows(missed):
        hint = (
            " The spread about the fitted mean varies with the image: the noise (try "
            "noise_scale='image'), or a shape of the mean the model misses."
        )
    elif "skew" in stats and likelihood in ("gaussian", "student_t"):
        hint = " Skewed: try likelihood='hurdle' (positive outcomes) or transform the outcome."
    elif "skew" in stats or "sd" in stats:
        hint = (
            " The tail is not the family's (e.g. a positive part more or less skewed than "
            "the hurdle's gamma): intervals of effects on the mean lean on that tail."
        )
    return [
        f"the {likelihood} likelihood does not reproduce the outcome ({'; '.join(parts[:4])})."
        f"{hint} Effects are differences of the model's means, so read them with care "
        "(EffectFit.check_outcome() has the table)."
    ]


def _spread_grows(missed: pd.DataFrame) -> bool:
    """Whether a missed ``spread_on_image`` has the image explain more of the data's spread
    than of the replicated outcomes' (less: the model's noise varies more than the data's)."""
    rows = missed[missed.index.get_level_values("statistic") == "spread_on_image"]
    return bool((rows["observed"] > rows["replicated"]).any())
