"""Settings and data of a fit: :class:`FitConfig`, :class:`Standardizer`, :class:`ModelData`.

What :mod:`imgcate.inference` fits and :mod:`imgcate.results` reads, in one place, so that
neither imports the other for them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import jax.numpy as jnp
import numpy as np

from imgcate.errors import InputError
from imgcate.model import LIKELIHOODS
from imgcate.units import Trial
from imgcate.validation import check_choice

Method = Literal["nuts", "svi"]


@dataclass(frozen=True)
class FitConfig:
    """Settings of a fit (kept with the result so it can be reproduced).

    Attributes
    ----------
    n_clusters : int
        Number of effect clusters K (1 = no heterogeneity).
    likelihood : {"gaussian", "student_t", "bernoulli"}
        Outcome family.
    method : {"nuts", "svi"}
        Exact MCMC (default) or stochastic variational inference for large trials.
    n_components : int or None
        Whitened principal components of the standardized embedding that the model sees; None
        keeps all of them when the embedding has at most 32 features, else 16.
    num_warmup, num_samples, num_chains : int
        NUTS settings (``chain_method`` "sequential", "vectorized" or "parallel").
    target_accept : float
        NUTS target acceptance probability.
    svi_steps, svi_learning_rate, svi_batch_size, svi_guide, svi_draws :
        SVI settings: optimisation steps, Adam step size, minibatch size over units (None =
        full batch), guide ("lowrank" or "normal") and posterior draws taken from the guide.
    random_effects : bool
        Add stratum / cluster random intercepts when the trial names those columns.
    init_restarts, init_steps : int
        Multi-start initialization: ``init_restarts`` MAP searches (Adam, ``init_steps``
        steps each, run in parallel with ``jax.vmap``) from random points; every chain (or the
        SVI guide) starts near the best one. Mixture posteriors have poor local modes (two
        clusters merged, one empty) that a chain started at random can get stuck in; with
        0 restarts NumPyro's default random initialization is used.
    seed : int
        Random seed of the inference.
    """

    n_clusters: int = 2
    likelihood: str = "gaussian"
    method: str = "nuts"
    n_components: int | None = None
    num_warmup: int = 500
    num_samples: int = 500
    num_chains: int = 4
    chain_method: str = "sequential"
    target_accept: float = 0.85
    svi_steps: int = 5000
    svi_learning_rate: float = 0.01
    svi_batch_size: int | None = None
    svi_guide: str = "lowrank"
    svi_draws: int = 1000
    random_effects: bool = True
    init_restarts: int = 8
    init_steps: int = 500
    seed: int = 0
    progress: bool = False

    def validate(self) -> FitConfig:
        """Check every option, with messages that list the allowed values."""
        check_choice("likelihood", self.likelihood, LIKELIHOODS)
        check_choice("method", self.method, ("nuts", "svi"))
        check_choice("chain_method", self.chain_method, ("sequential", "vectorized", "parallel"))
        check_choice("svi_guide", self.svi_guide, ("lowrank", "normal"))
        if not 1 <= self.n_clusters <= 10:
            raise InputError(f"n_clusters={self.n_clusters} must be between 1 and 10.")
        if self.init_restarts < 0 or self.init_steps < 1:
            raise InputError("init_restarts must be >= 0 and init_steps >= 1.")
        for name in ("num_warmup", "num_samples", "num_chains", "svi_steps", "svi_draws"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be a positive integer.")
        if not 0.5 <= self.target_accept < 1:
            raise InputError("target_accept must be in [0.5, 1).")
        return self


@dataclass(frozen=True)
class Standardizer:
    """Maps raw inputs to the model scale and back; fitted on the trial, reused on new data.

    Attributes
    ----------
    outcome_mean, outcome_sd : float
        Outcome location and scale (0 and 1 for binary outcomes).
    covariate_mean, covariate_sd : ndarray (covariate,)
    embedding_mean, embedding_sd : ndarray (feature_in,)
    projection : ndarray (feature_in, feature)
        Whitening PCA applied after standardizing the embedding (identity when not reduced).
    """

    outcome_mean: float
    outcome_sd: float
    covariate_mean: np.ndarray
    covariate_sd: np.ndarray
    embedding_mean: np.ndarray
    embedding_sd: np.ndarray
    projection: np.ndarray

    @classmethod
    def fitted(
        cls,
        outcome: np.ndarray,
        covariates: np.ndarray,
        embedding: np.ndarray,
        likelihood: str,
        n_components: int | None,
    ) -> Standardizer:
        """Fit on the trial's outcome, covariates and (unit) embeddings."""
        binary = likelihood == "bernoulli"
        e_mean = embedding.mean(0)
        e_sd = _safe_sd(embedding)
        z = (embedding - e_mean) / e_sd
        d_in = embedding.shape[1]
        n_comp = n_components if n_components is not None else (d_in if d_in <= 32 else 16)
        if n_comp > d_in:
            raise InputError(f"n_components={n_comp} exceeds the {d_in} embedding features.")
        # whitened principal components: the per-feature (ARD) membership prior then judges the
        # relevance of each direction of variation, whatever basis the embedding came in
        _, s, vt = np.linalg.svd(z - z.mean(0), full_matrices=False)
        scale = s[:n_comp] / np.sqrt(max(len(z) - 1, 1))
        projection = vt[:n_comp].T / np.where(scale > 1e-12, scale, 1.0)
        return cls(
            outcome_mean=0.0 if binary else float(outcome.mean()),
            outcome_sd=1.0 if binary else float(_safe_sd(outcome[:, None])[0]),
            covariate_mean=covariates.mean(0),
            covariate_sd=_safe_sd(covariates),
            embedding_mean=e_mean,
            embedding_sd=e_sd,
            projection=projection,
        )

    def embedding(self, values: np.ndarray) -> np.ndarray:
        """Raw embeddings (n, feature_in) to the model scale (n, feature)."""
        values = np.asarray(values, dtype=float)
        if values.ndim != 2 or values.shape[1] != len(self.embedding_mean):
            raise InputError(
                f"embeddings have {values.shape[-1]} features but the fit used "
                f"{len(self.embedding_mean)}; embed new images with the fit's encoder."
            )
        return ((values - self.embedding_mean) / self.embedding_sd) @ self.projection

    def covariates(self, values: np.ndarray) -> np.ndarray:
        """Raw covariates to the model scale."""
        return (np.asarray(values, dtype=float) - self.covariate_mean) / self.covariate_sd

    def outcome(self, values: np.ndarray) -> np.ndarray:
        """Raw outcome to the model scale."""
        return (np.asarray(values, dtype=float) - self.outcome_mean) / self.outcome_sd


