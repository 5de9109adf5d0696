"""What the posterior implies, computed by the model's own :func:`~imgcate.model.unit_quantities`
under every draw: unit CATE, cluster probabilities and effects, the ATE, how much of the
effect the clusters explain and how strongly membership depends on the image.

:func:`evaluate` runs it for any set of units (the trial's, or new images); :func:`with_derived`
adds the summaries users read to the posterior once, when a fit is made.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from imgcate.config import own_baseline_clusters
from imgcate.intervals import quantiles
from imgcate.model import (
    ModelInputs,
    ModelSpec,
    cluster_levels,
    membership_weights,
    unit_quantities,
)

if TYPE_CHECKING:
    from imgcate.results import EffectFit

#: Posterior variables computed here (not sample sites of the model).
DERIVED = (
    "tau",
    "hurdle_tau",
    "tau_unit",
    "tau_cluster",
    "cluster_share",
    "ate",
    "effect_sd",
    "effect_share_clusters",
    "membership_dependence",
    "membership",
    "gamma",
    "deviation",
)

#: ``tau_unit`` (chain, draw, unit) is stored in the posterior up to this many values.
MAX_STORED_UNIT_DRAWS = 20_000_000

#: Draws evaluated at once (memory: draws x units x clusters floats).
DRAW_CHUNK_VALUES = 20_000_000

#: Draws x units x clusters of one chunk of the derived pass: small enough that its arrays
#: stay in the CPU's caches (10^5 units, 1,000 draws: 2.7 s, against 4.2 s with four times as
#: many; benchmarks/CHANGELOG.md, 2026-12-05 night).
DERIVED_CHUNK_VALUES = DRAW_CHUNK_VALUES // 16


def too_large(fit: EffectFit, group: str) -> str:
    """Why a large fit lacks ``group``: its units x draws values would not fit in memory."""
    from imgcate.inference import MAX_PREDICTIVE_VALUES as limit

    post = fit.idata.posterior
    units, draws = fit.idata.constant_data.sizes["unit"], post.sizes["chain"] * post.sizes["draw"]
    return (
        f"this fit kept no {group}: its {units:,} units x {draws:,} draws exceed "
        f"imgcate.inference.MAX_PREDICTIVE_VALUES ({limit:,}); refit with at most "
        f"{limit // units:,} draws (svi_draws, or num_samples x num_chains) or on a subsample "
        "of the units."
    )


def flat(values: np.ndarray) -> np.ndarray:
    """(chain, draw, ...) -> (sample, ...)."""
    return values.reshape((-1,) + values.shape[2:])


def site_names(fit: EffectFit) -> list[str]:
    """The posterior's variables that are the model's sample sites (not :data:`DERIVED`)."""
    return [n for n in fit.idata.posterior.data_vars if n not in DERIVED]


def site_draws(fit: EffectFit, rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The model's sample sites, flattened over chains, (sample, ...) by name."""
    post = fit.idata.posterior
    out = {n: flat(post[n].values) for n in site_names(fit)}
    if rows is not None:
        out = {n: v[rows] for n, v in out.items()}
    return out


def fit_spec(fit: EffectFit) -> ModelSpec:
    """The :class:`~imgcate.model.ModelSpec` of a fit."""
    const = fit.idata.constant_data
    config = fit.config

    def levels(name: str) -> int:
        return int(const[name].values.max()) + 1 if name in const else 0

    return ModelSpec(
        n_clusters=config.n_clusters,
        likelihood=config.likelihood,
        n_features=const.sizes["feature"],
        n_covariates=const.sizes.get("covariate", 0),
        n_basis=fit.standardizer.n_basis,
        deviation=config.deviation,
        equal_effects=config.equal_effects,
        own_baseline_clusters=own_baseline_clusters(config),
        image_noise=config.noise_scale == "image",
        n_strata=levels("stratum"),
        n_groups=levels("group"),
        floor=fit.standardizer.floor_on_model_scale(),
        targeting=tuple(const["targeting"].values.tolist()) if "targeting" in const else (),
    )


