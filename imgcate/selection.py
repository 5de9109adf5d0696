"""Model choice: compare effect-cluster models with K = 1..k_max by PSIS-LOO."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from imgcate.embeddings import Embeddings
from imgcate.errors import ConvergenceWarning, InputError
from imgcate.inference import fit
from imgcate.units import Trial


@dataclass(frozen=True)
class ClusterComparison:
    """PSIS-LOO comparison of effect-cluster models with K = 1..k_max.

    Attributes
    ----------
    table : DataFrame
        One row per K (index ``K``): ``elpd_loo``, ``se``, ``elpd_diff`` and ``dse`` (difference
        to the best model and its standard error), ``p_loo``, ``n_bad_pareto_k`` (k > 0.7),
        ``n_divergent``, ``selected``.
    best_k : int
        The smallest K not clearly worse than the best: ``elpd_diff <= max(4, 2 * dse)``.
        Differences below 4 are small by the usual LOO guidance (Sivula, Magnusson, Vehtari
        2020), so simpler models win ties; K = 1 means no detectable heterogeneity.
    fits : dict
        The fitted models by K.
    """

    table: pd.DataFrame
    best_k: int
    fits: dict


def compare_clusters(
    trial: Trial,
    embeddings: Embeddings | np.ndarray,
    *,
    k_max: int = 4,
    seed: int = 0,
    **fit_options: Any,
) -> ClusterComparison:
    """Fit K = 1..k_max and compare them by PSIS-LOO (ArviZ).

    Parameters
    ----------
    trial, embeddings :
        As for :func:`fit`.
    k_max : int
        Largest number of clusters to try.
    seed : int
        Seed passed to every fit.
    **fit_options
        Passed to :func:`fit` (``num_samples``, ``likelihood``, ...).

    Returns
    -------
    ClusterComparison

    Warns
    -----
    ConvergenceWarning
        For the selected K only (R-hat, ESS, divergences; see ``check_convergence``); the fits
        of the other K are used for the comparison alone and do not warn.
    """
    import arviz as az

    if k_max < 1:
        raise InputError(f"k_max={k_max} must be at least 1.")
    fits, loos = {}, {}
    for k in range(1, k_max + 1):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            fits[k] = fit(trial, embeddings, n_clusters=k, seed=seed, **fit_options)
        loos[k] = fits[k].loo()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compared = az.compare({str(k): v for k, v in loos.items()}, ic="loo", scale="log")
    rows = []
    for k in range(1, k_max + 1):
        row = compared.loc[str(k)]
        stats = fits[k].idata.get("sample_stats")
        n_div = (
            int(stats["diverging"].values.sum())
            if stats is not None and "diverging" in stats
            else 0
        )
        rows.append(
            {
                "K": k,
                "elpd_loo": row["elpd_loo"],
                "se": row["se"],
                "elpd_diff": row["elpd_diff"],
                "dse": row["dse"],
                "p_loo": row["p_loo"],
                "n_bad_pareto_k": int((loos[k].pareto_k.values > 0.7).sum()),
                "n_divergent": n_div,
            }
        )
    table = pd.DataFrame(rows).set_index("K")
    ok = table["elpd_diff"] <= np.maximum(4.0, 2.0 * table["dse"])
    best_k = int(table.index[ok.to_numpy()].min())
    table["selected"] = table.index == best_k
    fits[best_k].check_convergence()  # the other K are only compared; the selected one is used
    return ClusterComparison(table=table, best_k=best_k, fits=fits)
