"""Spatial cross-validation: folds and train/test splits made of whole square blocks."""

from __future__ import annotations

from typing import Any

import numpy as np

from imgcate.errors import InputError
from imgcate.validation import (
    as_vector,
    rng_from_seed,
    seed_int,
)


def spatial_blocks(x: Any, y: Any, block_size: float) -> np.ndarray:
    """Square-grid block of each unit.

    Parameters
    ----------
    x, y : array_like, shape (unit,)
        Coordinates in a projected CRS (metres) or degrees; ``block_size`` is in the same units.
    block_size : float
        Side of the square blocks; the grid starts at the minimum x and y.

    Returns
    -------
    numpy.ndarray of int, shape (unit,)
        Block ids 0..n_blocks − 1 (only non-empty blocks are numbered).

    Raises
    ------
    InputError
        For mismatched lengths, non-finite coordinates or a non-positive ``block_size``.

    Examples
    --------
    >>> spatial_blocks([0, 1, 15], [0, 2, 0], 10).tolist()
    [0, 0, 1]
    """
    xs = as_vector("x", x)
    ys = as_vector("y", y, len(xs))
    if not np.isfinite(block_size) or block_size <= 0:
        raise InputError(
            f"block_size={block_size!r} must be positive, in the units of the "
            "coordinates (e.g. metres in a projected CRS)."
        )
    col = np.floor((xs - xs.min()) / block_size).astype(np.int64)
    row = np.floor((ys - ys.min()) / block_size).astype(np.int64)
    return np.unique(np.column_stack([col, row]), axis=0, return_inverse=True)[1].reshape(-1)


def _assign_blocks(blocks: np.ndarray, n_folds: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy balanced assignment: largest blocks first (random order among equals)."""
    sizes = np.bincount(blocks)
    perm = rng.permutation(len(sizes))
    order = perm[np.argsort(-sizes[perm], kind="stable")]
    load = np.zeros(n_folds)
    fold_of_block = np.empty(len(sizes), dtype=np.int64)
    for blk in order:
        fold = int(np.argmin(load + rng.random(n_folds) * 1e-9))
        fold_of_block[blk] = fold
        load[fold] += sizes[blk]
    return fold_of_block


def spatial_folds(x: Any, y: Any, n_folds: int, block_size: float, seed: int) -> np.ndarray:
    """Cross-validation folds that keep whole spatial blocks together.

    Parameters
    ----------
    x, y : array_like, shape (unit,)
        Coordinates (see :func:`spatial_blocks`).
    n_folds : int
        Number of folds (at least 2, at most the number of non-empty blocks).
    block_size : float
        Side of the square blocks, in coordinate units.
    seed : int
        Seed of the assignment.

    Returns
    -------
    numpy.ndarray of int, shape (unit,)
        Fold 0..n_folds − 1 of each unit; folds hold about equal numbers of units.

    Raises
    ------
    InputError
        When there are fewer non-empty blocks than folds, or for bad coordinates.

    Examples
    --------
    >>> import numpy as np
    >>> xy = np.random.default_rng(0).uniform(0, 100, size=(500, 2))
    >>> folds = spatial_folds(xy[:, 0], xy[:, 1], 5, 10.0, seed=0)
    >>> sorted(set(folds.tolist()))
    [0, 1, 2, 3, 4]
    """
    blocks = spatial_blocks(x, y, block_size)
    n_blocks = int(blocks.max()) + 1
    if (
        isinstance(n_folds, bool)
        or not isinstance(n_folds, int | np.integer)
        or not 2 <= n_folds <= n_blocks
    ):
        raise InputError(
            f"n_folds={n_folds!r} must be an int between 2 and the number of "
            f"non-empty blocks ({n_blocks}); use a smaller block_size or fewer "
            "folds."
        )
    rng = rng_from_seed(seed_int(seed))
    return _assign_blocks(blocks, int(n_folds), rng)[blocks]


def train_test_split_spatial(
    trial: Any, test_fraction: float, block_size: float, seed: int, *, crs: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """Split a trial's units into train and test sets made of whole spatial blocks.

    Parameters
    ----------
    trial : imgcate.units.Trial
        The units; their point locations define the blocks.
    test_fraction : float
        Target share of units in the test set, in (0, 1).
    block_size : float
        Side of the square blocks in the units of ``crs`` (or of the trial's CRS; use a
        projected CRS to give metres).
    seed : int
        Seed of the block order.
    crs : optional
        CRS to project the locations to before blocking.

    Returns
    -------
    train, test : numpy.ndarray of int
        Sorted row positions; each block falls wholly in one of them.

    Raises
    ------
    InputError
        For ``test_fraction`` outside (0, 1) or fewer than 2 non-empty blocks.

    Examples
    --------
    >>> import pandas as pd
    >>> from imgcate.units import read_units
    >>> df = pd.DataFrame({"id": range(4), "lon": [0, 0, 5, 5], "lat": [0, 1, 0, 1],
    ...                    "treatment": [0, 1, 0, 1], "outcome": [0.0, 1, 2, 3]})
    >>> train, test = train_test_split_spatial(read_units(df), 0.5, 2.0, seed=0)
    >>> len(train), len(test)
    (2, 2)
    """
    if not 0 < test_fraction < 1:
        raise InputError(
            f"test_fraction={test_fraction!r} must lie strictly between 0 and 1, e.g. 0.2."
        )
    xs, ys = trial.xy(crs)
    blocks = spatial_blocks(xs, ys, block_size)
    sizes = np.bincount(blocks)
    if len(sizes) < 2:
        raise InputError("all units fall in one block; use a smaller block_size.")
    rng = rng_from_seed(seed_int(seed))
    order = rng.permutation(len(sizes))
    cum = np.cumsum(sizes[order])
    target = test_fraction * len(blocks)
    # the prefix of shuffled blocks whose size is closest to the target (at least one block,
    # never all of them)
    n_test = int(np.argmin(np.abs(cum[:-1] - target))) + 1
    in_test = np.zeros(len(sizes), dtype=bool)
    in_test[order[:n_test]] = True
    test_mask = in_test[blocks]
    return np.flatnonzero(~test_mask), np.flatnonzero(test_mask)
