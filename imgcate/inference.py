"""Fit the effect model: standardize, run NUTS or SVI, wrap the posterior.

:func:`fit` is the one verb; it returns an :class:`~imgcate.results.EffectFit`. Several MAP
searches run in parallel from random points; NUTS chain c starts at the c-th best of them (so
chains that settle in different modes show in R-hat) and the SVI guide at the best.
"""

from __future__ import annotations

import gc
import warnings
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from numpyro.infer import SVI, Predictive, Trace_ELBO, log_likelihood
from numpyro.infer.initialization import init_to_median, init_to_value
from numpyro.optim import Adam

import imgcate.config
from imgcate.anchors import anchor_at, anchor_steps
from imgcate.ates import check_equations, keep_propensity_equations, overlap_note
from imgcate.chains import (
    chain_starts,
    flat_draws,
    map_searches,
    model_args,
    random_starts,
    run_nuts,
    svi_start,
)
from imgcate.config import (
    FitConfig,
    ModelData,
    Standardizer,
    choose_method,
    model_data,
)
from imgcate.embeddings import Embeddings, unit_embeddings
from imgcate.errors import (
    ApproximationWarning,
    BalanceWarning,
    DurationWarning,
    InputError,
    OverlapWarning,
)
from imgcate.guides import GUIDES, chosen_guide
from imgcate.methods import check_method_options
from imgcate.model import effect_model
from imgcate.output import progress_bar
from imgcate.posterior import with_derived
from imgcate.provenance import collect
from imgcate.results import EffectFit
from imgcate.targeting import targeting_line
from imgcate.trialcheck import check_randomization
from imgcate.units import Trial, design_clusters
from imgcate.validation import as_propensity

if TYPE_CHECKING:
    import arviz as az

#: Posterior-predictive draws and the pointwise log-likelihood are kept when units x draws is
#: at most this (200 MB each, which the conversions to InferenceData double; at 10^5 units x
#: 1,000 draws twice this raised a fit's peak memory from 2.2 to 4.7 GB).
MAX_PREDICTIVE_VALUES = 50_000_000


#: SVI's minibatch size above 10,000 units unless ``svi_batch_size`` says otherwise.
SVI_BATCH_UNITS = 1_000


#: Share of the kernel's limit on a process's memory mappings past which :func:`fit` first drops
#: JAX's compiled code (:func:`release_compiled_code`).
MAPPING_SHARE = 0.5


def memory_mappings() -> tuple[int, int] | None:
    """The memory mappings this process holds and the kernel's limit on them
    (``vm.max_map_count``); None where ``/proc`` does not say (not Linux)."""
    try:
        limit = int(Path("/proc/sys/vm/max_map_count").read_text())
        with open("/proc/self/maps", "rb") as maps:
            return sum(1 for _ in maps), limit
    except (OSError, ValueError):
        return None


def release_compiled_code(share: float = MAPPING_SHARE) -> bool:
    """Drop JAX's caches of compiled programs when the process's memory mappings near the limit.

    Every fit compiles new programs (its model is a new function) and XLA keeps each one
    mapped in memory: about a thousand mappings per fit. Linux allows a process
    ``vm.max_map_count`` mappings (65,530 by default); past it XLA cannot compile ("LLVM
    compilation error: Cannot allocate memory") and the process dies, which ended notebooks
    and scripts that fitted some sixty models. Clearing makes the next fit compile what it
    would have reused, so it is done only once the mappings exceed ``share`` of the limit.
    Fits already made are unaffected. Elsewhere than Linux nothing is done.

    Parameters
    ----------
    share : float
        Share of ``vm.max_map_count`` in use above which the caches are dropped.

    Returns
    -------
    bool
        Whether the caches were dropped.
    """
    mappings = memory_mappings()
    if mappings is None or mappings[0] <= share * mappings[1]:
        return False
    jax.clear_caches()
    gc.collect()
    return True


