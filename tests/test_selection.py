"""Choosing K: PSIS-LOO with stacking weights, Pareto-k reported and a spatial K-fold fallback,
held-out log-likelihoods checked against the fit's own, the selected fit checked, and the true K
found (slow).

Tolerances: a posterior mean is compared to the truth within 4 posterior sds. With ~500 units
the posterior sd approximates the estimator's sampling sd (Bernstein-von Mises), so a correct
model fails such a check with probability ~6e-5; the Monte Carlo error of the mean (sd/sqrt(ESS),
ESS >= 100) adds under 10% to that margin.
"""

from __future__ import annotations

import warnings
from dataclasses import replace

import arviz as az
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from imgcate import ConvergenceWarning, InputError, load_fit
from imgcate.errors import ParetoKWarning
from imgcate.evaluate import spatial_blocks
from imgcate.heldout import held_out_log_likelihood
from imgcate.inference import fit
from imgcate.selection import (
    MIN_ELPD_GAIN,
    SE_MULTIPLE,
    check_comparison,
    compare_clusters,
    fold_ids,
    pareto_problem,
    preference_order,
)
from imgcate.simulate import simulate_trial

FAST = {"num_warmup": 300, "num_samples": 300, "num_chains": 2}
#: Small fits for the fast suite: one chain, 100 draws, no MAP restarts, 8 basis functions.
SMALL = {
    "num_warmup": 100,
    "num_samples": 100,
    "num_chains": 1,
    "init_restarts": 0,
    "n_basis": 8,
}


def test_compare_clusters_warns_for_the_selected_fit():
    """Each K's fit is quiet during the comparison; the selected one is then checked."""
    sim = simulate_trial(5, 150, 1)
    with pytest.warns(ConvergenceWarning, match="bulk ESS") as record:
        comparison = compare_clusters(
            sim.trial,
            sim.embeddings,
            k_max=1,
            constant=False,
            criterion="loo",
            num_chains=1,
            num_warmup=30,
            num_samples=30,
            seed=0,
        )
    assert comparison.best_k == 1
    assert all(
        "imgcate fit:" in str(w.message)
        for w in record
        if issubclass(w.category, ConvergenceWarning)
    )
    # 30 draws: ArviZ's threshold is 1 - 1/log10(30) = 0.32, and the table reports against it
    assert comparison.pareto_k_threshold == pytest.approx(1 - 1 / np.log10(30))
    assert comparison.table.loc[1, "n_bad_pareto_k"] >= 0


def test_bad_options_are_refused():
    sim = simulate_trial(5, 40, 1)
    with pytest.raises(InputError, match="criterion='psis' is not allowed"):
        compare_clusters(sim.trial, sim.embeddings, criterion="psis")
    with pytest.raises(InputError, match="max_bad_k_share"):
        compare_clusters(sim.trial, sim.embeddings, max_bad_k_share=1.5)
    with pytest.raises(InputError, match="min_elpd_gain=-1 must be a finite number >= 0"):
        compare_clusters(sim.trial, sim.embeddings, min_elpd_gain=-1)
    with pytest.raises(InputError, match="se_multiple=nan must be a finite number >= 0"):
        compare_clusters(sim.trial, sim.embeddings, se_multiple=float("nan"))
    with pytest.raises(InputError, match="se_multiple='two' must be a finite number >= 0"):
        compare_clusters(sim.trial, sim.embeddings, se_multiple="two")  # not a traceback
    with pytest.raises(InputError, match="k_max=0 must be an integer >= 1"):
        compare_clusters(sim.trial, sim.embeddings, k_max=0)
    with pytest.raises(InputError, match="smaller block_size or fewer folds"):
        fold_ids(sim.trial, 5, block_size=100.0, seed=0)


def test_the_comparison_settings_check_takes_numpy_numbers_and_refuses_others():
    check_comparison(np.int64(2), "kfold", 0, np.float64(0.5), np.float32(0.0))  # all fine
    check_comparison(k_max=1, min_elpd_gain=0.0, se_multiple=0, max_bad_k_share=0.99)
    check_comparison(n_folds=np.int32(2), block_size=np.float32(0.5), constant=np.bool_(False))
    for bad in (
        {"k_max": True},
        {"k_max": 2.0},
        {"se_multiple": 1 + 2j},
        {"se_multiple": np.complex128(1)},
        {"min_elpd_gain": np.inf},
        {"min_elpd_gain": True},
        {"max_bad_k_share": 1.0},
        {"max_bad_k_share": "0.01"},
        {"n_folds": 1},
        {"n_folds": "abc"},
        {"block_size": -5.0},
        {"block_size": "abc"},
        {"block_size": np.inf},
        {"constant": "maybe"},
    ):
        name = next(iter(bad))
        with pytest.raises(InputError, match=f"^{name}="):
            check_comparison(**bad)


