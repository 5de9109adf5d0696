"""The effect-cluster model (NumPyro).

Units have outcome ``y``, treatment ``t``, standardized image embedding ``e`` (feature) and
covariates ``x``. Each unit belongs to one of K latent effect clusters with probability
``pi = softmax(a + e B)`` (the first cluster is the reference, logits 0). The outcome is

    y ~ sum_k pi_k Normal(alpha + x beta + e gamma + u_stratum + t tau_k, sigma_t)

with the clusters marginalized (no discrete sampling) and ``tau_1 < ... < tau_K`` ordered, which
removes label switching. K = 1 is the model without heterogeneity. Every quantity is on the
standardized outcome scale here; :mod:`imgcate.results` maps results back to the original scale.
"""

from __future__ import annotations

from typing import Literal

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

Likelihood = Literal["gaussian", "student_t", "bernoulli"]
LIKELIHOODS = ("gaussian", "student_t", "bernoulli")

#: Prior scales on the standardized outcome scale (documented in docs/model.md).
PRIOR = {
    "alpha": 2.5,  # intercept
    "beta": 1.0,  # covariate coefficients
    "gamma_scale": 0.5,  # half-normal scale of the shrinkage sd of embedding coefficients
    "tau": 1.5,  # cluster effects are order statistics of K iid Normal(0, tau)
    "membership_intercept": 2.0,
    "membership_scale": 1.0,  # half-normal scale of the global shrinkage sd of membership weights
    "membership_local": 1.0,  # half-normal scale of each feature's own (ARD) shrinkage sd
    "sigma": 1.0,
    "group_sd": 0.5,  # stratum / cluster random-effect sd
}


def _ordered_effects(n_clusters: int) -> jnp.ndarray:
    """Cluster effects tau_1 < ... < tau_K with an order-statistics Normal prior."""
    if n_clusters == 1:
        return numpyro.sample("tau", dist.Normal(0.0, PRIOR["tau"]).expand([1]).to_event(1))
    tau = numpyro.sample(
        "tau", dist.ImproperUniform(constraints.ordered_vector, (), event_shape=(n_clusters,))
    )
    numpyro.factor("tau_prior", dist.Normal(0.0, PRIOR["tau"]).log_prob(tau).sum())
    return tau