def _run_nuts(data: ModelData, config: FitConfig, key) -> tuple[dict, dict]:
    key, key_start, key_jitter = jax.random.split(key, 3)
    if config.restarts:
        _, unconstrained, losses = map_searches(data, config, key_start)
        starts = chain_starts(unconstrained, losses, config.num_chains, key_jitter)
    else:
        starts = random_starts(data, config.num_chains, key_start)
    samples, fields = run_nuts(data, config, starts, key)
    stats = {
        "diverging": fields["diverging"],
        "n_steps": fields["num_steps"],
        "energy": fields["energy"],
        "lp": -fields["potential_energy"],
        "restarts": fields["restarts"],
    }
    return samples, stats


def svi_schedule(config: FitConfig):
    """Adam's step size at each SVI step: ``svi_learning_rate`` for the first half, then down
    geometrically to a hundredth of it at the last step. Minibatch gradients are noisy: at a
    constant step size the guide's location keeps wandering by about the step size, which at
    10^5 units and more is larger than the posterior's own sd; the decay lets it settle."""
    rate, half = config.svi_learning_rate, config.svi_steps / 2

    def step_size(i):
        return rate * 0.01 ** jnp.clip((i - half) / half, 0.0, 1.0)

    return step_size


def _run_svi(data: ModelData, config: FitConfig, key) -> tuple[dict, dict]:
    guide_cls = GUIDES[chosen_guide(config, data).svi_guide]
    args = model_args(data)
    init = init_to_median()
    if config.restarts:
        key, key_start = jax.random.split(key)
        start = svi_start(data, config, key_start)
        init = init if start is None else init_to_value(values=start)
    # the posterior sd of what the data inform falls as 1 / sqrt(units) (inputs are
    # standardized; a cluster effect's is about 3.5 / sqrt(n) with three clusters): starting the
    # guide's scales near it saves the thousands of steps they take to shrink from 0.1 at 10^5
    # units and more; scales the data do not inform grow back from it
    scale = min(0.1, 5.0 / np.sqrt(len(data.outcome)))
    guide = guide_cls(effect_model, init_loc_fn=init, init_scale=scale)
    svi = SVI(effect_model, guide, Adam(svi_schedule(config)), Trace_ELBO())
    batch = config.svi_batch_size
    if batch is not None and batch >= len(data.outcome):
        batch = None
    key_run, key_draw = jax.random.split(key)
    params, losses = _svi_steps(svi, key_run, args, batch, config)
    if not np.isfinite(losses[-1]):
        raise InputError("SVI diverged (loss is not finite); lower svi_learning_rate.")
    draws = Predictive(guide, params=params, num_samples=config.svi_draws)(key_draw, **args)
    samples = {k: np.asarray(v)[None] for k, v in draws.items() if k != "outcome"}
    return samples, {"loss": losses}


#: SVI steps per compiled call (the progress bar moves this often).
SVI_BLOCK = 250


def _svi_steps(svi: SVI, key, args: dict, batch: int | None, config: FitConfig):
    """``config.svi_steps`` steps of ``svi`` from its start; the guide's parameters and the
    loss at every step. Steps run :data:`SVI_BLOCK` at a time (a last, shorter block is
    compiled on its own).

    NumPyro's ``SVI.run`` compiles its step with the data captured, and captured arrays
    become constants copied into the compiled code (a second copy of the trial's inputs: 0.2
    GB at 10^6 units); here the data are an argument of the compiled call. The steps are
    ``SVI.update``'s, as in ``SVI.run``."""
    spec, arrays = args["spec"], {k: v for k, v in args.items() if k != "spec"}
    state = svi.init(key, subsample_size=batch, spec=spec, **arrays)

    def steps(state, arrays, length):
        def step(s, _):
            return svi.update(s, subsample_size=batch, spec=spec, **arrays)

        return jax.lax.scan(step, state, None, length=length)

    steps = jax.jit(steps, static_argnums=2)
    total, block = config.svi_steps, min(SVI_BLOCK, config.svi_steps)
    # on minibatches, a control variate anchored where the guide is (imgcate.anchors)
    moves = sorted(anchor_steps(total)) if batch is not None else []
    ticks = iter(progress_bar(range(total), config.progress, f"SVI, {total} steps"))
    losses = []
    for start in range(0, total, block):
        if moves and moves[0] <= start:
            moves = [m for m in moves if m > start]
            where = svi.guide.median(svi.get_params(state))
            arrays["anchor"] = anchor_at(where, arrays["inputs"], arrays["outcome"], spec)
        length = min(block, total - start)
        state, part = steps(state, arrays, length)
        losses.append(np.asarray(part))
        for _ in range(length):
            next(ticks, None)
    for _ in ticks:  # closes the bar
        pass
    return svi.get_params(state), np.concatenate(losses)


