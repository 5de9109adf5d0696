"""Fit the effect-cluster model: standardize, run NUTS or SVI, wrap the posterior.

:func:`fit` is the one verb; it returns an :class:`~imgcate.results.EffectFit`. NUTS chains
and the SVI guide start from the best of several MAP searches run in parallel.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from numpyro.infer import MCMC, NUTS, SVI, Predictive, Trace_ELBO, log_likelihood
from numpyro.infer.autoguide import AutoDelta, AutoLowRankMultivariateNormal, AutoNormal
from numpyro.infer.initialization import init_to_median, init_to_uniform, init_to_value
from numpyro.infer.util import unconstrain_fn
from numpyro.optim import Adam

from imgcate.config import FitConfig, ModelData, Standardizer, model_data
from imgcate.embeddings import Embeddings
from imgcate.errors import InputError
from imgcate.model import effect_cluster_model
from imgcate.results import EffectFit
from imgcate.units import Trial
from imgcate.validation import as_float_array, as_propensity

if TYPE_CHECKING:
    import arviz as az


def _map_start(data: ModelData, config: FitConfig, key) -> dict[str, jnp.ndarray]:
    """Best of ``init_restarts`` MAP searches from random points (constrained values by site)."""
    kwargs = data.model_kwargs(config)
    outcome = jnp.asarray(data.outcome)
    guide = AutoDelta(effect_cluster_model, init_loc_fn=init_to_uniform(radius=2.0))
    svi = SVI(effect_cluster_model, guide, Adam(0.05), Trace_ELBO())

    def search(restart_key):
        state = svi.init(restart_key, outcome=outcome, **kwargs)

        def step(carry, _):
            carry, loss = svi.update(carry, outcome=outcome, **kwargs)
            return carry, loss

        state, losses = jax.lax.scan(step, state, None, length=config.init_steps)
        return svi.get_params(state), losses[-1]

    keys = jax.random.split(key, config.init_restarts)
    params, losses = jax.jit(jax.vmap(search))(keys)
    losses = jnp.where(jnp.isfinite(losses), losses, jnp.inf)
    best = int(jnp.argmin(losses))
    return guide.median({name: value[best] for name, value in params.items()})


def _chain_inits(data: ModelData, config: FitConfig, start: dict, key) -> dict:
    """Unconstrained initial values per chain: the MAP start plus a small jitter."""
    kwargs = data.model_kwargs(config)
    free = unconstrain_fn(
        effect_cluster_model, (), {"outcome": jnp.asarray(data.outcome), **kwargs}, start
    )
    keys = jax.random.split(key, len(free))
    return {
        name: value + 0.05 * jax.random.normal(k, (config.num_chains,) + jnp.shape(value))
        for (name, value), k in zip(free.items(), keys, strict=True)
    }


def _run_nuts(data: ModelData, config: FitConfig, key) -> tuple[dict, dict]:
    init_params = None
    if config.init_restarts:
        key, key_map, key_jitter = jax.random.split(key, 3)
        start = _map_start(data, config, key_map)
        init_params = _chain_inits(data, config, start, key_jitter)
        if config.num_chains == 1:
            init_params = {name: value[0] for name, value in init_params.items()}
    kernel = NUTS(effect_cluster_model, target_accept_prob=config.target_accept)
    mcmc = MCMC(
        kernel,
        num_warmup=config.num_warmup,
        num_samples=config.num_samples,
        num_chains=config.num_chains,
        chain_method=config.chain_method,
        progress_bar=config.progress,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="There are not enough devices")
        mcmc.run(
            key,
            outcome=jnp.asarray(data.outcome),
            extra_fields=("diverging", "num_steps", "energy"),
            init_params=init_params,
            **data.model_kwargs(config),
        )
    samples = mcmc.get_samples(group_by_chain=True)
    extra = mcmc.get_extra_fields(group_by_chain=True)
    stats = {
        "diverging": np.asarray(extra["diverging"]),
        "n_steps": np.asarray(extra["num_steps"]),
        "energy": np.asarray(extra["energy"]),
    }
    return {k: np.asarray(v) for k, v in samples.items()}, stats


def _run_svi(data: ModelData, config: FitConfig, key) -> tuple[dict, dict]:
    guide_cls = AutoLowRankMultivariateNormal if config.svi_guide == "lowrank" else AutoNormal
    init = init_to_median()
    if config.init_restarts:
        key, key_map = jax.random.split(key)
        init = init_to_value(values=_map_start(data, config, key_map))
    guide = guide_cls(effect_cluster_model, init_loc_fn=init)
    kwargs = data.model_kwargs(config)
    svi = SVI(effect_cluster_model, guide, Adam(config.svi_learning_rate), Trace_ELBO())
    batch = config.svi_batch_size
    if batch is not None and batch >= len(data.outcome):
        batch = None
    key_run, key_draw = jax.random.split(key)
    result = svi.run(
        key_run,
        config.svi_steps,
        outcome=jnp.asarray(data.outcome),
        subsample_size=batch,
        progress_bar=config.progress,
        **kwargs,
    )
    losses = np.asarray(result.losses)
    if not np.isfinite(losses[-1]):
        raise InputError("SVI diverged (loss is not finite); lower svi_learning_rate.")
    draws = Predictive(guide, params=result.params, num_samples=config.svi_draws)(
        key_draw, **kwargs
    )
    samples = {k: np.asarray(v)[None] for k, v in draws.items() if k != "outcome"}
    return samples, {"loss": losses}


def _log_likelihood(samples: dict, data: ModelData, config: FitConfig) -> np.ndarray:
    """Pointwise log-likelihood (chain, draw, unit), computed in chunks of draws."""
    n_chain, n_draw = next(iter(samples.values())).shape[:2]
    flat = {
        k: jnp.asarray(v.reshape((n_chain * n_draw,) + v.shape[2:])) for k, v in samples.items()
    }
    kwargs = data.model_kwargs(config)
    fn = jax.jit(
        lambda s: log_likelihood(
            effect_cluster_model, s, outcome=jnp.asarray(data.outcome), **kwargs
        )["outcome"]
    )
    chunk = max(1, int(2e7 // max(len(data.outcome), 1)))
    total = n_chain * n_draw
    parts = [
        np.asarray(fn({k: v[i : i + chunk] for k, v in flat.items()}))
        for i in range(0, total, chunk)
    ]
    return np.concatenate(parts).reshape(n_chain, n_draw, -1)


def _check_no_leakage(embeddings: Embeddings, trial: Trial) -> None:
    """Image features named like the trial's treatment or outcome are the units table itself."""
    names = set(embeddings.feature_names or ())
    leaked = [c for c in (trial.treatment, trial.outcome) if c in names]
    if leaked:
        raise InputError(
            f"the embeddings have feature columns {leaked}, the trial's treatment/outcome: they "
            "look like the units table, not image embeddings; pass the embeddings table "
            "(e.g. embeddings.parquet)."
        )


