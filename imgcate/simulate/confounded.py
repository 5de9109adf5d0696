"""Observational studies confounded by what the images show (for confounder adjustment):
a latent image property seen through noisy features (:func:`simulate_confounded`) and the
built-up share of real chips cut from a synthetic scene (:func:`simulate_scene_confounded`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import special

from imgcate.embeddings import Embeddings
from imgcate.errors import InputError
from imgcate.simulate.result import ConfoundedTruth, SimulatedTrial
from imgcate.simulate.scenes import simulate_scene_trial, synthetic_scene
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
    truth = ConfoundedTruth.constant_effect(ate, e, mu0, s)
    return SimulatedTrial(
        trial=read_units(table),
        embeddings=Embeddings(values=features, image_ids=np.arange(n_units)),
        truth=truth,
    )


def simulate_scene_confounded(
    path: str | Path,
    *,
    seed: int,
    n_units: int = 1000,
    chip_size: int = 32,
    scene_size: int = 512,
    ate: float = 2.0,
    strength: float = 1.0,
    noise_sd: float = 1.0,
) -> SimulatedTrial:
    """Simulate an observational study targeted on what each unit's chip shows: its built-up share.

    Writes a :func:`~imgcate.simulate.synthetic_scene` at ``path``, places ``n_units`` units
    on it (:func:`~imgcate.simulate.simulate_scene_trial` with ``margin=0``) and, with ``z`` the
    standardized built-up share of each unit's ``chip_size`` chip (built and road pixels),
    draws ``t ~ Bernoulli(sigmoid(strength * z))`` and
    ``y = 1 + 2 z + ate * t + Normal(0, noise_sd)``. Only the image shows ``z``; the
    covariate ``x1`` the trial carries is unrelated to treatment and outcome.

    Parameters
    ----------
    path : path
        The scene GeoTIFF to write (with its land-cover sidecar).
    seed : int
        Random seed (scene, locations, treatment, outcome).
    n_units : int
        Number of units.
    chip_size : int
        Chip size in pixels the confounder is computed on (cut the same chips to adjust).
    scene_size : int
        Width and height of the scene in pixels.
    ate : float
        The true (constant) treatment effect.
    strength : float
        Slope of the treatment logit in ``z``.
    noise_sd : float
        Outcome noise standard deviation.

    Returns
    -------
    SimulatedTrial
        ``trial`` (id, treatment, outcome, x1; points in lon/lat), ``embeddings`` None (cut
        ``extract_chips(sim.trial, sim.scene, chip_size)`` and embed them), ``truth`` (a
        :class:`ConfoundedTruth` with ``latent`` the built-up share), ``scene``, ``land_cover``.

    Examples
    --------
    >>> sim = simulate_scene_confounded(tmp_path / "scene.tif", seed=0)  # doctest: +SKIP
    """
    rng = rng_from_seed(seed)
    synthetic_scene(path, seed=int(rng.integers(2**31 - 1)), width=scene_size, height=scene_size)
    base = simulate_scene_trial(
        path, seed=int(rng.integers(2**31 - 1)), n_units=n_units, chip_size=chip_size, margin=0.0
    )
    share = base.truth.share
    z = (share - share.mean()) / share.std()
    propensity = special.expit(strength * z)
    t = (rng.random(n_units) < propensity).astype(int)
    mu0 = 1.0 + 2.0 * z
    y = mu0 + ate * t + noise_sd * rng.standard_normal(n_units)
    trial = replace(base.trial, data=base.trial.data.assign(treatment=t, outcome=y))
    truth = ConfoundedTruth.constant_effect(ate, propensity, mu0, share)
    return SimulatedTrial(trial, None, truth, scene=Path(path), land_cover=base.land_cover)
