"""Small validation helpers shared by the modules (array core, labelled edge)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from imgcate.errors import InputError


def check_choice(name: str, value: Any, allowed: Iterable[Any]) -> Any:
    """Return ``value`` if it is one of ``allowed``; otherwise raise an error listing them."""
    allowed = tuple(allowed)
    if value not in allowed:
        listed = ", ".join(repr(a) for a in allowed)
        raise InputError(f"{name}={value!r} is not allowed; use one of {listed}.")
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


def rng_from_seed(seed: int | np.random.Generator | None) -> np.random.Generator:
    """A NumPy generator from an int seed (no global state)."""
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None:
        raise InputError("seed is required (an int) so that results are reproducible.")
    return np.random.default_rng(int(seed))
