"""Validators shared by the modules (array core, labelled edge).

Each takes the user's value and either returns it in the form the code computes with or
raises an :class:`~imgcate.errors.InputError` that names the input and says how to fix it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from imgcate.errors import InputError

#: What each kind of setting accepts, and its name in messages (NumPy's scalars pass:
#: settings are often read from arrays).
KINDS = {
    "int": ((int, np.integer), "an integer"),
    "float": ((int, float, np.integer, np.floating), "a number"),
    "bool": ((bool, np.bool_), "True or False"),
    "str": ((str,), "text"),
}


def of_kind(value: Any, kind: str) -> bool:
    """Whether ``value`` is of ``kind`` (a key of :data:`KINDS`): True and False are of kind
    ``"bool"`` only, not integers or numbers."""
    is_bool = isinstance(value, (bool, np.bool_))
    return isinstance(value, KINDS[kind][0]) and is_bool == (kind == "bool")


def check_choice(name: str, value: Any, allowed: Iterable[Any]) -> Any:
    """Return ``value`` if it is one of ``allowed``; otherwise raise an error listing them."""
    allowed = tuple(allowed)
    if value not in allowed:
        listed = ", ".join(repr(a) for a in allowed)
        raise InputError(f"{name}={value!r} is not allowed; use one of {listed}.")
    return value


def check_prob(prob: float, name: str = "prob") -> float:
    """A probability strictly between 0 and 1 (an interval's coverage), as a float."""
    try:
        value = float(prob)
    except (TypeError, ValueError):
        value = np.nan
    if not 0 < value < 1:
        raise InputError(
            f"{name}={prob!r} must lie strictly between 0 and 1 (e.g. 0.9 for a 90% interval)."
        )
    return value


def as_float_array(name: str, values: Any, ndim: int | None = None) -> np.ndarray:
    """Convert to a float64 array, checking dimensionality and finiteness."""
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be numeric: {exc}") from exc
    if ndim is not None and arr.ndim != ndim:
        raise InputError(f"{name} must be {ndim}-dimensional, got shape {arr.shape}.")
    bad = ~np.isfinite(arr)
    if bad.any():
        where = np.argwhere(bad)[:5].tolist()
        raise InputError(
            f"{name} holds {int(bad.sum())} NaN or infinite value(s) (first at {where}); "
            "remove or impute them first."
        )
    return arr


def as_vector(name: str, values: Any, n: int | None = None) -> np.ndarray:
    """A finite float vector (unit,), of length ``n`` when given."""
    arr = as_float_array(name, values, ndim=1)
    if n is not None and len(arr) != n:
        raise InputError(
            f"{name} has {len(arr)} entries but outcome/scores have {n}; give one value per unit."
        )
    return arr


def as_features(values: Any, name: str = "features") -> np.ndarray:
    """A finite float matrix (unit, feature); a vector is one feature."""
    x = as_float_array(name, values)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise InputError(f"{name} must have shape (unit, feature), got {x.shape}.")
    return x


def check_lengths(**arrays: np.ndarray | None) -> int:
    """The common number of units of the given arrays (None entries are skipped)."""
    given = {k: len(v) for k, v in arrays.items() if v is not None}
    first, n = next(iter(given.items()))
    for name, m in given.items():
        if m != n:
            raise InputError(
                f"{first} has {n} units but {name} has {m}; pass arrays for the same units "
                "in the same order."
            )
    return n


def as_treatment(values: Any, n: int | None = None) -> np.ndarray:
    """A binary 0/1 treatment vector (float64) with both arms present."""
    try:
        t = as_vector("treatment", values, n)
    except InputError as exc:
        if "must be numeric" not in str(exc):
            raise
        shown = pd.unique(np.asarray(values, dtype=object).ravel())[:5].tolist()
        raise InputError(
            f"treatment must be binary (0/1); found value(s) {shown}. Recode it as 1 = "
            "treated, 0 = control (e.g. (values == 'yes').astype(int))."
        ) from exc
    levels = np.unique(t)
    if not np.isin(levels, (0.0, 1.0)).all():
        shown = levels[~np.isin(levels, (0.0, 1.0))][:5].tolist()
        raise InputError(
            f"treatment must be binary (0/1); found value(s) {shown}. "
            "Recode it as 1 = treated, 0 = control."
        )
    if len(levels) < 2:
        raise InputError(
            "treatment must contain both treated (1) and control (0) units; "
            f"all {len(t)} units have treatment={int(levels[0]) if len(levels) else 'none'}."
        )
    return t


def check_covariate_columns(
    covariates: np.ndarray, names: Sequence[str], treatment: np.ndarray, treatment_name: str
) -> None:
    """Refuse covariates (unit, covariate) that are constant or (nearly) the treatment:
    identical to it (or to 1 - treatment), or correlated with it beyond |r| = 0.99."""
    x = np.asarray(covariates, dtype=float)
    t = np.asarray(treatment, dtype=float)
    if len(x) == 0:
        return
    for j, name in enumerate(names):
        col = x[:, j]
        if np.ptp(col) == 0:
            raise InputError(
                f"covariate {name!r} is constant ({col[0]:g} for every unit), so it carries no "
                "information; drop it from covariates."
            )
        if name == treatment_name:
            raise InputError(
                f"the treatment column {name!r} is listed among the covariates; drop it from "
                "covariates."
            )
        if np.ptp(t) == 0:
            continue
        r = float(np.corrcoef(col, t)[0, 1])
        if np.array_equal(col, t) or np.array_equal(col, 1 - t) or abs(r) > 0.99:
            raise InputError(
                f"covariate {name!r} is (nearly) the treatment column {treatment_name!r} "
                f"(correlation {r:+.3f}): a covariate is measured before treatment and cannot "
                f"be the assignment itself; drop it from covariates (or, if it is the "
                f"treatment, pass treatment={name!r})."
            )


def as_propensity(values: Any, n: int | None = None) -> np.ndarray:
    """Propensity scores strictly inside (0, 1), one per unit; a scalar is broadcast to ``n``
    units when ``n`` is given (a probability known by design)."""
    e = as_float_array("propensity", values)
    if e.ndim == 0 and n is not None:
        e = np.full(n, float(e))
    if e.ndim != 1 or (n is not None and len(e) != n):
        want = "one value per unit" if n is None else f"a scalar or one value per unit ({n})"
        raise InputError(f"propensity must be {want}, got shape {e.shape}.")
    outside = (e <= 0) | (e >= 1)
    if outside.any():
        raise InputError(
            f"propensity must lie strictly between 0 and 1; {int(outside.sum())} value(s) do not "
            f"(min {e.min():.3g}, max {e.max():.3g}). Clip them (estimate_propensity(clip=...)) "
            "or trim those units (trim(...))."
        )
    return e


def cluster_codes(clusters: Any, n: int, *, min_clusters: int = 1) -> np.ndarray | None:
    """Integer codes 0..G-1 of one cluster id per unit (None when ``clusters`` is None)."""
    if clusters is None:
        return None
    arr = np.asarray(clusters)
    if arr.ndim != 1 or len(arr) != n:
        raise InputError(
            f"clusters has {len(np.atleast_1d(arr))} entries but there are {n} units; give one "
            "cluster id per unit."
        )
    if pd.isna(arr).any():
        raise InputError("clusters holds missing values; give every unit a cluster id.")
    codes = pd.factorize(arr, sort=True)[0].astype(np.int64)
    if codes.max() + 1 < min_clusters:
        raise InputError(
            f"clusters has {codes.max() + 1} cluster(s); cluster-robust errors need at least "
            f"{min_clusters}."
        )
    return codes


def check_positive_int(name: str, value: Any) -> int:
    """A positive whole number (1, 2, ...), as an int."""
    try:
        whole = not isinstance(value, bool | str) and int(value) == value and value >= 1
    except (TypeError, ValueError, OverflowError):
        whole = False
    if not whole:
        raise InputError(f"{name}={value!r} must be a positive integer.")
    return int(value)


def rng_from_seed(seed: int | np.random.Generator | None) -> np.random.Generator:
    """A NumPy generator from an int seed (no global state)."""
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None:
        raise InputError("seed is required (an int) so that results are reproducible.")
    return np.random.default_rng(int(seed))


def seed_int(seed: Any) -> int:
    """An int seed (not a bool, not None)."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise InputError(f"seed must be an int (got {seed!r}) so that results are reproducible.")
    return int(seed)
