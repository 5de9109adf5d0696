"""What the images reveal about confounders at coarser resolutions."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from imgcate.confounding.balance import balance_table
from imgcate.confounding.propensity import estimate_propensity
from imgcate.confounding.tables import ate_estimates
from imgcate.errors import OverlapWarning, PropensityBalanceWarning
from imgcate.intervals import interval_names
from imgcate.validation import as_treatment


def resolution_check(
    trial: Any,
    chips: Any,
    factors: Sequence[int] = (1, 2, 4),
    *,
    n_features: int = 256,
    n_components: int | None = 16,
    n_folds: int = 5,
    prob: float = 0.95,
    seed: int,
) -> pd.DataFrame:
    """The same confounder adjustment with the images at coarser resolutions, side by side.

    What an image can reveal about confounders depends on its resolution: roads and roofs
    that a 30 m pixel shows may vanish at 250 m. For each factor the chips are coarsened by
    block means (same footprint, ``factor`` times larger pixels), embedded afresh with the
    default encoder (``imgcate.embed(chips, seed=seed)``: random convolutional features with
    :func:`~imgcate.embeddings.embed`'s defaults), and the propensity, Hajek IPW and AIPW are
    estimated from the embedding and the trial's covariates. At factor 1 the rows are
    therefore those of ``ate_estimates(outcome, treatment, estimate_propensity(features,
    treatment, seed=seed), features=features, seed=seed)`` with ``features`` the default
    embedding next to ``trial.covariate_matrix`` (without ``clusters``).

    Parameters
    ----------
    trial : Trial
        Units with treatment, outcome and covariates (aligned with ``chips``: subset it with
        ``trial.subset(chips.kept)`` after ``on_edge="drop"``).
    chips : Chips
        Chips of the units at the finest resolution (from :func:`imgcate.chips.extract_chips`).
    factors : sequence of int
        Coarsening factors; each must divide the chip size.
    n_features : int
        Random features of the encoder (256, as :func:`~imgcate.embeddings.embed`).
    n_components : int or None
        PCA components kept (16, as :func:`~imgcate.embeddings.embed`; None keeps all).
    n_folds : int
        Cross-fitting folds.
    prob : float
        Probability of the central intervals (0.95 by default).
    seed : int
        Seed of the encoder and of the cross-fitting.

    Returns
    -------
    pandas.DataFrame
        One row per (factor, estimator): ``factor``, ``pixel_size`` (in CRS units, NaN for
        in-memory chips), ``estimator`` (difference_in_means, ipw_hajek, aipw), ``estimate``,
        ``std_err``, the interval bounds named by percentile (``"2.5%"``, ``"97.5%"`` for
        ``prob=0.95``), ``max_abs_smd_after`` (embedding and covariate
        balance after IPW weighting) and ``propensity_auc``.
    """
    from sklearn.metrics import roc_auc_score

    from imgcate.embeddings import embed

    treatment = as_treatment(trial.treatment_array).astype(np.int8)
    lo_name, hi_name = interval_names(prob)
    outcome = trial.outcome_array
    rows = []
    for factor in factors:
        coarse = chips.coarsen(int(factor))
        emb = embed(coarse, "rcf", n_features=n_features, n_components=n_components, seed=seed)
        features = np.column_stack([emb.for_keys(trial.image_keys), trial.covariate_matrix])
        with warnings.catch_warnings():  # the balance after weighting is in the table
            warnings.simplefilter("ignore", OverlapWarning)
            warnings.simplefilter("ignore", PropensityBalanceWarning)
            ps = estimate_propensity(features, treatment, n_folds=n_folds, seed=seed)
        table = ate_estimates(
            outcome, treatment, ps, features=features, n_folds=n_folds, prob=prob, seed=seed
        )
        balance = balance_table(features, treatment, weights=ps)
        pixel = abs(coarse.transforms[0].a) if coarse.transforms else np.nan
        for estimator, row in table.iterrows():
            rows.append(
                {
                    "factor": int(factor),
                    "pixel_size": pixel,
                    "estimator": estimator,
                    "estimate": row["estimate"],
                    "std_err": row["std_err"],
                    lo_name: row[lo_name],
                    hi_name: row[hi_name],
                    "max_abs_smd_after": float(balance["smd_after"].abs().max()),
                    "propensity_auc": float(roc_auc_score(treatment, ps.scores)),
                }
            )
    return pd.DataFrame(rows)