def trial_inputs(fit: EffectFit) -> ModelInputs:
    """The trial's own inputs on the model scale, as the model saw them.

    The Gaussian-process basis is computed again from the stored embedding, by the function
    that made it (the same values on the backend that fitted, to float32 rounding where the
    fit computed each minibatch's basis in its own compiled step; a fit does not store it: at
    10^6 units it is 183 MB in memory and in the file). Fits saved in formats 3 and 4 hold it,
    and it is read from them."""
    const = fit.idata.constant_data

    def codes(name: str):
        return jnp.asarray(const[name].values, jnp.int32) if name in const else None

    embedding = const["embedding"].values
    if "basis_features" in const:
        basis = const["basis_features"].values
    else:
        basis = fit.standardizer.basis(embedding)
    return ModelInputs(
        embedding=jnp.asarray(embedding, jnp.float32),
        basis=jnp.asarray(basis, jnp.float32),
        covariates=jnp.asarray(const["covariates"].values, jnp.float32),
        treatment=jnp.asarray(const["treatment"].values, jnp.int32),
        stratum=codes("stratum"),
        group=codes("group"),
    )


def _per_chunk(budget: int, values_per_row: int) -> int:
    """Rows (draws or units) whose ``values_per_row`` values each fit in ``budget`` values."""
    return max(1, budget // max(values_per_row, 1))


#: :func:`~imgcate.model.unit_quantities` under a batch of draws, compiled once per shape.
_quantities = jax.jit(jax.vmap(unit_quantities, in_axes=(0, None, None)), static_argnums=2)


def evaluate(
    params: dict[str, np.ndarray], inputs: ModelInputs, spec: ModelSpec
) -> dict[str, np.ndarray]:
    """:func:`~imgcate.model.unit_quantities` under every draw in ``params`` (sample, ...),
    in chunks of draws; arrays (sample, unit, ...) on the model scale."""
    n_draws = len(next(iter(params.values())))
    n_units = inputs.embedding.shape[0]
    chunk = _per_chunk(DRAW_CHUNK_VALUES, n_units * max(spec.n_clusters, 2))
    parts = []
    for start in range(0, n_draws, chunk):
        sub = {k: jnp.asarray(v[start : start + chunk]) for k, v in params.items()}
        parts.append({k: np.asarray(v) for k, v in _quantities(sub, inputs, spec).items()})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def unit_summaries(fit: EffectFit, prob: float) -> dict[str, np.ndarray]:
    """Posterior summaries of each of the trial's units (original scale): CATE ``mean``,
    ``sd``, central ``prob`` interval (``lo``, ``hi``), ``prob_positive`` and mean
    ``cluster_prob`` (unit, cluster). Units are taken in chunks, so that memory holds draws x
    a chunk of units, not draws x every unit (4 GB at a million units and 1,000 draws)."""
    params, inputs, spec = site_draws(fit), trial_inputs(fit), fit_spec(fit)
    n_draws = len(next(iter(params.values())))
    n_units = inputs.embedding.shape[0]
    chunk = _per_chunk(DRAW_CHUNK_VALUES, n_draws * max(spec.n_clusters, 2))
    parts = []
    for start in range(0, n_units, chunk):
        rows = np.arange(start, min(start + chunk, n_units))
        q = evaluate(params, inputs.take(rows), spec)
        cate = q["cate"] * fit.standardizer.outcome_sd
        lo, hi = quantiles(cate, prob)
        parts.append(
            {
                "mean": cate.mean(0),
                "sd": cate.std(0),
                "lo": lo,
                "hi": hi,
                "prob_positive": (cate > 0).mean(0),
                "cluster_prob": q["cluster_prob"].mean(0),
            }
        )
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def cluster_summaries(cate, prob, xp=np) -> dict:
    """Per-draw summaries of unit CATE (sample, unit) and membership (sample, unit, cluster).

    ``tau_cluster``: each cluster's average CATE over the units most probably in it under the
    draw (where no unit is, the membership-weighted average over all units stands in);
    ``cluster_share``: average membership; ``ate``: average CATE; ``effect_sd``: the CATE's
    sd over units; ``effect_share_clusters``: the share of the CATE's variance over units
    that the cluster averages explain (the R^2 of the CATE on the units' clusters; 0 for an
    effect constant up to rounding, as with ``equal_effects``); ``membership_dependence``:
    the mutual information between cluster and image over the trial's images, as a share of
    log K (0: every image has the same membership; 1: each image in one cluster for sure).
    ``xp`` is ``numpy`` (float64 arithmetic) or ``jax.numpy`` (in the arrays' precision).
    This is the definition; :func:`with_derived`'s pass computes the same over chunks of
    units (:func:`summary_parts`, :func:`merge_parts`, :func:`finish_parts`).
    """
    if xp is np:
        cate, prob = np.asarray(cate, np.float64), np.asarray(prob, np.float64)
    k = prob.shape[-1]
    weighted = xp.einsum("su,suk->sk", cate, prob) / xp.maximum(prob.sum(1), 1e-12)
    # each unit in its most probable cluster: one-hot rows, ties to the first
    assigned = (xp.argmax(prob, -1)[..., None] == xp.arange(k)).astype(cate.dtype)
    count = assigned.sum(1)
    averages = xp.einsum("su,suk->sk", cate, assigned) / xp.maximum(count, 1)
    tau_cluster = xp.where(count > 0, averages, weighted)
    out = {
        "tau_cluster": tau_cluster,
        "cluster_share": prob.mean(1),
        "ate": cate.mean(1),
        "effect_sd": cate.std(1),
    }
    if k > 1:
        tiny = xp.finfo(prob.dtype).tiny
        explained = xp.einsum("suk,sk->su", assigned, tau_cluster)
        total = cate.var(1)
        residual = (cate - explained).var(1)
        share = xp.clip(1.0 - residual / xp.maximum(total, tiny), 0, 1)
        constant = xp.sqrt(total) <= 1e-6 * xp.abs(cate).mean(1)  # float32 rounding only
        out["effect_share_clusters"] = xp.where(constant, 0.0, share)
        mean_prob = prob.mean(1)
        entropy_mean = -(mean_prob * xp.log(xp.clip(mean_prob, tiny, None))).sum(-1)
        entropy_unit = -(prob * xp.log(xp.clip(prob, tiny, None))).sum(-1).mean(1)
        out["membership_dependence"] = (entropy_mean - entropy_unit) / np.log(k)
    return out


def summary_parts(cate, prob, xp=np) -> dict:
    """What :func:`cluster_summaries` needs of one chunk of units, per draw: the chunk's
    size ``n``, the CATE's mean and sum of squared deviations (``mean``, ``m2``), the same over
    the units most probably in each cluster (``count``, ``mean_k``, ``m2_k``), and sums
    (``abs_sum``, ``weighted_sum``, ``prob_sum``, ``entropy_sum``). Chunks merge exactly
    (:func:`merge_parts`), so the summaries of a million units need only a chunk in memory;
    deviations are taken from the chunk's own means, so float32 chunks lose no precision to
    cancellation. Arguments as for :func:`cluster_summaries`."""
    k = prob.shape[-1]
    n = cate.shape[1]
    assigned = (xp.argmax(prob, -1)[..., None] == xp.arange(k)).astype(cate.dtype)
    count = assigned.sum(1)
    mean_k = xp.einsum("su,suk->sk", cate, assigned) / xp.maximum(count, 1)
    within = cate - xp.einsum("suk,sk->su", assigned, mean_k)
    mean = cate.mean(1)
    tiny = xp.finfo(prob.dtype).tiny
    return {
        "n": xp.full(mean.shape, n, cate.dtype),
        "mean": mean,
        "m2": ((cate - mean[:, None]) ** 2).sum(1),
        "count": count,
        "mean_k": mean_k,
        "m2_k": xp.einsum("su,suk->sk", within**2, assigned),
        "abs_sum": xp.abs(cate).sum(1),
        "weighted_sum": xp.einsum("su,suk->sk", cate, prob),
        "prob_sum": prob.sum(1),
        "entropy_sum": -(prob * xp.log(xp.clip(prob, tiny, None))).sum((1, 2)),
    }


def merge_parts(a: dict, b: dict) -> dict:
    """:func:`summary_parts` of two chunks of units as those of both, in float64 (the pairwise
    update of Chan, Golub and LeVeque for the means and sums of squared deviations)."""
    a, b = ({k: np.asarray(v, np.float64) for k, v in part.items()} for part in (a, b))
    sums = ("abs_sum", "weighted_sum", "prob_sum", "entropy_sum")
    out = {name: a[name] + b[name] for name in sums}
    for size, mean, m2 in (("n", "mean", "m2"), ("count", "mean_k", "m2_k")):
        na, nb = a[size], b[size]
        total = na + nb
        safe = np.maximum(total, 1)
        delta = b[mean] - a[mean]
        out[size] = total
        out[mean] = a[mean] + delta * nb / safe
        out[m2] = a[m2] + b[m2] + delta**2 * na * nb / safe
    return out


def finish_parts(parts: dict) -> dict:
    """:func:`cluster_summaries` from the merged :func:`summary_parts` of every unit."""
    n, k = parts["n"][:, None], parts["prob_sum"].shape[-1]
    weighted = parts["weighted_sum"] / np.maximum(parts["prob_sum"], 1e-12)
    out = {
        "tau_cluster": np.where(parts["count"] > 0, parts["mean_k"], weighted),
        "cluster_share": parts["prob_sum"] / n,
        "ate": parts["mean"],
        "effect_sd": np.sqrt(parts["m2"] / parts["n"]),
    }
    if k > 1:
        tiny = np.finfo(np.float64).tiny
        total = parts["m2"] / parts["n"]
        residual = parts["m2_k"].sum(-1) / parts["n"]
        share = np.clip(1.0 - residual / np.maximum(total, tiny), 0, 1)
        constant = np.sqrt(total) <= 1e-6 * parts["abs_sum"] / parts["n"]
        out["effect_share_clusters"] = np.where(constant, 0.0, share)
        mean_prob = parts["prob_sum"] / n
        entropy_mean = -(mean_prob * np.log(np.clip(mean_prob, tiny, None))).sum(-1)
        entropy_unit = parts["entropy_sum"] / parts["n"]
        out["membership_dependence"] = (entropy_mean - entropy_unit) / np.log(k)
    return out


def _derived_pass(
    fit: EffectFit, spec: ModelSpec, inputs: ModelInputs
) -> tuple[dict, np.ndarray | None]:
    """Cluster summaries of every draw (sample, ...) and the unit CATE (sample, unit) on the
    original scale, or None above :data:`MAX_STORED_UNIT_DRAWS` values.

    Chunks of units go through one compiled function under every draw at once, and their
    :func:`summary_parts` are merged: memory stays at a chunk's whatever the trial's size,
    and each chunk's inputs are read once for all draws (a pass draw by draw read the whole
    trial's embedding and basis a thousand times at a million units, 79 s of a 160 s fit)."""
    params = {name: jnp.asarray(v) for name, v in site_draws(fit).items()}
    scale = fit.standardizer.outcome_sd

    def chunk_parts(p, rows):
        q = _quantities(p, rows, spec)
        cate = q["cate"] * scale
        return summary_parts(cate, q["cluster_prob"], jnp), cate

    # the inputs are an argument, not captured: captured arrays become constants of the
    # compiled code, copied into it (a GB more at a million units)
    fn = jax.jit(chunk_parts)
    n_draws = len(next(iter(params.values())))
    n_units = inputs.embedding.shape[0]
    keep = n_draws * n_units <= MAX_STORED_UNIT_DRAWS
    chunk = _per_chunk(DERIVED_CHUNK_VALUES, n_draws * max(spec.n_clusters, 2))
    merged, cates = None, []
    for start in range(0, n_units, chunk):
        parts, cate = fn(params, inputs.take(slice(start, start + chunk)))
        parts = {name: np.asarray(v, np.float64) for name, v in parts.items()}
        merged = parts if merged is None else merge_parts(merged, parts)
        if keep:
            cates.append(np.asarray(cate))
    return finish_parts(merged), np.concatenate(cates, axis=1) if keep else None


def with_derived(fit: EffectFit, inputs: ModelInputs | None = None) -> EffectFit:
    """The fit with the derived variables (original outcome scale) in its posterior;
    ``inputs``: the trial's, where the caller has them already (:func:`trial_inputs`
    otherwise, which computes the basis again)."""
    post = fit.idata.posterior
    shape = (post.sizes["chain"], post.sizes["draw"])
    spec = fit_spec(fit)
    summaries, cate = _derived_pass(fit, spec, trial_inputs(fit) if inputs is None else inputs)
    derived = {}
    for name, values in summaries.items():
        dims = ("chain", "draw") + (("cluster",) if values.ndim == 2 else ())
        derived[name] = (dims, values.reshape(shape + values.shape[1:]))
    if cate is not None:
        derived["tau_unit"] = (("chain", "draw", "unit"), cate.reshape(shape + cate.shape[1:]))
    derived["gamma"] = post["gamma_scale"] * post["gamma_raw"]
    if "deviation_raw" in post:  # delta alone: a fit given a propensity adds targeting_slope w
        derived["deviation"] = (
            post["deviation_scale"] * post["deviation_local"] * post["deviation_raw"]
        )
    sites = {n: post[n].values for n in post.data_vars}
    for prefix in spec.parts:  # cluster effects on the linear-predictor scale
        levels = np.asarray(cluster_levels(sites, prefix))
        derived[f"{prefix}tau"] = (("chain", "draw", "cluster"), levels)
    if spec.n_clusters > 1:
        weights = membership_weights(sites)
        derived["membership"] = (("chain", "draw", "feature", "cluster_contrast"), weights)
    idata = fit.idata.copy()
    idata.posterior = post.assign(derived)
    return replace(fit, idata=idata)
