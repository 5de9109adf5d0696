"""SVI's guides: which multivariate normal approximates the posterior, and the full-covariance
one written so that its density is computed without a solve, whose rounding grows with units.

NumPyro's ``AutoMultivariateNormal`` draws θ = μ + L z and scores the draw by solving
L x = θ − μ for z again. In float32, θ − μ loses most of its digits once the posterior's sds
are a thousandth of the locations (a cluster effect's is 0.004 at 10^6 units), and the solve
through an ill-conditioned L amplifies the loss: on minibatches of a 10^5-unit trial (L's
condition number near 2e7 after 1,800 steps, its draws' scores then off by up to 3.8) the
loss jumped to -5e20 and the steps diverged. :class:`FullCovariance`
is the same distribution, scored from the z it was drawn from (NumPyro keeps a transformed
draw's intermediates), so no solve is made.
"""

from __future__ import annotations

from dataclasses import replace

import jax.numpy as jnp
import numpyro.distributions as dist
from numpyro.distributions.transforms import LowerCholeskyAffine
from numpyro.infer.autoguide import (
    AutoLowRankMultivariateNormal,
    AutoMultivariateNormal,
    AutoNormal,
)

from imgcate.config import FitConfig, ModelData
from imgcate.model import latent_size


class FullCovariance(AutoMultivariateNormal):
    """NumPyro's ``AutoMultivariateNormal`` (same parameters, same distribution), its draws
    scored from the standard normals they were made from instead of a triangular solve."""

    def _get_posterior(self):
        normal = super()._get_posterior()  # NumPyro's: its parameters, as a MultivariateNormal
        base = dist.Normal(jnp.zeros(self.latent_dim), 1.0).to_event(1)
        return dist.TransformedDistribution(
            base, LowerCholeskyAffine(normal.loc, normal.scale_tril)
        )


#: SVI's guides by ``FitConfig.svi_guide``.
GUIDES = {
    "full": FullCovariance,
    "lowrank": AutoLowRankMultivariateNormal,
    "normal": AutoNormal,
}

#: ``svi_guide="auto"`` takes the full covariance up to this many parameter values (its
#: Cholesky factor then has half a million entries), a low-rank one above.
FULL_GUIDE_MAX_LATENT = 1_000


def chosen_guide(config: FitConfig, data: ModelData) -> FitConfig:
    """The guide ``svi_guide="auto"`` means for a model.

    Parameters
    ----------
    config : FitConfig
        The fit's settings.
    data : ModelData
        The model's inputs (its size is counted from ``data.spec``).

    Returns
    -------
    FitConfig
        ``config`` with ``svi_guide`` "full" when the model has at most
        :data:`FULL_GUIDE_MAX_LATENT` parameter values, else "lowrank"; ``config`` itself
        for NUTS or a guide named.
    """
    if config.method != "svi" or config.svi_guide != "auto":
        return config
    full = latent_size(data.spec) <= FULL_GUIDE_MAX_LATENT
    return replace(config, svi_guide="full" if full else "lowrank")
