"""The fitted model: the implied ATE, tables and InferenceData dims, membership weights,
prediction, and saving and loading (imgcate.fitfile).

Tolerances: a posterior mean is compared to the truth within 4 posterior sds. With ~500 units
the posterior sd approximates the estimator's sampling sd (Bernstein-von Mises), so a correct
model fails such a check with probability ~6e-5; the Monte Carlo error of the mean (sd/sqrt(ESS),
ESS >= 100) adds under 10% to that margin.
"""

from __future__ import annotations

import dataclasses
import pickle
import re
import shutil
import warnings

import numpy as np
import pytest

from imgcate import ExtrapolationWarning, InputError
from imgcate.posterior import trial_inputs
from imgcate.results import load_fit

FAST = {"num_warmup": 300, "num_samples": 300, "num_chains": 2}


def test_implied_ate_agrees_with_difference_in_means(k2):
    sim, result = k2
    table = result.ate()
    model, dim = table.loc["model_implied"], table.loc["difference_in_means"]
    assert abs(model.estimate - dim.estimate) < 3 * dim.std_err
    assert abs(model.estimate - sim.truth.ate) < 4 * dim.std_err
    assert list(table.columns) == ["estimate", "std_err", "5%", "95%", "vcov"]
    assert table.loc["difference_in_means", "vcov"] == "HC2"  # every unit its own cluster


def test_ate_is_cluster_robust_where_units_share_assignment_or_images(k2):
    """The design-based ATE uses CR2 over the trial's clusters, or its shared images."""
    import dataclasses

    from imgcate.confounding import difference_in_means
    from imgcate.units import design_clusters

    sim, result = k2
    trial = sim.trial
    assert design_clusters(trial) is None
    villages = np.arange(trial.n_units) // 4  # four units per village
    shared = dataclasses.replace(
        trial, data=trial.data.assign(village=villages), image_id="village"
    )
    np.testing.assert_array_equal(design_clusters(shared), villages)
    declared = dataclasses.replace(trial, data=trial.data.assign(block=villages), cluster="block")
    np.testing.assert_array_equal(design_clusters(declared), villages)
    idata = result.idata.copy()
    idata.constant_data = idata.constant_data.assign(design_cluster=("unit", villages))
    table = dataclasses.replace(result, idata=idata).ate(prob=0.8)
    expected = difference_in_means(
        result.observed_outcome(), trial.treatment_array, clusters=villages, prob=0.8
    )
    row = table.loc["difference_in_means"]
    assert row["vcov"] == expected.vcov != "HC2"
    assert (row["std_err"], row["10%"], row["90%"]) == pytest.approx(
        (expected.std_err, expected.lower, expected.upper)
    )


def test_tables_and_idata_dims(k2):
    _, result = k2
    tidy = result.tidy(prob=0.8)
    assert list(tidy.columns) == ["term", "estimate", "std_err", "10%", "90%"]
    assert (tidy["10%"] < tidy["estimate"]).all() and (tidy["estimate"] < tidy["90%"]).all()
    post = result.idata.posterior
    assert post["tau_cluster"].dims == ("chain", "draw", "cluster")
    assert post["membership"].dims == ("chain", "draw", "feature", "cluster_contrast")
    assert post["membership_local"].dims == ("chain", "draw", "feature")
    weights = post["membership_scale"] * post["membership_local"] * post["membership_raw"]
    np.testing.assert_allclose(
        post["membership"], weights.transpose(*post["membership"].dims), rtol=1e-6
    )
    assert result.idata.log_likelihood["outcome"].dims == ("chain", "draw", "unit")
    assert "Cluster effects" in result.summary()
    assert "Diagnostics: max R-hat 1." in result.summary()
    one_chain = dataclasses.replace(result, idata=result.idata.sel(chain=[0]))
    assert "Diagnostics: max R-hat n/a (one chain), min bulk ESS" in one_chain.summary()
    assert result.loo().elpd_loo < 0