def _pareto(values) -> az.ELPDData:
    return az.ELPDData(
        data=[xr.DataArray(np.asarray(values, dtype=float), dims=["unit"]), 100],
        index=["pareto_k", "n_samples"],
    )


def test_too_many_bad_pareto_k_means_over_one_percent_or_any_above_one():
    """200 units, threshold 0.5: 2 bad units (1 %) are tolerated, 3 are not, and a single k
    above 1 is not either, in any K."""
    good = np.full(200, 0.2)
    two, three, one_huge = good.copy(), good.copy(), good.copy()
    two[:2], three[:3], one_huge[0] = 0.6, 0.6, 1.2
    assert pareto_problem({1: _pareto(good), 2: _pareto(two)}, 0.5, 0.01) is None
    message = pareto_problem({1: _pareto(good), 2: _pareto(three)}, 0.5, 0.01)
    assert "K=2: 3 of 200 units (1.5%) above 0.50, 0 above 1" in message
    assert "K=1" not in message and "100 draws" in message
    message = pareto_problem({1: _pareto(one_huge)}, 0.5, 0.01)
    assert "K=1: 1 of 200 units (0.5%) above 0.50, 1 above 1" in message
    assert pareto_problem({1: _pareto(three)}, 0.5, 0.02) is None  # the share is an option


def test_held_out_log_likelihood_of_the_fits_own_units_is_its_log_likelihood():
    """Scoring the training units as if held out gives the fit's own log_likelihood group
    (same standardizer, same model); a held-out stratum the fit did not see gets intercept 0."""
    sim = simulate_trial(3, 120, 2, n_features=4, n_strata=3)
    trial = replace(sim.trial, stratum="stratum")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = fit(trial, sim.embeddings, n_clusters=2, seed=0, **{**SMALL, "num_samples": 50})
    emb = sim.embeddings.for_keys(trial.image_keys)
    own = result.idata.log_likelihood["outcome"].values.reshape(50, -1)
    np.testing.assert_array_equal(held_out_log_likelihood(result, trial, trial, emb), own)

    held = trial.codes("stratum") == 0  # a training set without stratum 0 has codes 0, 1
    idata = result.idata.copy()
    idata.posterior["stratum_raw"][..., 0] = 0.0
    zeroed = replace(result, idata=idata)
    unseen = held_out_log_likelihood(result, trial.subset(~held), trial.subset(held), emb[held])
    expected = held_out_log_likelihood(zeroed, trial, trial.subset(held), emb[held])
    assert unseen.shape == (50, held.sum())
    np.testing.assert_allclose(unseen, expected, rtol=1e-6)
    assert np.abs(unseen - own[:, held]).max() > 0.01  # the intercept did change


