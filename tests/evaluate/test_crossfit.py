"""Cross-fitted CATE of imgcate's own model (issue 18, item 4).

Fast: every unit gets one out-of-fold estimate from a fit that did not see it (checked against
the kept fold fits), folds keep spatial blocks and shared images whole, the same seed gives the
same result, and bad folds are refused before any fit.

Slow: over replications of simulated trials, RATE (AUTOC) and BLP of the out-of-fold CATE
reject "no heterogeneity" when the effect has two clusters (0 and 2) and hold their level when
it is constant. Settings (n = 300, 2 spatial folds of about 150, one chain of 100 + 100 draws,
K = 2): 52 fits, about 40 s of CPU each on the shared development machine (so about 35
minutes there; less on a free core).

Tolerances. Level: under a constant effect each replication rejects with probability alpha =
0.05 if the test is exact; the count over 20 replications is Binomial(20, 0.05) (sd 0.98, so the
rate's Monte Carlo sd is 0.049). The bound "at most 2 of 20" (10 %) fails an exact test with
probability 0.075, and a test whose true level is 0.15 passes it with probability 0.40 only.
Power: the clusters scenario separates effects 0 and 2 at n = 300, where power is close to 1;
"at least 5 of 6" fails a test of true power 0.95 with probability 0.033 (and passes one of
true power 0.6 with probability 0.23 only).

Measured 2026-12-02 (55 minutes on 2 cores shared with other runs, a first version with 10
two-cluster trials, seeds 700-709): constant effect 0 of 20 rejections for RATE, BLP and the
calibration test alike (smallest one-sided p 0.051); two clusters 10 of 10 for all three.
"""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import pytest

from imgcate.errors import InputError
from imgcate.evaluate import crossfit_cate, rate, spatial_blocks
from imgcate.simulate import simulate_scenario

TINY = {
    "num_warmup": 60,
    "num_samples": 60,
    "num_chains": 1,
    "init_restarts": 2,
    "init_steps": 100,
    "n_basis": 8,
}


@pytest.fixture(scope="module")
def small_trial():
    return simulate_scenario(3, effect="clusters", n_units=80)


@pytest.fixture(scope="module")
def kept(small_trial):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return crossfit_cate(
            small_trial.trial,
            small_trial.embeddings,
            n_folds=2,
            seed=4,
            progress=False,
            block_size=1.0,
            keep_fits=True,
            **TINY,
        )


def test_one_out_of_fold_estimate_per_unit_from_a_fit_that_did_not_see_it(small_trial, kept):
    trial = small_trial.trial
    assert np.array_equal(kept.unit_ids, trial.ids)
    assert kept.cate.shape == (trial.n_units,) and np.isfinite(kept.cate).all()
    assert np.isfinite(kept.mu0).all() and (kept.lower <= kept.upper).all()
    assert sorted(np.unique(kept.fold).tolist()) == [0, 1] and kept.scheme == "spatial"
    # folds are whole 1-degree blocks of the unit locations
    lon, lat = trial.xy()
    blocks = spatial_blocks(lon, lat, 1.0)
    assert all(len(np.unique(kept.fold[blocks == b])) == 1 for b in np.unique(blocks))
    for k, fold_fit in enumerate(kept.fits):
        held = kept.fold == k
        seen = set(fold_fit.unit_ids.tolist())
        assert not seen & set(trial.ids[held].tolist())  # no held-out unit in its fit
        assert seen | set(trial.ids[held].tolist()) == set(trial.ids.tolist())
        emb = small_trial.embeddings.for_keys(trial.image_keys[held])
        pred = fold_fit.predict(emb, covariates=trial.covariate_matrix[held])
        np.testing.assert_allclose(kept.cate[held], pred.cate.mean(0), rtol=1e-6)
        # the baseline comes from the same draws: mu1 - mu0 is the CATE
        np.testing.assert_allclose(kept.mu1[held] - kept.mu0[held], kept.cate[held], atol=1e-4)


def test_same_seed_same_result(small_trial, kept):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = crossfit_cate(
            small_trial.trial,
            small_trial.embeddings,
            n_folds=2,
            seed=4,
            progress=False,
            block_size=1.0,
            **TINY,
        )
    for name in ("fold", "cate", "cate_sd", "lower", "upper", "mu0", "mu1"):
        assert np.array_equal(getattr(again, name), getattr(kept, name)), name
    assert again.fits == ()
    assert again.heterogeneity_tests().equals(kept.heterogeneity_tests())


