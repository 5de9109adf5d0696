"""Fitting the effect-cluster model: recovery of known effects and clusters, likelihoods,
SVI, strata, propensity adjustment, reproducibility, input errors, interval calibration (slow).

Tolerances: a posterior mean is compared to the truth within 4 posterior sds. With ~500 units
the posterior sd approximates the estimator's sampling sd (Bernstein-von Mises), so a correct
model fails such a check with probability ~6e-5; the Monte Carlo error of the mean (sd/sqrt(ESS),
ESS >= 100) adds under 10% to that margin.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from imgcate import (
    ApproximationWarning,
    ConvergenceWarning,
    DurationWarning,
    FitError,
    InputError,
    OverlapWarning,
)
from imgcate.inference import fit, memory_mappings, release_compiled_code
from imgcate.simulate import simulate_trial

FAST = {"num_warmup": 300, "num_samples": 300, "num_chains": 2}


def assert_recovers(result, truth, n_sd=4.0):
    table = result.cluster_effects()
    err = np.abs(table["tau_mean"].to_numpy() - truth.tau_cluster)
    assert (err < n_sd * table["tau_sd"].to_numpy()).all(), (table, truth.tau_cluster)


def test_k2_recovers_effects_and_clusters(k2):
    sim, result = k2
    assert_recovers(result, sim.truth)
    units = result.unit_effects()
    # separation 4.5: Bayes accuracy ~98.8%, so ARI of the true assignment is ~0.95
    assert adjusted_rand_score(sim.truth.cluster, units["cluster"]) >= 0.8
    np.testing.assert_allclose(units.filter(like="cluster_prob_").sum(axis=1), 1.0, atol=1e-5)


def test_k3_recovers_effects_and_clusters():
    sim = simulate_trial(12, 900, 3, separation=5.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        result = fit(sim.trial, sim.embeddings, n_clusters=3, seed=2, **FAST)
    assert_recovers(result, sim.truth)
    assert adjusted_rand_score(sim.truth.cluster, result.unit_effects()["cluster"]) >= 0.8


def check_release_of_compiled_code():
    """Each fit leaves ~1,000 memory mappings of compiled code; at vm.max_map_count XLA cannot
    compile and the process dies (a notebook fitting ~60 models did). Past the share of the
    limit given, the compiled programs are dropped; below it, kept. (Right after a fit: tiny
    programs share mappings, so only a fit's code shows.)"""
    if memory_mappings() is None:
        return  # not Linux: nothing to measure, nothing released
    before = memory_mappings()[0]
    assert not release_compiled_code(share=1.0)
    assert memory_mappings()[0] >= before
    assert release_compiled_code(share=0.0)
    assert memory_mappings()[0] < before - 20


def _model_data(sim, config):
    """The model's data for a simulated trial, built as ``fit`` builds it."""
    from imgcate.config import Standardizer, model_data

    trial, unit_embedding = sim.trial, sim.embeddings.for_keys(sim.trial.image_keys)
    std = Standardizer.fitted(
        trial.outcome_array, trial.covariate_matrix, unit_embedding, config, trial.outcome
    )
    return model_data(trial, unit_embedding, std, config)


def test_chain_starts_are_the_map_points_unconstrained():
    """The chains start at the MAP searches' points in NUTS's unconstrained space, read from
    the optimizer's own parameters: they equal numpyro's unconstrain_fn of the constrained
    values (the slow, obvious way), and chains beyond the searches get a small jitter."""
    import jax
    from numpyro.infer.util import unconstrain_fn

    from imgcate.chains import chain_starts, map_searches
    from imgcate.chains import model_args as _model_args
    from imgcate.config import FitConfig
    from imgcate.model import effect_model

    sim = simulate_trial(5, 120, 2)
    config = FitConfig(n_clusters=2, init_restarts=3, init_steps=50)
    data = _model_data(sim, config)
    values, free, losses = map_searches(data, config, jax.random.PRNGKey(0))
    assert set(free) == set(values) and len(losses) == 3
    for r in range(3):
        slow = unconstrain_fn(
            effect_model, (), _model_args(data), {k: v[r] for k, v in values.items()}
        )
        for name, value in slow.items():
            np.testing.assert_allclose(free[name][r], value, rtol=1e-4, atol=1e-5, err_msg=name)
    # searches 1 and 0 end within 10 of the best; search 2, far above, starts no chain
    ends = np.array([3.0, 1.0, 100.0])
    starts = chain_starts(free, ends, 5, jax.random.PRNGKey(1))
    for name, value in starts.items():
        assert value.shape == (5,) + free[name].shape[1:]
        np.testing.assert_array_equal(value[:2], free[name][[1, 0]])  # no jitter
        again = free[name][[1, 0, 1]]
        assert not np.allclose(value[2:], again)  # the two again, jittered
        np.testing.assert_allclose(value[2:], again, atol=0.5)
    assert set(chain_starts(free, losses, 3, jax.random.PRNGKey(1))) == set(free)


def test_searches_from_given_starts_end_where_the_searches_a_key_draws_end():
    """MAP searches from given start points (how SVI's start refines the screened searches)
    are the searches that draw those points from their keys (the slow, obvious way: one point
    at a time)."""
    import jax

    from imgcate.chains import map_searches, model_args, start_point
    from imgcate.config import FitConfig

    sim = simulate_trial(5, 120, 2)
    config = FitConfig(n_clusters=2, init_restarts=3, init_steps=50)
    data = _model_data(sim, config)
    key = jax.random.PRNGKey(0)
    values, free, losses = map_searches(data, config, key)
    points = [start_point(k, model_args(data)) for k in jax.random.split(key, 3)]
    starts = {name: np.stack([p[name] for p in points]) for name in points[0]}
    again_values, again_free, again_losses = map_searches(data, config, None, starts=starts)
    np.testing.assert_allclose(again_losses, losses, rtol=1e-5)
    for name in free:
        np.testing.assert_allclose(again_free[name], free[name], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(again_values[name], values[name], rtol=1e-4, atol=1e-5)


def test_svi_starts_at_the_best_screened_search_continued(monkeypatch):
    """SVI's start: 4 x init_restarts searches on SCREEN_UNITS random units (in the trial's
    order), the best init_restarts // 2 continued over SEARCH_UNITS others, the best end of
    those; here the stages are run one by one and compared."""
    from dataclasses import replace

    import jax

    import imgcate.chains as chains
    from imgcate.config import FitConfig

    monkeypatch.setattr(chains, "SCREEN_UNITS", 60)
    monkeypatch.setattr(chains, "SEARCH_UNITS", 100)
    sim = simulate_trial(5, 150, 2)
    config = FitConfig(n_clusters=2, init_restarts=5, init_steps=30)
    data = _model_data(sim, config)
    start = chains.svi_start(data, config, jax.random.PRNGKey(3))

    key_screen, key_rows, key_search = jax.random.split(jax.random.PRNGKey(3), 3)
    screened = chains.random_units(data, 60, key_rows)
    rows = [int(np.flatnonzero(data.outcome == y)[0]) for y in screened.outcome]
    assert len(rows) == 60 and np.all(np.diff(rows) > 0)
    _, free, losses = chains.map_searches(screened, replace(config, init_restarts=20), key_screen)
    assert len(losses) == 20
    best = np.argsort(losses)[:2]
    values, _, ends = chains.map_searches(
        chains.random_units(data, 100, key_search),
        config,
        None,
        starts={name: value[best] for name, value in free.items()},
    )
    assert len(ends) == 2 and set(start) == set(values)
    for name, value in values.items():
        np.testing.assert_allclose(start[name], value[np.argmin(ends)], rtol=1e-6, err_msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 5])
def test_svi_finds_the_clusters_of_a_smooth_effect(seed):
    """On these two 4,000-unit trials with a smooth step in the effect, every one of the eight
    MAP searches SVI used to start from ended where the memberships hardly depend on the image,
    and SVI's unit intervals covered 0.70 and 0.66 of the true effects with today's guide (0.68
    and 0.66 with the low-rank one; NUTS: 0.98 and 0.94).
    Its start now screens 32 searches: the clusters carry the step, and the intervals hold.
    (Coverage pools 4,000 units that share the fit's draws; the failed start is 0.2-0.3
    below 0.85.)"""
    from imgcate.simulate import simulate_scenario

    sim = simulate_scenario(seed, effect="tanh", n_units=4000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = fit(sim.trial, sim.embeddings, method="svi", seed=seed)
    units = result.unit_effects(prob=0.9)
    covered = (units["tau_5%"] <= sim.truth.cate) & (sim.truth.cate <= units["tau_95%"])
    assert covered.mean() >= 0.85
    assert result.heterogeneity().loc["effect_share_clusters", "mean"] > 0.5


def test_full_covariance_guide_is_numpyros_distribution_scored_without_a_solve():
    """The full-covariance guide has NumPyro's ``AutoMultivariateNormal``'s parameters and
    distribution: on a well-conditioned covariance the density SVI scores a draw with equals
    the multivariate normal's density of that draw in float64, as NumPyro's guide's does. On a
    covariance like a large trial's (sds from 0.001 to 0.5 around locations of 3, strongly
    correlated) the score is that of the normals the draw was made from (NumPyro's, a
    triangular solve of the rounded draw, was off by up to 0.65 over 200 draws of this
    covariance, and by up to 3.8 in a 10^5-unit fit whose steps then diverged)."""
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    from numpyro import handlers
    from numpyro.infer.autoguide import AutoMultivariateNormal
    from numpyro.infer.util import log_density
    from scipy import stats

    from imgcate.guides import FullCovariance

    dim = 20

    def model():
        numpyro.sample("x", dist.Normal(0.0, 10.0).expand([dim]).to_event(1))

    rng = np.random.default_rng(0)
    well = np.tril(rng.normal(size=(dim, dim)), -1) * 0.1 + np.eye(dim) * 0.5
    loadings = rng.normal(size=(dim, 3))
    corr = loadings @ loadings.T + 1e-6 * np.eye(dim)
    corr /= np.sqrt(np.outer(np.diag(corr), np.diag(corr)))
    sd = np.geomspace(1e-3, 0.5, dim)
    ill = np.linalg.cholesky(corr * np.outer(sd, sd))
    for lower, loc in ((well, 0.0), (ill, 3.0)):
        params = {
            "auto_loc": jnp.full(dim, loc, jnp.float32),
            "auto_scale_tril": jnp.asarray(lower, jnp.float32),
        }
        guides = {}
        for name, cls in (("ours", FullCovariance), ("numpyro", AutoMultivariateNormal)):
            guides[name] = cls(model)
            with handlers.seed(rng_seed=0):
                guides[name]()  # sets up its prototype
        for seed in range(5):
            seeded = handlers.seed(guides["ours"], jax.random.PRNGKey(seed))
            score, trace = log_density(seeded, (), {}, params)
            site = trace["_auto_latent"]
            z = np.asarray(site["intermediates"][0][0], np.float64)  # the draw's normals
            from_normals = stats.norm.logpdf(z).sum() - np.log(np.diag(lower)).sum()
            np.testing.assert_allclose(float(score), from_normals, rtol=1e-5)
            if lower is well:
                draw = np.asarray(site["value"], np.float64)
                exact = stats.multivariate_normal(np.full(dim, loc), lower @ lower.T).logpdf(draw)
                conditioned = handlers.condition(guides["numpyro"], {"_auto_latent": site["value"]})
                numpyro_score, _ = log_density(conditioned, (), {}, params)
                np.testing.assert_allclose(float(score), exact, rtol=1e-4)
                np.testing.assert_allclose(float(numpyro_score), exact, rtol=1e-4)


@pytest.mark.slow
def test_svi_on_minibatches_of_a_large_trial_takes_the_full_covariance():
    """On minibatches of a 10^5-unit trial the full-covariance guide's steps stay finite (with
    NumPyro's own guide, which scores draws by a triangular solve, they diverged at step 1,820
    of this fit and the fit stopped with an error). The minibatches are anchored: the loss's
    step-to-step noise over the last 500 steps is that of the guide's draws, not of the
    minibatches (34 on seed 3; on this trial 2,278 without the anchors, measured ad hoc;
    benchmarks/CHANGELOG.md, 2026-12-06 evening). The
    cluster effects' sds are those of a posterior: at least 0.8 of the standard errors of the
    oracle's differences in means over each cluster's units (0.85-1.04 over seeds 0-11, and
    NUTS's at 5,000 units 0.92-1.02; before the anchors 0.73-1.13, the middle cluster's about
    0.8)."""
    sim = simulate_trial(1, 100_000, 3, n_features=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = fit(sim.trial, sim.embeddings, n_clusters=3, seed=1, method="svi")
    assert result.config.svi_guide == "full"
    assert result.config.svi_batch_size == 1_000
    loss = result.idata.svi_loss["loss"].values
    assert np.isfinite(loss).all()
    noise = np.diff(loss[-500:]).std() / np.sqrt(2)
    assert noise < 150, noise
    _, oracle_se = sim.difference_in_means(sim.truth.cluster_prob.argmax(1), n_groups=3)
    ratio = result.cluster_effects()["tau_sd"].to_numpy() / oracle_se
    assert (ratio >= 0.8).all(), ratio


def test_nuts_on_one_flat_vector_draws_what_nuts_on_the_sites_draws(monkeypatch):
    """run_nuts moves one flat vector (fast); NumPyro's NUTS on the model's dict of sites, one
    iteration at a time, is the slow, obvious way: the same key and start give the same draws
    and the same tree sizes.

    The comparison holds the two to the same rounding over 40 iterations of up to 255
    leapfrog steps, which a chaotic trajectory amplifies: with the half-Student-t global
    membership scale (the default since 2026-12-06) the two compiled programs round its
    density differently and the chains part during the warm-up, though each is a valid NUTS
    chain. The test is of the sampler's path, not of the prior: it runs under the former
    half-normal, whose density both programs round alike."""
    import jax
    from numpyro.infer import NUTS

    from imgcate.model import PRIOR

    monkeypatch.setitem(PRIOR, "membership_scale_df", float("inf"))

    from imgcate.chains import (
        MAX_TREE_DEPTH,
        WARMUP_TREE_DEPTH,
        chain_starts,
        constrained,
        map_searches,
        model_args,
        potential,
        run_nuts,
    )
    from imgcate.config import FitConfig

    sim = simulate_trial(4, 120, 2)
    config = FitConfig(n_clusters=2, num_chains=1, num_warmup=20, num_samples=20, init_steps=50)
    data = _model_data(sim, config)
    _, free, losses = map_searches(data, config, jax.random.PRNGKey(0))
    starts = chain_starts(free, losses, 1, jax.random.PRNGKey(1))
    key = jax.random.PRNGKey(2)
    fast, fields = run_nuts(data, config, starts, key)

    args = model_args(data)
    kernel = NUTS(
        potential_fn=potential(args),
        target_accept_prob=config.target_accept,
        max_tree_depth=(WARMUP_TREE_DEPTH, MAX_TREE_DEPTH),
    )
    state = kernel.init(jax.random.split(key, 1)[0], 20, {k: v[0] for k, v in starts.items()})
    sample = jax.jit(lambda s: kernel.sample(s, (), {}))
    kept, steps = [], []
    for i in range(40):
        state = sample(state)
        if i >= 20:
            kept.append(state.z)
            steps.append(int(state.num_steps))
    np.testing.assert_array_equal(fields["num_steps"][0], steps)
    slow = constrained({k: np.stack([z[k] for z in kept])[None] for k in kept[0]}, args)
    assert set(slow) == set(fast)
    for name in fast:
        np.testing.assert_allclose(fast[name], slow[name], rtol=1e-4, atol=1e-5, err_msg=name)


def test_same_seed_same_posterior():
    sim = simulate_trial(3, 200, 2)
    opts = {"num_warmup": 100, "num_samples": 100, "num_chains": 1}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        a = fit(sim.trial, sim.embeddings, seed=7, **opts)
        release_compiled_code(share=0.0)  # b compiles afresh: the same posterior
        b = fit(sim.trial, sim.embeddings, seed=7, **opts)
        check_release_of_compiled_code()
        c = fit(sim.trial, sim.embeddings, seed=8, **opts)
    np.testing.assert_array_equal(a.idata.posterior["tau"].values, b.idata.posterior["tau"].values)
    assert not np.array_equal(a.idata.posterior["tau"].values, c.idata.posterior["tau"].values)


def test_parallel_chains_draw_what_sequential_chains_draw():
    """imgcate asks JAX for one CPU device per core on import; chains then run side by side
    and draw exactly what they draw one after another."""
    import jax

    from imgcate.devices import cpu_device_count

    assert len(jax.devices("cpu")) == cpu_device_count()
    sim = simulate_trial(3, 120, 2)
    opts = {"num_warmup": 50, "num_samples": 50, "num_chains": 3, "seed": 2}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        side = fit(sim.trial, sim.embeddings, chain_method="parallel", **opts)
        after = fit(sim.trial, sim.embeddings, chain_method="sequential", **opts)
    for group, name in (("posterior", "tau"), ("sample_stats", "n_steps")):
        a, b = side.idata[group][name].values, after.idata[group][name].values
        assert a.shape[:2] == (3, 50)
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(side.idata.posterior["tau"][0], side.idata.posterior["tau"][1])


def test_too_short_a_run_and_nuts_past_the_auto_limit_warn(monkeypatch):
    """A short run warns of its diagnostics; NUTS on more units than method="auto" gives it
    (the limit lowered here to 199 units) warns of its time before it starts."""
    import imgcate.config

    sim = simulate_trial(4, 200, 2)
    monkeypatch.setattr(imgcate.config, "AUTO_NUTS_MAX_UNITS", 199)
    with (
        pytest.warns(DurationWarning, match="NUTS on 200 units, more than the 199 .*method='svi'"),
        pytest.warns(ConvergenceWarning, match="ESS|R-hat|divergent"),
    ):
        fit(sim.trial, sim.embeddings, num_warmup=20, num_samples=20, num_chains=2)
    monkeypatch.setattr(imgcate.config, "AUTO_NUTS_MAX_UNITS", 200)  # at the limit: silent
    with warnings.catch_warnings():
        warnings.simplefilter("error", DurationWarning)
        warnings.simplefilter("ignore", ConvergenceWarning)
        fit(sim.trial, sim.embeddings, num_warmup=20, num_samples=20, num_chains=2)


def test_auto_method_is_nuts_up_to_the_limit_and_svi_above():
    from imgcate.config import AUTO_NUTS_MAX_UNITS, choose_method

    assert choose_method("auto", AUTO_NUTS_MAX_UNITS) == "nuts"
    assert choose_method("auto", AUTO_NUTS_MAX_UNITS + 1) == "svi"
    assert choose_method("nuts", 10**7) == "nuts" and choose_method("svi", 10) == "svi"
    with pytest.raises(InputError, match="'nuts', 'svi', 'auto'"):
        choose_method("hmc", 10)


def test_one_methods_options_with_the_other_are_refused():
    """SVI's options with method="nuts", and NUTS's with method="svi", would be ignored (and
    recorded in the fit as if used): refused, naming them, before any work; with
    method="auto" they stand for the method it may choose."""
    from imgcate.config import FitConfig
    from imgcate.methods import NUTS_OPTIONS, SVI_OPTIONS, check_method_options

    sim = simulate_trial(0, 40, 2)
    for method, options, names in (
        ("nuts", {"svi_batch_size": 10}, "svi_batch_size sets SVI"),
        ("nuts", {"svi_steps": 10, "svi_guide": "full"}, "svi_guide, svi_steps set SVI"),
        ("svi", {"num_chains": 4}, "num_chains sets NUTS"),
        ("svi", {"num_warmup": 50, "svi_steps": 200}, "num_warmup sets NUTS"),
    ):
        with pytest.raises(InputError, match=f"{names}, which method='{method}' does not run"):
            fit(sim.trial, sim.embeddings, method=method, **options)
    check_method_options("auto", {"svi_steps": 10, "num_chains": 2})  # auto takes both
    # the two lists name every option of each method, and no other
    fields = set(FitConfig.__dataclass_fields__)
    assert set(SVI_OPTIONS) == {f for f in fields if f.startswith("svi_")}
    assert set(NUTS_OPTIONS) <= fields and not set(NUTS_OPTIONS) & set(SVI_OPTIONS)


def test_fold_fits_leave_out_the_other_methods_options_where_auto_chose():
    from imgcate.config import FitConfig
    from imgcate.selection import _fold_options

    class Full:  # what _fold_options reads of the full fit
        config = FitConfig(method="nuts")

    options = _fold_options(Full(), {"svi_batch_size": 500, "num_chains": 2}, 100)
    assert options == {"num_chains": 2, "progress": False, "method": "nuts"}
    Full.config = FitConfig(method="svi")
    options = _fold_options(Full(), {"svi_batch_size": 500, "num_chains": 2}, 100)
    assert options == {"svi_batch_size": 500, "progress": False, "method": "svi"}
    # a Propensity object: the fold fits get its scores (its equations are the whole trial's)
    from imgcate.confounding import Propensity

    scores = np.linspace(0.2, 0.8, 100)
    ps = Propensity(scores=scores, treatment=np.arange(100) % 2, method="cbps", clip=1e-3)
    options = _fold_options(Full(), {"propensity": ps}, 100)
    assert options["propensity"] is scores


def test_svi_recovers_effects(monkeypatch, tmp_path):
    """SVI, reached through method="auto" on a trial above its NUTS limit (lowered here to
    1,000 units so that the test stays small): the choice is announced and recorded, in the
    report too."""
    import imgcate.config
    from imgcate.report import write_report

    monkeypatch.setattr(imgcate.config, "AUTO_NUTS_MAX_UNITS", 1000)
    sim = simulate_trial(13, 2000, 2, separation=4.5)
    with pytest.warns(ApproximationWarning, match="chose SVI for 2,000 units .NUTS up to 1,000"):
        result = fit(
            sim.trial,
            sim.embeddings,
            method="auto",
            seed=0,
            svi_steps=3000,
            svi_batch_size=500,
            svi_draws=500,
        )
    assert result.config.method == "svi" and result.config.svi_batch_size == 500
    table = result.cluster_effects()
    # SVI posteriors are approximate (often too narrow): absolute tolerance of 0.3
    # (about 4 sampling sds of a cluster effect at n=2000, noise sd 1)
    np.testing.assert_allclose(table["tau_mean"], sim.truth.tau_cluster, atol=0.3)
    assert "svi_loss" in result.idata.groups()
    assert "after 3,000 steps on minibatches of 500 units" in str(result.summary())
    text = write_report(result, tmp_path / "report.md").read_text()
    settings = "svi (full guide): 500 draws from the guide after 3,000 steps on minibatches of 500"
    assert settings in text
    assert "SVI loss (negative ELBO)" in text and "R-hat, ESS and divergences do not apply" in text
    assert "chain(s)" not in text and "Divergent transitions" not in text


@pytest.mark.parametrize("likelihood", ["gaussian", "hurdle"])
def test_minibatch_inputs_compute_the_basis_they_do_not_hold(likelihood, monkeypatch):
    """SVI on minibatches of a large trial holds no (unit, basis) array: each set of rows
    computes its basis, the same as the basis held for NUTS, and the model's quantities are
    the same. (Large: above ``MAX_HELD_BASIS_BYTES``, lowered here to 0.)"""
    import jax

    import imgcate.config
    from imgcate.config import FitConfig, Standardizer, model_data
    from imgcate.model import unit_quantities
    from imgcate.simulate import simulate_scenario

    noise = "zero_inflated" if likelihood == "hurdle" else "gaussian"
    sim = simulate_scenario(3, effect="clusters", noise=noise, n_units=600)
    trial, emb = sim.trial, sim.embeddings.values
    settings = {"n_clusters": 2, "likelihood": likelihood, "seed": 0}
    held_config = FitConfig(method="nuts", **settings).validate()
    lazy_config = FitConfig(method="svi", svi_batch_size=100, **settings).validate()
    std = Standardizer.fitted(trial.outcome_array, trial.covariate_matrix, emb, held_config)
    held = model_data(trial, emb, std, held_config)
    assert model_data(trial, emb, std, lazy_config).inputs.basis is not None  # 600 units: held
    monkeypatch.setattr(imgcate.config, "MAX_HELD_BASIS_BYTES", 0)
    lazy = model_data(trial, emb, std, lazy_config)
    assert held.inputs.basis is not None and held.inputs.basis.shape[1] > 0
    assert lazy.inputs.basis is None and lazy.inputs.basis_arrays is not None
    rows = np.array([5, 0, 599, 17])
    np.testing.assert_allclose(
        lazy.inputs.take(rows).unit_basis(), held.inputs.basis[rows], rtol=1e-4, atol=1e-5
    )  # float32: the same function, compiled in other programs
    np.testing.assert_allclose(lazy.inputs.with_basis().basis, held.inputs.basis, atol=1e-5)
    # one prior draw of every site: the model's quantities with the basis held and computed
    from numpyro.infer.util import Predictive

    from imgcate.model import effect_model

    draw = Predictive(effect_model, num_samples=1)(
        jax.random.PRNGKey(1), held.inputs, None, spec=held.spec
    )
    params = {k: v[0] for k, v in draw.items() if k != "outcome"}
    a = unit_quantities(params, held.inputs, held.spec)
    b = unit_quantities(params, lazy.inputs, lazy.spec)
    for name in ("cate", "mu0", "cluster_prob"):
        np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=1e-5)


def test_a_batch_as_large_as_the_trial_is_recorded_as_every_unit():
    sim = simulate_trial(5, 200, 2)
    result = fit(
        sim.trial,
        sim.embeddings,
        method="svi",
        seed=0,
        svi_steps=50,
        svi_draws=50,
        svi_batch_size=10_000,
        init_restarts=0,
    )
    assert result.config.svi_batch_size is None
    assert result.config.svi_guide == "full"  # "auto" on a model of 224 values
    assert "method=svi (full guide)" in result.summary()


def test_auto_guide_is_full_covariance_up_to_its_limit_and_low_rank_above(monkeypatch):
    """``svi_guide="auto"`` counts the model's parameter values as the guide does (NumPyro's
    latent dimension of the model) and takes the full covariance up to the limit, on
    minibatches too."""
    from numpyro import handlers
    from numpyro.infer.autoguide import AutoMultivariateNormal

    import imgcate.guides
    from imgcate.chains import model_args
    from imgcate.config import FitConfig, Standardizer, model_data
    from imgcate.guides import chosen_guide
    from imgcate.model import effect_model, latent_size
    from imgcate.units import read_units

    sim = simulate_trial(5, 200, 3)
    trial = read_units(  # with village intercepts, which the guide fits too
        sim.trial.data.assign(village=np.arange(200) % 7),
        covariates=list(sim.trial.covariates),
        image_id="image_id",
        cluster="village",
    )
    config = FitConfig(n_clusters=3, method="svi").validate()
    emb = sim.embeddings.values
    std = Standardizer.fitted(trial.outcome_array, trial.covariate_matrix, emb, config)
    data = model_data(trial, emb, std, config)
    guide = AutoMultivariateNormal(effect_model)
    with handlers.seed(rng_seed=0):
        guide(**model_args(data))
    assert latent_size(data.spec) == guide.latent_dim
    assert chosen_guide(config, data).svi_guide == "full"
    minibatches = FitConfig(n_clusters=3, method="svi", svi_batch_size=50).validate()
    assert chosen_guide(minibatches, data).svi_guide == "full"
    monkeypatch.setattr(imgcate.guides, "FULL_GUIDE_MAX_LATENT", guide.latent_dim - 1)
    assert chosen_guide(config, data).svi_guide == "lowrank"
    assert chosen_guide(minibatches, data).svi_guide == "lowrank"
    for fixed in (FitConfig(method="svi", svi_guide="normal"), FitConfig(method="nuts")):
        assert chosen_guide(fixed, data) is fixed


def test_svi_steps_are_numpyros_svi_run(monkeypatch):
    """The SVI loop that passes the data as an argument of its compiled steps takes the steps
    NumPyro's ``SVI.run`` takes (minibatches included, with the anchors left out: they change
    the steps; tests/test_anchors.py checks them)."""
    import jax
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.infer.autoguide import AutoNormal
    from numpyro.optim import Adam

    import imgcate.anchors
    import imgcate.config
    import imgcate.inference
    from imgcate.chains import model_args
    from imgcate.config import FitConfig, Standardizer, model_data
    from imgcate.inference import _svi_steps
    from imgcate.model import effect_model

    monkeypatch.setattr(imgcate.config, "MAX_HELD_BASIS_BYTES", 0)  # minibatches' own basis
    monkeypatch.setattr(imgcate.inference, "SVI_BLOCK", 25)  # blocks of 25, 25 and 10
    monkeypatch.setattr(imgcate.anchors, "ANCHOR_AT", ())
    sim = simulate_trial(4, 400, 2)
    config = FitConfig(
        n_clusters=2, method="svi", svi_steps=60, svi_batch_size=100, progress=False
    ).validate()
    std = Standardizer.fitted(
        sim.trial.outcome_array, sim.trial.covariate_matrix, sim.embeddings.values, config
    )
    args = model_args(model_data(sim.trial, sim.embeddings.values, std, config))
    key = jax.random.PRNGKey(2)

    def svi():
        return SVI(effect_model, AutoNormal(effect_model), Adam(0.01), Trace_ELBO())

    params, losses = _svi_steps(svi(), key, args, 100, config)
    reference = svi().run(key, 60, subsample_size=100, progress_bar=False, **args)
    np.testing.assert_allclose(losses, np.asarray(reference.losses), rtol=1e-6)
    assert params.keys() == reference.params.keys()
    for name, value in params.items():
        np.testing.assert_allclose(value, reference.params[name], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("likelihood", ["student_t", "bernoulli"])
def test_other_likelihoods_recover_effects(likelihood):
    sim = simulate_trial(
        14,
        1200 if likelihood == "bernoulli" else 600,
        2,
        likelihood=likelihood,
        separation=4.5,
        tau=(-1.0, 2.0) if likelihood == "bernoulli" else None,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        result = fit(sim.trial, sim.embeddings, likelihood=likelihood, seed=0, **FAST)
    if likelihood == "student_t":
        assert_recovers(result, sim.truth)
    else:  # the truth's cluster effects are log-odds ratios: the cluster levels of the logit
        levels = result.idata.posterior["tau"].values.reshape(-1, 2)
        err = np.abs(levels.mean(0) - sim.truth.tau_cluster)
        assert (err < 4 * levels.std(0)).all(), (levels.mean(0), levels.std(0))
        # cluster_effects() are risk differences: between 0 and the log-odds effect's sign
        table = result.cluster_effects()
        assert table["tau_mean"].iloc[0] < 0 < table["tau_mean"].iloc[1]
    if likelihood == "bernoulli":
        ate = result.ate()
        assert (
            abs(ate.loc["model_implied", "estimate"] - ate.loc["difference_in_means", "estimate"])
            < 3 * ate.loc["difference_in_means", "std_err"]
        )


def test_strata_random_effects_and_k1():
    sim = simulate_trial(15, 400, 1, tau=(1.5,), n_strata=5, stratum_sd=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        result = fit(sim.trial, sim.embeddings, n_clusters=1, seed=0, **FAST)
    assert "stratum_sd" in result.idata.posterior
    assert_recovers(result, sim.truth)
    assert result.cluster_effects().shape[0] == 1
    with pytest.raises(FitError, match="K=1"):
        result.membership_weights()


def test_a_plain_array_is_refused_where_the_trial_names_its_images():
    """A plain array has no image ids: taken in unit order where the trial's units name other
    images, its rows went to the wrong units and the fit found false clusters without a
    warning. Refused there; taken where unit order is image order, or no images are named."""
    from imgcate.units import read_units

    sim = simulate_trial(4, 60, 2)
    keys = sim.trial.image_keys
    assert not np.array_equal(keys, np.arange(60))  # the simulator's images are shuffled
    with pytest.raises(InputError, match="names each unit's image .column 'image_id'.*as_emb"):
        fit(sim.trial, sim.embeddings.values)
    # the same rows keyed by image id, in unit order, are the fit's own embedding
    in_unit_order = sim.embeddings.unit_rows(keys)
    table = sim.trial.data.assign(image_id=np.arange(60))
    named = read_units(table, covariates=list(sim.trial.covariates), image_id="image_id")
    unnamed = read_units(table.drop(columns="image_id"), covariates=list(sim.trial.covariates))
    small = {"num_warmup": 30, "num_samples": 30, "num_chains": 1, "init_restarts": 0}
    fits = [fit(trial, in_unit_order, **small) for trial in (named, unnamed)] + [
        fit(sim.trial, sim.embeddings, **small)
    ]
    taus = [f.idata.posterior["tau_cluster"].values for f in fits]
    np.testing.assert_array_equal(taus[0], taus[1])
    np.testing.assert_array_equal(taus[0], taus[2])


def test_fit_input_errors(k2):
    sim, _ = k2
    with pytest.raises(InputError, match="unknown fit option"):
        fit(sim.trial, sim.embeddings, num_draws=10)
    with pytest.raises(InputError, match="method='mcmc' is not allowed"):
        fit(sim.trial, sim.embeddings, method="mcmc")
    with pytest.raises(InputError, match="rows but the trial has"):
        fit(sim.trial, np.zeros((3, 4)))
    with pytest.raises(InputError, match=r"no embedding for 10 of 10 image ids \(first "):
        fit(
            sim.trial.subset(np.arange(10)),
            sim.embeddings.__class__(
                values=sim.embeddings.values[:2], image_ids=np.array([-1, -2])
            ),
        )
    with pytest.raises(InputError, match="needs a 0/1 outcome"):
        fit(sim.trial, sim.embeddings, likelihood="bernoulli")


def test_propensity_adjusted_fit_on_confounded_data(tmp_path):
    """Targeting on the image plus a baseline that moves with the propensity: the adjusted
    model (propensity in the baseline, as in BCF) recovers the cluster effects."""
    from scipy.special import expit

    sim = simulate_trial(21, 800, 2, assignment="confounded", confounding=2.0, separation=4.5)
    p = sim.truth.propensity
    shifted = sim.trial.data.assign(outcome=sim.trial.outcome_array + 3.0 * expit(8 * (p - 0.5)))
    trial = sim.trial.__class__(**{**sim.trial.__dict__, "data": shifted})
    outside = (p < 0.1) | (p > 0.9)  # 263 of 800: limited overlap is warned of and kept
    with warnings.catch_warnings(), pytest.warns(OverlapWarning, match=f"{outside.sum()} of 800"):
        warnings.simplefilter("ignore", ConvergenceWarning)
        result = fit(trial, sim.embeddings, propensity=p, seed=0, **FAST)
    assert "propensity" in result.idata.posterior["beta"].coords["covariate"].values
    assert_recovers(result, sim.truth)
    np.testing.assert_array_equal(result.unit_effects()["propensity"].to_numpy(), p)
    assert f"- note: {outside.sum()} of 800 units (33%) have a propensity" in result.summary()
    report = result.report(tmp_path / "report.md").read_text()
    assert f"Limited overlap: {outside.sum()} of 800 units" in report
    assert "Where the arms overlap: the same rows on the" in report
    assert "ate(trim='crump')" in report
    # beside the model's ATE: AIPW with the scores given, on the fit's own features (the
    # difference in means is confounded here); the slow way gives the same row
    from imgcate.confounding import aipw
    from imgcate.diagnostics import ate_gap, checks_passed

    table = result.ate(prob=0.95)
    assert list(table.index) == ["model_implied", "aipw", "difference_in_means"]
    const = result.idata.constant_data
    features = np.hstack([const["embedding"].values, const["covariates"].values[:, :-1]])
    slow = aipw(trial.outcome_array, trial.treatment_array, p, features=features, seed=0)
    assert abs(table.loc["aipw", "estimate"] - slow.estimate) < 1e-4 * slow.std_err
    sample_ate = float(sim.truth.cate.mean())
    assert table.loc["aipw", "2.5%"] < sample_ate < table.loc["aipw", "97.5%"]
    assert ate_gap(table) is None and "agrees with the doubly robust (AIPW)" in checks_passed(
        result
    )
    wrong = table.copy()
    wrong.loc["model_implied", "estimate"] += 5 * wrong.loc["aipw", "std_err"]
    assert "doubly robust AIPW estimate" in ate_gap(wrong)
    import dataclasses

    np.testing.assert_array_equal(const["propensity_given"].values, p)  # kept in float64
    # a fit saved before it recorded propensity_passed: its covariate is read as the scores
    older = result.idata.copy()
    older.constant_data = older.constant_data.drop_vars("propensity_given")
    del older.constant_data.attrs["propensity_passed"]
    older_table = dataclasses.replace(result, idata=older).ate(prob=0.95)
    assert abs(older_table.loc["aipw", "estimate"] - table.loc["aipw", "estimate"]) < 1e-3
    # a design of few clusters: folds as many as the clusters; too few: a row that says why
    for n_groups, fine in ((3, True), (1, False)):
        idata = result.idata.copy()
        groups = np.arange(len(p)) % n_groups
        idata.constant_data = idata.constant_data.assign(design_cluster=("unit", groups))
        row = dataclasses.replace(result, idata=idata).ate().loc["aipw"]
        assert np.isfinite(row["estimate"]) == fine and row["vcov"].startswith("none") != fine
    with pytest.raises(InputError, match="strictly between 0 and 1"):
        fit(trial, sim.embeddings, propensity=np.r_[p[:-1], 1.0])


def test_an_estimated_propensitys_equations_are_stacked_into_the_aipw_row(tmp_path, monkeypatch):
    """A fit given an estimated Propensity keeps its model's estimating equations, so that
    ate()'s AIPW row is aipw() with the object itself (the scores' estimation stacked into the
    standard error), also once saved and loaded; given the scores alone, they are known."""
    from imgcate.confounding import aipw, estimate_propensity
    from imgcate.results import load_fit

    sim = simulate_trial(23, 300, 2, assignment="confounded", confounding=1.0, separation=4.5)
    trial = sim.trial
    features = np.hstack([sim.embeddings.for_keys(trial.image_keys), trial.covariate_matrix])
    ps = estimate_propensity(features, trial.treatment_array, seed=0)
    assert ps.equations is not None
    opts = {"num_warmup": 60, "num_samples": 60, "num_chains": 1, "seed": 0, "progress": False}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stacked = fit(trial, sim.embeddings, propensity=ps, **opts)
        known = fit(trial, sim.embeddings, propensity=ps.scores, **opts)
    const = stacked.idata.constant_data
    assert const["propensity_estfun"].shape == ps.equations.estfun.shape
    p = ps.equations.estfun.shape[1]  # parameters of the propensity model
    assert "propensity_estfun" not in known.idata.constant_data
    row, plain = stacked.ate().loc["aipw"], known.ate().loc["aipw"]
    assert row["vcov"].endswith("score estimation stacked")
    assert plain["vcov"].endswith("scores given")
    # the slow way: aipw() with the Propensity object, on the fit's own features
    own = np.hstack([const["embedding"].values, const["covariates"].values[:, :-1]])
    y, t = trial.outcome_array, trial.treatment_array
    slow = aipw(y, t, ps, features=own, seed=0, prob=0.9)
    slow_known = aipw(y, t, ps.scores, features=own, seed=0, prob=0.9)
    assert row["std_err"] == pytest.approx(slow.std_err, rel=1e-9)
    assert plain["std_err"] == pytest.approx(slow_known.std_err, rel=1e-9)
    assert abs(slow.std_err - slow_known.std_err) > 1e-6 * slow_known.std_err
    assert row["estimate"] == pytest.approx(plain["estimate"], rel=1e-9)  # the same point
    loaded = load_fit(stacked.save(tmp_path / "fit.imgcate"))
    assert loaded.ate().loc["aipw", "std_err"] == pytest.approx(row["std_err"], rel=1e-12)
    # past the size limit the reason is kept, and the row says it
    import dataclasses

    from imgcate import ates

    idata = known.idata.copy()
    monkeypatch.setattr(ates, "EQUATIONS_MAX_VALUES", 10)
    ates.keep_propensity_equations(idata, ps)
    assert "propensity_estfun" not in idata.constant_data
    capped = dataclasses.replace(known, idata=idata).ate().loc["aipw", "vcov"]
    assert capped.endswith(f"scores given (their equations not kept: 300 units x {p} parameters)")
    # equations for other units than the scores: refused before anything runs
    other = dataclasses.replace(
        ps, equations=dataclasses.replace(ps.equations, estfun=ps.equations.estfun[:-1])
    )
    with pytest.raises(InputError, match="equations have 299 rows but its scores 300"):
        fit(trial, sim.embeddings, propensity=other, **opts)


def test_ate_where_the_arms_overlap_is_every_row_on_the_kept_units():
    """ate(trim=...): the model's ATE averaged over the units trim() keeps (from the stored
    unit CATE, and the same evaluated afresh for a fit that did not store it), AIPW and the
    difference in means on those units with their scores given; a fit given no propensity
    has nothing to trim on."""
    import dataclasses

    from imgcate.ates import subset_ate_draws
    from imgcate.confounding import aipw, difference_in_means, trim
    from imgcate.posterior import flat

    sim = simulate_trial(24, 300, 2, assignment="confounded", confounding=3.0, separation=4.5)
    p, trial = sim.truth.propensity, sim.trial
    opts = {"num_warmup": 60, "num_samples": 60, "num_chains": 1, "seed": 0, "progress": False}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = fit(trial, sim.embeddings, propensity=p, **opts)
    table = result.ate(trim="crump")
    keep = trim(p, rule="crump").keep
    assert 0 < (~keep).sum() < 300
    info = table.attrs["trim"]
    assert info["n_kept"] == keep.sum() and info["rule"] == "crump"
    tau = flat(result.idata.posterior["tau_unit"].values)
    assert table.loc["model_implied", "estimate"] == pytest.approx(tau[:, keep].mean(), rel=1e-6)
    const = result.idata.constant_data
    own = np.hstack([const["embedding"].values, const["covariates"].values[:, :-1]])
    y, t = trial.outcome_array, trial.treatment_array
    slow = aipw(y[keep], t[keep], p[keep], features=own[keep], seed=0, prob=0.9)
    assert table.loc["aipw", "estimate"] == pytest.approx(slow.estimate, rel=1e-9)
    assert table.loc["aipw", "std_err"] == pytest.approx(slow.std_err, rel=1e-9)
    assert table.loc["aipw", "vcov"] == "HC0, scores taken as known, trimmed"
    dim = difference_in_means(y[keep], t[keep], prob=0.9)
    assert table.loc["difference_in_means", "estimate"] == pytest.approx(dim.estimate)
    # a fit too large to store its unit CATE: the same draws, evaluated in chunks of units
    idata = result.idata.copy()
    idata.posterior = idata.posterior.drop_vars("tau_unit")
    unstored = subset_ate_draws(dataclasses.replace(result, idata=idata), keep)
    np.testing.assert_allclose(unstored, tau[:, keep].mean(1), rtol=1e-4, atol=1e-5)
    every = subset_ate_draws(dataclasses.replace(result, idata=idata), np.ones(300, bool))
    np.testing.assert_allclose(every, flat(result.idata.posterior["ate"].values), atol=1e-5)
    with pytest.raises(InputError, match="keeps 0 treated"):
        result.ate(trim=0.4999)
    randomized = dataclasses.replace(result, idata=result.idata.copy())
    randomized.idata.constant_data.attrs["propensity_passed"] = 0
    with pytest.raises(InputError, match="needs a fit given a propensity"):
        randomized.ate(trim="crump")


def test_a_covariate_named_propensity_is_not_taken_for_scores_given(tmp_path):
    """A user's own covariate called propensity, with no ``propensity=``: the fit is analysed
    as randomized, with no AIPW row read from that covariate, before and after a save."""
    sim = simulate_trial(3, 200, 2, separation=4.5)
    data = sim.trial.data.assign(propensity=np.linspace(0.2, 0.8, sim.trial.n_units))
    trial = sim.trial.__class__(
        **{**sim.trial.__dict__, "data": data, "covariates": ("propensity",)}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        result = fit(trial, sim.embeddings, seed=0, **FAST)
    assert "propensity" in result.idata.constant_data.coords["covariate"].values
    assert list(result.ate().index) == ["model_implied", "difference_in_means"]
    assert "propensity" not in result.unit_effects().columns
    from imgcate.results import load_fit

    loaded = load_fit(result.save(tmp_path / "fit.imgcate"))
    assert list(loaded.ate().index) == ["model_implied", "difference_in_means"]


def test_targeting_direction_is_the_embeddings_fit_of_the_log_odds():
    """The direction whose scores are the least-squares fit of logit(propensity) on the
    embedding, at unit sd over the units; none where the scores do not vary."""
    from scipy.special import expit

    from imgcate.targeting import targeting_direction

    z = np.random.default_rng(0).normal(size=(500, 4))
    w = np.array(targeting_direction(z, expit(0.5 + z @ [2.0, -1.0, 0.0, 0.0])))
    np.testing.assert_allclose(
        w / np.linalg.norm(w), np.array([2.0, -1.0, 0, 0]) / 5**0.5, atol=1e-12
    )
    assert abs((z @ w).std() - 1.0) < 1e-12
    assert targeting_direction(z, np.full(500, 0.3)) == ()
    assert targeting_direction(z, None) == ()
    # targeting on something else (a covariate): the embedding explains 2 % of the log-odds
    other = np.random.default_rng(1).normal(size=500)
    assert targeting_direction(z, expit(other + 0.15 * z[:, 0])) == ()
    assert targeting_direction(z, expit(other + 0.5 * z[:, 0])) != ()  # 20 %


def test_the_effect_has_a_slope_along_the_targeting(tmp_path):
    """A fit given a propensity gets the site targeting_slope: a slope of the effect along
    the embedding's direction that predicts the targeting (kept with the fit); the unit
    effects, predict on the trial's own units and a saved fit agree; a randomized fit has no
    such site. Predictions for new images say where they stand against the overlap."""
    from imgcate.ates import targeting_slope_line
    from imgcate.errors import OverlapWarning
    from imgcate.results import load_fit
    from imgcate.targeting import targeting_direction

    sim = simulate_trial(21, 300, 2, assignment="confounded", confounding=2.0, separation=4.5)
    p = sim.truth.propensity
    opts = {"num_warmup": 30, "num_samples": 30, "num_chains": 2, "seed": 1}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = fit(sim.trial, sim.embeddings, propensity=p, **opts)
        randomized = fit(sim.trial, sim.embeddings, **opts)
    const = result.idata.constant_data
    direction = targeting_direction(const["embedding"].values.astype(float), p)
    np.testing.assert_allclose(const["targeting"].values, direction, atol=1e-6)  # z in float32
    assert result.idata.posterior["targeting_slope"].shape == (2, 30)
    assert "targeting_slope" not in randomized.idata.posterior
    assert "targeting" not in randomized.idata.constant_data
    # summary() gives the slope, in the outcome's units
    theta = result.idata.posterior["targeting_slope"].values.mean() * result.standardizer.outcome_sd
    line = targeting_slope_line(result)
    assert f": {theta:.3f}, 90% interval" in line and line in result.summary()
    assert targeting_slope_line(randomized) is None
    units = result.unit_effects()
    covariates = np.column_stack([sim.trial.covariate_matrix, p])  # the fit's, with the scores
    images = sim.embeddings.for_keys(sim.trial.image_keys)  # in unit order
    outside = int(((p < 0.1) | (p > 0.9)).sum())  # 97: a third outside the band
    with pytest.warns(OverlapWarning, match=f"{outside} of 300 images"):
        new = result.predict(images, covariates=covariates).to_frame(0.9)
    np.testing.assert_allclose(new["tau_mean"], units["tau_mean"], atol=1e-4)
    # where a new image stands against the overlap: the propensity the image alone predicts
    # (the simulated targeting is on the embedding alone, so it is the true one)
    np.testing.assert_allclose(new["image_propensity"], p, atol=1e-4)
    np.testing.assert_array_equal(new["outside_overlap"], (p < 0.1) | (p > 0.9))
    far = np.argsort(p)[-20:]  # the 20 most likely treated: outside the band, warned of
    with pytest.warns(OverlapWarning, match="20 of 20 images have an image-predicted"):
        result.predict(images[far], covariates=covariates[far])
    with warnings.catch_warnings():
        warnings.simplefilter("error", OverlapWarning)  # inside the band: no warning
        result.predict(images[(p > 0.2) & (p < 0.8)])
    assert "image_propensity" not in randomized.predict(images).to_frame().columns
    loaded = load_fit(result.save(tmp_path / "fit.imgcate"))
    np.testing.assert_allclose(loaded.unit_effects()["tau_mean"], units["tau_mean"], atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = loaded.predict(images, covariates=covariates).to_frame(0.9)
    np.testing.assert_allclose(again["image_propensity"], new["image_propensity"], atol=1e-6)
    # the sampler's model is the one read back, and the slope moves the effects
    import dataclasses

    from imgcate.posterior import fit_spec

    assert fit_spec(loaded).targeting == tuple(const["targeting"].values.tolist())
    idata = result.idata.copy()
    idata.posterior["targeting_slope"] = idata.posterior["targeting_slope"] * 0
    with pytest.warns(OverlapWarning):
        flat = dataclasses.replace(result, idata=idata).predict(images, covariates=covariates)
    assert np.abs(flat.to_frame(0.9)["tau_mean"] - new["tau_mean"]).max() > 0.01


@pytest.mark.slow
def test_interval_calibration_over_replications():
    """90% intervals of cluster effects and of unit CATE cover 80-97% over 40 replications.

    A cluster effect's truth is the model's estimand under the simulation's memberships, the
    average true CATE of the units most probably in the cluster (``tau_cluster_assigned``;
    0.06 inside the simulated effects 0 and 2 here). With 80 cluster-effect intervals the
    binomial sd of the coverage at 0.9 is 0.034, so the band [0.80, 0.97] is about -3 to +2
    sd; unit-CATE coverage pools 40 x 300 units, but units of one replication share its
    cluster-effect draws, so its spread is close to the former.
    """
    covered_tau, covered_cate = [], []
    for rep in range(40):
        sim = simulate_trial(1000 + rep, 300, 2, separation=4.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            result = fit(
                sim.trial, sim.embeddings, seed=rep, num_warmup=300, num_samples=400, num_chains=1
            )
        table = result.cluster_effects(prob=0.9)
        truth = sim.truth.tau_cluster_assigned
        covered_tau += list((table["tau_5%"] <= truth) & (truth <= table["tau_95%"]))
        units = result.unit_effects(prob=0.9)
        covered_cate += list(
            (units["tau_5%"] <= sim.truth.cate + 1e-9) & (sim.truth.cate - 1e-9 <= units["tau_95%"])
        )
    cov_tau, cov_cate = np.mean(covered_tau), np.mean(covered_cate)
    print(f"coverage of 90% intervals: cluster effects {cov_tau:.3f}, unit CATE {cov_cate:.3f}")
    assert 0.80 <= cov_tau <= 0.97
    assert 0.80 <= cov_cate <= 0.97


def test_the_baseline_has_clusters_of_its_own(tmp_path, edit_fit_file):
    """By default (``baseline_clusters="own"``) the baseline's cluster term gets memberships of
    its own (sites ``baseline_membership_*``); ``unit_effects`` and ``predict`` agree on the
    trial's units and the fit saves and loads with it. ``"shared"`` (the former model) has no
    such sites and the summary names it; a file saved before the option existed (no
    ``baseline_clusters`` in its settings) loads as shared. With equal effects the clusters
    already shape the baseline alone, so nothing is added; an unknown value is refused with
    the choices."""

    from click.testing import CliRunner

    from imgcate.cli import main
    from imgcate.results import load_fit
    from imgcate.simulate import simulate_scenario

    sim = simulate_scenario(0, effect="clusters", baseline="sine", n_units=150, n_features=6)
    opts = {"num_warmup": 30, "num_samples": 30, "num_chains": 2, "seed": 1}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        own = fit(sim.trial, sim.embeddings, **opts)
        shared = fit(sim.trial, sim.embeddings, baseline_clusters="shared", **opts)
        null = fit(sim.trial, sim.embeddings, equal_effects=True, deviation="none", **opts)
    assert own.config.baseline_clusters == "own"
    post = own.idata.posterior
    assert post["baseline_membership_raw"].dims == ("chain", "draw", "feature", "cluster_contrast")
    for other in (shared, null):
        assert not any(name.startswith("baseline_") for name in other.idata.posterior.data_vars)
    units = own.unit_effects()
    new = own.predict(sim.embeddings.values, covariates=sim.trial.covariate_matrix)
    np.testing.assert_allclose(new.to_frame(0.9)["tau_mean"], units["tau_mean"], atol=1e-4)
    assert "shared" not in own.summary()
    assert "K=2, the baseline's clusters shared with the effect's" in shared.summary()
    again = load_fit(own.save(tmp_path / "own.imgcate"))
    assert again.config.baseline_clusters == "own"
    np.testing.assert_array_equal(again.unit_effects()["tau_mean"], units["tau_mean"])
    path = shared.save(tmp_path / "shared.imgcate")

    def without_setting(meta):  # the same file without the setting, as saved before
        del meta["config"]["baseline_clusters"]
        return meta

    older = edit_fit_file(path, tmp_path / "older.imgcate", meta=without_setting)
    loaded = load_fit(older)
    assert loaded.config.baseline_clusters == "shared"
    np.testing.assert_array_equal(
        loaded.unit_effects()["tau_mean"], shared.unit_effects()["tau_mean"]
    )
    # `imgcate info` names the memberships of a fit that does not use the default
    settings = {}
    for name, file in (("own", tmp_path / "own.imgcate"), ("older", older)):
        res = CliRunner().invoke(main, ["info", str(file)])
        assert res.exit_code == 0, res.output
        settings[name] = next(line for line in res.output.splitlines() if "settings:" in line)
    assert "baseline_clusters" not in settings["own"] and "n_clusters=2" in settings["own"]
    assert "baseline_clusters=shared" in settings["older"]
    with pytest.raises(InputError, match="baseline_clusters.*own.*shared"):
        fit(sim.trial, sim.embeddings, baseline_clusters="separate", **opts)


def test_a_propensity_object_is_taken_for_its_scores():
    """fit(propensity=estimate_propensity(...)) uses the object's scores, as ate_estimates
    does (it was refused: "propensity must be numeric")."""
    from imgcate.confounding import estimate_propensity

    sim = simulate_trial(5, 120, 2)
    features = sim.embeddings.unit_rows(sim.trial.image_keys)
    ps = estimate_propensity(features, sim.trial.treatment_array, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        result = fit(
            sim.trial,
            sim.embeddings,
            propensity=ps,
            seed=0,
            num_warmup=20,
            num_samples=20,
            num_chains=1,
            init_restarts=2,
        )
    names = list(result.idata.constant_data.coords["covariate"].values)
    std = result.standardizer
    j = names.index("propensity")
    scores = result.idata.constant_data["covariates"].values[:, j] * std.covariate_sd[j]
    np.testing.assert_allclose(scores + std.covariate_mean[j], ps.scores, atol=1e-6)
    other = estimate_propensity(features, sim.trial.treatment_array[::-1], seed=0)
    with pytest.raises(InputError, match="estimated for another treatment vector"):
        fit(sim.trial, sim.embeddings, propensity=other)