def test_membership_weights_in_the_input_basis(k2):
    sim, result = k2
    table = result.membership_weights()
    assert table.index.names == ["feature", "contrast"] and len(table) == 16
    # exact: input-basis weights give the model's logits on raw (standardized) embeddings
    rng = np.random.default_rng(0)
    raw = sim.embeddings.values[:50] + rng.normal(size=(50, 16))
    std = result.standardizer
    draws = result._draws("membership")
    model_logit = std.embedding(raw) @ draws[0]
    weights_in = std.projection @ draws[0]
    np.testing.assert_allclose(
        (raw - std.embedding_mean) / std.embedding_sd @ weights_in,
        model_logit,
        rtol=1e-6,
        atol=1e-6,
    )
    # the weights point along the direction that separates the true clusters: the Bayes log-odds
    # of cluster 1 against 0 are (c1 - c0) . e, i.e. (c1 - c0) * sd per sd of each feature
    centers = sim.truth.centers
    truth_direction = (centers[1] - centers[0]) * std.embedding_sd
    mean = table["weight_mean"].to_numpy()
    corr = np.corrcoef(mean, truth_direction)[0, 1]
    print(f"correlation of membership weights with the true direction: {corr:.3f}")
    assert corr > 0.9, corr
    assert table["prob_positive"].between(0, 1).all()
    assert (table["5%"] <= table["weight_mean"]).all()
    model = result.membership_weights(basis="model", prob=0.8)
    assert list(model.columns) == ["weight_mean", "weight_sd", "10%", "90%", "prob_positive"]
    named = result.membership_weights(names=[f"f{i}" for i in range(16)])
    assert named.index.get_level_values("feature")[0] == "f0"
    with pytest.raises(InputError, match="names"):
        result.membership_weights(names=["a", "b"])
    with pytest.raises(InputError, match="basis"):
        result.membership_weights(basis="pixels")


def test_predict_matches_in_sample_and_truth(k2):
    sim, result = k2
    emb = sim.embeddings.for_keys(sim.trial.image_keys)
    pred = result.predict(emb)
    units = result.unit_effects()
    np.testing.assert_allclose(pred.cate.mean(0), units["tau_mean"], atol=1e-5)
    # new images from the same mixture: the posterior CATE tracks their true conditional effect
    rng = np.random.default_rng(5)
    centers = sim.truth.centers
    new_emb = centers[rng.integers(0, 2, 300)] + rng.normal(size=(300, centers.shape[1]))
    frame = result.predict(new_emb).to_frame()
    assert np.corrcoef(frame["tau_mean"], sim.truth.cate_of(new_emb))[0, 1] > 0.9
    assert {"tau_5%", "tau_95%", "prob_positive", "cluster_prob_1"} <= set(frame.columns)
    with pytest.warns(ExtrapolationWarning, match=r"3 of 3 images lie outside") as caught:
        far = result.predict(emb[:3] * 0 + 50.0)
    assert caught[0].filename == __file__  # points at the caller's line
    assert far.outside_support.all() and not pred.outside_support.mean() > 0.05
    # no warning where a tenth or fewer lie outside (the trial's own: about 1 in 100)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ExtrapolationWarning)
        result.predict(np.vstack([emb[:9], emb[:1] * 0 + 50.0]))


def test_a_fit_saved_with_weighted_cluster_effects_is_read_with_todays(k2, tmp_path, edit_fit_file):
    """A file saved before 2026-12-05 (no ``cluster_effects`` in its meta.json) stored
    membership-weighted cluster effects: they are recomputed on load, equal to the fit's own
    (the average CATE of the units most probably in each cluster), not the stored ones."""
    _, result = k2
    path = result.save(tmp_path / "fit.imgcate")

    def older_meta(meta):
        del meta["cluster_effects"]
        return meta

    def stored_effects(idata):  # the stored effects as the former definition gave them
        idata.posterior["tau_cluster"] = idata.posterior["tau_cluster"] * 0 + 99.0
        return idata

    older = edit_fit_file(path, tmp_path / "older.imgcate", meta=older_meta, idata=stored_effects)
    assert load_fit(path).cluster_effects().equals(result.cluster_effects())
    loaded = load_fit(older)
    np.testing.assert_allclose(
        loaded.cluster_effects()["tau_mean"], result.cluster_effects()["tau_mean"], rtol=1e-6
    )
    # saved again, it carries today's definition and is read as it is
    assert (
        load_fit(loaded.save(tmp_path / "again.imgcate"))
        .cluster_effects()
        .equals(loaded.cluster_effects())
    )