def test_a_plain_array_is_keyed_by_image_for_the_fold_fits(small_trial, kept):
    """The same embeddings as a plain array in unit order (the trial's images are 0, 1, ... in
    unit order) give the same result: keyed by image once, the fold fits (on subsets of the
    trial) find their rows, where each fold refused the array before. On a trial whose units
    name other images, the array is refused before any fold is assigned."""
    trial = small_trial.trial
    values = small_trial.embeddings.unit_rows(trial.image_keys)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = crossfit_cate(
            trial, values, n_folds=2, seed=4, progress=False, block_size=1.0, **TINY
        )
    for name in ("fold", "cate", "cate_sd", "lower", "upper", "mu0", "mu1"):
        assert np.array_equal(getattr(plain, name), getattr(kept, name)), name
    shuffled = trial.data.assign(image_id=trial.image_keys[::-1])
    other = replace(trial, data=shuffled)
    with pytest.raises(InputError, match="names each unit's image"):
        crossfit_cate(other, values, n_folds=2, progress=False, **TINY)


def test_results_feed_rate_blp_and_calibration(kept):
    tests = kept.heterogeneity_tests(prob=0.9)
    assert tests["term"].tolist() == ["rate_autoc", "blp_hte", "calibration_differential"]
    assert list(tests.columns[:5]) == ["term", "estimate", "std_err", "5%", "95%"]
    direct = rate(kept.cate, kept.scores(), seed=kept.seed)
    assert tests.loc[0, "estimate"] == pytest.approx(direct.estimate)
    assert tests.loc[1, "estimate"] == pytest.approx(
        kept.blp().set_index("term").loc["hte", "estimate"]
    )
    assert ((tests["p_value"] >= 0) & (tests["p_value"] <= 1)).all()
    frame = kept.to_frame()
    assert list(frame.columns) == [
        "unit",
        "fold",
        "tau_mean",
        "tau_sd",
        "tau_5%",
        "tau_95%",
        "mu0",
        "mu1",
    ]
    assert "Out-of-sample heterogeneity test (2 spatial folds" in kept.summary()


def test_its_repr_says_what_it_holds_in_a_few_lines(kept):
    """Printed, a crossfit says what it holds instead of dumping every unit's arrays."""
    text = repr(kept)
    assert len(text.splitlines()) == 3, text
    assert text.startswith("CrossfitResult(80 units, 2 spatial folds, seed 4;"), text
    assert f"mean {float(np.mean(kept.cate)):.3g};" in text
    lo, hi = np.percentile(kept.cate, [5, 95])
    assert f"posterior means from {lo:.3g} to {hi:.3g} (5th to 95th percentile)" in text
    width = float(np.mean(kept.upper - kept.lower))
    assert f"each unit's 90% interval {width:.3g} wide on average" in text
    assert f"fold fits' warnings: {len(kept.problems)}" in text
    assert "fits kept: 2" in text
    assert "array(" not in text and len(text) < 400, text


def test_summary_refuses_a_crossfit_of_other_units(kept):
    with pytest.raises(InputError, match="crossfit_cate on the fit's own trial"):
        kept.fits[0].summary(out_of_sample=kept)


