"""The confounder adjustment at coarser image resolutions."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def test_resolution_check_on_a_scene_with_a_visible_confounder(tmp_path):
    """Targeting on the built-up share of each chip, which only the image shows: the fine
    chips remove most of the difference-in-means bias; the table reports every factor."""
    from scipy.special import expit

    from imgcate.chips import extract_chips
    from imgcate.confounding import resolution_check
    from imgcate.simulate import simulate_scene_trial, synthetic_scene

    scene = tmp_path / "scene.tif"
    synthetic_scene(scene, seed=2, width=384, height=384)
    sim = simulate_scene_trial(scene, seed=3, n_units=600, chip_size=32, margin=0.0)
    rng = np.random.default_rng(0)
    share = sim.truth.share
    z = (share - share.mean()) / share.std()
    t = rng.binomial(1, expit(1.5 * z))
    y = 1.0 + 2.0 * z + 2.0 * t + rng.normal(size=len(z))
    trial = sim.trial.__class__(
        **{**sim.trial.__dict__, "data": sim.trial.data.assign(treatment=t, outcome=y)}
    )
    chips = extract_chips(trial, scene, 32)
    table = resolution_check(trial, chips, factors=(1, 4), seed=0)
    assert list(table["factor"].unique()) == [1, 4]
    fine = table[table.factor == 1].set_index("estimator")
    assert fine.loc["difference_in_means", "estimate"] - 2.0 > 0.8  # badly biased
    assert (
        abs(fine.loc["aipw", "estimate"] - 2.0)
        < abs(fine.loc["difference_in_means", "estimate"] - 2.0) / 2
    )
    pixel = table.groupby("factor")["pixel_size"].first()
    assert pixel[4] == pytest.approx(4 * pixel[1])


@pytest.mark.filterwarnings("ignore::imgcate.errors.OverlapWarning")
def test_resolution_check_at_factor_one_is_ate_estimates_with_the_default_embedding(tmp_path):
    """Factor 1 uses the default encoder, so its rows are what ate_estimates gives on
    ``imgcate.embed(chips, seed=0)`` and the covariates (as docs/confounding.md does it)."""
    import imgcate
    from imgcate.confounding import ate_estimates, estimate_propensity, resolution_check
    from imgcate.simulate import simulate_scene_trial, synthetic_scene

    scene = tmp_path / "scene.tif"
    synthetic_scene(scene, seed=0, width=256, height=256)
    trial = simulate_scene_trial(scene, seed=1, n_units=200, targeting=1.5).trial
    chips = imgcate.extract_chips(trial, scene, 32)
    table = resolution_check(trial, chips, factors=(1,), seed=0).set_index("estimator")
    emb = imgcate.embed(chips, seed=0)
    features = np.hstack([emb.for_keys(trial.image_keys), trial.covariate_matrix])
    t = trial.treatment_array
    ps = estimate_propensity(features, t, seed=0)
    direct = ate_estimates(trial.outcome_array, t, ps, features=features, seed=0)
    for column in ("estimate", "std_err", "2.5%", "97.5%"):
        np.testing.assert_allclose(table[column], direct.loc[table.index, column], rtol=1e-8)