def _safe_sd(values: np.ndarray) -> np.ndarray:
    sd = values.std(0) if len(values) > 1 else np.ones(values.shape[1])
    return np.where(sd > 1e-12, sd, 1.0)


@dataclass(frozen=True)
class ModelData:
    """Arrays on the model scale, in unit order (what the likelihood sees)."""

    embedding: np.ndarray
    treatment: np.ndarray
    covariates: np.ndarray
    outcome: np.ndarray
    stratum: np.ndarray | None
    group: np.ndarray | None

    def model_kwargs(self, config: FitConfig) -> dict[str, Any]:
        """Keyword arguments of :func:`effect_cluster_model`."""
        return {
            "embedding": jnp.asarray(self.embedding),
            "treatment": jnp.asarray(self.treatment),
            "covariates": jnp.asarray(self.covariates),
            "n_clusters": config.n_clusters,
            "likelihood": config.likelihood,
            "stratum": None if self.stratum is None else jnp.asarray(self.stratum),
            "n_strata": 0 if self.stratum is None else int(self.stratum.max()) + 1,
            "group": None if self.group is None else jnp.asarray(self.group),
            "n_groups": 0 if self.group is None else int(self.group.max()) + 1,
        }


def model_data(
    trial: Trial, unit_embedding: np.ndarray, std: Standardizer, config: FitConfig
) -> ModelData:
    """The trial's arrays on the model scale, checked against the likelihood."""
    y = trial.outcome_array
    if config.likelihood == "bernoulli" and not np.isin(y, (0, 1)).all():
        raise InputError(
            f"likelihood='bernoulli' needs a 0/1 outcome, but column {trial.outcome!r} has "
            "other values; use likelihood='gaussian' or recode the outcome."
        )
    stratum = trial.codes("stratum") if config.random_effects else None
    group = trial.codes("cluster") if config.random_effects else None
    return ModelData(
        embedding=std.embedding(unit_embedding).astype(np.float32),
        treatment=trial.treatment_array,
        covariates=std.covariates(trial.covariate_matrix).astype(np.float32),
        outcome=std.outcome(y).astype(np.float32),
        stratum=None if stratum is None or stratum.max() == 0 else stratum,
        group=None if group is None or group.max() == 0 else group,
    )


def fit_config_dict(config: FitConfig) -> dict:
    """The config as a JSON-serializable dict."""
    return asdict(config)
