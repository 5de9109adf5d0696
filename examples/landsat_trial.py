# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Where does the program work? A trial on the Olinda Landsat scene
#
# A semi-synthetic trial on a real Landsat 7 scene: villages are placed on the scene, half are
# treated at random, and the effect is larger where the land is vegetated (a fact of the real
# image, which the model is not told). We cut chips around each village, embed them, let the
# model find the effect clusters, check the heterogeneity with RATE and the BLP test, and
# predict effects for images outside the trial.
#
# Open it as a notebook with `jupytext --to notebook examples/landsat_trial.py`; the test suite
# runs it as a script with small settings (`IMGCATE_EXAMPLE_SMALL=1`).

# %%
import os
import warnings

import numpy as np

import imgcate
from imgcate.datasets import landsat_path
from imgcate.evaluate import aipw_scores, blp, rate
from imgcate.simulate import landsat_trial

SMALL = os.environ.get("IMGCATE_EXAMPLE_SMALL") == "1"
SCENE = landsat_path()  # the real scene the package ships (data/landsat/)
N_UNITS = 400 if SMALL else 800
DRAWS = {"num_warmup": 200, "num_samples": 200, "num_chains": 2} if SMALL else {}

# %% [markdown]
# ## The trial and its chips

# %%
sim = landsat_trial(SCENE, seed=1, n_units=N_UNITS, chip_size=16)
trial = sim.trial
chips = imgcate.extract_chips(trial, SCENE, 16)
embeddings = imgcate.embed(chips, "rcf", n_features=128, n_components=8, seed=0)
print(trial.n_units, "units;", chips.n_images, "chips of", chips.values.shape[1:])

# %% [markdown]
# ## How many effect clusters? PSIS-LOO over K = 1, 2, 3

# %%
comparison = imgcate.compare_clusters(trial, embeddings, k_max=3, seed=0, **DRAWS)
print(comparison.table[["elpd_loo", "elpd_diff", "dse", "selected"]])
result = comparison.fits[comparison.best_k]
print(result.summary())

# %% [markdown]
# ## Effects per cluster and per village; the ATE check

# %%
print(result.cluster_effects())
print("true cluster effects:", sim.truth.tau_cluster)
units = result.unit_effects()
print("cluster assignment accuracy:", np.mean(units["cluster"].to_numpy() == sim.truth.cluster))
print(result.ate())

# %% [markdown]
# ## Is the heterogeneity real? RATE (AUTOC) and the BLP heterogeneity loading
#
# Doubly robust scores with the known propensity 0.5 of the randomized trial. In a real study,
# evaluate on units the model was not fitted on (`imgcate.evaluate.spatial_folds`).

# %%
y, t = trial.outcome_array, trial.treatment_array
zeros = np.zeros_like(y)
scores = aipw_scores(y, t, 0.5, zeros + y[t == 0].mean(), zeros + y[t == 1].mean())
autoc = rate(units["tau_mean"], scores, target="AUTOC", seed=0)
print(f"AUTOC {autoc.estimate:.3f} (se {autoc.std_err:.3f})")
print(blp(y, t, 0.5, units["tau_mean"].to_numpy()))

# %% [markdown]
# ## Predicting for images outside the trial
#
# New chips are embedded with the encoder saved in the fit, exactly as the trial's were.

# %%
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    prediction = result.predict(chips)
frame = prediction.to_frame()
print(frame.head())
print("share of images outside the trial's support:", frame["outside_support"].mean())
