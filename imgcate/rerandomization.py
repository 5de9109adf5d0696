"""How a trial's design re-randomizes its assignment, and the balance of each draw.

:func:`trial_design` reads the design from the trial's ``stratum`` and ``cluster`` columns,
:func:`rerandomize` draws assignments as it randomized (within strata, by whole clusters), and
:func:`permuted_smd` gives the standardized mean differences of many draws at once, as
:func:`imgcate.trialcheck.check_randomization` compares them with the trial's own.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from imgcate.confounding.weights import ipw_weights
from imgcate.devices import cpu_device_count
from imgcate.errors import InputError
from imgcate.units import Trial
from imgcate.validation import check_positive_int, seed_int


@dataclass(frozen=True)
class Design:
    """How a trial was randomized: which units were assigned together and within which strata.

    Attributes
    ----------
    group : ndarray (unit,)
        Each unit's randomization unit (its cluster in a cluster-randomized trial, else itself).
    treatment : ndarray (group,)
        The treatment of each randomization unit (0/1).
    stratum : ndarray (group,)
        Stratum codes of the randomization units (all 0 without strata).
    level : {"unit", "cluster"}
        What was randomized.
    notes : tuple of str
        Where the declared design could not be followed, and what was done instead.
    """

    group: np.ndarray
    treatment: np.ndarray
    stratum: np.ndarray
    level: Literal["unit", "cluster"]
    notes: tuple[str, ...] = ()

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Re-randomizations of the randomization units.

        Parameters
        ----------
        n : int
            Number of draws (0 or more).
        rng : numpy.random.Generator
            Source of the draws; the same generator state gives the same draws, whatever the
            number of cores.

        Returns
        -------
        ndarray (n, group), int8
            Each row a uniformly random permutation of the observed assignment within every
            stratum.
        """
        blocks = np.argsort(self.stratum, kind="stable")
        keys = self.stratum + rng.random((n, len(self.stratum)))
        out = np.empty((n, len(self.stratum)), dtype=np.int8)

        def fill(rows: slice) -> None:
            out[rows, blocks] = self.treatment[np.argsort(keys[rows], axis=1)]

        # NumPy's argsort releases the GIL: rows are sorted side by side, one share per core
        cores = max(1, min(n, cpu_device_count()))
        bounds = np.linspace(0, n, cores + 1).astype(int)
        with ThreadPoolExecutor(cores) as pool:
            list(
                pool.map(fill, [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)])
            )
        return out

    @property
    def unit_stratum(self) -> np.ndarray:
        """Stratum code of each unit (unit,)."""
        return self.stratum[self.group]

    def informative(self) -> np.ndarray:
        """Which strata hold both arms among their randomization units (stratum,)."""
        n_strata = int(self.stratum.max()) + 1
        treated = np.bincount(self.stratum, weights=self.treatment, minlength=n_strata)
        total = np.bincount(self.stratum, minlength=n_strata)
        return (treated > 0) & (treated < total)


def as_trial(trial: Trial) -> Trial:
    """The trial, checked.

    Parameters
    ----------
    trial : Trial
        What the caller passed as the trial.

    Returns
    -------
    Trial
        ``trial`` itself.

    Raises
    ------
    InputError
        When ``trial`` is not a :class:`~imgcate.units.Trial`; the message says how to build
        one.
    """
    if not isinstance(trial, Trial):
        raise InputError("trial must be a Trial; build one with imgcate.read_units(...).")
    return trial


def trial_design(trial: Trial) -> Design:
    """The trial's randomization design, from its ``stratum`` and ``cluster`` columns.

    Whole clusters are the randomization units when every cluster has a single arm; when some
    hold both arms, assignment was not by cluster and units are re-randomized (a note says so).

    Parameters
    ----------
    trial : Trial
        The trial (its treatment, and its stratum and cluster columns if set).

    Returns
    -------
    Design
        The randomization units, their assignment and strata, and notes where the declared
        design could not be followed.
    """
    t = trial.treatment_array.astype(np.int8)
    stratum = trial.codes("stratum")
    stratum = np.zeros(len(t), np.int64) if stratum is None else stratum.astype(np.int64)
    cluster = trial.codes("cluster")
    if cluster is None:
        return Design(np.arange(len(t)), t, stratum, "unit")
    size = np.bincount(cluster)
    treated = np.bincount(cluster, weights=t)
    mixed = np.flatnonzero((treated > 0) & (treated < size))
    labels = pd.factorize(trial.data[trial.cluster], sort=True)[1]
    if mixed.size:
        shown = labels[mixed[:5]].tolist()
        more = f" and {mixed.size - 5} more" if mixed.size > 5 else ""
        note = (
            f"clusters {shown}{more} of column {trial.cluster!r} hold both treated and control "
            "units, so assignment was not by whole cluster: units were re-randomized"
        )
        return Design(np.arange(len(t)), t, stratum, "unit", (note,))
    first = np.unique(cluster, return_index=True)[1]
    group_stratum = stratum[first]
    notes: tuple[str, ...] = ()
    if (group_stratum[cluster] != stratum).any():
        notes = (
            f"clusters of {trial.cluster!r} span several strata of {trial.stratum!r}: whole "
            "clusters were re-randomized ignoring the strata",
        )
        group_stratum = np.zeros(len(first), np.int64)
    return Design(cluster.astype(np.int64), t[first], group_stratum, "cluster", notes)


