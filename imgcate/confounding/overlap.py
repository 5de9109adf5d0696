"""Trimming units without overlap: the Crump et al. (2009) rule or a fixed threshold."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from imgcate.confounding.propensity import Propensity, propensity_scores
from imgcate.errors import InputError
from imgcate.validation import as_propensity, check_choice


@dataclass(frozen=True)
class TrimResult:
    """Which units to keep after trimming on the propensity score.

    Attributes
    ----------
    keep : numpy.ndarray
        Boolean mask, shape (unit,): ``alpha <= e <= 1 - alpha``.
    alpha : float
        The trimming threshold (0 means nothing was trimmed).
    rule : str
        ``"crump"`` or ``"fixed"``.
    n_dropped : int
        Number of units dropped.
    n_dropped_by_arm : dict
        Units dropped among controls and treated (when the treatment is known).
    """

    keep: np.ndarray
    alpha: float
    rule: str
    n_dropped: int
    n_dropped_by_arm: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        return (
            f"trimmed {self.n_dropped} of {len(self.keep)} units ({self.rule} rule, "
            f"keep {self.alpha:.4f} <= e <= {1 - self.alpha:.4f})"
        )


def crump_alpha(scores: Any) -> float:
    """The Crump, Hotz, Imbens & Mitnik (2009) optimal trimming threshold.

    With ``g = 1 / (e (1 - e))``, alpha is 0 when ``max g <= 2 E[g]``; otherwise
    ``gamma = 1 / (alpha (1 - alpha))`` solves ``gamma = 2 E[g | g <= gamma]``, the first-order
    condition of the variance bound ``E[g | g <= gamma] / P(g <= gamma)``. In the sample the
    equation is solved exactly (``gamma = 2 mean(g_(1..k))`` lying in ``[g_(k), g_(k+1))``); when it
    has several roots, the one with the smallest variance bound is taken.

    Parameters
    ----------
    scores : array-like
        Propensity scores in (0, 1), shape (unit,).

    Returns
    -------
    float
        alpha in [0, 0.5).

    Raises
    ------
    InputError
        When a score is not strictly inside (0, 1).

    Examples
    --------
    >>> crump_alpha([0.3, 0.4, 0.5, 0.6])
    0.0
    """
    e = as_propensity(scores)
    g = np.sort(1 / (e * (1 - e)))
    if g[-1] <= 2 * g.mean():
        return 0.0
    k = np.arange(1, len(g) + 1)
    cumsum = np.cumsum(g)
    cummean = cumsum / k
    # gamma = 2 * cummean[k] is a root when it lies in [g[k], g[k + 1]).
    roots = np.flatnonzero((g[:-1] <= 2 * cummean[:-1]) & (2 * cummean[:-1] < g[1:]))
    best = roots[np.argmin(cumsum[roots] / k[roots] ** 2)]
    gamma = 2 * cummean[best]
    return float(0.5 - np.sqrt(0.25 - 1 / gamma))


def trim(propensity: Propensity | Any, rule: Literal["crump"] | float = "crump") -> TrimResult:
    """Keep units with propensity in ``[alpha, 1 - alpha]``.

    Parameters
    ----------
    propensity : Propensity or array-like
        Scores in (0, 1), shape (unit,).
    rule : "crump" or float
        ``"crump"``: the optimal threshold of Crump et al. (2009) (:func:`crump_alpha`);
        a float in (0, 0.5): a fixed threshold (0.1 is the usual rule of thumb).

    Returns
    -------
    TrimResult
        The keep mask, the threshold and the number of units dropped (also by arm when
        ``propensity`` is a :class:`Propensity`). The estimand of a trimmed analysis is the
        average effect among the kept units.

    Raises
    ------
    InputError
        On scores outside (0, 1) or an unknown rule.

    Examples
    --------
    >>> import numpy as np
    >>> trim(np.array([0.02, 0.3, 0.5, 0.97]), rule=0.05).n_dropped
    2
    """
    e = propensity_scores(propensity)
    if isinstance(rule, str):
        check_choice("rule", rule, ("crump",))
        alpha, name = crump_alpha(e), "crump"
    else:
        if not 0 < float(rule) < 0.5:
            raise InputError(f"rule={rule!r}: a fixed threshold must lie in (0, 0.5), e.g. 0.1.")
        alpha, name = float(rule), "fixed"
    keep = (e >= alpha) & (e <= 1 - alpha)
    by_arm = {}
    if isinstance(propensity, Propensity):
        t = propensity.treatment
        by_arm = {
            "control": int(np.sum(~keep & (t == 0))),
            "treated": int(np.sum(~keep & (t == 1))),
        }
    return TrimResult(keep, alpha, name, int((~keep).sum()), by_arm)


#: Fewest units of each arm a trimmed estimate keeps: fewer leave the cross-fitted outcome
#: regressions of AIPW (five folds) a unit or two of an arm per fold.
MIN_KEPT_PER_ARM = 10


def trimmed_units(
    propensity: Propensity | Any, treatment: np.ndarray, rule: Literal["crump"] | float
) -> tuple[np.ndarray, dict[str, Any]]:
    """The units ``trim(propensity, rule)`` keeps, and what an estimate on them records.

    Parameters
    ----------
    propensity : Propensity or array-like
        Scores in (0, 1), shape (unit,).
    treatment : numpy.ndarray
        0/1 treatment, shape (unit,).
    rule : "crump" or float
        As :func:`trim`.

    Returns
    -------
    keep : numpy.ndarray
        Boolean mask, shape (unit,).
    info : dict
        ``rule``, ``alpha``, ``n_kept``, ``n_dropped`` and ``kept_by_arm`` (``control``,
        ``treated``): ``attrs["trim"]`` of a trimmed estimate.

    Raises
    ------
    InputError
        On an unknown rule, or one that keeps fewer than :data:`MIN_KEPT_PER_ARM` units of
        an arm.
    """
    fixed = isinstance(rule, int | float | np.floating) and not isinstance(rule, bool)
    if not (rule == "crump" if isinstance(rule, str) else fixed and 0 < float(rule) < 0.5):
        raise InputError(
            f"trim={rule!r}: give 'crump' (Crump et al.'s threshold) or a fixed threshold in "
            "(0, 0.5), such as 0.1."
        )
    kept = trim(propensity, rule if isinstance(rule, str) else float(rule))
    t = np.asarray(treatment)
    arms = {
        "control": int(np.sum(kept.keep & (t == 0))),
        "treated": int(np.sum(kept.keep & (t == 1))),
    }
    if min(arms.values()) < MIN_KEPT_PER_ARM:
        smaller = "trim=0.1, the rule of thumb" if kept.alpha > 0.1 else "a smaller threshold"
        raise InputError(
            f"trim={rule!r} (keep {kept.alpha:.3g} <= e <= {1 - kept.alpha:.3g}) keeps "
            f"{arms['treated']} treated and {arms['control']} control units (at least "
            f"{MIN_KEPT_PER_ARM} of each are needed for the estimates on them): give "
            f"{smaller}, or check the propensity (overlap_summary()); where no threshold "
            "keeps enough of both arms, the data hold no estimate of the effect."
        )
    info = {
        "rule": kept.rule,
        "alpha": kept.alpha,
        "n_kept": int(kept.keep.sum()),
        "n_dropped": kept.n_dropped,
        "kept_by_arm": arms,
    }
    return kept.keep, info
