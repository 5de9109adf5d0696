"""Outcome families of the effect model: distributions, means and the scale each works on.

Every family maps linear predictors to a distribution of the outcome (on the model scale) and
to its mean, so the effect is always reported as a difference of means on the outcome's own
scale, whatever the link:

=============  =======  ===============================================================
likelihood     parts    outcome on the model scale and its mean
=============  =======  ===============================================================
gaussian       1        Normal(eta, sigma_arm); mean eta
student_t      1        StudentT(nu, eta, sigma_arm); mean (and median) eta
bernoulli      1        Bernoulli(sigmoid(eta)); mean sigmoid(eta)
censored       1        max(floor, Normal(eta, sigma_arm)) (Tobit); mean
                        floor + (eta - floor) Phi(a) + sigma phi(a), a = (eta - floor) / sigma
hurdle         2        0 with probability 1 - sigmoid(eta_0), else LogNormal(eta_1, sigma_arm);
                        mean sigmoid(eta_0) exp(eta_1 + sigma_arm^2 / 2)
=============  =======  ===============================================================
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from jax.scipy.special import log_ndtr, ndtr
from jax.scipy.stats import norm
from numpyro.distributions import constraints
from numpyro.distributions.util import promote_shapes, validate_sample

LIKELIHOODS = ("gaussian", "student_t", "bernoulli", "censored", "hurdle")

#: Number of linear predictors ("parts") each family has; the hurdle has one for P(y > floor)
#: and one for the log-mean of the positive part.
N_PARTS = {"gaussian": 1, "student_t": 1, "bernoulli": 1, "censored": 1, "hurdle": 2}


class LeftCensoredNormal(dist.Distribution):
    """``max(floor, Normal(loc, scale))``: a Tobit outcome censored from below at ``floor``."""

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.real
    reparametrized_params = ["loc", "scale"]

    def __init__(self, loc, scale, floor=0.0, *, validate_args=None):
        self.loc, self.scale = promote_shapes(loc, scale)
        self.floor = floor
        batch_shape = jax.lax.broadcast_shapes(jnp.shape(loc), jnp.shape(scale))
        super().__init__(batch_shape=batch_shape, validate_args=validate_args)

    def sample(self, key, sample_shape=()):
        eps = jax.random.normal(key, sample_shape + self.batch_shape)
        return jnp.maximum(self.loc + self.scale * eps, self.floor)

    @validate_sample
    def log_prob(self, value):
        at_floor = value <= self.floor
        censored = log_ndtr((self.floor - self.loc) / self.scale)
        observed = norm.logpdf(value, self.loc, self.scale)
        return jnp.where(at_floor, censored, observed)

    @property
    def mean(self):
        return censored_mean(self.loc, self.scale, self.floor)


class HurdleLogNormal(dist.Distribution):
    """0 with probability ``1 - sigmoid(logit)``, else ``LogNormal(loc, scale)``."""

    arg_constraints = {
        "logit": constraints.real,
        "loc": constraints.real,
        "scale": constraints.positive,
    }
    support = constraints.nonnegative
    reparametrized_params = []

    def __init__(self, logit, loc, scale, *, validate_args=None):
        self.logit, self.loc, self.scale = promote_shapes(logit, loc, scale)
        batch_shape = jax.lax.broadcast_shapes(jnp.shape(logit), jnp.shape(loc), jnp.shape(scale))
        super().__init__(batch_shape=batch_shape, validate_args=validate_args)

    def sample(self, key, sample_shape=()):
        key_hurdle, key_size = jax.random.split(key)
        shape = sample_shape + self.batch_shape
        positive = jax.random.uniform(key_hurdle, shape) < jax.nn.sigmoid(self.logit)
        size = jnp.exp(self.loc + self.scale * jax.random.normal(key_size, shape))
        return jnp.where(positive, size, 0.0)

    @validate_sample
    def log_prob(self, value):
        positive = value > 0
        safe = jnp.where(positive, value, 1.0)
        size = dist.LogNormal(self.loc, self.scale).log_prob(safe)
        return jnp.where(
            positive, jax.nn.log_sigmoid(self.logit) + size, jax.nn.log_sigmoid(-self.logit)
        )

    @property
    def mean(self):
        return hurdle_mean(self.logit, self.loc, self.scale)


def censored_mean(loc, scale, floor):
    """Mean of ``max(floor, Normal(loc, scale))``."""
    a = (loc - floor) / scale
    return floor + (loc - floor) * ndtr(a) + scale * norm.pdf(a)


def hurdle_mean(logit, loc, scale):
    """Mean of the hurdle log-normal outcome."""
    return jax.nn.sigmoid(logit) * jnp.exp(loc + 0.5 * scale**2)


def outcome_distribution(likelihood: str, eta, scale, nu=None, floor=0.0):
    """Distribution of the outcome (model scale) given the linear predictors ``eta`` (part, ...).

    ``scale`` is the noise sd of each unit's arm (ignored for bernoulli).
    """
    if likelihood == "gaussian":
        return dist.Normal(eta[0], scale)
    if likelihood == "student_t":
        return dist.StudentT(nu, eta[0], scale)
    if likelihood == "bernoulli":
        return dist.Bernoulli(logits=eta[0])
    if likelihood == "censored":
        return LeftCensoredNormal(eta[0], scale, floor)
    return HurdleLogNormal(eta[0], eta[1], scale)


def outcome_mean(likelihood: str, eta, scale, floor=0.0):
    """Mean of the outcome (model scale) given the linear predictors ``eta`` (part, ...)."""
    if likelihood in ("gaussian", "student_t"):
        return eta[0]
    if likelihood == "bernoulli":
        return jax.nn.sigmoid(eta[0])
    if likelihood == "censored":
        return censored_mean(eta[0], scale, floor)
    return hurdle_mean(eta[0], eta[1], scale)
