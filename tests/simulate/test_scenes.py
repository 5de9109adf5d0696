"""Simulated scenes: GeoTIFFs that reopen as stated; clusters a deterministic function of chips."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

from imgcate.chips import extract_chips
from imgcate.embeddings import embed
from imgcate.errors import InputError
from imgcate.simulate import (
    BUILT,
    ROAD,
    land_cover_path,
    landsat_trial,
    ndvi,
    simulate_scene_trial,
    synthetic_scene,
)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    path = tmp_path_factory.mktemp("scenes") / "scene.tif"
    cover = synthetic_scene(path, seed=0, width=256, height=256)
    return path, cover


def test_scene_reopens_with_stated_crs_transform_bands(tmp_path):
    path = tmp_path / "s.tif"
    cover = synthetic_scene(
        path, seed=1, width=64, height=48, bands=4, crs="EPSG:32633", pixel_size=10.0
    )
    with rasterio.open(path) as ds:
        assert ds.crs.to_epsg() == 32633 and ds.count == 4 and (ds.height, ds.width) == (48, 64)
        assert ds.transform.a == 10.0 and ds.transform.e == -10.0
        assert ds.descriptions == ("B1", "B2", "B3", "B4")
    with rasterio.open(land_cover_path(path)) as lc:
        np.testing.assert_array_equal(lc.read(1), cover)
    assert set(np.unique(cover)) <= {0, 1, 2, 3, 4}
    again = synthetic_scene(tmp_path / "t.tif", seed=1, width=64, height=48, bands=4)
    np.testing.assert_array_equal(again, cover)


def test_clusters_are_a_deterministic_function_of_the_chips(scene):
    path, cover = scene
    sim = simulate_scene_trial(path, seed=4, n_units=60, chip_size=16)
    assert sim.trial.crs.to_epsg() == 4326 and sim.trial.n_units == 60
    chips = extract_chips(sim.trial, path, 16)
    with rasterio.open(land_cover_path(path)) as lc:
        for i, transform in enumerate(chips.transforms[:20]):
            window = rasterio.windows.from_bounds(
                *rasterio.transform.array_bounds(16, 16, transform), lc.transform
            )
            patch = lc.read(1, window=Window(*(round(v) for v in window.flatten())))
            share = np.isin(patch, (BUILT, ROAD)).mean()
            k = chips.unit_image == i
            assert np.isclose(sim.truth.share[k][0], share)
            assert sim.truth.cluster[k][0] == np.digitize(share, sim.truth.thresholds)
    np.testing.assert_array_equal(sim.truth.tau_unit, sim.truth.tau_cluster[sim.truth.cluster])
    again = simulate_scene_trial(path, seed=4, n_units=60, chip_size=16)
    np.testing.assert_array_equal(again.truth.cluster, sim.truth.cluster)
    np.testing.assert_array_equal(again.trial.outcome_array, sim.trial.outcome_array)


def test_targeted_program_assigns_treatment_by_the_stated_propensity(scene):
    """targeting=1.5: P(t) = sigmoid(1.5 z), z the standardized baseline driver. With 2,000 units
    the logistic slope of t on z has SE about 0.07, so 1.5 +- 0.3 is a 4-SE check."""
    from scipy.special import expit

    path, _ = scene
    sim = simulate_scene_trial(path, seed=3, n_units=2000, chip_size=16, targeting=1.5)
    truth, t = sim.truth, sim.trial.treatment_array
    baseline = truth.mu0 - 0.5 * sim.trial.covariate_matrix[:, 0]
    z = (baseline - baseline.mean()) / baseline.std()
    np.testing.assert_allclose(truth.propensity, expit(1.5 * z), atol=1e-12)
    slope = LogisticRegression(C=np.inf).fit(z[:, None], t).coef_[0, 0]
    assert abs(slope - 1.5) < 0.3, slope
    # the targeting confounds: treated places do better without the program
    assert truth.mu0[t == 1].mean() - truth.mu0[t == 0].mean() > 0.1
    residual = sim.trial.outcome_array - truth.mu0 - t * truth.tau_unit
    assert abs(residual.mean()) < 4 / np.sqrt(2000) and 0.9 < residual.std() < 1.1
    randomized = simulate_scene_trial(path, seed=3, n_units=200, chip_size=16)
    assert randomized.trial.treatment_array.sum() == 100
    np.testing.assert_array_equal(randomized.truth.propensity, 0.5)
    with pytest.raises(InputError, match="targeting"):
        simulate_scene_trial(path, seed=3, n_units=20, chip_size=16, targeting=float("nan"))


def test_scene_clusters_separable_from_embeddings(scene):
    path, _ = scene
    sim = simulate_scene_trial(path, seed=2, n_units=120, chip_size=16)
    emb = embed(extract_chips(sim.trial, path, 16), n_features=64, seed=0)
    x = emb.for_keys(sim.trial.image_keys)
    acc = cross_val_score(LogisticRegression(max_iter=2000), x, sim.truth.cluster, cv=4).mean()
    assert acc >= 0.85


def test_landsat_trial_clusters_follow_ndvi_and_are_separable(landsat_path):
    sim = landsat_trial(landsat_path, seed=0, n_units=120)
    assert np.bincount(sim.truth.cluster).tolist() == [60, 60]
    chips = extract_chips(sim.trial, landsat_path, 16)
    veg = (ndvi(chips.values[:, 2], chips.values[:, 3]) > 0.2).mean(axis=(1, 2))
    np.testing.assert_allclose(veg[chips.unit_image], sim.truth.share)
    emb = embed(chips, n_features=64, seed=0)
    x = emb.for_keys(sim.trial.image_keys)
    acc = cross_val_score(LogisticRegression(max_iter=2000), x, sim.truth.cluster, cv=4).mean()
    assert acc >= 0.85
    t = sim.trial.treatment_array
    assert t.sum() == 60  # half treated


def test_a_landsat_ramp_is_a_smooth_effect_of_the_vegetated_share(landsat_path):
    """``ramp``: the effect a logistic curve in the share (no step, units at every share)."""
    from scipy.special import expit

    sim = landsat_trial(landsat_path, seed=0, n_units=120, ramp=0.15, margin=0.0)
    tau, share = np.asarray(sim.truth.tau_unit), np.asarray(sim.truth.share)
    np.testing.assert_allclose(tau, 2.0 * expit((share - 0.3) / 0.15))
    assert len(np.unique(tau.round(3))) > 40 and 0.0 < tau.min() and tau.max() < 2.0
    step = landsat_trial(landsat_path, seed=0, n_units=120)  # the default: a step
    assert set(np.unique(step.truth.tau_unit)) == {0.0, 2.0}
    with pytest.raises(InputError, match="ramp=0.15 needs n_clusters=2"):
        landsat_trial(landsat_path, seed=0, n_units=120, n_clusters=3, ramp=0.15)


@pytest.mark.slow
def test_larger_trials_separable_three_clusters(scene, landsat_path):
    path, _ = scene
    sim = simulate_scene_trial(path, seed=7, n_units=300, n_clusters=3, chip_size=32, margin=0.03)
    emb = embed(extract_chips(sim.trial, path, 32), seed=0)
    x = emb.for_keys(sim.trial.image_keys)
    acc = cross_val_score(LogisticRegression(max_iter=4000), x, sim.truth.cluster, cv=5).mean()
    assert acc >= 0.8
    ls = landsat_trial(landsat_path, seed=3, n_units=400, margin=0.05)
    emb = embed(extract_chips(ls.trial, landsat_path, 16), seed=0)
    x = emb.for_keys(ls.trial.image_keys)
    acc = cross_val_score(LogisticRegression(max_iter=4000), x, ls.truth.cluster, cv=5).mean()
    assert acc >= 0.85