def fit(
    trial: Trial,
    embeddings: Embeddings | np.ndarray,
    *,
    n_clusters: int = 2,
    likelihood: str = "gaussian",
    method: str = "nuts",
    propensity: np.ndarray | None = None,
    seed: int = 0,
    **options: Any,
) -> EffectFit:
    """Fit the effect-cluster model to a trial and the embeddings of its images.

    Parameters
    ----------
    trial : Trial
        Units with treatment, outcome and covariates (see :func:`imgcate.read_units`).
    embeddings : Embeddings or ndarray
        One row per image, matched to units through ``trial.image_keys``; a plain array is
        taken as one row per unit, in unit order.
    n_clusters : int
        Number of effect clusters K (1 = no heterogeneity). Compare values with
        :func:`compare_clusters`.
    likelihood : {"gaussian", "student_t", "bernoulli"}
        Outcome family: Gaussian, Student-t (heavy tails) or Bernoulli with a logit link.
    method : {"nuts", "svi"}
        NUTS (exact; default) or SVI (approximate; for large trials).
    propensity : ndarray (unit,), optional
        Estimated propensity scores for an observational study (e.g. from
        :func:`imgcate.confounding.estimate_propensity`). They enter the baseline as a
        covariate named ``propensity``, as in Bayesian causal forests (Hahn, Murray and
        Carvalho 2020), so that targeting on what the image shows is not mistaken for effect
        heterogeneity. The effects are causal under ignorability given the image embedding and
        covariates, and overlap (0 < propensity < 1); check overlap first.
    seed : int
        Random seed; the same seed gives the same posterior on the same machine.
    **options
        Any other :class:`FitConfig` field (``num_warmup``, ``num_samples``, ``num_chains``,
        ``n_components``, ``svi_steps``, ``svi_batch_size``, ``progress``, ...).

    Returns
    -------
    EffectFit
        Posterior (ArviZ InferenceData, dims chain, draw, unit, cluster, feature, covariate)
        with effects on the outcome's original scale.

    Raises
    ------
    InputError
        For invalid options, embeddings that do not match the trial, or a non-binary outcome
        with ``likelihood="bernoulli"``.

    Warns
    -----
    ConvergenceWarning
        When R-hat > 1.01, ESS is low, or NUTS diverged.

    Examples
    --------
    >>> from imgcate.simulate import simulate_trial
    >>> sim = simulate_trial(seed=0, n_units=200)
    >>> result = fit(sim.trial, sim.embeddings, num_warmup=100, num_samples=100, num_chains=1)
    >>> result.cluster_effects().shape[0]
    2
    """
    unknown = set(options) - set(FitConfig.__dataclass_fields__)
    if unknown:
        raise InputError(
            f"unknown fit option(s) {sorted(unknown)}; allowed: "
            f"{sorted(FitConfig.__dataclass_fields__)}."
        )
    config = FitConfig(
        n_clusters=n_clusters, likelihood=likelihood, method=method, seed=seed, **options
    ).validate()
    if not isinstance(trial, Trial):
        raise InputError("trial must be a Trial; build one with imgcate.read_units(...).")
    if propensity is not None:
        trial = _with_propensity(trial, propensity)
    if isinstance(embeddings, Embeddings):
        _check_no_leakage(embeddings, trial)
        unit_embedding, encoder = embeddings.for_keys(trial.image_keys), embeddings.encoder
    else:
        unit_embedding = _unit_rows(as_float_array("embeddings", embeddings, ndim=2), trial)
        encoder = None
    std = Standardizer.fitted(
        trial.outcome_array,
        trial.covariate_matrix,
        unit_embedding,
        config.likelihood,
        config.n_components,
    )
    data = model_data(trial, unit_embedding, std, config)
    key = jax.random.PRNGKey(seed)
    runner = _run_nuts if config.method == "nuts" else _run_svi
    samples, stats = runner(data, config, key)
    loglik = _log_likelihood(samples, data, config)
    idata = _to_inference_data(samples, stats, loglik, data, trial, config)
    result = EffectFit(idata=idata, config=config, standardizer=std, encoder=encoder)
    result = result.with_derived()
    if config.method == "nuts":
        result.check_convergence()
    return result


