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
    if vcov == "HC3" and clusters is not None:
        meat = _hc3_cluster_meat(X, w, resid, bread, clusters)
        return beta, bread @ meat @ bread
    if vcov == "HC3":
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


def _hc3_cluster_meat(
    X: np.ndarray, w: np.ndarray, resid: np.ndarray, bread: np.ndarray, clusters: np.ndarray
) -> np.ndarray:
    """Meat of the cluster-robust HC3 sandwich (Bell & McCaffrey 2002; sandwich's ``vcovCL``
    with ``type="HC3"``, as grf uses with clusters): each cluster's weighted residuals are
    multiplied by ``(I - H_gg)^{-1}``, ``H_gg = X_g (X'WX)^{-1} X_g' W_g``, and no
    ``G / (G - 1)`` factor applies (vcovCL's cancels against its HC3 rescaling).

    ``(I - U V')^{-1} = I + U (I - V'U)^{-1} V'`` with ``U = X_g bread``, ``V' = X_g' W_g``
    keeps the work at ``k x k`` per cluster.
    """
    if int(clusters.max()) + 1 < 2:
        raise InputError("clusters must contain at least 2 distinct clusters.")
    k = X.shape[1]
    order = np.argsort(clusters, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(clusters[order]) != 0])
    meat = np.zeros((k, k))
    for idx in np.split(order, starts[1:]):
        Xg, wg = X[idx], w[idx]
        b = wg * resid[idx]
        vt_u = (Xg * wg[:, None]).T @ Xg @ bread  # V'U, k x k
        adjusted = b + Xg @ (bread @ np.linalg.solve(np.eye(k) - vt_u, (Xg * wg[:, None]).T @ b))
        ug = Xg.T @ adjusted
        meat += np.outer(ug, ug)
    return meat


def vcov_label(vcov_type: str, clusters: np.ndarray | None) -> str:
    """``"HC1"`` without clusters, ``"CR1"`` (the same correction, cluster-robust) with them."""
    return vcov_type if clusters is None else "CR" + vcov_type[2:]
