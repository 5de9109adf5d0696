"""End to end: raster -> chips -> embeddings -> fit recovers the cluster effects.

Tolerance: each cluster effect within 4 posterior sds of the truth (see tests/test_inference.py for
why 4 sds: ~6e-5 false-failure probability per check for a correct model).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from imgcate import ConvergenceWarning
from imgcate.chips import extract_chips
from imgcate.embeddings import embed
from imgcate.inference import fit
from imgcate.results import load_fit
from imgcate.simulate import landsat_trial, simulate_scene_trial, synthetic_scene

OPTS = {"num_warmup": 300, "num_samples": 300, "num_chains": 2}


def fit_scene(sim, raster, chip_size, seed):
    chips = extract_chips(sim.trial, raster, chip_size)
    emb = embed(chips, "rcf", n_features=128, n_components=8, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        result = fit(sim.trial, emb, n_clusters=len(sim.truth.tau_cluster), seed=seed, **OPTS)
    return chips, emb, result


def check_recovery(result, truth):
    table = result.cluster_effects()
    err = np.abs(table["tau_mean"].to_numpy() - truth.tau_cluster)
    assert (err < 4 * table["tau_sd"].to_numpy()).all(), (table, truth.tau_cluster)
    accuracy = (result.unit_effects()["cluster"].to_numpy() == truth.cluster).mean()
    assert accuracy >= 0.85, accuracy


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    path = tmp_path_factory.mktemp("scene") / "scene.tif"
    synthetic_scene(path, seed=4, width=384, height=384)
    return path


def test_synthetic_scene_end_to_end(scene, tmp_path):
    sim = simulate_scene_trial(scene, seed=5, n_units=500, chip_size=32)
    chips, emb, result = fit_scene(sim, scene, 32, seed=0)
    check_recovery(result, sim.truth)
    # the fit keeps the encoder: new chips are embedded exactly as the trial's were
    loaded = load_fit(result.save(tmp_path / "fit.imgcate"))
    np.testing.assert_allclose(
        loaded.encoder.transform(chips), emb.encoder.transform(chips), atol=1e-6
    )
    direct = result.predict(emb.values[chips.unit_image])
    from_chips = loaded.predict(chips)
    np.testing.assert_allclose(
        from_chips.cate.mean(0)[chips.unit_image], direct.cate.mean(0), atol=1e-5
    )


def test_landsat_semi_synthetic_end_to_end(landsat_path):
    sim = landsat_trial(landsat_path, seed=6, n_units=500, chip_size=16)
    _, _, result = fit_scene(sim, landsat_path, 16, seed=0)
    check_recovery(result, sim.truth)
