"""The synthetic setting of the segment tests, whose causal region is known.

Every chip is smooth textured noise; the "high-effect" chips (cluster 1, tau = 2; others
tau = 0) also hold a 12 x 12 px vegetation-like patch (bright NIR, dark red) at a random place
inside a random quadrant. Treatment is randomized. A K = 2 fit on random-convolutional-feature
embeddings should then point at the patch when segments are occluded.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import replace

import jax
import numpy as np
import pandas as pd
from scipy.ndimage import gaussian_filter

from imgcate.chips import chips_from_array
from imgcate.embeddings import embed
from imgcate.inference import fit
from imgcate.units import read_units

#: Spectral signature added inside the patch (blue, green, red, NIR, SWIR1, SWIR2), in units of
#: the background sd: vegetation-like (NIR up, red down).
PATCH_SIGNATURE = np.array([-0.5, 0.0, -0.8, 3.0, 0.5, -0.3])


def synthetic_patch_trial(seed: int, n: int = 240, size: int = 32, patch: int = 12):
    """Chips (n, 6, size, size), trial, has-patch flags and patch masks (n, size, size)."""
    rng = np.random.default_rng(seed)
    x = gaussian_filter(rng.normal(size=(n, 6, size, size)), (0, 0, 1, 1)) * 2 + 1
    has = rng.random(n) < 0.5
    masks = np.zeros((n, size, size), bool)
    half = size // 2
    for i in np.flatnonzero(has):
        q = rng.integers(4)
        r = (q // 2) * half + rng.integers(0, half - patch + 1)
        c = (q % 2) * half + rng.integers(0, half - patch + 1)
        masks[i, r : r + patch, c : c + patch] = True
        x[i][:, masks[i]] += PATCH_SIGNATURE[:, None]
    treatment = rng.integers(0, 2, n)
    outcome = 0.5 * rng.normal(size=n) + treatment * np.where(has, 2.0, 0.0)
    table = pd.DataFrame(
        {
            "id": np.arange(n),
            "lon": rng.uniform(30, 31, n),
            "lat": rng.uniform(0, 1, n),
            "treatment": treatment,
            "outcome": outcome,
            "image_id": np.arange(n),
        }
    )
    trial = read_units(table, image_id="image_id")
    return chips_from_array(x.astype(np.float32), np.arange(n)), trial, has, masks


def fit_patch_trial(chips, trial, n_clusters=2, seed=0, **options):
    emb = embed(chips, "rcf", n_features=64, n_components=8, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # short chains: low-ESS warnings are expected here
        return fit(trial, emb, n_clusters=n_clusters, seed=seed, **options)


def pointing_game(result, masks, has) -> float:
    """Share of patch chips whose largest-|mean CATE change| segment overlaps the patch."""
    top = np.nanargmax(np.abs(result.cate_change_mean.values), axis=1)
    top_mask = result.segments.values == top[:, None, None]
    hits = (top_mask & masks).any(axis=(1, 2))
    return float(hits[has].mean())


def covers_zero(result) -> np.ndarray:
    """Whether each (image, segment) interval of the CATE change covers zero."""
    return (result.cate_change_lower.values <= 0) & (result.cate_change_upper.values >= 0)


def float64_fit(fitted):
    """The same fit with a float64 copy of its encoder (run under ``jax.enable_x64``)."""
    enc = copy.copy(fitted.encoder)
    enc.params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), enc.params)
    enc._jit_cache = {}
    return replace(fitted, encoder=enc)