def _sharing(trial, units_per_image: int):
    """The trial with each run of ``units_per_image`` consecutive units sharing one image."""
    data = trial.data.assign(image_id=np.arange(trial.n_units) // units_per_image)
    return replace(trial, data=data, image_id="image_id")


def test_bad_folds_are_refused_before_any_fit():
    sim = simulate_scenario(0, n_units=30)
    with pytest.raises(InputError, match="n_folds=1"):
        crossfit_cate(sim.trial, sim.embeddings, n_folds=1, progress=False)
    with pytest.raises(InputError, match="folds='blocks' must be 'spatial', 'random' or an array"):
        crossfit_cate(sim.trial, sim.embeddings, folds="blocks", progress=False)
    with pytest.raises(InputError, match="one integer fold per unit"):
        crossfit_cate(sim.trial, sim.embeddings, folds=np.zeros(5, int), progress=False)
    with pytest.raises(InputError, match="single fold"):
        crossfit_cate(sim.trial, sim.embeddings, folds=np.zeros(30, int), progress=False)
    trial = _sharing(sim.trial, 2)  # pairs of units share an image
    with pytest.raises(InputError, match="share an image"):
        crossfit_cate(trial, sim.embeddings, folds=np.arange(30) % 2, progress=False)


def test_folds_count_units_that_share_an_image_once():
    sim = simulate_scenario(1, n_units=40)
    trial = _sharing(sim.trial, 4)  # 10 images of 4 units: at most 10 folds
    with pytest.raises(InputError, match="groups of units sharing an image or cluster: 10"):
        crossfit_cate(trial, sim.embeddings, folds="random", n_folds=11, progress=False)


TESTS = ("rate_autoc", "blp_hte", "calibration_differential")


def _rejects(effect: str, seed: int) -> dict[str, float]:
    sim = simulate_scenario(seed, effect=effect, n_units=300)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cf = crossfit_cate(
            sim.trial,
            sim.embeddings,
            n_folds=2,
            seed=seed,
            progress=False,
            n_clusters=2,
            num_warmup=100,
            num_samples=100,
            num_chains=1,
            init_restarts=2,
            init_steps=150,
        )
    return cf.heterogeneity_tests().set_index("term")["p_value"].to_dict()


@pytest.mark.slow
def test_out_of_fold_rate_and_blp_reject_only_real_heterogeneity():
    """20 trials with a constant effect (level) and 6 with two effect clusters (power),
    interleaved so that a partial run already shows both."""
    reps = {"constant": 20, "clusters": 6}
    counts = {effect: dict.fromkeys(TESTS, 0) for effect in reps}
    for rep in range(max(reps.values())):
        for effect, n_reps in reps.items():
            if rep >= n_reps:
                continue
            p = _rejects(effect, 700 + rep)
            for name in TESTS:
                counts[effect][name] += p[name] < 0.05
            print(f"{effect} rep {rep}: " + ", ".join(f"{k} p={v:.3f}" for k, v in p.items()))
    print(f"rejections at 0.05: {counts} over {reps}")
    for name in ("rate_autoc", "blp_hte"):
        assert counts["constant"][name] <= 2, counts  # level: at most 10 % of 20
        assert counts["clusters"][name] >= 5, counts  # power: at least 5 of 6


def test_a_folds_warnings_number_it_as_the_table_does():
    """A fold's fit warnings are repeated with the fold's number as to_frame()['fold'] has it
    (0-based), and a fit's problems are kept for the result."""
    from imgcate.errors import ConvergenceWarning
    from imgcate.evaluate.crossfit import _rewarn

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.warn("R-hat > 1.01", ConvergenceWarning, stacklevel=1)
    with pytest.warns(ConvergenceWarning, match=r"crossfit_cate, fold 4 \(folds 0-4\): R-hat"):
        problems = _rewarn(caught, 4, 5)
    assert problems == ["crossfit_cate, fold 4 (folds 0-4): R-hat > 1.01"]


def test_limited_overlap_is_warned_once_for_all_units(small_trial):
    """Given a propensity with units outside [0.1, 0.9], crossfit_cate warns once, for the
    trial's units, not once more for each fold's fit nor for its predictions of the held-out
    units (the targeting is on the image, so the fold fits have a targeting line)."""
    from scipy.special import expit

    from imgcate.confounding import Propensity
    from imgcate.errors import OverlapWarning

    z = small_trial.embeddings.for_keys(small_trial.trial.image_keys)[:, 0]
    p = expit(3 * (z - z.mean()) / z.std())
    t = small_trial.trial.treatment_array  # a Propensity object is taken for its scores
    given = Propensity(scores=p, treatment=t, method="cbps", clip=1e-3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        crossfit_cate(
            small_trial.trial,
            small_trial.embeddings,
            n_folds=2,
            seed=4,
            progress=False,
            propensity=given,
            **TINY,
        )
    overlap = [str(w.message) for w in caught if w.category is OverlapWarning]
    outside = int(((p < 0.1) | (p > 0.9)).sum())
    assert outside > 8  # more than a tenth: a fold's predictions would warn
    assert len(overlap) == 1 and overlap[0].startswith(f"crossfit_cate: {outside} of 80 units")
