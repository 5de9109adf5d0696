"""Simulated trials with known truth: embeddings, latent effect clusters, outcomes.

Embeddings follow a Gaussian mixture with shared covariance, one component per effect cluster,
so the true cluster probability given an embedding is exactly a softmax of a linear function
of it: the effect-cluster model's membership is well specified, and the true conditional
effect ``cate(e) = sum_k P(k | e) tau_k`` is known in closed form.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from scipy.special import expit

from imgcate.embeddings import Embeddings
from imgcate.errors import InputError
from imgcate.simulate.result import MixtureTruth, SimulatedTrial
from imgcate.units import read_units
from imgcate.validation import check_choice, rng_from_seed

Assignment = Literal["randomized", "confounded"]
Likelihood = Literal["gaussian", "student_t", "bernoulli"]

DEFAULT_TAU = {1: (1.0,), 2: (0.0, 2.0), 3: (-1.0, 1.0, 3.0), 4: (-1.0, 0.5, 2.0, 3.5)}


def _centers(rng: np.random.Generator, k: int, d: int, separation: float) -> np.ndarray:
    """K centres at pairwise distance ``separation`` (a regular simplex in a random basis)."""
    if k == 1:
        return np.zeros((1, d))
    if d < k - 1:
        raise InputError(f"n_features={d} must be at least n_clusters - 1 = {k - 1}.")
    simplex = np.eye(k) - 1.0 / k
    simplex /= np.linalg.norm(simplex[0] - simplex[1])
    basis, _ = np.linalg.qr(rng.normal(size=(d, k)))
    return separation * simplex @ basis[:, :k].T


def _unit_images(rng: np.random.Generator, n_units: int, n_images: int) -> np.ndarray:
    """Image of each unit: every image gets a unit (while units last), the rest at random."""
    if n_images >= n_units:
        return rng.choice(n_images, n_units, replace=False)
    extra = rng.integers(0, n_images, n_units - n_images)
    return np.sort(np.concatenate([np.arange(n_images), extra]))


def simulate_trial(
    seed: int,
    n_units: int = 1000,
    n_clusters: int = 2,
    *,
    n_features: int = 16,
    tau: tuple[float, ...] | None = None,
    separation: float = 4.0,
    noise_sd: float = 1.0,
    n_covariates: int = 2,
    n_images: int | None = None,
    n_strata: int = 0,
    stratum_sd: float = 0.5,
    assignment: Assignment = "randomized",
    confounding: float = 1.5,
    likelihood: Likelihood = "gaussian",
    cluster_weights: tuple[float, ...] | None = None,
    outcome_mean: float = 10.0,
) -> SimulatedTrial:
    """Simulate a trial whose effect depends on the image through latent clusters.

    Parameters
    ----------
    seed : int
        Random seed; the same seed gives the same trial.
    n_units, n_clusters : int
        Number of units and of effect clusters K.
    n_features : int
        Embedding dimension.
    tau : tuple of float, optional
        Cluster effects, increasing (default: (0, 2) for K=2, (-1, 1, 3) for K=3).
    separation : float
        Distance between cluster centres in units of the embedding noise sd: the
        signal-to-noise knob of membership (4 gives about 98% correct assignment).
    noise_sd : float
        Outcome noise sd (gaussian / student_t scale), the signal-to-noise knob of effects.
    n_covariates : int
        Standard-normal covariates entering the baseline.
    n_images : int, optional
        Number of distinct images; units are spread over them (households sharing a village
        image). Default: one image per unit.
    n_strata : int
        Randomization blocks (0 = none); treatment is balanced within each, and each has its own
        baseline shift with sd ``stratum_sd``.
    assignment : {"randomized", "confounded"}
        Randomized (p = 0.5) or targeted on the embedding (propensity depends on the
        direction that separates the clusters, strength ``confounding``).
    likelihood : {"gaussian", "student_t", "bernoulli"}
        Outcome family. Bernoulli effects are on the log-odds scale.
    cluster_weights : tuple of float, optional
        Cluster shares (default equal).
    outcome_mean : float
        Baseline level of the outcome (not used for bernoulli).

    Returns
    -------
    SimulatedTrial
        ``trial`` (id, lon, lat, treatment, outcome, x0.., image_id, stratum),
        ``embeddings`` (image, feature), ``truth`` (a :class:`MixtureTruth`).

    Examples
    --------
    >>> sim = simulate_trial(seed=1, n_units=200, n_clusters=2)
    >>> sim.trial.n_units, sim.embeddings.values.shape
    (200, 16)
    """
    check_choice("assignment", assignment, ("randomized", "confounded"))
    check_choice("likelihood", likelihood, ("gaussian", "student_t", "bernoulli"))
    if n_clusters < 1 or n_units < 4:
        raise InputError("simulate_trial needs n_clusters >= 1 and n_units >= 4.")
    tau_c = np.asarray(tau if tau is not None else DEFAULT_TAU.get(n_clusters), dtype=float)
    if tau_c.ndim != 1 or len(tau_c) != n_clusters or np.any(np.diff(tau_c) <= 0):
        raise InputError(f"tau must hold {n_clusters} increasing effects, got {tau}.")
    rng = rng_from_seed(seed)
    weights = (
        np.full(n_clusters, 1.0 / n_clusters)
        if cluster_weights is None
        else (np.asarray(cluster_weights, dtype=float) / np.sum(cluster_weights))
    )
    n_img = n_units if n_images is None else int(n_images)
    centers = _centers(rng, n_clusters, n_features, separation)
    img_cluster = rng.choice(n_clusters, size=n_img, p=weights)
    emb = centers[img_cluster] + rng.normal(size=(n_img, n_features))
    unit_image = _unit_images(rng, n_units, n_img)
    e = emb[unit_image]
    truth_partial = MixtureTruth(
        tau_unit=tau_c[img_cluster[unit_image]],
        cate=np.zeros(0),
        propensity=np.zeros(0),
        mu0=np.zeros(0),
        cluster=img_cluster[unit_image],
        tau_cluster=tau_c,
        cluster_prob=np.zeros(0),
        centers=centers,
        spread=1.0,
        weights=weights,
    )
    prob = truth_partial.cluster_prob_of(e)
    x = rng.normal(size=(n_units, n_covariates))
    beta = np.linspace(0.5, -0.5, n_covariates) if n_covariates else np.zeros(0)
    gamma = rng.normal(scale=0.3 / np.sqrt(n_features), size=n_features)
    base = (0.0 if likelihood == "bernoulli" else outcome_mean) + x @ beta + e @ gamma
    stratum = rng.integers(0, n_strata, n_units) if n_strata else np.zeros(n_units, int)
    if n_strata:
        base = base + rng.normal(scale=stratum_sd, size=n_strata)[stratum]
    if assignment == "randomized":
        propensity = np.full(n_units, 0.5)
        t = np.zeros(n_units, dtype=int)
        for s in np.unique(stratum):
            idx = rng.permutation(np.flatnonzero(stratum == s))
            t[idx[: len(idx) // 2 + rng.integers(0, len(idx) % 2 + 1)]] = 1
    else:
        direction = centers[-1] - centers[0] if n_clusters > 1 else rng.normal(size=n_features)
        score = (e - e.mean(0)) @ direction / (np.linalg.norm(direction) + 1e-12)
        propensity = expit(confounding * score / (score.std() + 1e-12))
        t = rng.binomial(1, propensity)
    tau_u = tau_c[img_cluster[unit_image]]
    lin = base + t * tau_u
    if likelihood == "gaussian":
        y = lin + rng.normal(scale=noise_sd, size=n_units)
    elif likelihood == "student_t":
        y = lin + noise_sd * rng.standard_t(df=3, size=n_units)
    else:
        y = rng.binomial(1, expit(lin)).astype(float)
    lon = rng.uniform(30.0, 35.0, n_img)[unit_image]
    lat = rng.uniform(-1.0, 4.0, n_img)[unit_image]
    df = pd.DataFrame(
        {
            "id": np.arange(n_units),
            "lon": lon,
            "lat": lat,
            "treatment": t,
            "outcome": y,
            "image_id": unit_image,
        }
    )
    covs = [f"x{j}" for j in range(n_covariates)]
    for j, name in enumerate(covs):
        df[name] = x[:, j]
    if n_strata:
        df["stratum"] = stratum
    trial = read_units(
        df, covariates=covs, image_id="image_id", stratum="stratum" if n_strata else None
    )
    truth = MixtureTruth(
        tau_unit=tau_u,
        cate=prob @ tau_c,
        propensity=propensity,
        mu0=base,
        cluster=img_cluster[unit_image],
        tau_cluster=tau_c,
        cluster_prob=prob,
        centers=centers,
        spread=1.0,
        weights=weights,
    )
    embeddings = Embeddings(values=emb, image_ids=np.arange(n_img))
    return SimulatedTrial(trial=trial, embeddings=embeddings, truth=truth)
