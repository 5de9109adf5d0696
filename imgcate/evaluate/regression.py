"""Weighted least squares with heteroskedasticity- or cluster-robust sandwich covariances."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from imgcate.errors import InputError

VcovType = Literal["HC0", "HC1", "HC3"]


VCOV_TYPES = ("HC0", "HC1", "HC3")


def wls(
    y: np.ndarray,
    X: np.ndarray,
    w: np.ndarray,
    clusters: np.ndarray | None,
    vcov: str,
    names: Sequence[str],
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted least squares with a heteroskedasticity- or cluster-robust sandwich covariance."""
    n, k = X.shape
    Xw = X * w[:, None]
    xtwx = X.T @ Xw
    if np.linalg.matrix_rank(xtwx) < k:
        raise InputError(
            f"regressors {list(names)} are collinear (e.g. a constant proxy score "
            "or an empty group); give a proxy that varies across units."
        )
    bread = np.linalg.inv(xtwx)
    beta = bread @ (Xw.T @ y)
    resid = y - X @ beta
    if vcov == "HC3":
        if clusters is not None:
            raise InputError("vcov_type='HC3' is not available with clusters; use 'HC1'.")
        lev = np.einsum("ij,jk,ik->i", Xw, bread, X)
        resid = resid / (1 - lev)
    u = Xw * resid[:, None]
    if clusters is not None:
        n_cl = int(clusters.max()) + 1
        if n_cl < 2:
            raise InputError("clusters must contain at least 2 distinct clusters.")
        sums = np.zeros((n_cl, k))
        np.add.at(sums, clusters, u)
        adj = n_cl / (n_cl - 1) * ((n - 1) / (n - k) if vcov == "HC1" else 1.0)
        meat = sums.T @ sums
    else:
        adj = n / (n - k) if vcov == "HC1" else 1.0
        meat = u.T @ u
    return beta, adj * bread @ meat @ bread
