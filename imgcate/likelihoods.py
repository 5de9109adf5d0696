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
hurdle         2        0 with probability 1 - sigmoid(eta_0), else a gamma with mean
                        exp(eta_1) and coefficient of variation sigma_arm;
                        mean sigmoid(eta_0) exp(eta_1)
=============  =======  ===============================================================

``sigma_arm`` is the arm's noise scale, times ``exp(z w)`` for each unit's image where the fit
has ``noise_scale="image"`` (:func:`imgcate.model.unit_scale`).

The hurdle's positive part is a gamma with a log link on its mean, not a log-normal. Under a
log-normal the mean, ``exp(eta_1 + sigma^2 / 2)``, moves with the noise sd: wherever the
model cannot follow the positive part's mean (an effect it has not found, a baseline it
cannot bend to), the misfit goes into the treated arm's sigma and the mean-scale effect
moves with it (a retransformation bias). A gamma's mean is
``exp(eta_1)`` whatever its dispersion, and its score for the mean is that of a
quasi-likelihood with variance proportional to the mean squared, so the mean, and the
effect on it, stays consistent when the positive part is not a gamma (a log-normal, a
Weibull), as for Poisson or gamma pseudo-maximum likelihood in econometrics. On the
zero-inflated calibration trials the mean ATE error fell from 0.22 to 0.13-0.14 and the unit
intervals narrowed by 15 % at the same coverage (docs/model.md, "Calibration").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from jax.scipy.special import log_ndtr, ndtr
from jax.scipy.stats import norm
from numpyro.distributions import constraints
from numpyro.distributions.util import promote_shapes, validate_sample

from imgcate.errors import InputError
from imgcate.moments import column_sd

if TYPE_CHECKING:
    from imgcate.config import FitConfig

LIKELIHOODS = ("gaussian", "student_t", "bernoulli", "censored", "hurdle")

#: Number of linear predictors ("parts") each family has; the hurdle has one for P(y > floor)
#: and one for the log-mean of the positive part.
N_PARTS = {"gaussian": 1, "student_t": 1, "bernoulli": 1, "censored": 1, "hurdle": 2}

#: Families whose mean is the linear predictor itself.
IDENTITY_MEAN = ("gaussian", "student_t")


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


class HurdleGamma(dist.Distribution):
    """0 with probability ``1 - sigmoid(logit)``, else a gamma with mean ``exp(log_mean)`` and
    coefficient of variation ``cv`` (shape ``1 / cv**2``)."""

    arg_constraints = {
        "logit": constraints.real,
        "log_mean": constraints.real,
        "cv": constraints.positive,
    }
    support = constraints.nonnegative
    reparametrized_params = []

    def __init__(self, logit, log_mean, cv, *, validate_args=None):
        self.logit, self.log_mean, self.cv = promote_shapes(logit, log_mean, cv)
        batch_shape = jax.lax.broadcast_shapes(jnp.shape(logit), jnp.shape(log_mean), jnp.shape(cv))
        super().__init__(batch_shape=batch_shape, validate_args=validate_args)

    def _positive_part(self) -> dist.Gamma:
        shape = 1.0 / self.cv**2
        return dist.Gamma(shape, shape * jnp.exp(-self.log_mean))

    def sample(self, key, sample_shape=()):
        key_hurdle, key_size = jax.random.split(key)
        shape = sample_shape + self.batch_shape
        positive = jax.random.uniform(key_hurdle, shape) < jax.nn.sigmoid(self.logit)
        size = self._positive_part().sample(key_size, sample_shape)
        return jnp.where(positive, size, 0.0)

    @validate_sample
    def log_prob(self, value):
        positive = value > 0
        safe = jnp.where(positive, value, 1.0)
        size = self._positive_part().log_prob(safe)
        return jnp.where(
            positive, jax.nn.log_sigmoid(self.logit) + size, jax.nn.log_sigmoid(-self.logit)
        )

    @property
    def mean(self):
        return hurdle_mean(self.logit, self.log_mean)


