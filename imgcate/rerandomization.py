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
        """``n`` re-randomizations of the randomization units (n, group), int8: each a
        uniformly random permutation of the observed assignment within every stratum."""
        blocks = np.argsort(self.stratum, kind="stable")
        keys = self.stratum + rng.random((n, len(self.stratum)))
        out = np.empty((n, len(self.stratum)), dtype=np.int8)

        def fill(rows: slice) -> None:
            out[rows, blocks] = self.treatment[np.argsort(keys[rows], axis=1)]

        # NumPy's argsort releases the GIL: rows are sorted side by side, one share per core
        cores = min(n, cpu_device_count())
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
    """``trial`` itself, or an :class:`~imgcate.errors.InputError` saying how to build one."""
    if not isinstance(trial, Trial):
        raise InputError("trial must be a Trial; build one with imgcate.read_units(...).")
    return trial


def trial_design(trial: Trial) -> Design:
    """The trial's randomization design, from its ``stratum`` and ``cluster`` columns.

    Whole clusters are the randomization units when every cluster has a single arm; when some
    hold both arms, assignment was not by cluster and units are re-randomized (a note says so).
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
    """Inverse-probability weights of each unit's arm within its stratum (unit,): each arm's
    weighted mean is then the size-weighted average of its stratum means."""
    share = np.bincount(stratum, weights=treatment) / np.bincount(stratum)
    return ipw_weights(treatment, share[stratum])


def permuted_smd(x: np.ndarray, draws: np.ndarray, stratum: np.ndarray) -> np.ndarray:
    """``smd(x, t, design_weights(t, stratum))`` of every assignment ``t`` in the rows of
    ``draws`` (draw, unit), by matrix products over all draws at once (draw, variable).

    The arms' weighted means are ``(t w) @ x / sum(t w)`` and ``((1 - t) w) @ x / ...`` (with
    one stratum every unit of an arm weighs the same: the arm's plain mean); the pooled sd
    comes from each arm's sums of ``x`` and ``x**2``, so ``x`` should be centred (its mean
    near 0) for the difference of squares to keep its digits."""
    t = draws.astype(float)
    n1 = t.sum(1, keepdims=True)
    n0 = t.shape[1] - n1
    s1, q1 = t @ x, t @ (x * x)
    s0, q0 = x.sum(0) - s1, (x * x).sum(0) - q1
    with np.errstate(divide="ignore", invalid="ignore"):
        if stratum.max() == 0:
            diff = s1 / n1 - s0 / n0
        else:
            n_strata = int(stratum.max()) + 1
            size = np.bincount(stratum, minlength=n_strata)
            treated = np.stack([np.bincount(stratum, weights=r, minlength=n_strata) for r in t])
            share = (treated / size)[:, stratum]  # (draw, unit): the unit's stratum's share
            w1 = np.where(t == 1, 1.0 / share, 0.0)
            w0 = np.where(t == 0, 1.0 / (1.0 - share), 0.0)
            diff = (w1 @ x) / w1.sum(1, keepdims=True) - (w0 @ x) / w0.sum(1, keepdims=True)
        var1 = (q1 - s1 * s1 / n1) / (n1 - 1)
        var0 = (q0 - s0 * s0 / n0) / (n0 - 1)
        pooled = np.sqrt(np.maximum((var1 + var0) / 2, 0.0))
        return diff / np.where(pooled > 0, pooled, np.nan)
