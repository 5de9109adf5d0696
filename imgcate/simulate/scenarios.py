"""Trials the effect model was not built from: other effect shapes, baselines and noise.

The mixture simulator (:func:`~imgcate.simulate.simulate_trial`) draws data from the model
itself; these scenarios do not. Each unit's image embedding is a correlated Gaussian (or, for
``effect="clusters"``, a Gaussian mixture) seen through a random linear map, and the effect
and the untreated outcome are functions of directions in the latent space:

- ``effect``: ``"constant"`` (no heterogeneity), ``"linear"``, ``"tanh"`` (a smooth step),
  ``"quadratic"``, ``"clusters"`` (two latent clusters, effects 0 and 2);
- ``baseline`` (the untreated outcome's dependence on the image): ``"linear"``,
  ``"quadratic"``, ``"sine"``, ``"interaction"`` (a product of two directions);
- ``noise``: ``"gaussian"``, ``"skewed"`` (centred gamma), ``"heavy"`` (Student-t, 3 df),
  ``"zero_inflated"`` (a share of exact zeros and a gamma-distributed positive part whose
  mean carries the baseline and the effect; the effect on the mean is still ``effect``),
  ``"zero_lognormal"`` (the same with a log-normal positive part, log-sd 0.8: not the
  family of imgcate's hurdle likelihood), ``"heteroskedastic"`` (Gaussian, its sd growing
  with the untreated outcome's direction from 0.29 to 2.1 over +-2 sd, the same in both arms,
  unit variance on average; with ``effect="clusters"`` the two clusters' centres lie at
  different points of that direction, and so differ in their noise too).

The truth knows each unit's CATE given its image and can draw new units from the same
population (:meth:`ScenarioTruth.new_embeddings`, :meth:`ScenarioTruth.cate_of`), to check
intervals for images the trial did not have.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import softmax

from imgcate.embeddings import Embeddings
from imgcate.errors import InputError
from imgcate.simulate.result import SimulatedTrial, Truth
from imgcate.units import read_units
from imgcate.validation import check_choice, rng_from_seed

EFFECTS = ("constant", "linear", "tanh", "quadratic", "clusters")
BASELINES = ("linear", "quadratic", "sine", "interaction")
NOISES = ("gaussian", "skewed", "heavy", "zero_inflated", "zero_lognormal", "heteroskedastic")

#: Noises with a mass of exact zeros (fitted with the hurdle likelihood).
ZERO_NOISES = ("zero_inflated", "zero_lognormal")

#: Log-sd of the positive part of ``noise="zero_lognormal"``.
LOGNORMAL_SD = 0.8

#: Cluster effects of ``effect="clusters"`` and the distance between the latent centres.
CLUSTER_TAU = (0.0, 2.0)
CLUSTER_SEPARATION = 4.0


@dataclass(frozen=True)
class ScenarioTruth(Truth):
    """Truth of :func:`simulate_scenario`.

    Attributes
    ----------
    effect, baseline, noise : str
        The scenario.
    mixing : numpy.ndarray
        Shape (feature, feature): embedding = latent @ mixing.
    centers : numpy.ndarray
        Shape (cluster, feature): latent cluster centres (``effect="clusters"``), else empty.
    floor_share : float
        Share of outcomes at 0 (``noise="zero_inflated"``, ``"zero_lognormal"``), else 0.
    """

    effect: str
    baseline: str
    noise: str
    mixing: np.ndarray
    centers: np.ndarray
    floor_share: float

    def latent_of(self, embedding: np.ndarray) -> np.ndarray:
        """Latent coordinates of embeddings (n, feature)."""
        return np.asarray(embedding, dtype=float) @ np.linalg.inv(self.mixing)

    def cate_of(self, embedding: np.ndarray) -> np.ndarray:
        """True CATE (outcome's mean scale) of embeddings, shape (n,)."""
        return _effect(self.effect, self.latent_of(embedding), self.centers)

    def new_embeddings(self, n: int, seed: int) -> np.ndarray:
        """``n`` new embeddings drawn from the trial's population, (n, feature)."""
        rng = rng_from_seed(seed)
        return _latent(rng, n, self.mixing.shape[0], self.centers) @ self.mixing


def _latent(rng: np.random.Generator, n: int, d: int, centers: np.ndarray) -> np.ndarray:
    z = rng.normal(size=(n, d))
    if len(centers):
        z = z + centers[rng.integers(0, len(centers), n)]
    return z


def _effect(kind: str, z: np.ndarray, centers: np.ndarray) -> np.ndarray:
    s = z[:, 0]
    if kind == "constant":
        return np.full(len(z), 1.0)
    if kind == "linear":
        return 1.0 + 0.8 * s
    if kind == "tanh":
        return 1.0 + np.tanh(2.0 * s)
    if kind == "quadratic":
        return 0.5 + 0.5 * (s**2 - 1.0)
    logits = z @ centers.T - 0.5 * (centers**2).sum(1)
    return softmax(logits, axis=1) @ np.asarray(CLUSTER_TAU)


def _baseline(kind: str, z: np.ndarray) -> np.ndarray:
    b, c = z[:, 1], z[:, 2 % z.shape[1]]
    if kind == "linear":
        return 0.5 * b
    if kind == "quadratic":
        return 0.5 * b + (b**2 - 1.0)
    if kind == "sine":
        return 0.5 * b + 1.5 * np.sin(2.0 * b)
    return 0.5 * b + b * c


def _centers(rng: np.random.Generator, d: int) -> np.ndarray:
    direction = rng.normal(size=d)
    direction[0] = 0.0  # the latent effect direction stays free for the other scenarios
    direction /= np.linalg.norm(direction)
    half = 0.5 * CLUSTER_SEPARATION * direction
    return np.stack([-half, half])


def _mixing(rng: np.random.Generator, d: int) -> np.ndarray:
    """A random linear map with uneven scales (embedding features are correlated)."""
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return (q * np.exp(rng.uniform(-0.7, 0.7, d))) @ q.T


def simulate_scenario(
    seed: int,
    *,
    effect: str = "linear",
    baseline: str = "linear",
    noise: str = "gaussian",
    n_units: int = 400,
    n_features: int = 4,
    n_covariates: int = 2,
    positive_share: float = 0.35,
) -> SimulatedTrial:
    """Simulate a randomized trial from a scenario the effect model was not built from.

    Parameters
    ----------
    seed : int
        Random seed; the same seed gives the same trial.
    effect : {"constant", "linear", "tanh", "quadratic", "clusters"}
        How the effect depends on the image (see the module docstring).
    baseline : {"linear", "quadratic", "sine", "interaction"}
        How the untreated outcome depends on the image.
    noise : {"gaussian", "skewed", "heavy", "zero_inflated", "zero_lognormal", \
"heteroskedastic"}
        The outcome's noise (unit variance, on average for the last, for all but the
        zero-inflated two).
    n_units, n_features, n_covariates : int
        Units (one image each), embedding features (>= 3), standard-normal covariates.
    positive_share : float
        Share of outcomes above 0 for ``noise="zero_inflated"`` or ``"zero_lognormal"``.

    Returns
    -------
    SimulatedTrial
        ``trial`` (id, lon, lat, treatment, outcome, x0.., image_id), ``embeddings``,
        ``truth`` (a :class:`ScenarioTruth`; ``truth.cate`` is the estimand of the unit CATE).

    Examples
    --------
    >>> sim = simulate_scenario(0, effect="tanh", baseline="quadratic", n_units=100)
    >>> sim.embeddings.values.shape
    (100, 4)
    """
    check_choice("effect", effect, EFFECTS)
    check_choice("baseline", baseline, BASELINES)
    check_choice("noise", noise, NOISES)
    if n_features < 3 or n_units < 10:
        raise InputError("simulate_scenario needs n_features >= 3 and n_units >= 10.")
    if not 0 < positive_share < 1:
        raise InputError(f"positive_share={positive_share} must lie strictly between 0 and 1.")
    rng = rng_from_seed(seed)
    mixing = _mixing(rng, n_features)
    centers = _centers(rng, n_features) if effect == "clusters" else np.zeros((0, n_features))
    z = _latent(rng, n_units, n_features, centers)
    x = rng.normal(size=(n_units, n_covariates))
    beta = np.linspace(0.5, -0.5, n_covariates) if n_covariates else np.zeros(0)
    mu0 = _baseline(baseline, z) + x @ beta
    cate = _effect(effect, z, centers)
    t = np.zeros(n_units, dtype=int)
    t[rng.permutation(n_units)[: n_units // 2]] = 1
    # the noise's log sd grows along the baseline's direction; with clusters, whose centres
    # shift that direction by +-c, E[exp(z_1)] = exp(1/2) cosh(c), divided out so that the
    # variance is 1 on average there too (and clusters differ in their noise)
    shift = float(np.abs(centers[0, 1])) if len(centers) else 0.0
    level = z[:, 1] - np.log(np.cosh(shift))
    y, mu0, floor_share = _outcome(rng, noise, mu0, cate, t, positive_share, level)
    df = pd.DataFrame(
        {
            "id": np.arange(n_units),
            "lon": rng.uniform(30.0, 35.0, n_units),
            "lat": rng.uniform(-1.0, 4.0, n_units),
            "treatment": t,
            "outcome": y,
            "image_id": np.arange(n_units),
        }
    )
    covs = [f"x{j}" for j in range(n_covariates)]
    for j, name in enumerate(covs):
        df[name] = x[:, j]
    truth = ScenarioTruth(
        tau_unit=cate,
        cate=cate,
        propensity=np.full(n_units, 0.5),
        mu0=mu0,
        effect=effect,
        baseline=baseline,
        noise=noise,
        mixing=mixing,
        centers=centers,
        floor_share=floor_share,
    )
    embeddings = Embeddings(values=z @ mixing, image_ids=np.arange(n_units))
    trial = read_units(df, covariates=covs, image_id="image_id")
    return SimulatedTrial(trial=trial, embeddings=embeddings, truth=truth)


def _outcome(rng, noise, mu0, cate, t, positive_share, level):
    """(outcome, untreated mean, share at 0) for the noise kind; ``level`` is the latent
    direction of the baseline, along which ``"heteroskedastic"`` noise grows."""
    n = len(mu0)
    if noise in ZERO_NOISES:
        # positive part: gamma (shape 2) or log-normal with mean m0 + t * cate / p, so that the
        # mean of the outcome, p * (m0 + t * cate / p), moves by exactly cate under treatment
        p = positive_share
        m0 = 4.0 * np.exp(0.25 * (mu0 - mu0.mean()) / (mu0.std() + 1e-12))
        mean = m0 + t * cate / p
        if (mean <= 0.05).any():
            raise InputError(
                "this effect would make the zero-inflated outcome's positive part negative; "
                "choose a larger positive_share or another effect."
            )
        positive = rng.uniform(size=n) < p
        if noise == "zero_inflated":
            size = rng.gamma(2.0, mean / 2.0)
        else:  # log-normal with the same mean: exp(m + s^2 / 2) = mean
            size = mean * np.exp(LOGNORMAL_SD * rng.normal(size=n) - 0.5 * LOGNORMAL_SD**2)
        y = np.where(positive, size, 0.0)
        return y, p * m0, float(1.0 - positive.mean())
    if noise == "gaussian":
        eps = rng.normal(size=n)
    elif noise == "heteroskedastic":  # E[exp(level - 1/2)] = 1 (see simulate_scenario)
        eps = np.exp(0.5 * level - 0.25) * rng.normal(size=n)
    elif noise == "skewed":
        eps = (rng.gamma(2.0, 1.0, n) - 2.0) / np.sqrt(2.0)
    else:
        eps = rng.standard_t(3, n) / np.sqrt(3.0)
    return mu0 + t * cate + eps, mu0, 0.0
