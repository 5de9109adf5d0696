"""Settings and data of a fit: :class:`FitConfig`, :class:`Standardizer`, :class:`ModelData`.

What :mod:`imgcate.inference` fits and :mod:`imgcate.results` reads, in one place, so that
neither imports the other for them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Literal

import jax.numpy as jnp
import numpy as np

from imgcate.errors import InputError
from imgcate.kernels import basis_in_chunks, squared_exponential
from imgcate.likelihoods import LIKELIHOODS, at_the_floor, outcome_scale
from imgcate.methods import default_restarts
from imgcate.model import DEVIATIONS, ModelInputs, ModelSpec
from imgcate.moments import (
    GatheredRows,
    affine_rows,
    column_moments,
    column_sd,
    is_large,
    leading_eigenvectors,
    nonzero_sd,
)
from imgcate.targeting import targeting_direction
from imgcate.units import Trial
from imgcate.validation import KINDS, check_choice, of_kind

Method = Literal["nuts", "svi"]


@dataclass(frozen=True)
class FitConfig:
    """Settings of a fit (kept with the result so it can be reproduced).

    Attributes
    ----------
    n_clusters : int
        Number of effect clusters K (1 = no cluster structure).
    likelihood : {"gaussian", "student_t", "bernoulli", "censored", "hurdle"}
        Outcome family (see :mod:`imgcate.likelihoods`; docs/model.md says when to use which).
    deviation : {"smooth", "linear", "none"}
        The unit effect's continuous part besides the clusters: "smooth" (default) a linear
        term plus a Gaussian process in the embedding, both shrunk towards 0;
        "linear" the linear term only; "none" clusters alone (with K = 1: a constant effect,
        the model without heterogeneity).
    equal_effects : bool
        Constrain the K clusters' effects to be equal (with ``deviation="none"``: a constant
        effect) while the clusters still shape the baseline. :func:`imgcate.compare_clusters`
        fits it as the null of no heterogeneity, so that a baseline the clusters describe
        better is not taken for heterogeneity of the effect.
    baseline_clusters : {"own", "shared"}
        The memberships of the baseline's cluster term (``mu`` in docs/model.md): "own"
        (default) a membership of its own (K clusters, the same prior as the effect's), so
        that clusters that describe a baseline that bends do not take the effect clusters'
        memberships; "shared" those of the effect's clusters (one set of memberships, fewer
        parameters; the default before 2026-12-05). Without effect clusters (``n_clusters=1``, or
        ``equal_effects``) there is nothing to separate and it changes nothing. Fits saved
        before the option existed load as "shared". Measured in docs/model.md,
        "Calibration".
    noise_scale : {"arm", "image"}
        The outcome's noise sd (families with one): "arm" (default) one per arm; "image" each
        arm's times ``exp(z w)``, log-linear in the embedding, for an outcome whose spread
        varies from image to image (earnings, consumption: docs/model.md, "Noise that
        varies with the image"). Not for the bernoulli likelihood.
    n_basis : int or None
        Functions of the basis of the baseline's (and the smooth deviation's) Gaussian
        process in the embedding: the kernel's leading eigenfunctions over the trial
        (:func:`kernel_basis`); 0 leaves both linear in the embedding. None: 160 for NUTS,
        48 for SVI (whose guide did not find the cluster effects with 160 at n = 2,000:
        error 0.97 against 0.17).
    floor : float or None
        The outcome's floor for ``likelihood="hurdle"`` (the value of the zeros) and
        ``"censored"`` (the censoring point); None takes the smallest observed outcome.
    method : {"nuts", "svi"}
        Exact MCMC (default) or stochastic variational inference for large trials.
    n_components : int or None
        Whitened principal components of the standardized embedding that the model sees; None
        keeps all of them when the embedding has at most 32 features, else 16.
    num_warmup, num_samples, num_chains : int
        NUTS settings: warm-up and kept iterations per chain, and chains.
    chain_method : {"parallel", "sequential"}
        Chains side by side on JAX's CPU devices (imgcate asks for one per core; see
        :mod:`imgcate.devices`) or one after another on the first; the draws are the same.
    target_accept : float
        NUTS target acceptance probability.
    svi_steps, svi_learning_rate, svi_batch_size, svi_guide, svi_draws :
        SVI settings: optimisation steps, Adam step size (the first half; then decayed to a
        hundredth), minibatch size over units (None: every unit up to 10,000 units, minibatches
        of 1,000 above), guide and posterior draws taken from it. The guide is a multivariate
        normal with a full covariance ("full"), a low-rank-plus-diagonal one ("lowrank") or
        a diagonal one ("normal"); "auto" (default) takes "full" when the model has at most
        :data:`~imgcate.guides.FULL_GUIDE_MAX_LATENT` (1,000) parameter values, else
        "lowrank" (``result.config.svi_guide`` records which).
    random_effects : bool
        Add stratum / cluster random intercepts when the trial names those columns.
    init_restarts : int or None
        Multi-start initialization: ``init_restarts`` MAP searches (Adam, ``init_steps``
        steps each, run in parallel with ``jax.vmap``) from random points; chain c starts at
        the c-th best of those within 10 of the best (see :func:`imgcate.chains.chain_starts`),
        so chains that settle in different modes show in R-hat. None (the default):
        :func:`default_restarts`, 8 up to two clusters and for SVI, 32 for NUTS with three
        clusters or more; ``result.config`` records the number used. With 0 each
        chain starts at random (uniform in (-2, 2) unconstrained, NumPyro's default). SVI
        screens 4 x ``init_restarts`` searches on 2,000 random units and goes on with the
        best half of ``init_restarts`` over 20,000 (:func:`imgcate.chains.svi_start`); with
        0 its guide starts at the prior median.
    init_steps : int
        Adam steps of each MAP search.
    restart_chains : bool
        Whether a NUTS chain that ends warm-up clearly below the best settled chain's log
        density goes on from that chain's state (:func:`imgcate.diagnostics.lagging_chains`;
        recorded in ``sample_stats.attrs`` and said in ``summary()``), whatever
        ``init_restarts`` is. False keeps every chain where its warm-up left it.
    seed : int
        Random seed of the inference and of the basis's landmark units.
    progress : bool
        Show progress bars.
    """

    n_clusters: int = 2
    likelihood: str = "gaussian"
    deviation: str = "smooth"
    equal_effects: bool = False
    baseline_clusters: str = "own"
    noise_scale: str = "arm"
    n_basis: int | None = None
    floor: float | None = None
    method: str = "nuts"
    n_components: int | None = None
    num_warmup: int = 500
    num_samples: int = 500
    num_chains: int = 4
    chain_method: str = "parallel"
    target_accept: float = 0.85
    svi_steps: int = 5000
    svi_learning_rate: float = 0.01
    svi_batch_size: int | None = None
    svi_guide: str = "auto"
    svi_draws: int = 1000
    random_effects: bool = True
    init_restarts: int | None = None
    init_steps: int = 500
    restart_chains: bool = True
    seed: int = 0
    progress: bool = False

    @property
    def label(self) -> str:
        """The model's name in displays: ``K=2``, or the constant-effect model's."""
        if self.equal_effects:
            return f"constant effect (equal effects, K={self.n_clusters} baseline clusters)"
        if self.n_clusters > 1 and self.baseline_clusters == "shared":
            return f"K={self.n_clusters}, the baseline's clusters shared with the effect's"
        return f"K={self.n_clusters}"

    @property
    def effect_clusters(self) -> bool:
        """Whether the effect has clusters whose effects differ (not K = 1, not the
        constant-effect model's clusters of the baseline alone)."""
        return self.n_clusters > 1 and not self.equal_effects

    @property
    def likelihood_label(self) -> str:
        """The likelihood's name in displays, the hurdle's positive part named, and a noise
        sd that varies with the image (``noise_scale="image"``) said."""
        label = "hurdle (gamma positive part)" if self.likelihood == "hurdle" else self.likelihood
        return label + (
            ", noise scale varying with the image" if self.noise_scale == "image" else ""
        )

    @property
    def method_label(self) -> str:
        """The inference method in displays, SVI's guide named: ``svi (full guide)``."""
        return f"svi ({self.svi_guide} guide)" if self.method == "svi" else self.method

    @property
    def minibatch_label(self) -> str:
        """`` on minibatches of 1,000 units`` for SVI on minibatches (displays), else ``""``."""
        return f" on minibatches of {self.svi_batch_size:,} units" if self.svi_batch_size else ""

    @property
    def restarts(self) -> int:
        """The MAP searches the fit runs: ``init_restarts``, or :func:`default_restarts`."""
        if self.init_restarts is not None:
            return self.init_restarts
        return default_restarts(self.n_clusters, self.method)

    @property
    def basis_size(self) -> int:
        """``n_basis``, or the method's default (:data:`DEFAULT_BASIS`) when it is None."""
        return DEFAULT_BASIS[self.method] if self.n_basis is None else self.n_basis

    def validate(self) -> FitConfig:
        """Check every option, with messages that list the allowed values."""
        self._check_types()
        check_choice("likelihood", self.likelihood, LIKELIHOODS)
        check_choice("deviation", self.deviation, DEVIATIONS)
        check_choice("baseline_clusters", self.baseline_clusters, ("own", "shared"))
        check_choice("noise_scale", self.noise_scale, ("arm", "image"))
        if self.noise_scale == "image" and self.likelihood == "bernoulli":
            raise InputError(
                "noise_scale='image' needs a likelihood with a noise scale; the bernoulli "
                "likelihood has none: leave noise_scale at 'arm'."
            )
        check_choice("method", self.method, ("nuts", "svi"))
        check_choice("chain_method", self.chain_method, ("parallel", "sequential"))
        check_choice("svi_guide", self.svi_guide, ("auto", "full", "lowrank", "normal"))
        if not 1 <= self.n_clusters <= 10:
            raise InputError(f"n_clusters={self.n_clusters} must be between 1 and 10.")
        if self.restarts < 0:
            raise InputError(f"init_restarts={self.init_restarts} must be >= 0 (0: random starts).")
        if self.init_steps < 1:
            raise InputError(f"init_steps={self.init_steps} must be >= 1.")
        if self.n_basis is not None and self.n_basis < 0:
            raise InputError(f"n_basis={self.n_basis} must be >= 0 (0: a linear baseline).")
        for name in ("num_warmup", "num_samples", "num_chains", "svi_steps", "svi_draws"):
            if getattr(self, name) < 1:
                raise InputError(f"{name}={getattr(self, name)} must be a positive integer.")
        if not 0.5 <= self.target_accept < 1:
            raise InputError(
                f"target_accept={self.target_accept} must be in [0.5, 1), e.g. target_accept=0.95."
            )
        if self.svi_batch_size is not None and self.svi_batch_size < 1:
            raise InputError(
                f"svi_batch_size={self.svi_batch_size} must be a positive number of units, or "
                "None (every unit at each step up to 10,000 units, minibatches of 1,000 above)."
            )
        if not self.svi_learning_rate > 0:
            raise InputError(
                f"svi_learning_rate={self.svi_learning_rate} must be positive (default 0.01; "
                "lower it if SVI diverges)."
            )
        if self.floor is not None and self.likelihood not in ("hurdle", "censored"):
            raise InputError(
                f"floor={self.floor} applies to likelihood='hurdle' or 'censored' only, not "
                f"{self.likelihood!r}; drop it or choose one of those."
            )
        return self

    def _check_types(self) -> None:
        """Each option of the type its annotation names (``n_basis="32"`` would otherwise
        fail deep inside a comparison or in JAX)."""
        for option in fields(self):
            value = getattr(self, option.name)
            kind, _, optional = option.type.partition(" | ")
            if value is None and optional == "None":
                continue
            if not of_kind(value, kind):
                example = option.default if option.default is not None else _EXAMPLES[kind]
                raise InputError(
                    f"{option.name}={value!r} must be {KINDS[kind][1]}"
                    f"{' or None' if optional else ''}, e.g. {option.name}={example!r}."
                )


#: An example of each kind of :class:`FitConfig` option (:data:`imgcate.validation.KINDS`).
_EXAMPLES = {"int": 32, "float": 0.0, "bool": True, "str": "..."}


#: Default basis functions of the Gaussian processes, by inference method.
DEFAULT_BASIS = {"nuts": 160, "svi": 48}

#: ``method="auto"`` fits trials of up to this many units with NUTS, larger ones with SVI.
#: NUTS's time grows at least linearly in the units (the default model took 642 s at 10,000
#: units on two cores, seed 0's trial, 5-7 times its 2,000-unit time; docs/benchmarks.md),
#: SVI's linearly.
AUTO_NUTS_MAX_UNITS = 10_000


def choose_method(method: str, n_units: int) -> str:
    """The inference method a fit uses: ``method`` itself, or for ``"auto"`` NUTS up to
    :data:`AUTO_NUTS_MAX_UNITS` units and SVI above."""
    check_choice("method", method, ("nuts", "svi", "auto"))
    if method != "auto":
        return method
    return "nuts" if n_units <= AUTO_NUTS_MAX_UNITS else "svi"


@dataclass(frozen=True)
class Standardizer:
    """Maps raw inputs to the model scale and back; fitted on the trial, reused on new data.

    Attributes
    ----------
    outcome_mean, outcome_sd : float
        The model sees ``(y - outcome_mean) / outcome_sd``: mean and sd of the outcome; 0 and
        1 for bernoulli; for the hurdle the floor and the geometric mean of the positive
        distances from it. A difference of means on the model scale times ``outcome_sd`` is
        on the outcome's original scale.
    outcome_floor : float
        The floor (hurdle, censored) on the original scale; NaN for other likelihoods.
    covariate_mean, covariate_sd : ndarray (covariate,)
    embedding_mean, embedding_sd : ndarray (feature_in,)
    projection : ndarray (feature_in, feature)
        Whitening PCA applied after standardizing the embedding.
    basis_landmarks, basis_transform, basis_coef : ndarray (landmark, feature),
        (landmark, basis), (feature+1, basis)
        The basis of the model's Gaussian-process terms (:func:`kernel_basis`,
        :func:`imgcate.kernels.basis_features`).
    """

    outcome_mean: float
    outcome_sd: float
    outcome_floor: float
    covariate_mean: np.ndarray
    covariate_sd: np.ndarray
    embedding_mean: np.ndarray
    embedding_sd: np.ndarray
    projection: np.ndarray
    basis_landmarks: np.ndarray
    basis_transform: np.ndarray
    basis_coef: np.ndarray

    @classmethod
    def fitted(
        cls,
        outcome: np.ndarray,
        covariates: np.ndarray,
        embedding: np.ndarray | GatheredRows,
        config: FitConfig,
        outcome_name: str = "outcome",
    ) -> Standardizer:
        """Fit on the trial's outcome, covariates and (unit) embeddings."""
        d_in = embedding.shape[1]
        n_comp = config.n_components
        n_comp = n_comp if n_comp is not None else (d_in if d_in <= 32 else 16)
        if n_comp > d_in:
            raise InputError(f"n_components={n_comp} exceeds the {d_in} embedding features.")
        # whitened principal components: the per-feature (ARD) priors then judge the relevance
        # of each direction of variation, whatever basis the embedding came in
        if is_large(embedding) and d_in <= len(embedding):  # nothing (unit, feature) held
            e_mean, e_sd, projection = _whitening_from_moments(embedding, n_comp)
            z = affine_rows(embedding, e_mean, e_sd, projection)
        else:
            e_mean = embedding.mean(0)
            e_sd = column_sd(embedding)
            z = embedding - e_mean
            z /= e_sd
            u, s, vt = np.linalg.svd(z - z.mean(0), full_matrices=False)
            del u  # (unit, component), not needed
            scale = s[:n_comp] / np.sqrt(max(len(z) - 1, 1))
            projection = vt[:n_comp].T / np.where(_has_variance(scale), scale, 1.0)
            z = z @ projection
        landmarks, transform, coef = kernel_basis(z, config.basis_size, config.seed)
        location, spread, floor = outcome_scale(outcome, config, outcome_name)
        return cls(
            outcome_mean=location,
            outcome_sd=spread,
            outcome_floor=floor,
            covariate_mean=covariates.mean(0),
            covariate_sd=column_sd(covariates),
            embedding_mean=e_mean,
            embedding_sd=e_sd,
            projection=projection,
            basis_landmarks=landmarks,
            basis_transform=transform,
            basis_coef=coef,
        )

    def embedding(self, values: np.ndarray | GatheredRows) -> np.ndarray:
        """Raw embeddings (n, feature_in) to the model scale (n, feature)."""
        if not isinstance(values, GatheredRows):
            values = np.asarray(values, dtype=float)
        if values.ndim != 2 or values.shape[1] != len(self.embedding_mean):
            raise InputError(
                f"embeddings have {values.shape[-1]} features but the fit used "
                f"{len(self.embedding_mean)}; embed new images with the fit's encoder."
            )
        if is_large(values):  # a chunk of rows at a time: no (n, feature_in) temporary
            return affine_rows(values, self.embedding_mean, self.embedding_sd, self.projection)
        values = np.asarray(values, dtype=float)
        return ((values - self.embedding_mean) / self.embedding_sd) @ self.projection

    @property
    def basis_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(landmarks, transform, coef) for :func:`imgcate.kernels.basis_features`."""
        return self.basis_landmarks, self.basis_transform, self.basis_coef

    @property
    def n_basis(self) -> int:
        """Functions in the Gaussian-process basis (0: no Gaussian-process terms)."""
        return self.basis_coef.shape[1]

    def basis(self, embedding: np.ndarray, chunk: int = 16_384) -> np.ndarray:
        """Gaussian-process basis (n, basis) of model-scale embeddings, ``chunk`` rows at a
        time (the kernel against the landmarks is chunk x landmark floats)."""
        arrays = [jnp.asarray(a, jnp.float32) for a in self.basis_arrays]
        return basis_in_chunks(embedding, arrays, chunk)

    def covariates(self, values: np.ndarray) -> np.ndarray:
        """Raw covariates to the model scale."""
        return (np.asarray(values, dtype=float) - self.covariate_mean) / self.covariate_sd

    def outcome(self, values: np.ndarray) -> np.ndarray:
        """Raw outcome to the model scale."""
        return (np.asarray(values, dtype=float) - self.outcome_mean) / self.outcome_sd

    def floor_on_model_scale(self) -> float:
        """The floor in model units (0 when there is none)."""
        if np.isnan(self.outcome_floor):
            return 0.0
        return float((self.outcome_floor - self.outcome_mean) / self.outcome_sd)


#: Trial units the kernel basis is built on (a random subset of larger trials); each new
#: image's basis costs this many kernel evaluations.
BASIS_LANDMARKS = 400

#: Units whose kernel features are formed at once when the basis is built (memory: this x
#: landmarks floats; 100 MB).
BASIS_CHUNK = 32_768

#: Eigenfunctions whose eigenvalue is below this share of the largest are left out.
EIGEN_FLOOR = 1e-4


def kernel_basis(
    z: np.ndarray, n_basis: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Landmarks, transform and the least-squares map from ``[1, z]`` of a Gaussian-process
    basis of ``n_basis`` functions on the whitened embedding ``z`` (unit, feature).

    The kernel is squared-exponential with lengthscale ``sqrt(feature)`` (two random units'
    kernel value about exp(-1)). The basis is the kernel's leading eigenfunctions over the
    trial's units (Nystrom on up to :data:`BASIS_LANDMARKS` of them, then the principal
    components of those features over every unit): of all bases of that width, the one whose
    Gaussian process is closest to the exact one on the trial. Random Fourier features, used
    before, need several times more functions for the same accuracy with many features (a
    quadratic along one direction of 16: error 1.40 with 48 random features against 0.89 with
    160 eigenfunctions and 0.88 for the exact GP). The functions are made orthogonal to an
    intercept and the linear terms over the trial's units (``coef``), so the Gaussian-process
    terms hold only what those cannot. Fewer functions than ``n_basis`` when the trial has
    fewer units or the kernel fewer eigenvalues above :data:`EIGEN_FLOOR` of the largest
    (about 80 with four components).
    """
    n, d = z.shape
    empty = (np.zeros((0, d)), np.zeros((0, 0)), np.zeros((d + 1, 0)))
    if not n_basis or n < 2:
        return empty
    rng = np.random.default_rng([seed, 20261203])
    landmarks = z[np.sort(rng.choice(n, min(n, BASIS_LANDMARKS), replace=False))]

    # functions below 1e-4 of the leading eigenvalue carry next to nothing and would amplify
    # float32 rounding of the kernel by up to 1 / sqrt(their eigenvalue)
    values, vectors = np.linalg.eigh(squared_exponential(landmarks, landmarks, np))
    keep = values > EIGEN_FLOOR * values.max()
    transform = vectors[:, keep] / np.sqrt(values[keep])  # Nystrom features of the landmarks
    # F'F of the features F over every unit, and [1, z]'F and [1, z]'[1, z] for their
    # least-squares fit on the linear terms, summed over chunks of units (F is n x landmarks)
    gram, cross, design = 0.0, 0.0, 0.0
    for start in range(0, n, BASIS_CHUNK):
        rows = z[start : start + BASIS_CHUNK]
        features = squared_exponential(rows, landmarks, np) @ transform
        linear = np.column_stack([np.ones(len(rows)), rows])
        gram = gram + features.T @ features
        cross = cross + linear.T @ features
        design = design + linear.T @ linear
    values, vectors = np.linalg.eigh(gram / n)
    order = np.argsort(values)[::-1]
    order = order[values[order] > EIGEN_FLOOR * values[order[0]]][:n_basis]
    transform = transform @ vectors[:, order]
    coef = np.linalg.lstsq(design, cross @ vectors[:, order], rcond=None)[0]
    return landmarks, transform, coef


def _whitening_from_moments(
    embedding: np.ndarray, n_comp: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, sd and whitening projection of a large embedding from its columns' moments
    (:mod:`imgcate.moments`): the eigenvectors of the standardized features' covariance are
    the right singular vectors the SVD gives smaller ones (each component's sign fixed by its
    largest loading instead); components with no variance beyond rounding keep scale 1
    (:func:`_has_variance`, as in the SVD's path)."""
    moments = column_moments(embedding)
    n = moments.n
    sd = nonzero_sd(moments.sd) if n > 1 else np.ones_like(moments.sd)
    values, vectors = leading_eigenvectors(moments.cov / np.outer(sd, sd))
    values = values[:n_comp] * n / max(n - 1, 1)  # variance of each component (divisor n - 1)
    scale = np.sqrt(np.clip(values, 0.0, None))
    return moments.mean, sd, vectors[:, :n_comp] / np.where(_has_variance(scale), scale, 1.0)


def _has_variance(scale: np.ndarray) -> np.ndarray:
    """Which whitened components have a variance of their own: an sd above 1e-5 of the
    leading one's (below it, rounding: a feature that is a float32 sum of others). The others
    keep scale 1 (values at rounding's size), not rounding noise blown up to unit variance."""
    return scale > 1e-5 * max(float(scale[0]) if len(scale) else 0.0, 1e-300)


@dataclass(frozen=True)
class ModelData:
    """What the likelihood sees: inputs on the model scale, the outcome, the model's shape."""

    inputs: ModelInputs
    outcome: np.ndarray
    spec: ModelSpec

    def take(self, rows: np.ndarray) -> ModelData:
        """The units ``rows``, with the same model shape."""
        return ModelData(self.inputs.take(rows), self.outcome[rows], self.spec)


def own_baseline_clusters(config: FitConfig) -> bool:
    """Whether the model gives the baseline's cluster term memberships of its own: with
    ``baseline_clusters="own"`` and clusters whose effects differ (with ``equal_effects`` the
    clusters shape the baseline alone, and their memberships are already its own)."""
    return config.baseline_clusters == "own" and config.n_clusters > 1 and not config.equal_effects


#: Above this size (bytes, float32) an SVI fit on minibatches computes each minibatch's
#: Gaussian-process basis instead of holding the trial's (about 350,000 units x 48 functions).
MAX_HELD_BASIS_BYTES = 64 * 2**20


def model_data(
    trial: Trial,
    unit_embedding: np.ndarray | GatheredRows,
    std: Standardizer,
    config: FitConfig,
    propensity: np.ndarray | None = None,
) -> ModelData:
    """The trial's arrays on the model scale, checked against the likelihood; ``propensity``
    (the scores given to ``fit``) sets the effect's targeting direction."""
    y = trial.outcome_array
    if config.likelihood == "bernoulli" and not np.isin(y, (0, 1)).all():
        raise InputError(
            f"likelihood='bernoulli' needs a 0/1 outcome, but column {trial.outcome!r} has "
            "other values; use likelihood='gaussian' or recode the outcome."
        )
    stratum = trial.codes("stratum") if config.random_effects else None
    group = trial.codes("cluster") if config.random_effects else None
    stratum = None if stratum is None or stratum.max() == 0 else stratum
    group = None if group is None or group.max() == 0 else group
    z = std.embedding(unit_embedding)
    covariates = std.covariates(trial.covariate_matrix)
    # SVI on minibatches of a trial whose basis would take more than MAX_HELD_BASIS_BYTES
    # computes each minibatch's basis: that basis is then never held (183 MB at 10^6 units,
    # with as much again while it is built), at about 5 s more over 5,000 steps (4 % of a
    # 10^6-unit fit)
    minibatches = config.method == "svi" and (config.svi_batch_size or len(z)) < len(z)
    compute_basis = minibatches and 4 * len(z) * std.n_basis > MAX_HELD_BASIS_BYTES
    inputs = ModelInputs(
        embedding=jnp.asarray(z, jnp.float32),
        basis=None if compute_basis else jnp.asarray(std.basis(z), jnp.float32),
        basis_arrays=(
            tuple(jnp.asarray(a, jnp.float32) for a in std.basis_arrays) if compute_basis else None
        ),
        covariates=jnp.asarray(covariates, jnp.float32),
        treatment=jnp.asarray(trial.treatment_array, jnp.int32),
        stratum=None if stratum is None else jnp.asarray(stratum, jnp.int32),
        group=None if group is None else jnp.asarray(group, jnp.int32),
    )
    spec = ModelSpec(
        n_clusters=config.n_clusters,
        likelihood=config.likelihood,
        n_features=z.shape[1],
        n_covariates=covariates.shape[1],
        n_basis=std.n_basis,
        deviation=config.deviation,
        equal_effects=config.equal_effects,
        own_baseline_clusters=own_baseline_clusters(config),
        image_noise=config.noise_scale == "image",
        n_strata=0 if stratum is None else int(stratum.max()) + 1,
        n_groups=0 if group is None else int(group.max()) + 1,
        floor=std.floor_on_model_scale(),
        targeting=() if config.deviation == "none" else targeting_direction(z, propensity),
    )
    outcome = std.outcome(y)
    if config.likelihood == "hurdle":  # exact zeros at the floor
        outcome = np.where(at_the_floor(y, std.outcome_floor), 0.0, outcome)
    return ModelData(inputs=inputs, outcome=outcome.astype(np.float32), spec=spec)


def fit_config_dict(config: FitConfig) -> dict:
    """The config as a JSON-serializable dict."""
    return asdict(config)