def test_stacking_weights_are_reported_and_the_same_seed_gives_the_same_comparison(tmp_path):
    sim = simulate_trial(11, 150, 2, n_features=4)
    runs = [
        compare_clusters(
            sim.trial, sim.embeddings, k_max=2, criterion="loo", seed=3, progress=False, **SMALL
        )
        for _ in range(2)
    ]
    table = runs[0].table
    print(table)
    assert list(table.index) == [0, 1, 2]
    assert list(table["model"]) == ["constant", "smooth", "2 clusters"]
    fits = runs[0].fits
    # the null: a constant effect with the largest model's clustered baseline
    assert fits[0].config.deviation == "none" and fits[0].config.equal_effects
    assert fits[0].n_clusters == 2 and np.ptp(fits[0].cluster_effects()["tau_mean"]) < 1e-5
    assert fits[0].heterogeneity().loc["effect_sd", "mean"] < 1e-5
    assert fits[0].heterogeneity().loc["effect_share_clusters", "mean"] == 0
    for text in (repr(fits[0]), fits[0].summary()):  # not read as a two-cluster claim
        assert "constant effect (equal effects, K=2 baseline clusters)" in text
    assert "model: K=2," in repr(fits[2])
    loaded = load_fit(fits[0].save(tmp_path / "null.imgcate"))
    assert loaded.config.equal_effects
    new = loaded.predict(sim.embeddings.values[:5] + 1.0).to_frame()
    assert np.ptp(new["tau_mean"]) < 1e-5
    assert fits[1].config.deviation == "smooth" and fits[2].n_clusters == 2
    assert table["stacking_weight"].between(0, 1).all()
    assert table["stacking_weight"].sum() == pytest.approx(1.0, abs=1e-6)
    pd.testing.assert_series_equal(runs[0].weights, table["stacking_weight"])
    assert (table["method"] == "psis-loo").all() and runs[0].method == "psis-loo"
    assert runs[0].folds is None
    text = repr(runs[0])  # short: the table, not every fit's repr
    assert text.startswith(f"ClusterComparison(psis-loo; selected K={runs[0].best_k}, ")
    assert "stacking_weight" in text and "EffectFit" not in text and len(text.splitlines()) < 9
    # PSIS-LOO's own estimate is the comparison's estimate
    np.testing.assert_allclose(table["elpd"], table["elpd_loo"])
    assert table["selected"].sum() == 1 and table.loc[runs[0].best_k, "selected"]
    pd.testing.assert_frame_equal(runs[0].table, runs[1].table)
    assert runs[0].best_k == runs[1].best_k
    # the rule, recomputed from the table: the first model within max(4, dse) of the best in
    # the order constant, 2, 3, ... clusters, smooth
    within = table["elpd_diff"] <= np.maximum(MIN_ELPD_GAIN, SE_MULTIPLE * table["dse"])
    order = [0] + sorted(k for k in table.index if k > 1) + [1]
    assert runs[0].best_k == next(k for k in order if within[k])
    reason = runs[0].reason()  # the rule in words, with each preferred model's shortfall
    assert reason.startswith(f"selected {table.loc[runs[0].best_k, 'model']}: the first model")
    assert reason.count("trails by") == order.index(runs[0].best_k)
    # what a choice does not show: the null selected, or clusters the image barely decides
    null = replace(runs[0], best_k=0).reason()
    assert "Not evidence that the effect is constant" in null and null.endswith('clusters").')

    def with_dependence(value):  # the two-cluster fit selected, its membership dependence set
        idata = fits[2].idata.copy()
        idata.posterior["membership_dependence"] = idata.posterior["membership_dependence"] * 0
        idata.posterior["membership_dependence"] += value
        return replace(runs[0], best_k=2, fits={**fits, 2: replace(fits[2], idata=idata)})

    assert "barely depend" not in with_dependence(0.9).reason()
    assert "Not evidence" not in with_dependence(0.9).reason()
    faint = with_dependence(0.07).reason()
    assert "Its memberships barely depend on the image (0.07 of a clean split)" in faint


def test_the_smooth_model_comes_after_the_cluster_models():
    """Ties go to the constant effect, then to the fewest clusters; the smooth model (K = 1,
    nested in every cluster model) only when it is clearly better than all of them."""
    assert preference_order([0, 1, 2, 3]) == [0, 2, 3, 1]
    assert preference_order([3, 1, 2]) == [2, 3, 1]
    assert preference_order([1]) == [1]


def test_the_rule_is_an_option_and_the_constant_model_can_be_left_out():
    """A tolerance nothing exceeds selects the constant model; without the constant model
    the table starts at K = 1; models are named by what they are."""
    sim = simulate_trial(11, 150, 2, n_features=4)
    options = {"k_max": 1, "criterion": "loo", "progress": False, **SMALL}
    lenient = compare_clusters(sim.trial, sim.embeddings, min_elpd_gain=1e9, **options)
    assert lenient.best_k == 0 and list(lenient.table.index) == [0, 1]
    assert lenient.fits[0].cluster_effects().shape[0] == 1
    table = compare_clusters(sim.trial, sim.embeddings, constant=False, **options).table
    assert list(table.index) == [1] and list(table["model"]) == ["smooth"]
    table = compare_clusters(sim.trial, sim.embeddings, deviation="none", **options).table
    assert list(table["model"]) == ["constant", "constant, no baseline clusters"]
    with pytest.raises(InputError, match="sets n_clusters and equal_effects itself"):
        compare_clusters(sim.trial, sim.embeddings, equal_effects=True, **options)