def _with_propensity(trial: Trial, propensity: np.ndarray) -> Trial:
    """The trial with the propensity score added as a baseline covariate."""
    scores = as_propensity(propensity)
    if len(scores) != trial.n_units:
        raise InputError(
            f"propensity has {len(scores)} values but the trial has {trial.n_units} units."
        )
    if "propensity" in trial.covariates:
        raise InputError("the trial already has a covariate named 'propensity'; rename it.")
    data = trial.data.assign(propensity=scores)
    return replace(trial, data=data, covariates=(*trial.covariates, "propensity"))


def _unit_rows(values: np.ndarray, trial: Trial) -> np.ndarray:
    if len(values) != trial.n_units:
        raise InputError(
            f"embeddings array has {len(values)} rows but the trial has {trial.n_units} units; "
            "pass an Embeddings object keyed by image id, or one row per unit."
        )
    return values


def _to_inference_data(
    samples: dict, stats: dict, loglik: np.ndarray, data: ModelData, trial: Trial, config: FitConfig
) -> az.InferenceData:
    import arviz as az

    n_feat = data.embedding.shape[1]
    coords = {
        "unit": trial.ids,
        "cluster": np.arange(config.n_clusters),
        "cluster_contrast": np.arange(1, max(config.n_clusters, 2)),
        "feature": np.arange(n_feat),
        "covariate": list(trial.covariates),
        "arm": ["control", "treated"],
    }
    dims = {
        "beta": ["covariate"],
        "gamma_raw": ["feature"],
        "tau": ["cluster"],
        "membership_intercept": ["cluster_contrast"],
        "membership_local": ["feature"],
        "membership_raw": ["feature", "cluster_contrast"],
        "sigma": ["arm"],
        "stratum_raw": ["stratum"],
        "group_raw": ["group"],
        "outcome": ["unit"],
        "embedding": ["unit", "feature"],
        "covariates": ["unit", "covariate"],
        "treatment": ["unit"],
        "stratum": ["unit"],
        "group": ["unit"],
    }
    constant = {
        "embedding": data.embedding,
        "treatment": data.treatment,
        "covariates": data.covariates,
    }
    if data.stratum is not None:
        constant["stratum"] = data.stratum
        coords["stratum"] = np.arange(int(data.stratum.max()) + 1)
    if data.group is not None:
        constant["group"] = data.group
        coords["group"] = np.arange(int(data.group.max()) + 1)
    idata = az.from_dict(
        posterior=samples,
        sample_stats={k: v for k, v in stats.items() if v.ndim >= 2},
        log_likelihood={"outcome": loglik},
        observed_data={"outcome": data.outcome},
        constant_data=constant,
        coords=coords,
        dims=dims,
    )
    idata.posterior.attrs.update({"inference_library": "numpyro", "imgcate_method": config.method})
    if "loss" in stats:
        loss = xr.Dataset({"loss": ("step", stats["loss"])})
        idata.add_groups({"svi_loss": loss}, warn_on_custom_groups=False)
    return idata
