"""Validate treatment-effect heterogeneity: RATE, generic ML inference, calibration, spatial folds,
and cross-fitted (out-of-fold) CATE of imgcate's own model (:func:`crossfit_cate`).

Array core, labelled edge: every estimator takes plain arrays (one entry per unit) and returns
either a small frozen result object or a tidy :class:`pandas.DataFrame` with the columns
``term, estimate, std_err``, the interval bounds named by percentile (``prob=0.95`` by
default: ``"2.5%"``, ``"97.5%"``), then ``p_value`` (see :mod:`imgcate.intervals`).

References
----------
Yadlowsky, Fleming, Shah, Brunskill, Wager (2021). Evaluating treatment prioritization rules via
rank-weighted average treatment effects. arXiv:2111.07966 (RATE, TOC; grf's
``rank_average_treatment_effect``).

Chernozhukov, Demirer, Duflo, Fernández-Val (2018). Generic machine learning inference on
heterogeneous treatment effects in randomized experiments. arXiv:1712.04802 (BLP, GATES, CLAN).
"""

from imgcate.evaluate.calibration import test_calibration
from imgcate.evaluate.crossfit import FOLD_SCHEMES, CrossfitResult, FoldScheme, crossfit_cate
from imgcate.evaluate.genericml import (
    GenericMLResult,
    blp,
    clan,
    forest_learner,
    gates,
    generic_ml,
    quantile_groups,
)
from imgcate.evaluate.ranking import (
    RATE_TARGETS,
    RateResult,
    RateTarget,
    plot_toc,
    rate,
    rate_difference,
)
from imgcate.evaluate.regression import VCOV_TYPES, VcovType
from imgcate.evaluate.scores import aipw_scores
from imgcate.evaluate.splits import spatial_blocks, spatial_folds, train_test_split_spatial

__all__ = [
    "CrossfitResult",
    "FOLD_SCHEMES",
    "FoldScheme",
    "GenericMLResult",
    "RATE_TARGETS",
    "RateResult",
    "RateTarget",
    "VCOV_TYPES",
    "VcovType",
    "aipw_scores",
    "blp",
    "clan",
    "crossfit_cate",
    "forest_learner",
    "gates",
    "generic_ml",
    "plot_toc",
    "quantile_groups",
    "rate",
    "rate_difference",
    "spatial_blocks",
    "spatial_folds",
    "test_calibration",
    "train_test_split_spatial",
]