def test_pareto_k_problems_fall_back_to_spatial_kfold():
    """A constant-effect trial with four gross outliers in the outcome: the Gaussian fits
    cannot leave them out by importance sampling (k above the threshold, some above 1), so the
    comparison warns and refits every K on spatially blocked folds."""
    sim = simulate_trial(7, 120, 1, n_features=4, tau=(1.0,))
    y = sim.trial.outcome_array.copy()
    y[[3, 40, 77, 101]] += np.array([25.0, -25.0, 30.0, 25.0])
    trial = replace(sim.trial, data=sim.trial.data.assign(**{sim.trial.outcome: y}))
    with pytest.warns(ParetoKWarning, match="spatially blocked cross-validation instead"):
        comparison = compare_clusters(
            trial,
            sim.embeddings,
            k_max=1,
            n_folds=3,
            block_size=1.0,
            seed=0,
            progress=False,
            **SMALL,
        )
    table = comparison.table
    print(table.to_string())
    assert comparison.method == "kfold-spatial"
    assert (table["method"] == "kfold-spatial").all()
    assert (table["n_very_bad_pareto_k"] + table["n_bad_pareto_k"] > 0).all()
    # sensible: the estimates are finite and below the in-sample fit (p > 0), the weights sum
    # to 1, and the choice is the rule's on the K-fold table (the first model, constant then
    # smooth, within max(4, dse) of the best). With four gross outliers the two predict the
    # held-out folds about equally well: the constant model stays within two se of the best.
    # (Which one the rule picks is chance here: the constant before NUTS moved one flat
    # vector, the smooth one, by 7.7 +- 6.9, after; only the rounding changed.)
    assert list(table["model"]) == ["constant", "smooth"]
    assert np.isfinite(table[["elpd", "se", "elpd_diff", "dse", "p"]].to_numpy()).all()
    assert (table["p"] > 0).all()
    assert table["stacking_weight"].sum() == pytest.approx(1.0, abs=1e-6)
    within = table["elpd_diff"] <= np.maximum(4.0, table["dse"])
    assert table["selected"].sum() == 1 and table["selected"].idxmax() == within.idxmax()
    assert table.loc[0, "elpd_diff"] <= 2 * table.loc[0, "dse"]
    # three folds of whole 1-degree blocks
    folds = comparison.folds
    assert sorted(set(folds.tolist())) == [0, 1, 2]
    blocks = spatial_blocks(*trial.xy(), 1.0)
    assert all(len(set(folds[blocks == b])) == 1 for b in np.unique(blocks))


@pytest.mark.slow
def test_kfold_asked_directly_agrees_with_a_reliable_psis_loo():
    """criterion="kfold" on a two-cluster trial where PSIS-LOO is reliable (200 draws, at most
    a few k above 0.62): no Pareto-k warning (k does not matter then), and the K-fold elpd of
    each K lies within one standard error of PSIS-LOO's, as two estimates of the same
    quantity should (3-fold fits see 2/3 of the units, so K-fold is a little pessimistic).

    Measured once: K-fold elpd -224.9 / -222.7 against PSIS-LOO -225.1 / -225.0, se 9.2; the
    smooth model came within 2.2 of K = 2 (its deviation follows clusters that a linear
    direction of a 4-feature embedding separates), so the rule of 2026-12-02 (smallest K
    first) kept K = 1; the current order (smooth last) keeps K = 2, where stacking puts its
    weight.
    """
    sim = simulate_trial(21, 200, 2, n_features=4, separation=5.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ParetoKWarning)
        comparison = compare_clusters(
            sim.trial,
            sim.embeddings,
            k_max=2,
            criterion="kfold",
            n_folds=3,
            seed=0,
            progress=False,
            **{**SMALL, "num_samples": 200, "num_warmup": 200},
        )
    table = comparison.table
    print(table.to_string())
    assert comparison.method == "kfold-spatial"
    assert (table["elpd"] - table["elpd_loo"]).abs().max() < table["se"].min()
    assert (table["p"] > 0).all()
    assert comparison.weights.sum() == pytest.approx(1.0, abs=1e-6)


#: Known failure with the effect model of issue 17, for issue 18 (model choice with error
#: control) to settle: on this K = 3 trial the rule "smallest K with elpd_diff <= max(4, 2 dse)"
#: (the default until 2026-12-03) kept K = 2 (elpd_diff 8.7 against K = 4; the continuous
#: deviation absorbs part of the third cluster, and K >= 3 fits have 27-29 bad Pareto-k).
#: Not strict: with the smooth model last and max(4, dse) it passed on 2026-12-03.
K3_KNOWN_FAILURE = pytest.mark.xfail(
    reason="issue 18: the K rule keeps K = 2 on the K = 3 trial under the new model",
    strict=False,
)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("true_k", "tau"),
    [(0, (1.0,)), (2, None), pytest.param(3, None, marks=K3_KNOWN_FAILURE)],
)
def test_k_selection_picks_true_k(true_k, tau):
    """K = 0 is the constant effect (one cluster with effect 1)."""
    sim = simulate_trial(40 + true_k, 600, max(true_k, 1), tau=tau, separation=5.0)
    comparison = compare_clusters(sim.trial, sim.embeddings, k_max=true_k + 1, **FAST)
    print(comparison.table)
    assert comparison.best_k == true_k
