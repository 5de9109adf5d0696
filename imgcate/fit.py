"""Fit the effect-cluster model: standardize, run NUTS or SVI, wrap the posterior.

:func:`fit` is the one verb; it returns an :class:`~imgcate.effects.EffectFit`.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import xarray as xr
from numpyro.infer import MCMC, NUTS, SVI, Predictive, Trace_ELBO, log_likelihood
from numpyro.infer.autoguide import AutoDelta, AutoLowRankMultivariateNormal, AutoNormal
from numpyro.infer.initialization import init_to_median, init_to_uniform, init_to_value
from numpyro.infer.util import unconstrain_fn
from numpyro.optim import Adam

from imgcate.embed import Embeddings
from imgcate.errors import ConvergenceWarning, InputError
from imgcate.model import LIKELIHOODS, effect_cluster_model
from imgcate.units import Trial
from imgcate.validation import as_float_array, as_propensity, check_choice

Method = Literal["nuts", "svi"]


@dataclass(frozen=True)
class FitConfig:
    """Settings of a fit (kept with the result so it can be reproduced).

    Attributes
    ----------
    n_clusters : int
        Number of effect clusters K (1 = no heterogeneity).
    likelihood : {"gaussian", "student_t", "bernoulli"}
        Outcome family.
    method : {"nuts", "svi"}
        Exact MCMC (default) or stochastic variational inference for large trials.
    n_components : int or None
        Whitened principal components of the standardized embedding that the model sees; None
        keeps all of them when the embedding has at most 32 features, else 16.
    num_warmup, num_samples, num_chains : int
        NUTS settings (``chain_method`` "sequential", "vectorized" or "parallel").
    target_accept : float
        NUTS target acceptance probability.
    svi_steps, svi_learning_rate, svi_batch_size, svi_guide, svi_draws :
        SVI settings: optimisation steps, Adam step size, minibatch size over units (None =
        full batch), guide ("lowrank" or "normal") and posterior draws taken from the guide.
    random_effects : bool
        Add stratum / cluster random intercepts when the trial names those columns.
    init_restarts, init_steps : int
        Multi-start initialization: ``init_restarts`` MAP searches (Adam, ``init_steps``
        steps each, run in parallel with ``jax.vmap``) from random points; every chain (or the
        SVI guide) starts near the best one. Mixture posteriors have poor local modes (two
        clusters merged, one empty) that a chain started at random can get stuck in; with
        0 restarts NumPyro's default random initialization is used.
    seed : int
        Random seed of the inference.
    """

    n_clusters: int = 2
    likelihood: str = "gaussian"
    method: str = "nuts"
    n_components: int | None = None
    num_warmup: int = 500
    num_samples: int = 500
    num_chains: int = 4
    chain_method: str = "sequential"
    target_accept: float = 0.85
    svi_steps: int = 5000
    svi_learning_rate: float = 0.01
    svi_batch_size: int | None = None
    svi_guide: str = "lowrank"
    svi_draws: int = 1000
    random_effects: bool = True
    init_restarts: int = 8
    init_steps: int = 500
    seed: int = 0
    progress: bool = False

    def validate(self) -> FitConfig:
        """Check every option, with messages that list the allowed values."""
        check_choice("likelihood", self.likelihood, LIKELIHOODS)
        check_choice("method", self.method, ("nuts", "svi"))
        check_choice("chain_method", self.chain_method, ("sequential", "vectorized", "parallel"))
        check_choice("svi_guide", self.svi_guide, ("lowrank", "normal"))
        if not 1 <= self.n_clusters <= 10:
            raise InputError(f"n_clusters={self.n_clusters} must be between 1 and 10.")
        if self.init_restarts < 0 or self.init_steps < 1:
            raise InputError("init_restarts must be >= 0 and init_steps >= 1.")
        for name in ("num_warmup", "num_samples", "num_chains", "svi_steps", "svi_draws"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be a positive integer.")
        if not 0.5 <= self.target_accept < 1:
            raise InputError("target_accept must be in [0.5, 1).")
        return self


@dataclass(frozen=True)
class Standardizer:
    """Maps raw inputs to the model scale and back; fitted on the trial, reused on new data.

    Attributes
    ----------
    outcome_mean, outcome_sd : float
        Outcome location and scale (0 and 1 for binary outcomes).
    covariate_mean, covariate_sd : ndarray (covariate,)
    embedding_mean, embedding_sd : ndarray (feature_in,)
    projection : ndarray (feature_in, feature)
        Whitening PCA applied after standardizing the embedding (identity when not reduced).
    """

    outcome_mean: float
    outcome_sd: float
    covariate_mean: np.ndarray
    covariate_sd: np.ndarray
    embedding_mean: np.ndarray
    embedding_sd: np.ndarray
    projection: np.ndarray

    @classmethod
    def fitted(
        cls,
        outcome: np.ndarray,
        covariates: np.ndarray,
        embedding: np.ndarray,
        likelihood: str,
        n_components: int | None,
    ) -> Standardizer:
        """Fit on the trial's outcome, covariates and (unit) embeddings."""
        binary = likelihood == "bernoulli"
        e_mean = embedding.mean(0)
        e_sd = _safe_sd(embedding)
        z = (embedding - e_mean) / e_sd
        d_in = embedding.shape[1]
        n_comp = n_components if n_components is not None else (d_in if d_in <= 32 else 16)
        if n_comp > d_in:
            raise InputError(f"n_components={n_comp} exceeds the {d_in} embedding features.")
        # whitened principal components: the per-feature (ARD) membership prior then judges the
        # relevance of each direction of variation, whatever basis the embedding came in
        _, s, vt = np.linalg.svd(z - z.mean(0), full_matrices=False)
        scale = s[:n_comp] / np.sqrt(max(len(z) - 1, 1))
        projection = vt[:n_comp].T / np.where(scale > 1e-12, scale, 1.0)
        return cls(
            outcome_mean=0.0 if binary else float(outcome.mean()),
            outcome_sd=1.0 if binary else float(_safe_sd(outcome[:, None])[0]),
            covariate_mean=covariates.mean(0),
            covariate_sd=_safe_sd(covariates),
            embedding_mean=e_mean,
            embedding_sd=e_sd,
            projection=projection,
        )

    def embedding(self, values: np.ndarray) -> np.ndarray:
        """Raw embeddings (n, feature_in) to the model scale (n, feature)."""
        values = np.asarray(values, dtype=float)
        if values.ndim != 2 or values.shape[1] != len(self.embedding_mean):
            raise InputError(
                f"embeddings have {values.shape[-1]} features but the fit used "
                f"{len(self.embedding_mean)}; embed new images with the fit's encoder."
            )
        return ((values - self.embedding_mean) / self.embedding_sd) @ self.projection

    def covariates(self, values: np.ndarray) -> np.ndarray:
        """Raw covariates to the model scale."""
        return (np.asarray(values, dtype=float) - self.covariate_mean) / self.covariate_sd

    def outcome(self, values: np.ndarray) -> np.ndarray:
        """Raw outcome to the model scale."""
        return (np.asarray(values, dtype=float) - self.outcome_mean) / self.outcome_sd


