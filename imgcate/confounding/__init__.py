"""Confounder adjustment for observational studies with images.

When a program was targeted rather than randomized, the places that received it differ from those
that did not, and satellite images often show how (built-up area, roads, vegetation). This module
uses image embeddings (plus tabular covariates) as proxies for those confounders:

1. :func:`estimate_propensity` fits P(treatment = 1 | features): by default the
   covariate-balancing propensity score (a logistic model whose weights balance every feature
   exactly), or cross-fitted penalized logistic regression, or a Bayesian logistic model with
   shrinkage priors, with overlap diagnostics
   (:meth:`Propensity.overlap_summary`, :meth:`Propensity.plot_overlap`) and trimming
   (:func:`trim`).
2. :func:`ate_estimates` (or :func:`difference_in_means`, :func:`hajek_ipw`, :func:`aipw` alone)
   estimates the average treatment effect with standard errors that account for the estimated
   propensity and are cluster-robust when cluster ids are given (the ``vcov`` and
   ``propensity`` columns say how each was computed);
   :func:`balance_table` and :func:`plot_love` check covariate and embedding balance.
3. :func:`confounding_sensitivity` asks how strong an *unobserved* confounder would have to be to
   change the conclusion (Cinelli & Hazlett 2020), benchmarked against observed covariates.

Assumptions, stated once
------------------------
* **Ignorability (no unmeasured confounding) given the image and covariates**: potential outcomes
  are independent of treatment given the features passed in. The features must carry everything
  that drove both targeting and outcomes; an embedding that misses it leaves bias that no weighting
  removes. Step 3 quantifies how much hidden confounding would matter.
* **Overlap (positivity)**: every unit had a probability of treatment bounded away from 0 and 1.
  Weights of units with extreme propensities dominate the estimates; an :class:`OverlapWarning`
  says when that happens. Trimming restores overlap but changes the estimand to the average effect
  on the kept units.
* **SUTVA**: one unit's treatment does not change another's outcome (beyond what clustering allows).

When the propensity is a :class:`Propensity` from :func:`estimate_propensity` (``"cbps"`` or
``"logistic"``), its estimating equations are stacked with the estimator's (M-estimation), so
the standard errors of Hajek IPW and AIPW account for its estimation; scores passed as an array
are treated as known, which overstates the standard error of an estimated propensity. The
cross-fitted outcome regressions of AIPW need no correction (Chernozhukov et al. 2018).

Examples
--------
>>> from imgcate.confounding import estimate_propensity, ate_estimates
>>> from imgcate.simulate import simulate_confounded
>>> sim = simulate_confounded(seed=0, n_units=500)
>>> ps = estimate_propensity(sim.features, sim.treatment, seed=0)
>>> table = ate_estimates(sim.outcome, sim.treatment, ps, features=sim.features, seed=0)
>>> list(table.index)
['difference_in_means', 'ipw_hajek', 'aipw']
"""

from imgcate.confounding.balance import balance_table, plot_love
from imgcate.confounding.estimators import (
    AteEstimate,
    aipw,
    difference_in_means,
    hajek_ipw,
)
from imgcate.confounding.overlap import TrimResult, crump_alpha, trim
from imgcate.confounding.propensity import Propensity, estimate_propensity
from imgcate.confounding.resolution import resolution_check
from imgcate.confounding.sensitivity import (
    ConfoundingSensitivity,
    confounding_sensitivity,
    confounding_sensitivity_from_summary,
    partial_r2,
    robustness_value,
)
from imgcate.confounding.tables import ate_estimates

__all__ = [
    "AteEstimate",
    "ConfoundingSensitivity",
    "Propensity",
    "TrimResult",
    "aipw",
    "ate_estimates",
    "balance_table",
    "confounding_sensitivity",
    "confounding_sensitivity_from_summary",
    "crump_alpha",
    "difference_in_means",
    "estimate_propensity",
    "hajek_ipw",
    "partial_r2",
    "plot_love",
    "resolution_check",
    "robustness_value",
    "trim",
]
