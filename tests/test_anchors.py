"""The anchored minibatch log-likelihood of SVI on minibatches (imgcate.anchors,
imgcate.anchors.Anchor): exact at its anchor, unbiased away from it, less noisy than the plain
minibatch's, its gradient pass equal to one over every unit at once, and moved at the steps
it says.

Tolerances: at the anchor the anchored and the whole trial's values are the same sums in
float32 arranged differently (rtol 1e-5 of a log density of about -500; gradients within
1e-3 of their scale). Away from it, the mean over 400 minibatches is compared with the whole
trial's value within 4 of its Monte Carlo standard errors (sd / sqrt(400)).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import pytest
from numpyro.infer.util import log_density

import imgcate.anchors
from imgcate.anchors import anchor_at, site_bijections, site_values
from imgcate.chains import model_args
from imgcate.config import FitConfig, Standardizer, model_data
from imgcate.guides import GUIDES
from imgcate.likelihoods import LIKELIHOODS
from imgcate.model import effect_model, sample_parameters, unit_log_likelihood
from imgcate.simulate import simulate_scenario, simulate_trial

BATCH = 30


def _case(likelihood: str = "gaussian", strata: bool = False):
    """A 300-unit trial's model arguments under ``likelihood`` (its outcome zero-inflated, so
    that the hurdle and the censored likelihoods have their floor; above it for bernoulli), or a
    Gaussian trial with four strata (their random intercepts), and a point of its parameters
    (a prior draw)."""
    if strata:
        sim = simulate_trial(4, 300, 2, n_strata=4)
    else:
        sim = simulate_scenario(3, effect="constant", noise="zero_inflated", n_units=300)
    trial = sim.trial
    if likelihood == "bernoulli":
        data = trial.data.assign(**{trial.outcome: (trial.outcome_array > 0).astype(float)})
        trial = dataclasses.replace(trial, data=data)
    config = FitConfig(n_clusters=2, likelihood=likelihood, method="svi", progress=False)
    config = config.validate()
    embedding = sim.embeddings.for_keys(trial.image_keys)
    std = Standardizer.fitted(
        trial.outcome_array, trial.covariate_matrix, embedding, config, trial.outcome
    )
    args = model_args(model_data(trial, embedding, std, config))
    draw = numpyro.handlers.trace(numpyro.handlers.seed(sample_parameters, 3))
    sites = draw.get_trace(args["spec"])
    point = {k: v["value"] for k, v in sites.items() if v["type"] == "sample"}
    return args, point


@pytest.fixture(scope="module")
def trial():
    return _case()


def _log_joint(args, params, key=None, batch=None, anchor=None):
    """The model's log joint density at the site values ``params``: over every unit, or a
    minibatch of ``batch`` units drawn with ``key`` (scaled up), with or without an anchor."""
    kwargs = {**args, "subsample_size": batch, "anchor": anchor}
    return numpyro.handlers.seed(
        lambda: log_density(effect_model, (), kwargs, params)[0], key if key is not None else 0
    )()


def _moved(point, spec, size, seed=0):
    """``point`` moved by ``size`` times standard normals in the unconstrained space."""
    bij = site_bijections(spec)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(point))
    unconstrained = {
        k: bij[k].inv(v) + size * jax.random.normal(key, jnp.shape(v))
        for key, (k, v) in zip(keys, point.items(), strict=True)
    }
    return site_values(unconstrained, spec)


CASES = [(likelihood, False) for likelihood in LIKELIHOODS] + [("gaussian", True)]


@pytest.mark.parametrize(("likelihood", "strata"), CASES)
def test_at_the_anchor_every_minibatch_gives_the_whole_trials_value_and_gradient(
    likelihood, strata
):
    args, point = _case(likelihood, strata)
    if strata:
        assert args["spec"].n_strata == 4 and "stratum_raw" in point
    anchor = anchor_at(point, args["inputs"], args["outcome"], args["spec"])
    whole, whole_grad = jax.value_and_grad(_log_joint, argnums=1)(args, point)
    plain = [float(_log_joint(args, point, key, BATCH)) for key in range(3)]
    assert np.ptp(plain) > 1.0  # the plain minibatch's value does depend on the minibatch
    for key in range(3):
        value, grad = jax.value_and_grad(_log_joint, argnums=1)(args, point, key, BATCH, anchor)
        np.testing.assert_allclose(value, whole, rtol=1e-5)
        for name, g in whole_grad.items():
            scale = float(jnp.abs(g).max()) + 1.0
            np.testing.assert_allclose(grad[name], g, atol=1e-3 * scale, err_msg=name)


@pytest.mark.parametrize("guide", sorted(GUIDES))
def test_the_anchors_space_is_the_guides_own(trial, guide):
    """The anchor linearizes where the guide is Gaussian: a guide's median, taken through
    the sites' bijections back (:func:`~imgcate.anchors.site_bijections`), is its own location
    in its unconstrained space, for every guide SVI may take. (At the anchor, and for its
    expectation, any bijection would do: this is what ties it to the guide's space.)"""
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.optim import Adam

    args, point = trial
    spec = args["spec"]
    model_guide = GUIDES[guide](effect_model)
    svi = SVI(effect_model, model_guide, Adam(0.01), Trace_ELBO())
    state = svi.init(jax.random.PRNGKey(0), **args)
    params = svi.get_params(state)
    params = {
        k: v + 0.3 if k.endswith("loc") else v for k, v in params.items()
    }  # away from the start, so that a wrong map cannot agree by chance
    bij = site_bijections(spec)
    median = model_guide.median(params)
    back = {k: bij[k].inv(v) for k, v in median.items()}
    if "auto_loc" in params:
        own = model_guide._unpack_latent(params["auto_loc"])
    else:
        own = {k: params[f"{k}_auto_loc"] for k in back}
    assert back.keys() == own.keys() == point.keys()
    for k, v in back.items():
        np.testing.assert_allclose(v, own[k], rtol=1e-4, atol=1e-4, err_msg=k)


def test_away_from_the_anchor_the_minibatch_value_is_unbiased_and_less_noisy(trial):
    args, point = trial
    spec = args["spec"]
    anchor = anchor_at(point, args["inputs"], args["outcome"], spec)
    params = _moved(point, spec, 0.05)
    whole = float(_log_joint(args, params))
    keys = jax.random.split(jax.random.PRNGKey(7), 400)
    anchored = np.asarray(
        jax.jit(jax.vmap(lambda k: _log_joint(args, params, k, BATCH, anchor)))(keys)
    )
    plain = np.asarray(jax.jit(jax.vmap(lambda k: _log_joint(args, params, k, BATCH)))(keys))
    for values in (anchored, plain):
        se = values.std() / np.sqrt(len(values))
        assert abs(values.mean() - whole) < 4 * se + 1e-5 * abs(whole), (values.mean(), whole)
    assert anchored.std() < 0.05 * plain.std(), (anchored.std(), plain.std())


def test_the_anchors_pass_in_chunks_equals_one_pass_over_every_unit(trial, monkeypatch):
    """Chunks of 64 of 300 units (the last one padded) against one gradient over all units."""
    args, point = trial
    spec, inputs, outcome = args["spec"], args["inputs"], args["outcome"]
    monkeypatch.setattr(imgcate.anchors, "ANCHOR_CHUNK", 64)
    anchor = anchor_at(point, inputs, outcome, spec)

    def whole(u):
        return unit_log_likelihood(site_values(u, spec), inputs, outcome, spec).sum()

    value, grad = jax.value_and_grad(whole)(anchor.params)
    np.testing.assert_allclose(anchor.total, value, rtol=1e-5)
    for name, g in grad.items():
        scale = float(jnp.abs(g).max()) + 1.0
        np.testing.assert_allclose(anchor.gradient[name], g, atol=1e-4 * scale, err_msg=name)


def test_svi_moves_its_anchor_at_every_tenth_of_the_steps(monkeypatch):
    """With steps in blocks of 25, the anchor is set at the first block start at or after each
    tenth of 100 steps (0, 25, 50, 75), and moves with the guide; a fit that takes every unit
    at each step sets none."""
    import imgcate.inference

    monkeypatch.setattr(imgcate.inference, "SVI_BLOCK", 25)
    calls = []

    def spy(params, inputs, outcome, spec):
        calls.append(params)
        return anchor_at(params, inputs, outcome, spec)

    monkeypatch.setattr(imgcate.inference, "anchor_at", spy)
    sim = simulate_trial(4, 300, 2)
    options = {
        "n_clusters": 2,
        "method": "svi",
        "svi_steps": 100,
        "svi_draws": 20,
        "init_restarts": 0,
    }
    imgcate.inference.fit(sim.trial, sim.embeddings, svi_batch_size=50, progress=False, **options)
    assert len(calls) == 4
    assert not np.allclose(calls[0]["tau_centre"], calls[-1]["tau_centre"])  # it moved
    calls.clear()
    imgcate.inference.fit(sim.trial, sim.embeddings, progress=False, **options)
    assert not calls
