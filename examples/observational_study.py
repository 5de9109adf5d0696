# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # A targeted program: effects from an observational study with images
#
# No randomization here: an agency chose where to run its program, and it favoured greener
# places, which also do better without any program. Only the imagery records what drove the
# choice. We simulate such a study on a synthetic scene (so the truth is known), estimate the
# propensity from the image embeddings, check overlap and balance, compare the naive
# difference in means with the weighted and doubly robust estimates, fit the effect clusters
# with the propensity as a covariate, and ask how strong a hidden confounder would have to be
# to overturn the result.
#
# Open it as a notebook with `jupytext --to notebook examples/observational_study.py`; the test
# suite runs it as a script with small settings (`IMGCATE_EXAMPLE_SMALL=1`).

# %%
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

import imgcate
from imgcate.confounding import (
    ate_estimates,
    balance_table,
    confounding_sensitivity,
    estimate_propensity,
    trim,
)
from imgcate.simulate import simulate_scene_trial, synthetic_scene

SMALL = os.environ.get("IMGCATE_EXAMPLE_SMALL") == "1"
N_UNITS = 500 if SMALL else 1000
DRAWS = {"num_warmup": 300, "num_samples": 300, "num_chains": 2} if SMALL else {}
WORKDIR = Path(os.environ.get("IMGCATE_EXAMPLE_DIR") or tempfile.mkdtemp(prefix="imgcate-"))
pd.set_option("display.width", 120)
pd.set_option("display.max_columns", 12)

# %% [markdown]
# ## The study: a program targeted on what the image shows
#
# `targeting=1.5`: the log-odds of treatment rise by 1.5 per standard deviation of a chip's
# vegetated share, and the untreated outcome rises with the same share. The effect itself
# depends on the built-up share (two clusters, effects 0 and 2). Green places are seldom
# built up, so the targeting also favours the zero-effect cluster: the effect on the treated is
# below the ATE, while selection on the untreated outcome pushes the naive comparison up.

# %%
scene = WORKDIR / "scene.tif"
synthetic_scene(scene, seed=0)
sim = simulate_scene_trial(scene, seed=1, n_units=N_UNITS, targeting=1.5)
trial, truth = sim.trial, sim.truth
y, t = trial.outcome_array, trial.treatment_array
true_ate = truth.tau_unit.mean()  # the sample ATE (the clusters are balanced: exactly 1)
print(
    f"{trial.n_units} units, {t.sum()} treated; true ATE {true_ate:.3f}, "
    f"true effect on the treated {truth.tau_unit[t == 1].mean():.3f}"
)

chips = imgcate.extract_chips(trial, scene, 32)
embeddings = imgcate.embed(chips, "rcf", seed=0)
features = np.hstack([embeddings.for_keys(trial.image_keys), trial.covariate_matrix])

# %% [markdown]
# ## Propensity from the image, overlap and balance
#
# The default propensity is the covariate-balancing propensity score (Imai & Ratkovic 2014): a
# logistic model on the embedding and the covariate whose inverse-probability weights make the
# weighted mean of every feature equal in both arms, so the largest |SMD| after weighting is 0
# by construction (docs/confounding.md says why it is the default and what it was measured
# against). The estimators below stack its estimating equations with their own, so their
# standard errors account for the propensity having been estimated.

# %%
ps = estimate_propensity(features, t, seed=0)
print(ps.overlap_summary())
print(
    "correlation with the true propensity:",
    round(float(np.corrcoef(ps.scores, truth.propensity)[0, 1]), 3),
)
kept = trim(ps, rule="crump")
print(kept)
balance = balance_table(features, t, weights=ps)
print(
    "max |SMD| before weighting:",
    round(float(balance["smd_before"].abs().max()), 3),
    " after:",
    round(float(balance["smd_after"].abs().max()), 3),
)