def _log_likelihood(samples: dict, data: ModelData) -> np.ndarray | None:
    """Pointwise log-likelihood (chain, draw, unit), computed in chunks of draws; None when
    larger than :data:`MAX_PREDICTIVE_VALUES`."""
    n_chain, n_draw = next(iter(samples.values())).shape[:2]
    if n_chain * n_draw * len(data.outcome) > MAX_PREDICTIVE_VALUES:
        return None
    flat, total = flat_draws(samples)
    args = model_args(replace(data, inputs=data.inputs.with_basis()))  # not again per draw
    spec = args.pop("spec")

    # the data are arguments, not captured: captured arrays become constants copied into the
    # compiled code (as in imgcate.posterior's derived pass)
    def pointwise(s, args):
        return log_likelihood(effect_model, s, spec=spec, **args)["outcome"]

    fn = jax.jit(pointwise)
    chunk = max(1, int(2e7 // max(len(data.outcome), 1)))
    parts = [
        np.asarray(fn({k: v[i : i + chunk] for k, v in flat.items()}, args))
        for i in range(0, total, chunk)
    ]
    return np.concatenate(parts).reshape(n_chain, n_draw, -1)


def _posterior_predictive(samples: dict, data: ModelData, key) -> np.ndarray | None:
    """Replicated outcomes (chain, draw, unit) on the model scale, or None when too large."""
    n_chain, n_draw = next(iter(samples.values())).shape[:2]
    if n_chain * n_draw * len(data.outcome) > MAX_PREDICTIVE_VALUES:
        return None
    flat, _ = flat_draws(samples)
    args = {**model_args(replace(data, inputs=data.inputs.with_basis())), "outcome": None}
    draws = Predictive(effect_model, posterior_samples=flat, return_sites=["outcome"])(key, **args)
    return np.asarray(draws["outcome"]).reshape(n_chain, n_draw, -1)


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
    propensity: Any = None,
    seed: int = 0,
    provenance: dict | None = None,
    **options: Any,
) -> EffectFit:
    """Fit the effect model to a trial and the embeddings of its images.

    Parameters
    ----------
    trial : Trial
        Units with treatment, outcome and covariates (see :func:`imgcate.read_units`).
    embeddings : Embeddings or ndarray
        One row per image, matched to units through ``trial.image_keys``; a plain array is
        taken as one row per unit, in unit order, and refused where the trial names its units'
        images (``image_id``) other than 0, 1, ... in unit order.
    n_clusters : int
        Number of effect clusters K. With K = 1 the effect is a smooth function of the
        embedding (``deviation="smooth"``, the default) or constant (``deviation="none"``).
        Compare choices with :func:`imgcate.compare_clusters`.
    likelihood : {"gaussian", "student_t", "bernoulli", "censored", "hurdle"}
        Outcome family: Gaussian; Student-t (heavy tails); Bernoulli (0/1, logit link);
        censored (Tobit: a mass at a floor the outcome cannot go below, e.g. hours, spending
        at 0); hurdle (a mass at the floor and a gamma positive part, e.g. earnings).
        Effects are always differences of the outcome's mean.
    method : {"nuts", "svi", "auto"}
        NUTS (exact; default), SVI (approximate; for large trials), or "auto": NUTS up to
        :data:`~imgcate.config.AUTO_NUTS_MAX_UNITS` (10,000) units, SVI above, with an
        :class:`~imgcate.ApproximationWarning` when it chooses SVI. ``result.config.method``
        is the method used. NUTS is the default at every size: on 2 cores a fit with the
        defaults takes 1.5-5 minutes at 2,000 units and 11-33 at 10,000 (two trials; longer
        where the clusters are sharp), and above 10,000 units it warns
        (:class:`~imgcate.DurationWarning`). Faster: ``method="svi"`` (approximate; 34 s at
        2,000 units), or NUTS without the Gaussian processes (``n_basis=0,
        deviation="linear"``); see docs/benchmarks.md.
    propensity : Propensity or ndarray (unit,), optional
        Estimated propensity scores for an observational study (e.g. the
        :class:`~imgcate.confounding.Propensity` of
        :func:`imgcate.confounding.estimate_propensity`, or its ``scores``). They enter the
        baseline as a covariate named ``propensity``, as in Bayesian causal forests (Hahn,
        Murray and Carvalho 2020), so that targeting on what the image shows is not mistaken
        for effect heterogeneity, and the effect gets a slope of its own along the embedding's
        direction that predicts them (docs/model.md, "The targeting slope"). The effects are
        causal under ignorability given the image embedding and covariates, and overlap:
        units outside [0.1, 0.9] get an OverlapWarning.
    seed : int
        Random seed; the same seed gives the same posterior on the same machine.
    provenance : dict, optional
        Where the inputs came from (:func:`imgcate.provenance.collect`), kept with the fit and
        in its saved file. By default: imgcate's version, the time, the command line, the seed
        and the embeddings' own provenance.
    **options
        Any other :class:`~imgcate.config.FitConfig` field (``deviation``, ``n_basis``,
        ``floor``, ``num_warmup``, ``num_samples``, ``num_chains``, ``n_components``,
        ``svi_steps``, ``svi_batch_size``, ``progress``, ...).

    Returns
    -------
    EffectFit
        Posterior (ArviZ InferenceData, dims chain, draw, unit, cluster, feature, covariate)
        with effects on the outcome's original scale.

    Raises
    ------
    InputError
        For invalid options, embeddings that do not match the trial, or an outcome the
        likelihood cannot take (not 0/1 for bernoulli; too few values at or above the floor
        for hurdle and censored).

    Warns
    -----
    ApproximationWarning
        When ``method="auto"`` chose SVI.
    OverlapWarning
        When ``propensity`` puts units outside [0.1, 0.9] (:func:`imgcate.ates.overlap_note`).
    ConvergenceWarning
        When R-hat > 1.01, ESS is low, NUTS diverged, or chains settled in different modes.
    ModelCheckWarning
        When outcomes replicated from the posterior miss the observed outcome's distribution
        in an arm (its mean, spread, quantiles, skewness or share at the floor).
    BalanceWarning
        Without ``propensity`` (a randomized trial), when the arms differ in the covariates or
        the embedding's first three principal components more than randomization allows:
        joint p-value below 0.001, or a variable's below 0.001 over the number of variables
        (:func:`imgcate.check_randomization`, 200 re-randomizations).

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
    check_method_options(method, options)
    if not isinstance(trial, Trial):
        raise InputError("trial must be a Trial; build one with imgcate.read_units(...).")
    chosen = choose_method(method, trial.n_units)
    config = FitConfig(
        n_clusters=n_clusters, likelihood=likelihood, method=chosen, seed=seed, **options
    ).validate()
    config = replace(config, init_restarts=config.restarts)  # the number used, as recorded
    if chosen == "svi" and config.svi_batch_size is None:  # recorded in result.config
        if trial.n_units > imgcate.config.AUTO_NUTS_MAX_UNITS:
            config = replace(config, svi_batch_size=SVI_BATCH_UNITS)
    elif (config.svi_batch_size or 0) >= trial.n_units:  # every unit at each step, as recorded
        config = replace(config, svi_batch_size=None)
    if chosen == "nuts" and trial.n_units > imgcate.config.AUTO_NUTS_MAX_UNITS:
        warnings.warn(
            f"imgcate fit: NUTS on {trial.n_units:,} units, more than the "
            f"{imgcate.config.AUTO_NUTS_MAX_UNITS:,} method='auto' gives to NUTS: on 2 cores "
            "fit's defaults took 11 and 33 minutes at 10,000 units on two trials "
            "(docs/benchmarks.md), and NUTS takes longer as the units grow; pass method='svi' "
            "(or 'auto') for a faster, approximate fit.",
            DurationWarning,
            stacklevel=2,
        )
    scores = None  # the propensity scores given, as validated
    if propensity is not None:
        trial, scores = _with_propensity(trial, propensity)
    if isinstance(embeddings, Embeddings):
        _check_no_leakage(embeddings, trial)
        unit_embedding, encoder = embeddings.unit_rows(trial.image_keys), embeddings.encoder
    else:
        unit_embedding = unit_embeddings(embeddings, trial)
        encoder = None
    if propensity is None:  # analysed as randomized: the arms may differ only by chance
        balance = check_randomization(
            trial,
            embeddings,  # matched to the units as above
            n_components=3,
            n_permutations=200,
            seed=seed,
            alpha=0.001,
            warn=False,
        )
        if balance.implausible:
            warnings.warn(f"imgcate fit: {balance.message()}", BalanceWarning, stacklevel=2)
    std = Standardizer.fitted(
        trial.outcome_array, trial.covariate_matrix, unit_embedding, config, trial.outcome
    )
    data = model_data(trial, unit_embedding, std, config, scores)
    del unit_embedding  # the model's (unit, component) copy is in data: a raw one may be large
    config = chosen_guide(config, data)
    if method == "auto" and chosen == "svi":
        warnings.warn(
            f"imgcate fit: method='auto' chose SVI for {trial.n_units:,} units (NUTS up to "
            f"{imgcate.config.AUTO_NUTS_MAX_UNITS:,}): effects and intervals come from its "
            "variational guide, not exact MCMC; pass method='nuts' for exact inference "
            "(slower).",
            ApproximationWarning,
            stacklevel=2,
        )
    release_compiled_code()
    key, key_predictive = jax.random.split(jax.random.PRNGKey(seed))
    runner = _run_nuts if config.method == "nuts" else _run_svi
    samples, stats = runner(data, config, key)
    loglik = _log_likelihood(samples, data)
    replicated = _posterior_predictive(samples, data, key_predictive)
    idata = _to_inference_data(samples, stats, loglik, replicated, data, trial, config, scores)
    keep_propensity_equations(idata, propensity)  # for ate()'s AIPW row
    inputs = data.inputs  # the derived pass's: its basis need not be computed again
    del data, samples, loglik, replicated  # in idata now
    if provenance is None:
        upstream = getattr(embeddings, "provenance", None) or {}
        provenance = collect(seeds={"fit": seed}, embeddings=upstream)
    result = with_derived(
        EffectFit(
            idata=idata,
            config=config,
            standardizer=std,
            encoder=encoder,
            provenance=dict(provenance),
        ),
        inputs,
    )
    if config.method == "nuts":
        result.check_convergence()
    result.check_model()
    return result


def _with_propensity(trial: Trial, propensity: np.ndarray) -> tuple[Trial, np.ndarray]:
    """The trial with the propensity score (a :class:`~imgcate.confounding.Propensity`'s
    scores, or the scores) added as a baseline covariate, and the scores (float64)."""
    scores = as_propensity(getattr(propensity, "scores", propensity))
    check_equations(propensity, len(scores))
    if len(scores) != trial.n_units:
        raise InputError(
            f"propensity has {len(scores)} values but the trial has {trial.n_units} units."
        )
    fitted_to = getattr(propensity, "treatment", None)
    if fitted_to is not None and not np.array_equal(np.asarray(fitted_to), trial.treatment_array):
        raise InputError(
            "propensity was estimated for another treatment vector than the trial's (another "
            "order or other units?); estimate it on trial.treatment_array."
        )
    if "propensity" in trial.covariates:
        raise InputError("the trial already has a covariate named 'propensity'; rename it.")
    if note := overlap_note(scores):
        warnings.warn(f"imgcate fit: {note}.", OverlapWarning, stacklevel=3)
    data = trial.data.assign(propensity=scores)
    return replace(trial, data=data, covariates=(*trial.covariates, "propensity")), scores


#: ArviZ dims of the model's sites (hurdle sites take the same dims under their prefix).
SITE_DIMS = {
    "beta": ["covariate"],
    "gamma_raw": ["feature"],
    "basis_raw": ["basis"],
    "tau_step": ["cluster_contrast"],
    "tau_contrast": ["cluster_contrast"],
    "mu_cluster": ["cluster_contrast"],
    "mu_step": ["cluster_contrast"],
    "deviation_local": ["feature"],
    "deviation_raw": ["feature"],
    "deviation_basis_raw": ["basis"],
    "stratum_raw": ["stratum"],
    "group_raw": ["group"],
}


def _to_inference_data(
    samples: dict,
    stats: dict,
    loglik: np.ndarray | None,
    replicated: np.ndarray | None,
    data: ModelData,
    trial: Trial,
    config: FitConfig,
    propensity: np.ndarray | None = None,
) -> az.InferenceData:
    import arviz as az

    inputs = data.inputs
    coords = {
        "unit": trial.ids,
        "cluster": np.arange(config.n_clusters),
        "cluster_contrast": np.arange(1, max(config.n_clusters, 2)),
        "feature": np.arange(data.spec.n_features),
        "basis": np.arange(data.spec.n_basis),
        "covariate": list(trial.covariates),
        "arm": ["control", "treated"],
    }
    dims = {
        f"{own}membership_{name}": d
        for own in ("", "baseline_")
        for name, d in (
            ("intercept", ["cluster_contrast"]),
            ("local", ["feature"]),
            ("raw", ["feature", "cluster_contrast"]),
        )
    }
    dims |= {
        "sigma": ["arm"],
        "noise_slope_raw": ["feature"],
        "outcome": ["unit"],
        "embedding": ["unit", "feature"],
        "covariates": ["unit", "covariate"],
        "treatment": ["unit"],
        "stratum": ["unit"],
        "group": ["unit"],
    }
    for prefix in data.spec.parts:
        dims.update({prefix + name: d for name, d in SITE_DIMS.items()})
    constant = {
        "embedding": np.asarray(inputs.embedding),  # the basis is computed from it again
        "treatment": np.asarray(inputs.treatment),
        "covariates": np.asarray(inputs.covariates),
    }
    for level in ("stratum", "group"):
        codes = getattr(inputs, level)
        if codes is not None:
            constant[level] = np.asarray(codes)
            coords[level] = np.arange(int(codes.max()) + 1)
    constant["outcome_original"] = trial.outcome_array  # float64, as given (exact zeros stay 0)
    dims["outcome_original"] = ["unit"]
    if propensity is not None:  # the scores as given, for ate()'s AIPW row
        constant["propensity_given"] = propensity
        dims["propensity_given"] = ["unit"]
    if data.spec.targeting:  # the effect's targeting direction (fit_spec reads it)
        constant["targeting"] = np.asarray(data.spec.targeting)
        dims["targeting"] = ["feature"]
    design = design_clusters(trial)
    if design is not None:
        constant["design_cluster"] = design
        dims["design_cluster"] = ["unit"]
    idata = az.from_dict(
        posterior=samples,
        posterior_predictive=None if replicated is None else {"outcome": replicated},
        sample_stats={k: v for k, v in stats.items() if np.ndim(v) >= 2},
        log_likelihood=None if loglik is None else {"outcome": loglik},
        observed_data={"outcome": data.outcome},
        constant_data=constant,
        coords=coords,
        dims=dims,
    )
    idata.posterior.attrs.update({"inference_library": "numpyro", "imgcate_method": config.method})
    # whether the covariate named propensity is the scores given (fits before 2026-12-07: unknown)
    idata.constant_data.attrs["propensity_passed"] = int(propensity is not None)
    if data.spec.targeting:  # how the images predict the targeting: predict()'s new images
        line = targeting_line(constant["embedding"], data.spec.targeting, propensity)
        idata.constant_data.attrs["targeting_line"] = list(line)
    if stats.get("restarts"):
        chains = sorted(stats["restarts"])
        moves = [stats["restarts"][c] for c in chains]
        idata.sample_stats.attrs.update(
            {
                "restarted_chains": chains,
                "restart_sources": [m["source"] for m in moves],
                "restart_gaps": [m["gap"] for m in moves],
                "restart_sd": [m["sd"] for m in moves],
            }
        )
    if "loss" in stats:
        loss = xr.Dataset({"loss": ("step", stats["loss"])})
        idata.add_groups({"svi_loss": loss}, warn_on_custom_groups=False)
    return idata
