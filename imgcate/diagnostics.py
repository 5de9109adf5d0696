"""Convergence diagnostics reported with every fit: R-hat, bulk and tail ESS, divergences."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import arviz as az

#: Parameters whose convergence is checked (raw non-centred weights are not reported).
CHECKED = (
    "alpha",
    "beta",
    "tau_cluster",
    "sigma",
    "membership_intercept",
    "membership_scale",
    "gamma_scale",
    "ate",
    "cluster_share",
    "nu",
    "stratum_sd",
    "group_sd",
)


def diagnostics_table(idata: az.InferenceData) -> pd.DataFrame:
    """R-hat and bulk/tail ESS of the reported parameters (:data:`CHECKED`), one row per
    scalar as ``az.summary`` names them (R-hat is NaN with one chain)."""
    import arviz as az

    names = [v for v in CHECKED if v in idata.posterior]
    if idata.posterior.sizes["chain"] > 1:
        return az.summary(idata, var_names=names, kind="diagnostics")
    post = idata.posterior[names]
    columns = {}
    for method in ("bulk", "tail"):
        ess = az.ess(post, method=method)
        columns[f"ess_{method}"] = {
            label: float(value)
            for name in names
            for label, value in _labelled(name, ess[name].values)
        }
    table = pd.DataFrame(columns)
    table["r_hat"] = np.nan
    return table


def convergence_problems(idata: az.InferenceData) -> list[str]:
    """What is wrong with the sampling, in words: divergences, R-hat > 1.01, bulk ESS below 100
    per chain (empty when nothing is)."""
    problems = []
    stats = idata.get("sample_stats")
    if stats is not None and "diverging" in stats:
        n_div = int(stats["diverging"].values.sum())
        if n_div:
            problems.append(f"{n_div} divergent transitions (raise target_accept)")
    n_chains = idata.posterior.sizes["chain"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = diagnostics_table(idata)
    if n_chains > 1:
        bad = table[table["r_hat"] > 1.01]
        if len(bad):
            problems.append(
                f"R-hat > 1.01 for {list(bad.index[:5])} (run longer or more "
                "chains; a label or mode problem if it persists)"
            )
    low = table[table["ess_bulk"] < 100 * n_chains]
    if len(low):
        problems.append(
            f"bulk ESS below {100 * n_chains} for {list(low.index[:5])} (raise num_samples)"
        )
    return problems


def _labelled(name: str, values: np.ndarray):
    """(label, value) pairs named as az.summary names them: ``tau[0]``, ``beta[1, 0]``."""
    values = np.asarray(values)
    if values.ndim == 0:
        yield name, values
        return
    for index in np.ndindex(values.shape):
        yield f"{name}[{', '.join(map(str, index))}]", values[index]
