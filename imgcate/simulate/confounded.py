"""An observational study confounded by a latent image property (for confounder adjustment)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from imgcate.embeddings import Embeddings
from imgcate.errors import InputError
from imgcate.simulate.result import ConfoundedTruth, SimulatedTrial
from imgcate.units import read_units
from imgcate.validation import rng_from_seed


def simulate_confounded(
    seed: int,
    n_units: int = 1000,
    ate: float = 2.0,
    *,
    n_features: int = 16,
    strength: float = 4.0,
    noise: float = 0.02,
) -> SimulatedTrial:
    """Simulate an observational study confounded by a latent image property.

    Each unit has a latent "built-up share" ``s ~ Uniform(0, 1)``, seen only through image
    features that are noisy nonlinear functions of ``s`` (as an embedding would be). Treatment
    targets built-up places, ``t ~ Bernoulli(sigmoid(strength * (s - 0.5)))``, and the outcome
    rises with ``s``: ``y = 4 s + 0.5 sin(2 pi s) + ate * t + Normal(0, 1)``. Ignorability holds
    given ``s`` and approximately given the features (their noise leaves slight residual
    confounding).

    Parameters
    ----------
    seed : int
        Random seed.
    n_units : int
        Number of units.
    ate : float
        The true (constant) treatment effect.
    n_features : int
        Number of image features (at least 4).
    strength : float
        Slope of the treatment logit in ``s``; larger means worse overlap.
    noise : float
        Standard deviation of the feature noise.

    Returns
    -------
    SimulatedTrial
        ``trial`` (id, lon, lat at random, treatment, outcome; each unit its own image),
        ``embeddings`` (the image features, one row per unit; ``sim.features`` in unit order)
        and ``truth`` (a :class:`ConfoundedTruth`: ``latent``, true ``propensity``, ``mu0`` and
        ``mu1``, ``tau_unit`` = ``ate`` for every unit).

    Examples
    --------
    >>> sim = simulate_confounded(seed=1, n_units=200)
    >>> sim.features.shape
    (200, 16)
    """
    if n_features < 4:
        raise InputError(f"n_features={n_features} must be at least 4.")
    rng = rng_from_seed(seed)
    s = rng.uniform(size=n_units)
    slopes = rng.uniform(2.0, 8.0, size=n_features) * rng.choice([-1, 1], size=n_features)
    centres = rng.uniform(0.2, 0.8, size=n_features)
    basis = np.tanh(slopes * (s[:, None] - centres))
    basis[:, 0] = s**2
    basis[:, 1] = np.sin(2 * np.pi * s)
    basis[:, 2] = np.cos(np.pi * s)
    features = basis + noise * rng.normal(size=basis.shape)
    e = 1 / (1 + np.exp(-strength * (s - 0.5)))
    t = rng.binomial(1, e)
    mu0 = 4 * s + 0.5 * np.sin(2 * np.pi * s)
    mu1 = mu0 + ate
    y = np.where(t == 1, mu1, mu0) + rng.normal(size=n_units)
    # drawn last, so that the draws above are those of the simulator before it had locations
    lon, lat = rng.uniform(30.0, 35.0, n_units), rng.uniform(-1.0, 4.0, n_units)
    table = pd.DataFrame(
        {"id": np.arange(n_units), "lon": lon, "lat": lat, "treatment": t, "outcome": y}
    )
    truth = ConfoundedTruth(
        tau_unit=np.full(n_units, float(ate)),
        cate=np.full(n_units, float(ate)),
        propensity=e,
        mu0=mu0,
        latent=s,
        mu1=mu1,
    )
    return SimulatedTrial(
        trial=read_units(table),
        embeddings=Embeddings(values=features, image_ids=np.arange(n_units)),
        truth=truth,
    )