def _membership(n_features: int, n_clusters: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Membership intercepts (cluster-1,) and weights (feature, cluster-1), shrunk towards 0.

    Weights are ``scale * local[feature] * raw``: a global shrinkage sd times one sd per feature
    (automatic relevance determination; the features are the embedding's whitened principal
    components). With a single global sd, the direction along which the clusters separate pulls
    it up and every other feature then gets a noisy weight of about the same size; the
    per-feature sds let those shrink on their own. The prior mean of weight^2 is 1 either way.
    """
    intercept = numpyro.sample(
        "membership_intercept",
        dist.Normal(0.0, PRIOR["membership_intercept"]).expand([n_clusters - 1]).to_event(1),
    )
    scale = numpyro.sample("membership_scale", dist.HalfNormal(PRIOR["membership_scale"]))
    local = numpyro.sample(
        "membership_local",
        dist.HalfNormal(PRIOR["membership_local"]).expand([n_features]).to_event(1),
    )
    raw = numpyro.sample(
        "membership_raw", dist.Normal(0.0, 1.0).expand([n_features, n_clusters - 1]).to_event(2)
    )
    return intercept, scale * local[:, None] * raw


def membership_logits(embedding: jnp.ndarray, intercept: jnp.ndarray, weights: jnp.ndarray):
    """Cluster logits (..., unit, cluster) with the first cluster as reference (logit 0)."""
    logits = intercept[..., None, :] + embedding @ weights
    return jnp.concatenate([jnp.zeros(logits.shape[:-1] + (1,)), logits], axis=-1)


def _group_effect(name: str, codes, n_groups: int) -> jnp.ndarray | float:
    if codes is None or n_groups == 0:
        return 0.0
    sd = numpyro.sample(f"{name}_sd", dist.HalfNormal(PRIOR["group_sd"]))
    raw = numpyro.sample(f"{name}_raw", dist.Normal(0.0, 1.0).expand([n_groups]).to_event(1))
    return sd * raw[codes]


def effect_cluster_model(
    embedding: jnp.ndarray,
    treatment: jnp.ndarray,
    covariates: jnp.ndarray,
    outcome: jnp.ndarray | None = None,
    *,
    n_clusters: int,
    likelihood: Likelihood = "gaussian",
    stratum: jnp.ndarray | None = None,
    n_strata: int = 0,
    group: jnp.ndarray | None = None,
    n_groups: int = 0,
    subsample_size: int | None = None,
) -> None:
    """NumPyro model of the effect clusters.

    Parameters
    ----------
    embedding : array (unit, feature)
        Standardized image embedding of each unit.
    treatment : array (unit,)
        0/1 treatment.
    covariates : array (unit, covariate)
        Standardized covariates (may have zero columns).
    outcome : array (unit,), optional
        Standardized outcome (0/1 for ``likelihood="bernoulli"``); None to sample it.
    n_clusters : int
        Number of effect clusters K (1 = no heterogeneity).
    likelihood : {"gaussian", "student_t", "bernoulli"}
        Outcome family (Bernoulli uses a logit link; effects are then log-odds ratios).
    stratum, group : array (unit,) of int, optional
        Randomization-block and cluster-randomization codes for random intercepts.
    n_strata, n_groups : int
        Number of strata and of groups.
    subsample_size : int, optional
        Minibatch size over units (stochastic variational inference only).
    """
    n_units, n_covariates = covariates.shape
    alpha = numpyro.sample("alpha", dist.Normal(0.0, PRIOR["alpha"]))
    beta = jnp.zeros(0)
    if n_covariates:  # no zero-size site: it would break MAP initialization and ArviZ
        beta = numpyro.sample(
            "beta", dist.Normal(0.0, PRIOR["beta"]).expand([n_covariates]).to_event(1)
        )
    gamma_scale = numpyro.sample("gamma_scale", dist.HalfNormal(PRIOR["gamma_scale"]))
    gamma_raw = numpyro.sample(
        "gamma_raw", dist.Normal(0.0, 1.0).expand([embedding.shape[1]]).to_event(1)
    )
    tau = _ordered_effects(n_clusters)
    if n_clusters > 1:
        intercept, weights = _membership(embedding.shape[1], n_clusters)
    if likelihood != "bernoulli":
        sigma = numpyro.sample("sigma", dist.HalfNormal(PRIOR["sigma"]).expand([2]).to_event(1))
    if likelihood == "student_t":
        nu = numpyro.sample("nu", dist.Gamma(2.0, 0.1))
    stratum_effect_draws = _group_effect("stratum", stratum, n_strata)
    group_effect_draws = _group_effect("group", group, n_groups)
    with numpyro.plate("unit", n_units, subsample_size=subsample_size) as idx:
        e = embedding[idx]
        t = treatment[idx]
        base = alpha + covariates[idx] @ beta + e @ (gamma_scale * gamma_raw)
        if n_strata:
            base = base + stratum_effect_draws[idx]
        if n_groups:
            base = base + group_effect_draws[idx]
        loc = base[:, None] + t[:, None] * tau
        if n_clusters == 1:
            logits = jnp.zeros((e.shape[0], 1))
        else:
            logits = membership_logits(e, intercept, weights)
        mixing = dist.Categorical(logits=logits)
        if likelihood == "gaussian":
            scale = sigma[t][:, None]
            component = dist.Normal(loc, scale)
        elif likelihood == "student_t":
            component = dist.StudentT(nu, loc, sigma[t][:, None])
        else:
            component = dist.Bernoulli(logits=loc)
        obs = None if outcome is None else outcome[idx]
        numpyro.sample("outcome", dist.MixtureSameFamily(mixing, component), obs=obs)