def censored_mean(loc, scale, floor):
    """Mean of ``max(floor, Normal(loc, scale))``."""
    a = (loc - floor) / scale
    return floor + (loc - floor) * ndtr(a) + scale * norm.pdf(a)


def hurdle_mean(logit, log_mean):
    """Mean of the hurdle outcome: P(y > floor) times the positive part's mean."""
    return jax.nn.sigmoid(logit) * jnp.exp(log_mean)


def outcome_distribution(likelihood: str, eta, scale, nu=None, floor=0.0):
    """Distribution of the outcome (model scale) given the linear predictors ``eta`` (part, ...).

    ``scale`` is each unit's noise sd (:func:`imgcate.model.unit_scale`: its arm's, times
    ``exp(z w)`` with ``noise_scale="image"``; for the hurdle: the positive part's
    coefficient of variation; ignored for bernoulli).
    """
    if likelihood == "gaussian":
        return dist.Normal(eta[0], scale)
    if likelihood == "student_t":
        return dist.StudentT(nu, eta[0], scale)
    if likelihood == "bernoulli":
        return dist.Bernoulli(logits=eta[0])
    if likelihood == "censored":
        return LeftCensoredNormal(eta[0], scale, floor)
    return HurdleGamma(eta[0], eta[1], scale)


def outcome_mean(likelihood: str, eta, scale, floor=0.0):
    """Mean of the outcome (model scale) given the linear predictors ``eta`` (part, ...)."""
    if likelihood in IDENTITY_MEAN:
        return eta[0]
    if likelihood == "bernoulli":
        return jax.nn.sigmoid(eta[0])
    if likelihood == "censored":
        return censored_mean(eta[0], scale, floor)
    return hurdle_mean(eta[0], eta[1])


def outcome_scale(
    outcome: np.ndarray, config: FitConfig, name: str = "outcome"
) -> tuple[float, float, float]:
    """(location, scale, floor) of the outcome for the likelihood
    (see :class:`imgcate.config.Standardizer`)."""
    y = np.asarray(outcome, dtype=float)
    if config.likelihood == "bernoulli":
        return 0.0, 1.0, float("nan")
    if config.likelihood not in ("hurdle", "censored"):
        return float(y.mean()), float(column_sd(y[:, None])[0]), float("nan")
    floor = float(y.min()) if config.floor is None else float(config.floor)
    below = int((y < floor).sum())
    if below:
        raise InputError(
            f"{below} value{'s' if below > 1 else ''} of {name!r} lie{'' if below > 1 else 's'} "
            f"below floor={floor}; the {config.likelihood} likelihood needs every outcome >= "
            "its floor (fix or drop those units, or leave floor=None to take the smallest "
            "value)."
        )
    at_floor = at_the_floor(y, floor)
    n_floor, n_above = int(at_floor.sum()), int((~at_floor).sum())
    if n_floor < 5 or n_above < 5:
        zeros = int(at_the_floor(y, 0.0).sum())
        zeros_look_like_the_floor = zeros >= 5 and n_floor < 5 and config.floor is None
        hint = (
            f" The floor was taken as the smallest value ({floor}), yet {zeros} outcomes are "
            f"0: if 0 is the floor, check the {n_floor} value(s) at {floor} (a "
            "data error?) or pass floor=0, which then names every value below it."
            if zeros_look_like_the_floor
            else " Use likelihood='gaussian' or 'student_t' for an outcome without a mass at "
            "its floor."
        )
        raise InputError(
            f"likelihood={config.likelihood!r} needs at least 5 outcomes at the floor ({floor}) "
            f"and 5 above it; {name!r} has {n_floor} and {n_above}.{hint}"
        )
    if config.likelihood == "censored":
        return float(y.mean()), float(column_sd(y[:, None])[0]), floor
    positive = y[~at_floor] - floor
    return floor, float(np.exp(np.log(positive).mean())), floor


def at_the_floor(values: np.ndarray, floor: float) -> np.ndarray:
    """Which values equal the floor (to rounding)."""
    return np.abs(np.asarray(values, dtype=float) - floor) <= 1e-9 * max(1.0, abs(floor))