# %% [markdown]
# ## The average effect: naive and adjusted
#
# On all units (95 % intervals: `prob=0.95`, the default of design-based estimates), then on
# the units the Crump rule keeps. Trimming steadies the weights but changes the estimand to the
# average effect on the kept units: the dropped units, those with extreme scores, need not have
# the average effect (their true effect is printed), so the trimmed estimates are compared with
# the kept units' true effect. The trimmed scores are passed as an array, which the estimators
# take as known (the `propensity` column says so): their standard errors are then conservative.
# With clustered units (villages sharing an image, a cluster-randomized rollout) pass
# `clusters=`: every row becomes cluster-robust and the `vcov` column says how.

# %%
columns = ["estimate", "std_err", "2.5%", "97.5%", "vcov", "propensity", "true_ate"]
estimates = ate_estimates(y, t, ps, features=features, seed=0).assign(true_ate=true_ate)
print(estimates[columns].round(3))
k = kept.keep
print(
    "dropped by arm:",
    kept.n_dropped_by_arm,
    f"; true effect among dropped units {truth.tau_unit[~k].mean():.3f}",
)
trimmed = ate_estimates(y[k], t[k], ps.scores[k], features=features[k], seed=0)
print(trimmed.assign(true_ate=truth.tau_unit[k].mean())[columns].round(3))

# %% [markdown]
# ## Effect clusters, adjusted for the targeting
#
# The estimated propensity enters the baseline as a covariate (as in Bayesian causal forests),
# so that targeting on what the image shows is not mistaken for effect heterogeneity. `ate()`
# puts the model's ATE beside the difference in means: in a randomized trial a gap between them
# would point at a misspecified model; here it is the confounding.

# %%
with warnings.catch_warnings():
    if SMALL:  # short chains: R-hat and ESS warnings are expected
        warnings.simplefilter("ignore", imgcate.ConvergenceWarning)
    result = imgcate.fit(trial, embeddings, n_clusters=2, propensity=ps.scores, seed=0, **DRAWS)
print(result.cluster_effects())
print("true cluster effects:", truth.tau_cluster)
units = result.unit_effects()
accuracy = float(np.mean(units["cluster"].to_numpy() == truth.cluster))
print("cluster assignment accuracy:", round(accuracy, 3))
print(result.ate(prob=0.95))

# %% [markdown]
# ## How strong would a hidden confounder have to be?
#
# Cinelli & Hazlett (2020) work on the linear adjustment `y ~ t + embedding + x1`: the image
# features go in with the covariates, because the image is what the targeting was based on;
# without them the regression is still confounded by the image (its coefficient is printed for
# comparison), and the analysis would ask how much *more* confounding it would take to move an
# estimate that is already biased. The coefficient on `t` is not the ATE: with effects that
# vary, OLS weights units by their conditional treatment variance. The robustness value RV is
# the share of the residual variance of both treatment and outcome that a hidden confounder
# would have to explain to bring that estimate to zero (RV_{q,alpha}: to make its 95 % interval
# reach zero); a confounder weaker than that on both cannot. The bounds put a confounder as
# strong as each observed feature (its partial R2 with treatment and with outcome,
# `kd = ky = 1`) beside the estimate, most damaging first. pc1, the component most tied to
# treatment (it carries the targeting), is only weakly tied to the outcome given the rest; no
# confounder as strong as any one feature brings the interval down to zero.

# %%
names = [f"pc{i + 1}" for i in range(embeddings.n_features)] + list(trial.covariates)
sensitivity = confounding_sensitivity(y, t, features, names=names, benchmark=names, kd=1)
print(sensitivity.summary())
bounds = sensitivity.bounds.sort_values("adjusted_estimate")
print(
    bounds[["benchmark", "r2dz_x", "r2yz_dx", "adjusted_estimate", "adjusted_2.5%"]]
    .head(4)
    .round(3)
)
without_image = confounding_sensitivity(y, t, trial.covariate_matrix)
print(
    f"OLS coefficient with the image features {sensitivity.estimate:.3f}, "
    f"with the covariate only {without_image.estimate:.3f}"
)
most_tied = sensitivity.bounds.sort_values("r2dz_x").iloc[-1]
print(
    f"most tied to treatment: {most_tied['benchmark']} (r2dz_x {most_tied['r2dz_x']:.3f}, "
    f"r2yz_dx {most_tied['r2yz_dx']:.3f})"
)