def test_save_load_predict_identical(k2, tmp_path, edit_fit_file):
    sim, result = k2
    path = result.save(tmp_path / "fit.imgcate")
    loaded = load_fit(path)
    emb = sim.embeddings.values
    a, b = result.predict(emb), loaded.predict(emb)
    np.testing.assert_array_equal(a.cate, b.cate)
    np.testing.assert_array_equal(a.cluster_prob, b.cluster_prob)
    assert loaded.cluster_effects().equals(result.cluster_effects())
    # The loaded posterior lives in memory: saving it again, pickling it (as Dask does) and
    # reading it after the temporary file is gone all work.
    fresh = load_fit(path)
    again = load_fit(fresh.save(tmp_path / "again" / "fit.imgcate"))
    assert fresh.cluster_effects().equals(result.cluster_effects())
    assert again.cluster_effects().equals(result.cluster_effects())
    assert (
        pickle.loads(pickle.dumps(load_fit(path)))
        .cluster_effects()
        .equals(result.cluster_effects())
    )
    shutil.rmtree(tmp_path / "again")
    with pytest.raises(Exception, match="exists; pass overwrite=True"):
        result.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["fit.imgcate"]  # no temporary left
    (tmp_path / "bad.imgcate").write_bytes(b"garbage")
    with pytest.raises(InputError, match="not a readable imgcate fit"):
        load_fit(tmp_path / "bad.imgcate")
    # the same fit, its settings replaced by a JSON list
    edit_fit_file(path, tmp_path / "meta.imgcate", meta=lambda _: [1, 2])
    with pytest.raises(InputError, match="meta.json is not a fit's settings"):
        load_fit(tmp_path / "meta.imgcate")


def test_older_and_newer_fit_files_say_what_to_do(k2, tmp_path, edit_fit_file):
    """A format-1 file (the mixture model) and a format-2 file (random Fourier features) ask
    for a refit; a newer format, or a setting this imgcate does not know, for an upgrade."""

    _, result = k2
    path = result.save(tmp_path / "fit.imgcate")
    basis = np.asarray(trial_inputs(result).basis)

    def stored_basis(idata):  # and summaries a format-4 file would have, to be recomputed
        const = idata.constant_data.assign(basis_features=(("unit", "basis"), basis))
        idata.constant_data = const
        idata.posterior["tau_cluster"] = idata.posterior["tau_cluster"] * 0
        return idata

    for version, message in (
        (1, "refit with imgcate.fit"),
        (2, "refit with imgcate.fit"),
        (99, "upgrade imgcate"),
        (3, None),  # format 3 (before the hurdle's gamma part) still loads a gaussian fit
        (4, None),  # format 4 stored the Gaussian-process basis: it is read from the file
        (5, None),  # format 5 had no targeting slope (a fit given a propensity: none)
    ):
        copy = edit_fit_file(
            path,
            tmp_path / f"v{version}.imgcate",
            meta=lambda m, v=version: {**m, "format_version": v},
            idata=stored_basis if version == 4 else None,
        )
        if message is None:
            loaded = load_fit(copy)
            assert ("basis_features" in loaded.idata.constant_data) == (version == 4)
            np.testing.assert_allclose(
                loaded.idata.posterior["tau_cluster"], result.idata.posterior["tau_cluster"]
            )
            np.testing.assert_array_equal(
                loaded.unit_effects()["tau_mean"], result.unit_effects()["tau_mean"]
            )
            continue
        with pytest.raises(InputError, match=message):
            load_fit(copy)

    def with_new_setting(meta):
        return {**meta, "config": {**meta["config"], "membership_slab": 5.0}}

    newer = edit_fit_file(path, tmp_path / "newer.imgcate", meta=with_new_setting)
    with pytest.raises(InputError, match=r"does not know \(membership_slab\).*upgrade imgcate"):
        load_fit(newer)


