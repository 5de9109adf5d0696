"""Anchors of SVI on minibatches (:class:`Anchor`): the whole trial's
log-likelihood and its gradient at the guide's current median, computed a chunk of units at a
time, and the steps at which :func:`imgcate.inference.fit` moves the anchor.

A minibatch's log-likelihood, scaled up to the trial, is an unbiased but noisy estimate of
the trial's. Its noise (that of the units' gradients) made SVI's posterior sds too narrow on
minibatches, the more so the smaller the minibatch's share of the units (benchmarks/CHANGELOG.md,
2026-12-06, evening). Less each unit's log-likelihood linearized at an anchor near the guide,
plus the trial's linearized log-likelihood, the estimate keeps its expectation, and its noise
near the anchor is that of the units' curvature only: a control variate.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

from imgcate.model import ModelInputs, ModelSpec, parameter_sites, unit_log_likelihood


class Anchor(NamedTuple):
    """A control variate for SVI on minibatches (a JAX pytree): a point ``params`` in the
    unconstrained space (site values by name, each site through its support's bijection),
    the whole trial's log-likelihood there (``total``) and its gradient in that space
    (``gradient``, same names and shapes).

    With an anchor, :func:`effect_model` on a minibatch B of n units scores, with u the
    unconstrained parameters and l_i a unit's log-likelihood,

        sum_B (n/|B|) [l_i(u) - l_i(u0) - l_i'(u0) (u - u0)] + sum_all [l_i(u0) + l_i'(u0) (u - u0)]

    instead of ``sum_B (n/|B|) l_i(u)``: the same expectation over minibatches (the whole
    trial's log-likelihood), and at ``u = u0`` the same value and gradient whatever the
    minibatch. Near the anchor the minibatch's noise is then that of the units' curvature,
    not of their gradients. Linearized in the unconstrained space, where the guide is
    Gaussian: in the constrained one a scale's draws are log-normal, and its linear term's
    rare large draws made the loss heavy-tailed.
    """

    params: dict
    total: jnp.ndarray
    gradient: dict


@functools.lru_cache(maxsize=64)
def site_bijections(spec: ModelSpec) -> dict:
    """The parameter sites' bijections from the unconstrained space to their supports.

    Parameters
    ----------
    spec : ModelSpec
        The model's shape.

    Returns
    -------
    dict
        ``biject_to(support)`` of each parameter site, by name: the map NumPyro's guides
        draw through (cached per ``spec``).
    """
    return {name: dist.biject_to(support) for name, (_, support) in parameter_sites(spec).items()}


def site_values(unconstrained: dict, spec: ModelSpec) -> dict:
    """Site values from their unconstrained values.

    Parameters
    ----------
    unconstrained : dict
        Unconstrained values by site name.
    spec : ModelSpec
        The model's shape.

    Returns
    -------
    dict
        Each value through its site's bijection (:func:`site_bijections`).
    """
    bijections = site_bijections(spec)
    return {name: bijections[name](value) for name, value in unconstrained.items()}


def site_unconstrained(values: dict, spec: ModelSpec) -> dict:
    """Unconstrained values of sites, the inverse of :func:`site_values`.

    Parameters
    ----------
    values : dict
        Site values by name.
    spec : ModelSpec
        The model's shape.

    Returns
    -------
    dict
        Each value through its site's inverse bijection (:func:`site_bijections`).
    """
    bijections = site_bijections(spec)
    return {name: bijections[name].inv(value) for name, value in values.items()}


def anchor_step(params: dict, anchor: Anchor, spec: ModelSpec) -> dict:
    """The step from an anchor to a point, in the unconstrained space.

    Parameters
    ----------
    params : dict
        Site values by name.
    anchor : Anchor
        The anchor (its ``params`` unconstrained).
    spec : ModelSpec
        The model's shape.

    Returns
    -------
    dict
        ``params`` unconstrained less the anchor's, by site name.
    """
    unconstrained = site_unconstrained(params, spec)
    return {name: value - anchor.params[name] for name, value in unconstrained.items()}


def anchored_terms(
    params: dict, anchor: Anchor, rows: ModelInputs, observed: jnp.ndarray, spec: ModelSpec
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """What :func:`~imgcate.model.effect_model` adds to a minibatch's score with an anchor.

    Parameters
    ----------
    params : dict
        The draw's site values by name.
    anchor : Anchor
        The anchor.
    rows : ModelInputs
        The minibatch's units.
    observed : array (unit,)
        Their outcome on the model scale.
    spec : ModelSpec
        The model's shape.

    Returns
    -------
    units : array (unit,)
        Minus each unit's log-likelihood linearized at the anchor (for the units' plate,
        which scales it up to the trial).
    trial : array ()
        The whole trial's log-likelihood linearized at the anchor.
    """
    step = anchor_step(params, anchor, spec)
    at_anchor, slope = jax.jvp(
        lambda u: unit_log_likelihood(site_values(u, spec), rows, observed, spec),
        (anchor.params,),
        (step,),
    )
    linear = sum((anchor.gradient[k] * step[k]).sum() for k in step)
    return -(at_anchor + slope), anchor.total + linear


#: Units per chunk of the anchor's gradient pass.
ANCHOR_CHUNK = 16_384
#: Where in the SVI steps the anchor is set (fractions of the steps): every tenth, so that
#: the guide is never far from it; each costs one pass over the units. (Set at the start, a
#: half and three quarters only, the loss's noise before the half was 20-50 times as large.)
#: The steps run in blocks (:data:`imgcate.inference.SVI_BLOCK`): the anchor is set at the
#: first block start at or after each (with the default 5,000 steps, exactly at the tenths).
ANCHOR_AT = tuple(i / 10 for i in range(10))


def anchor_at(params: dict, inputs: ModelInputs, outcome: jnp.ndarray, spec: ModelSpec) -> Anchor:
    """The anchor at the site values ``params``.

    Parameters
    ----------
    params : dict
        One value of every parameter site, by name (e.g. a guide's median).
    inputs : ModelInputs
        The trial's model inputs (every unit).
    outcome : array (unit,)
        The trial's outcome on the model scale.
    spec : ModelSpec
        The model's shape.

    Returns
    -------
    Anchor
        The sites' unconstrained values, the sum of every unit's log-likelihood there and its
        gradient in the unconstrained space, summed over chunks of :data:`ANCHOR_CHUNK` units
        in float64 (stored as float32).

    Notes
    -----
    The trial's arrays are arguments of the compiled gradient, not captured (captured arrays
    become constants copied into the compiled code); every chunk has the same size (the last
    padded, its padding weighted 0), so it compiles once.
    """
    values = {k: jnp.asarray(v) for k, v in params.items()}
    point = {k: jnp.asarray(v) for k, v in site_unconstrained(values, spec).items()}
    n_units = int(outcome.shape[0])
    size = min(ANCHOR_CHUNK, n_units)
    total = 0.0
    gradient = {k: np.zeros(np.shape(v), np.float64) for k, v in point.items()}
    for start in range(0, n_units, size):
        index = np.arange(start, start + size)
        weight = (index < n_units).astype(np.float32)
        index = np.where(index < n_units, index, 0)
        value, part = _chunk_gradient(point, inputs, outcome, jnp.asarray(index), weight, spec)
        total += float(value)
        for k, v in part.items():
            gradient[k] += np.asarray(v, np.float64)
    return Anchor(
        params=point,
        total=jnp.asarray(total, jnp.float32),
        gradient={k: jnp.asarray(v, jnp.float32) for k, v in gradient.items()},
    )


@functools.partial(jax.jit, static_argnames="spec")
def _chunk_gradient(point, inputs, outcome, index, weight, spec):
    rows = inputs.take(index)

    def total(u):  # padding rows (weight 0) left out, whatever their log-likelihood
        each = unit_log_likelihood(site_values(u, spec), rows, outcome[index], spec)
        return jnp.where(weight > 0, each, 0.0).sum()

    return jax.value_and_grad(total)(point)


def anchor_steps(total: int) -> set[int]:
    """The steps at which the anchor is due.

    Parameters
    ----------
    total : int
        The number of SVI steps.

    Returns
    -------
    set of int
        :data:`ANCHOR_AT` of ``total``, rounded down (under 10 steps, several; they fall in
        one block, so the anchor is set once).
    """
    return {int(f * total) for f in ANCHOR_AT}