def _safe_sd(values: np.ndarray) -> np.ndarray:
    sd = values.std(0) if len(values) > 1 else np.ones(values.shape[1])
    return np.where(sd > 1e-12, sd, 1.0)


@dataclass(frozen=True)
class ModelData:
    """Arrays on the model scale, in unit order (what the likelihood sees)."""

    embedding: np.ndarray
    treatment: np.ndarray
    covariates: np.ndarray
    outcome: np.ndarray
    stratum: np.ndarray | None
    group: np.ndarray | None

    def model_kwargs(self, config: FitConfig) -> dict[str, Any]:
        """Keyword arguments of :func:`effect_cluster_model`."""
        return {
            "embedding": jnp.asarray(self.embedding),
            "treatment": jnp.asarray(self.treatment),
            "covariates": jnp.asarray(self.covariates),
            "n_clusters": config.n_clusters,
            "likelihood": config.likelihood,
            "stratum": None if self.stratum is None else jnp.asarray(self.stratum),
            "n_strata": 0 if self.stratum is None else int(self.stratum.max()) + 1,
            "group": None if self.group is None else jnp.asarray(self.group),
            "n_groups": 0 if self.group is None else int(self.group.max()) + 1,
        }


def _model_data(
    trial: Trial, unit_embedding: np.ndarray, std: Standardizer, config: FitConfig
) -> ModelData:
    y = trial.outcome_array
    if config.likelihood == "bernoulli" and not np.isin(y, (0, 1)).all():
        raise InputError(
            f"likelihood='bernoulli' needs a 0/1 outcome, but column {trial.outcome!r} has "
            "other values; use likelihood='gaussian' or recode the outcome."
        )
    stratum = trial.codes("stratum") if config.random_effects else None
    group = trial.codes("cluster") if config.random_effects else None
    return ModelData(
        embedding=std.embedding(unit_embedding).astype(np.float32),
        treatment=trial.treatment_array,
        covariates=std.covariates(trial.covariate_matrix).astype(np.float32),
        outcome=std.outcome(y).astype(np.float32),
        stratum=None if stratum is None or stratum.max() == 0 else stratum,
        group=None if group is None or group.max() == 0 else group,
    )


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
):
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
    from imgcate.effects import EffectFit

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
    data = _model_data(trial, unit_embedding, std, config)
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