def test_repr_and_provenance_travel_with_the_fit(k2, tmp_path):
    import imgcate

    _, result = k2
    text = repr(result)
    assert text.startswith("EffectFit(") and "K=2, likelihood=gaussian" in text
    assert len(text.splitlines()) < 12  # compact: no arrays
    html = result._repr_html_()
    assert html.startswith("<table>") and "cluster effects" in html
    record = result.provenance
    assert record["imgcate_version"] == imgcate.__version__
    assert record["seeds"] == {"fit": result.config.seed}
    loaded = load_fit(result.save(tmp_path / "fit.imgcate"))
    assert loaded.provenance == record


def test_ate_without_a_design_se_and_the_ate_gap_check(k2):
    """A cluster holding a whole arm gives NaN (not a crash); a model ATE far from the
    difference in means is named by the checks, in summary() too."""
    import dataclasses

    from imgcate.diagnostics import ate_gap

    _, result = k2
    t = result.idata.constant_data["treatment"].values
    idata = result.idata.copy()
    idata.constant_data = idata.constant_data.assign(design_cluster=("unit", t))
    whole_arms = dataclasses.replace(result, idata=idata)
    table = whole_arms.ate()
    assert np.isnan(table.loc["difference_in_means", "std_err"])
    assert "whole arm" in table.loc["difference_in_means", "vcov"]
    from imgcate.diagnostics import ate_design, checks_passed

    assert ate_design(table) is None and "ATE agrees" not in checks_passed(whole_arms)
    assert ate_design(result.ate()) == "the difference in means"
    assert ate_gap(result.ate()) is None
    assert "disagree beyond chance" not in result.summary().split("Checks:")[1]
    shifted = result.idata.copy()
    y = shifted.constant_data["outcome_original"].values
    shifted.constant_data["outcome_original"] = ("unit", y + 3.0 * t)  # treated outcomes moved
    moved = dataclasses.replace(result, idata=shifted)
    assert "disagree beyond chance" in ate_gap(moved.ate())
    assert "disagree beyond chance" in moved.summary().split("Checks:")[1]


def test_checks_without_replicated_outcomes(k2):
    """Very large fits keep no posterior_predictive group: the checks skip the outcome check,
    and check_outcome says why it cannot run."""
    import dataclasses

    from imgcate import FitError

    _, result = k2
    idata = result.idata.copy()
    del idata.posterior_predictive
    bare = dataclasses.replace(result, idata=idata)
    assert bare.check_model() == []
    assert "Checks:" in bare.summary()
    with pytest.raises(FitError, match="no posterior_predictive group"):
        bare.check_outcome()


def test_overlap_note_counts_units_outside_the_band_and_is_silent_inside_it():
    """The fit's OverlapWarning and summary note: units with a propensity outside [0.1, 0.9]
    (the edges themselves inside), none for all inside or for a fit given none."""
    from imgcate.ates import overlap_note

    assert overlap_note(None) is None
    assert overlap_note(np.array([0.1, 0.5, 0.9])) is None
    note = overlap_note(np.array([0.05, 0.1, 0.5, 0.95]))
    assert note.startswith("2 of 4 units (50%) have a propensity outside [0.1, 0.9]")
    assert not note.endswith(".")  # a sentence for a warning or a summary to end


def test_predict_names_the_fits_covariates_when_their_shape_is_wrong(k2):
    """A covariates array of the wrong width is refused with the fit's covariates in order
    (a fit given a propensity has it as its last: the user did not add it)."""
    sim, result = k2
    images = sim.embeddings.for_keys(sim.trial.image_keys)[:5]
    names = list(sim.trial.covariates)
    with pytest.raises(InputError, match=re.escape(f"in its order: {names}")):
        result.predict(images, covariates=np.zeros((5, len(names) + 1)))
