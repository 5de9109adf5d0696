"""Column means and covariances of a large (row, column) array, a chunk of rows at a time.

A trial of a million units with a foundation model's 256-1,024 embedding features holds 2-8 GB
of embedding; centring, scaling and decomposing it as one array took five times that (an SVD
of the standardized copy, with its left singular vectors). Above :data:`CHUNKED_VALUES` values
the embedding's standardizer (:class:`imgcate.config.Standardizer`) and the randomization
check's principal components (:func:`imgcate.trialcheck.principal_components`) take their
moments here instead, in float64 chunks of :data:`CHUNK_VALUES` values, and decompose the
(column, column) covariance: what they hold beyond their input no longer grows with it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

#: Arrays of more values than this (32 MB of float64) are summarized chunk by chunk; smaller
#: ones keep their direct computation (the same values to rounding, so that small fits draw
#: what they drew before).
CHUNKED_VALUES = 2**22

#: Values in one chunk of rows (8 MB of float64).
CHUNK_VALUES = 2**20


def is_large(values: np.ndarray) -> bool:
    """Whether ``values`` is summarized chunk by chunk (more than :data:`CHUNKED_VALUES`)."""
    return values.size > CHUNKED_VALUES


def row_chunks(n_rows: int, n_columns: int) -> Iterator[slice]:
    """Slices of rows holding about :data:`CHUNK_VALUES` values each."""
    step = max(1, CHUNK_VALUES // max(n_columns, 1))
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))


@dataclass(frozen=True)
class ColumnMoments:
    """Mean and covariance (divisor n, as ``ndarray.std``'s default) of an array's columns."""

    n: int
    mean: np.ndarray  # (column,)
    cov: np.ndarray  # (column, column)

    @property
    def sd(self) -> np.ndarray:
        """Standard deviation of each column (divisor n)."""
        return np.sqrt(np.clip(np.diag(self.cov), 0.0, None))


def column_moments(values: np.ndarray) -> ColumnMoments:
    """Mean and covariance of the columns of ``values`` (row, column), summed in float64 over
    chunks of rows about the first chunk's mean (so that a large common offset does not cancel
    the covariance's digits)."""
    n, d = values.shape
    chunks = list(row_chunks(n, d))
    shift = np.asarray(values[chunks[0]], np.float64).mean(0)
    total, cross = np.zeros(d), np.zeros((d, d))
    for rows in chunks:
        x = np.asarray(values[rows], np.float64) - shift
        total += x.sum(0)
        cross += x.T @ x
    offset = total / n
    cov = cross / n - np.outer(offset, offset)
    return ColumnMoments(n=n, mean=shift + offset, cov=(cov + cov.T) / 2)


def affine_rows(
    values: np.ndarray, mean: np.ndarray, scale: np.ndarray, matrix: np.ndarray
) -> np.ndarray:
    """``((values - mean) / scale) @ matrix`` (row, matrix column) a chunk of rows at a time:
    no (row, column) temporary."""
    out = np.empty((len(values), matrix.shape[1]))
    for rows in row_chunks(*values.shape):
        out[rows] = ((np.asarray(values[rows], np.float64) - mean) / scale) @ matrix
    return out


def leading_eigenvectors(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending) and eigenvectors of a symmetric matrix, each eigenvector's
    largest entry positive (the signs a decomposition returns are arbitrary)."""
    values, vectors = np.linalg.eigh(matrix)
    values, vectors = values[::-1], vectors[:, ::-1]
    top = np.abs(vectors).argmax(axis=0)
    return values, vectors * np.sign(vectors[top, np.arange(vectors.shape[1])])


class GatheredRows:
    """The rows ``values[index]`` of an array, each chunk gathered when it is read: what
    :func:`column_moments` and :func:`affine_rows` (and the fit's other chunked passes) take in
    place of the (len(index), column) copy. A trial's units take their image's embedding row;
    at a million units sharing images, or listed in another order than the embedding, that copy
    was 2 GB of a 256-feature embedding.

    Supports ``shape``, ``size``, ``ndim``, ``dtype``, ``len()`` and indexing rows (a slice,
    an index array or a boolean mask over the rows: a copy of those rows; not columns);
    ``numpy.asarray`` gathers every row (the copy this avoids)."""

    def __init__(self, values: np.ndarray, index: np.ndarray) -> None:
        if np.ndim(values) != 2:
            raise ValueError(f"GatheredRows needs a (row, column) array, got {np.shape(values)}.")
        self.values = values
        self.index = np.asarray(index)

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.index), self.values.shape[1])

    @property
    def size(self) -> int:
        return len(self.index) * self.values.shape[1]

    @property
    def ndim(self) -> int:
        return 2

    @property
    def dtype(self) -> np.dtype:
        return self.values.dtype

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, rows: slice | np.ndarray) -> np.ndarray:
        return self.values[self.index[rows]]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        if copy is False:
            raise ValueError("GatheredRows gathers its rows into a new array: a copy is needed.")
        out = self.values[self.index]
        return out if dtype is None else out.astype(dtype, copy=False)


def column_sd(values: np.ndarray) -> np.ndarray:
    """Each column's sd (divisor n), 1 for a constant column or a single row."""
    return nonzero_sd(values.std(0)) if len(values) > 1 else np.ones(values.shape[1])


def nonzero_sd(sd: np.ndarray) -> np.ndarray:
    """Standard deviations with those of constant columns (below 1e-12) set to 1."""
    return np.where(sd > 1e-12, sd, 1.0)