def fit_config_dict(config: FitConfig) -> dict:
    """The config as a JSON-serializable dict."""
    return asdict(config)


@dataclass(frozen=True)
class ClusterComparison:
    """PSIS-LOO comparison of effect-cluster models with K = 1..k_max.

    Attributes
    ----------
    table : DataFrame
        One row per K (index ``K``): ``elpd_loo``, ``se``, ``elpd_diff`` and ``dse`` (difference
        to the best model and its standard error), ``p_loo``, ``n_bad_pareto_k`` (k > 0.7),
        ``n_divergent``, ``selected``.
    best_k : int
        The smallest K not clearly worse than the best: ``elpd_diff <= max(4, 2 * dse)``.
        Differences below 4 are small by the usual LOO guidance (Sivula, Magnusson, Vehtari
        2020), so simpler models win ties; K = 1 means no detectable heterogeneity.
    fits : dict
        The fitted models by K.
    """

    table: pd.DataFrame
    best_k: int
    fits: dict


def compare_clusters(
    trial: Trial,
    embeddings: Embeddings | np.ndarray,
    *,
    k_max: int = 4,
    seed: int = 0,
    **fit_options: Any,
) -> ClusterComparison:
    """Fit K = 1..k_max and compare them by PSIS-LOO (ArviZ).

    Parameters
    ----------
    trial, embeddings :
        As for :func:`fit`.
    k_max : int
        Largest number of clusters to try.
    seed : int
        Seed passed to every fit.
    **fit_options
        Passed to :func:`fit` (``num_samples``, ``likelihood``, ...).

    Returns
    -------
    ClusterComparison

    Warns
    -----
    ConvergenceWarning
        For the selected K only (R-hat, ESS, divergences; see ``check_convergence``); the fits
        of the other K are used for the comparison alone and do not warn.
    """
    if k_max < 1:
        raise InputError(f"k_max={k_max} must be at least 1.")
    fits, loos = {}, {}
    for k in range(1, k_max + 1):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            fits[k] = fit(trial, embeddings, n_clusters=k, seed=seed, **fit_options)
        loos[k] = fits[k].loo()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compared = az.compare({str(k): v for k, v in loos.items()}, ic="loo", scale="log")
    rows = []
    for k in range(1, k_max + 1):
        row = compared.loc[str(k)]
        stats = fits[k].idata.get("sample_stats")
        n_div = (
            int(stats["diverging"].values.sum())
            if stats is not None and "diverging" in stats
            else 0
        )
        rows.append(
            {
                "K": k,
                "elpd_loo": row["elpd_loo"],
                "se": row["se"],
                "elpd_diff": row["elpd_diff"],
                "dse": row["dse"],
                "p_loo": row["p_loo"],
                "n_bad_pareto_k": int((loos[k].pareto_k.values > 0.7).sum()),
                "n_divergent": n_div,
            }
        )
    table = pd.DataFrame(rows).set_index("K")
    ok = table["elpd_diff"] <= np.maximum(4.0, 2.0 * table["dse"])
    best_k = int(table.index[ok.to_numpy()].min())
    table["selected"] = table.index == best_k
    fits[best_k].check_convergence()  # the other K are only compared; the selected one is used
    return ClusterComparison(table=table, best_k=best_k, fits=fits)