def rerandomize(trial: Trial, n_permutations: int, *, seed: int) -> np.ndarray:
    """Treatment assignments drawn as the trial's design randomizes, one row per draw.

    Each draw permutes the observed assignment within every stratum (``trial.stratum``), and
    by whole clusters (``trial.cluster``) when every cluster has a single arm: the number of
    treated randomization units per stratum is that of the trial.

    Parameters
    ----------
    trial : Trial
        The trial (its treatment, and the stratum and cluster columns if set).
    n_permutations : int
        Number of draws.
    seed : int
        Random seed; the same seed gives the same draws.

    Returns
    -------
    ndarray, shape (permutation, unit), int8
        Re-randomized treatment of every unit.

    Examples
    --------
    >>> from imgcate.simulate import simulate_trial
    >>> trial = simulate_trial(seed=0, n_units=100).trial
    >>> draws = rerandomize(trial, 5, seed=0)
    >>> draws.shape, bool((draws.sum(axis=1) == trial.treatment_array.sum()).all())
    ((5, 100), True)
    """
    design = trial_design(as_trial(trial))
    rng = np.random.default_rng(seed_int(seed))
    return design.draw(check_positive_int("n_permutations", n_permutations), rng)[:, design.group]


def design_weights(treatment: np.ndarray, stratum: np.ndarray) -> np.ndarray:
    """Inverse-probability weights of each unit's arm within its stratum.

    Parameters
    ----------
    treatment : ndarray (unit,)
        0/1 assignment.
    stratum : ndarray (unit,)
        Stratum code of each unit (0, 1, ...).

    Returns
    -------
    ndarray (unit,)
        ``1 / share`` for treated units and ``1 / (1 - share)`` for controls, ``share`` the
        treated share of the unit's stratum: each arm's weighted mean is then the
        size-weighted average of its stratum means.
    """
    share = np.bincount(stratum, weights=treatment) / np.bincount(stratum)
    return ipw_weights(treatment, share[stratum])


def permuted_smd(
    sums: np.ndarray,
    squares: np.ndarray,
    sizes: np.ndarray,
    draws: np.ndarray,
    stratum: np.ndarray,
) -> np.ndarray:
    """Standardized mean differences of the units' variables under many re-randomizations at
    once, from the randomization groups' totals: for each draw, what
    ``smd(x, t, design_weights(t, unit_stratum))`` gives on the units.

    Each arm's mean weighs a unit by the inverse of its stratum's treated (or control) share
    in that draw (so each arm's mean is the size-weighted average of its stratum means; with
    one stratum, the arm's plain mean); the pooled sd is the unweighted sd of each arm,
    averaged in variance. Everything is a product of the draws with the groups' totals, so
    memory is draws x groups, not draws x units.

    Parameters
    ----------
    sums, squares : ndarray (group, variable)
        Each randomization group's sum of its units' values and of their squares. Centre the
        values first (their mean near 0): the arms' variances are differences of squares.
    sizes : ndarray (group,)
        Units in each group (all 1 when units are randomized).
    draws : ndarray (draw, group)
        0/1 assignments of the groups, one row per re-randomization.
    stratum : ndarray (group,)
        Stratum code of each group (0, 1, ...).

    Returns
    -------
    ndarray (draw, variable)
        The SMD of each variable in each draw; NaN where the pooled sd is 0 (to rounding) or
        an arm has fewer than two units.
    """
    t = draws.astype(float)
    sizes = np.asarray(sizes, dtype=float)
    n1 = (t @ sizes)[:, None]
    n0 = sizes.sum() - n1
    s1, q1 = t @ sums, t @ squares
    s0, q0 = sums.sum(0) - s1, squares.sum(0) - q1
    with np.errstate(divide="ignore", invalid="ignore"):
        if stratum.max() == 0:
            diff = s1 / n1 - s0 / n0
        else:
            n_strata = int(stratum.max()) + 1
            units = np.bincount(stratum, weights=sizes, minlength=n_strata)
            treated = np.stack(
                [np.bincount(stratum, weights=r * sizes, minlength=n_strata) for r in t]
            )
            share = (treated / units)[:, stratum]  # (draw, group): its stratum's treated share
            a1 = np.where(t == 1, 1.0 / share, 0.0)
            a0 = np.where(t == 0, 1.0 / (1.0 - share), 0.0)
            diff = (a1 @ sums) / (a1 @ sizes)[:, None] - (a0 @ sums) / (a0 @ sizes)[:, None]
        var1 = (q1 - s1 * s1 / n1) / (n1 - 1)
        var0 = (q0 - s0 * s0 / n0) / (n0 - 1)
        pooled = (var1 + var0) / 2
        # a variance that is rounding (constant arms) is 0, as the two-pass variance gives
        tiny = 1e-12 * squares.sum(0) / sizes.sum()
        return diff / np.where(pooled > tiny, np.sqrt(np.maximum(pooled, 0.0)), np.nan)
