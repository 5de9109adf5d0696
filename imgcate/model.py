"""The effect model (NumPyro) and the one function that computes what it implies.

Units have outcome ``y``, treatment ``t``, image embedding ``z`` (standardized, whitened
principal components), covariates ``x`` and K latent effect clusters. For each linear
predictor ("part"; one, or two for the hurdle likelihood):

    membership  pi(z) = softmax(a + z B)                     (cluster 0 the reference)
    baseline    eta0  = alpha + x beta + z gamma + f(z) + pi(z) mu + u_stratum + u_group
    effect      tau   = pi(z) tau_k + z delta + g(z)
    outcome     y ~ family(eta0 + t tau)

``f`` and ``g`` are Gaussian processes in the whole embedding, each a fixed basis (the kernel's
leading eigenfunctions over the trial, orthogonal to the intercept and the linear terms) times
shrunk coefficients, ``tau_k`` are ordered (no label switching) and ``delta``, ``g`` are shrunk
towards zero. The effect's terms are all also in the baseline (``pi mu`` beside ``pi tau_k``,
``z gamma`` beside ``z delta``, ``f`` beside ``g``), so in a randomized trial a baseline shape
the model cannot follow is not pushed into the effect: clusters cannot stand in for the
baseline, and, because membership depends on the image alone, neither for the shape of the
outcome's distribution. With ``ModelSpec.own_baseline_clusters``
(``FitConfig.baseline_clusters="own"``, the default) the baseline's term is ``rho(z) mu``
instead, with memberships ``rho(z) = softmax(a' + z B')`` of its own (sites prefixed
``baseline_``).

Every derived quantity (cluster probabilities, linear predictors, unit CATE on the outcome's
mean scale) comes from :func:`unit_quantities`; the model, ``EffectFit.unit_effects``,
``predict``, maps, occlusion and saliency all call it. Everything here is on the model scale
(see :class:`imgcate.config.Standardizer`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from imgcate.kernels import basis_features, basis_in_chunks
from imgcate.likelihoods import IDENTITY_MEAN, N_PARTS, outcome_distribution, outcome_mean

if TYPE_CHECKING:
    from imgcate.anchors import Anchor

Deviation = Literal["smooth", "linear", "none"]
DEVIATIONS = ("smooth", "linear", "none")

#: Prior scales on the model scale (documented in docs/model.md).
PRIOR = {
    "alpha": 2.5,  # intercept
    "beta": 1.0,  # covariate coefficients
    "gamma_scale": 0.5,  # half-normal scale of the sd of the baseline's linear weights
    "basis_amp": 1.0,  # half-normal scale of the baseline's Gaussian-process amplitude
    "mu_cluster": 1.0,  # baseline level of each cluster against cluster 0
    "tau": 1.5,  # sd of the centre image's effect and of each step between ordered clusters
    "membership_intercept": 2.0,
    "membership_scale": 1.0,  # global shrinkage sd of a membership log-odds (over features)
    "membership_local": 1.0,  # each feature's own (ARD) shrinkage sd
    "membership_local_df": 3.0,  # its half-Student-t degrees of freedom (inf: half-normal)
    "membership_scale_df": 3.0,  # the same for the global scale s_B (the effect memberships')
    "baseline_membership_local_df": 3.0,  # the same for the baseline's own memberships
    "deviation_scale": 0.5,  # global shrinkage sd of the effect's linear deviation
    "deviation_local": 1.0,
    "deviation_amp": 0.3,  # half-normal scale of the effect's Gaussian-process amplitude
    "targeting_slope": 0.5,  # sd of the effect's slope along the targeting (no global scale)
    "sigma": 1.0,
    "noise_slope": 0.5,  # half-normal scale of the noise sd's log-slope on the image (its norm)
    "group_sd": 0.5,  # stratum / cluster random-effect sd
}


@dataclass(frozen=True)
class ModelSpec:
    """The shape of the model: what is fitted, not the data (hashable: a static jit argument).

    Attributes
    ----------
    n_clusters : int
        Number of effect clusters K (1 = no cluster structure).
    likelihood : str
        Outcome family (see :mod:`imgcate.likelihoods`).
    n_features, n_covariates, n_basis : int
        Embedding components, covariates and basis functions of f and g (0: linear only).
    deviation : {"smooth", "linear", "none"}
        The effect's continuous part besides the clusters: linear plus a Gaussian process,
        linear only, or none (clusters alone; with K = 1 a constant effect).
    equal_effects : bool
        The K clusters share one effect (they shape the baseline only); their baseline
        levels are then ordered (``mu_step``), so that labels do not switch.
    own_baseline_clusters : bool
        The baseline's cluster term has memberships of its own (sites prefixed
        ``baseline_``), not the effect clusters' (``FitConfig.baseline_clusters="own"``).
    n_strata, n_groups : int
        Levels of the stratum and group random intercepts (0 = none).
    image_noise : bool
        The noise sd varies with the image: each arm's sd times ``exp(z w)``
        (``FitConfig.noise_scale="image"``; :func:`unit_scale`).
    floor : float
        Censoring point (censored) on the model scale; the hurdle's floor is 0 there.
    targeting : tuple of float
        Where a propensity was given: the embedding's direction that predicts its log-odds
        (unit sd over the trial's units), along which the effect gets a slope of its own
        (``targeting_slope``) beside ``z delta``; () for none.
    """

    n_clusters: int
    likelihood: str
    n_features: int
    n_covariates: int
    n_basis: int = 0
    deviation: str = "smooth"
    equal_effects: bool = False
    own_baseline_clusters: bool = False
    n_strata: int = 0
    n_groups: int = 0
    image_noise: bool = False
    floor: float = 0.0
    targeting: tuple[float, ...] = ()

    @property
    def parts(self) -> tuple[str, ...]:
        """Site-name prefixes of the linear predictors; the last part's effects are ordered."""
        return ("hurdle_", "") if N_PARTS[self.likelihood] == 2 else ("",)


class ModelInputs(NamedTuple):
    """Arrays the model conditions on, in unit order (a JAX pytree).

    The Gaussian-process basis is either held (``basis``) or computed from the embedding
    where the model needs it (``basis`` None, ``basis_arrays`` the arguments of
    :func:`basis_features` after the embedding): a large trial's SVI then holds no
    (unit, basis) array, and each minibatch computes its own rows' basis.
    """

    embedding: jnp.ndarray  # (unit, feature)
    basis: jnp.ndarray | None  # (unit, basis), or None: computed from basis_arrays
    covariates: jnp.ndarray  # (unit, covariate)
    treatment: jnp.ndarray  # (unit,) 0/1
    stratum: jnp.ndarray | None = None  # (unit,) int codes
    group: jnp.ndarray | None = None
    basis_arrays: tuple | None = None  # (landmarks, transform, coef) where basis is None

    def take(self, idx) -> ModelInputs:
        """The rows ``idx`` (a minibatch)."""
        rows = {
            name: None if value is None else value[idx]
            for name, value in self._asdict().items()
            if name != "basis_arrays"
        }
        return ModelInputs(**rows, basis_arrays=self.basis_arrays)

    def unit_basis(self) -> jnp.ndarray:
        """The basis (unit, basis): held, or computed from the embedding."""
        if self.basis is not None:
            return self.basis
        return basis_features(self.embedding, *self.basis_arrays)

    def with_basis(self) -> ModelInputs:
        """The same inputs holding their basis, for repeated use (:func:`basis_in_chunks`:
        the values the standardizer gives a trial whose basis is held)."""
        if self.basis is not None:
            return self
        basis = basis_in_chunks(self.embedding, self.basis_arrays)
        return self._replace(basis=jnp.asarray(basis), basis_arrays=None)


# --------------------------------------------------------------------------- parameters
def _normal(name: str, scale: float, shape: tuple[int, ...]):
    if not shape:
        return numpyro.sample(name, dist.Normal(0.0, scale))
    return numpyro.sample(name, dist.Normal(0.0, scale).expand(shape).to_event(len(shape)))


def _half_normal(name: str, scale: float, shape: tuple[int, ...] = ()):
    if not shape:
        return numpyro.sample(name, dist.HalfNormal(scale))
    return numpyro.sample(name, dist.HalfNormal(scale).expand(shape).to_event(len(shape)))


def _part_parameters(prefix: str, spec: ModelSpec, ordered: bool) -> dict:
    d, k, m = spec.n_features, spec.n_clusters, spec.n_basis
    p = {
        "alpha": _normal(f"{prefix}alpha", PRIOR["alpha"], ()),
        "gamma_scale": _half_normal(f"{prefix}gamma_scale", PRIOR["gamma_scale"]),
        "gamma_raw": _normal(f"{prefix}gamma_raw", 1.0, (d,)),
    }
    if spec.n_covariates:  # no zero-size site: it would break initialization and ArviZ
        p["beta"] = _normal(f"{prefix}beta", PRIOR["beta"], (spec.n_covariates,))
    if m:
        p["basis_amp"] = _half_normal(f"{prefix}basis_amp", PRIOR["basis_amp"])
        p["basis_raw"] = _normal(f"{prefix}basis_raw", 1.0, (m,))
    p["tau_centre"] = _normal(f"{prefix}tau_centre", PRIOR["tau"], ())
    if k > 1 and not spec.equal_effects:  # with equal effects, tau_centre is every cluster's
        if ordered:  # positive steps: cluster effects ordered, no label switching
            p["tau_step"] = _half_normal(f"{prefix}tau_step", PRIOR["tau"], (k - 1,))
        else:
            p["tau_contrast"] = _normal(f"{prefix}tau_contrast", PRIOR["tau"], (k - 1,))
    if k > 1 and spec.equal_effects and ordered:  # baseline levels ordered instead of tau
        p["mu_step"] = _half_normal(f"{prefix}mu_step", PRIOR["mu_cluster"], (k - 1,))
    elif k > 1:
        p["mu_cluster"] = _normal(f"{prefix}mu_cluster", PRIOR["mu_cluster"], (k - 1,))
    if spec.deviation != "none":
        p["deviation_scale"] = _half_normal(f"{prefix}deviation_scale", PRIOR["deviation_scale"])
        p["deviation_local"] = _half_normal(
            f"{prefix}deviation_local", PRIOR["deviation_local"], (d,)
        )
        p["deviation_raw"] = _normal(f"{prefix}deviation_raw", 1.0, (d,))
        if spec.targeting:  # as BCF's include_pi="both": the baseline has the propensity
            p["targeting_slope"] = _normal(f"{prefix}targeting_slope", PRIOR["targeting_slope"], ())
        if spec.deviation == "smooth" and m:
            p["deviation_amp"] = _half_normal(f"{prefix}deviation_amp", PRIOR["deviation_amp"])
            p["deviation_basis_raw"] = _normal(f"{prefix}deviation_basis_raw", 1.0, (m,))
    for level, n in (("stratum", spec.n_strata), ("group", spec.n_groups)):
        if n:
            p[f"{level}_sd"] = _half_normal(f"{prefix}{level}_sd", PRIOR["group_sd"])
            p[f"{level}_raw"] = _normal(f"{prefix}{level}_raw", 1.0, (n,))
    return {prefix + name: value for name, value in p.items()}


def _membership_parameters(prefix: str, d: int, k: int) -> dict:
    """Sites of one set of memberships ``softmax(a + z B)`` (names prefixed ``prefix``)."""
    return {
        f"{prefix}membership_intercept": _normal(
            f"{prefix}membership_intercept", PRIOR["membership_intercept"], (k - 1,)
        ),
        f"{prefix}membership_scale": numpyro.sample(
            f"{prefix}membership_scale", membership_scale_dist(d, prefix)
        ),
        f"{prefix}membership_local": numpyro.sample(
            f"{prefix}membership_local", membership_local_prior(prefix).expand((d,)).to_event(1)
        ),
        f"{prefix}membership_raw": _normal(f"{prefix}membership_raw", 1.0, (d, k - 1)),
    }


def sample_parameters(spec: ModelSpec) -> dict:
    """Every parameter of the model as a NumPyro sample site; returns their values by name."""
    k, d = spec.n_clusters, spec.n_features
    params = {}
    if k > 1:
        params.update(_membership_parameters("", d, k))
    if k > 1 and spec.own_baseline_clusters:
        params.update(_membership_parameters("baseline_", d, k))
    for prefix in spec.parts:
        params.update(_part_parameters(prefix, spec, ordered=prefix == spec.parts[-1]))
    if spec.likelihood != "bernoulli":
        params["sigma"] = _half_normal("sigma", PRIOR["sigma"], (2,))
        if spec.image_noise:  # w = noise_slope_scale * noise_slope_raw / sqrt(d)
            params["noise_slope_scale"] = _half_normal("noise_slope_scale", PRIOR["noise_slope"])
            params["noise_slope_raw"] = _normal("noise_slope_raw", 1.0, (spec.n_features,))
    if spec.likelihood == "student_t":
        params["nu"] = numpyro.sample("nu", dist.Gamma(2.0, 0.1))
    return params


@functools.lru_cache(maxsize=64)
def parameter_sites(spec: ModelSpec) -> dict[str, tuple[tuple[int, ...], object]]:
    """Each parameter site's shape and support, by name (cached per ``spec``).

    Shapes and supports only, no values: read inside a traced model (the anchors' bijections)
    it keeps no tracer. Its trace is blocked from any model it is read in."""
    with numpyro.handlers.block():
        trace = numpyro.handlers.trace(numpyro.handlers.seed(sample_parameters, 0)).get_trace(spec)
    return {
        name: (tuple(np.shape(site["value"])), site["fn"].support)
        for name, site in trace.items()
        if site["type"] == "sample"
    }


def latent_size(spec: ModelSpec) -> int:
    """How many values the model's parameters hold together (its latent dimension)."""
    return sum(int(np.prod(shape, dtype=int)) for shape, _ in parameter_sites(spec).values())


def membership_local_prior(prefix: str = "") -> dist.Distribution:
    """Prior of each embedding component's own membership scale ``l_j`` (ARD): half-Student-t
    with ``PRIOR["membership_local_df"]`` degrees of freedom (3), half-normal where infinite;
    ``prefix="baseline_"``: of the baseline's own memberships, with
    ``PRIOR["baseline_membership_local_df"]``.

    Clusters that images separate well differ along few whitened components: a sparse,
    strong signal, which the Student-t tail lets escape the shrinkage while the global scale
    keeps dense log-odds small (docs/model.md, "Priors").
    """
    return half_student_t(PRIOR["membership_local"], PRIOR[f"{prefix}membership_local_df"])


def half_student_t(scale: float, df: float) -> dist.Distribution:
    """Half-Student-t with ``df`` degrees of freedom and scale ``scale``; half-normal where
    ``df`` is infinite."""
    if df == float("inf"):
        return dist.HalfNormal(scale)
    return dist.FoldedDistribution(dist.StudentT(df, 0.0, scale))


def membership_scale_prior(n_features: int) -> float:
    """Scale of the prior of the membership weights' global sd ``s_B``
    (:func:`membership_scale_dist`): ``PRIOR["membership_scale"] / sqrt(feature)``.

    A log-odds ``z B_k`` sums ``feature`` whitened components (variance 1 each) times weights
    ``s_B l_j r_jk``, so its prior sd is about ``s_B sqrt(feature)``; dividing the scale by
    ``sqrt(feature)`` keeps the prior sd of the log-odds (and the sharpness of the memberships
    it implies) the same whatever the number of features (docs/model.md, "Priors").
    """
    return PRIOR["membership_scale"] / max(n_features, 1) ** 0.5


def membership_scale_dist(n_features: int, prefix: str = "") -> dist.Distribution:
    """Prior of the membership weights' global sd ``s_B``, with the scale
    :func:`membership_scale_prior`: for the effect memberships (``prefix=""``) a half-Student-t
    with ``PRIOR["membership_scale_df"]`` degrees of freedom (3; half-normal where infinite),
    for the baseline's own memberships (``prefix="baseline_"``) a half-normal.

    A step in the effect along a direction that mixes many whitened components (the
    vegetated share of a Landsat chip) needs a large global scale, which the half-normal held
    back: memberships came out soft and the continuous deviation drew a ramp through the
    step (docs/model.md, "Priors"; benchmarks/CHANGELOG.md, 2026-12-06 evening)."""
    df = PRIOR["membership_scale_df"] if prefix == "" else float("inf")
    return half_student_t(membership_scale_prior(n_features), df)


# --------------------------------------------------------------------------- what it implies
def membership_weights(params: dict, prefix: str = "") -> jnp.ndarray:
    """Membership log-odds weights (feature, cluster - 1); ``prefix="baseline_"`` those of
    the baseline's own memberships (``ModelSpec.own_baseline_clusters``)."""
    scale = jnp.asarray(params[f"{prefix}membership_scale"])[..., None, None]
    local = jnp.asarray(params[f"{prefix}membership_local"])[..., :, None]
    return scale * local * params[f"{prefix}membership_raw"]


def cluster_probabilities(
    params: dict, embedding: jnp.ndarray, n_clusters: int, prefix: str = ""
) -> jnp.ndarray:
    """(unit, cluster) membership probabilities ``softmax(a + z B)``, cluster 0 the reference
    (``prefix`` as in :func:`membership_weights`)."""
    if n_clusters == 1:
        return jnp.ones(embedding.shape[:1] + (1,), embedding.dtype)
    logits = params[f"{prefix}membership_intercept"] + embedding @ membership_weights(
        params, prefix
    )
    return softmax_with_reference(logits)


def softmax_with_reference(logits: jnp.ndarray) -> jnp.ndarray:
    """``softmax([0, logits])`` over the last axis, written column by column: K is small, and
    XLA's CPU reductions over a last axis of 2-4 took a quarter of the model's gradient
    (profile in benchmarks/CHANGELOG.md, 2026-12-04)."""
    columns = [logits[..., j] for j in range(logits.shape[-1])]
    top = functools.reduce(jnp.maximum, columns, jnp.zeros_like(columns[0]))
    exps = [jnp.exp(-top)] + [jnp.exp(c - top) for c in columns]
    total = functools.reduce(jnp.add, exps)
    return jnp.stack([e / total for e in exps], -1)


def reference_probabilities(params: dict, n_clusters: int, prefix: str = "") -> jnp.ndarray:
    """Membership of the centre image (z = 0), ``softmax(a)``: cluster terms enter as
    deviations from it, so the intercepts and ``tau_centre`` do not trade off against the
    cluster levels when membership hardly varies."""
    if n_clusters == 1:
        return jnp.ones(1)
    a = jnp.asarray(params[f"{prefix}membership_intercept"])
    return jax.nn.softmax(jnp.concatenate([jnp.zeros(a.shape[:-1] + (1,), a.dtype), a], -1))


def cluster_levels(params: dict, prefix: str = "") -> jnp.ndarray:
    """Cluster effects on the linear-predictor scale (cluster,) given one draw: the effect of
    an image wholly in cluster k, ``tau_centre + level_k - softmax(a) @ level``."""
    p = {name[len(prefix) :]: v for name, v in params.items() if name.startswith(prefix)}
    centre = jnp.asarray(p["tau_centre"])
    if "tau_step" in p:
        steps = jnp.asarray(p["tau_step"])
        level = jnp.concatenate([jnp.zeros(steps.shape[:-1] + (1,)), jnp.cumsum(steps, -1)], -1)
    elif "tau_contrast" in p:
        contrast = jnp.asarray(p["tau_contrast"])
        level = jnp.concatenate([jnp.zeros(contrast.shape[:-1] + (1,)), contrast], -1)
    else:  # one effect for every cluster (K = 1, or equal effects)
        a = params.get("membership_intercept")
        n_clusters = 1 if a is None else jnp.shape(a)[-1] + 1
        return jnp.broadcast_to(centre[..., None], jnp.shape(centre) + (n_clusters,))
    ref = reference_probabilities(params, level.shape[-1])
    return centre[..., None] + level - (ref * level).sum(-1, keepdims=True)


def _products(matrix: jnp.ndarray, vectors: list) -> jnp.ndarray:
    """``matrix @ v`` for each of ``vectors``, as rows (vector, unit): one pass over the
    matrix for all of them (a matrix-vector product here is bound by memory, so two cost
    about what one does)."""
    return jnp.stack(vectors) @ matrix.T


def _column_sum(prob: jnp.ndarray, weights: jnp.ndarray) -> jnp.ndarray:
    """``prob @ weights`` over a small last axis, written column by column (see
    :func:`softmax_with_reference`)."""
    return functools.reduce(jnp.add, [prob[:, k] * weights[k] for k in range(prob.shape[-1])])


def _part_predictors(
    params: dict, prefix: str, inputs: ModelInputs, basis, prob, base_centred, spec: ModelSpec
):
    p = {name[len(prefix) :]: v for name, v in params.items() if name.startswith(prefix)}
    deviation = spec.deviation != "none"
    linear = [p["gamma_scale"] * p["gamma_raw"]]
    if deviation:
        linear.append(p["deviation_scale"] * p["deviation_local"] * p["deviation_raw"])
        if "targeting_slope" in p:
            linear[1] = linear[1] + jnp.asarray(spec.targeting) * p["targeting_slope"]
    linear = _products(inputs.embedding, linear)
    smooth = [p["basis_amp"] * p["basis_raw"]] if spec.n_basis else []
    if "deviation_amp" in p:
        smooth.append(p["deviation_amp"] * p["deviation_basis_raw"])
    smooth = _products(basis, smooth) if smooth else None

    base = p["alpha"] + linear[0]
    if spec.n_covariates:
        base = base + inputs.covariates @ p["beta"]
    if spec.n_basis:
        base = base + smooth[0]
    for level, codes in (("stratum", inputs.stratum), ("group", inputs.group)):
        if f"{level}_sd" in p and codes is not None:
            base = base + p[f"{level}_sd"] * p[f"{level}_raw"][codes]
    effect = _column_sum(prob, cluster_levels(params, prefix))
    if spec.n_clusters > 1:
        mu = p["mu_cluster"] if "mu_cluster" in p else jnp.cumsum(p["mu_step"], -1)
        base = base + _column_sum(base_centred[:, 1:], mu)
    if deviation:
        effect = effect + linear[1]
        if "deviation_amp" in p:
            effect = effect + smooth[1]
    return base, effect


def linear_predictors(params: dict, inputs: ModelInputs, spec: ModelSpec):
    """Cluster probabilities (unit, cluster), baseline ``eta0`` and effect ``tau`` (part, unit).

    ``params`` holds one draw of every sample site, by name. Hurdle parts are sites prefixed
    ``hurdle_``: part 0 is then P(outcome > floor) on the logit scale, part 1 the log-mean of
    the positive outcome.
    """
    prob = cluster_probabilities(params, inputs.embedding, spec.n_clusters)
    base_centred = None  # the baseline's cluster memberships less the centre image's
    if spec.n_clusters > 1:
        own = "baseline_" if spec.own_baseline_clusters else ""
        base_prob = (
            cluster_probabilities(params, inputs.embedding, spec.n_clusters, own) if own else prob
        )
        base_centred = base_prob - reference_probabilities(params, spec.n_clusters, own)
    basis = inputs.unit_basis() if spec.n_basis else None
    pairs = [
        _part_predictors(params, prefix, inputs, basis, prob, base_centred, spec)
        for prefix in spec.parts
    ]
    return prob, jnp.stack([b for b, _ in pairs]), jnp.stack([e for _, e in pairs])


def unit_scale(params: dict, inputs: ModelInputs, spec: ModelSpec, t):
    """The noise sd of each unit under treatment ``t`` (0, 1, or the units' own): the arm's
    ``sigma``, times ``exp(z w)`` where the noise varies with the image (``spec.image_noise``;
    ``z`` is centred, so ``sigma`` is the sd's geometric mean over the trial's images); 1 for
    the Bernoulli family, which has none."""
    if spec.likelihood == "bernoulli":
        return 1.0
    scale = params["sigma"][t]
    if spec.image_noise:  # w = s_w raw / sqrt(d): |w| is about s_w, the sd of log sd
        w = params["noise_slope_scale"] * params["noise_slope_raw"] / np.sqrt(spec.n_features)
        scale = scale * jnp.exp(inputs.embedding @ w)
    return scale


def unit_quantities(params: dict, inputs: ModelInputs, spec: ModelSpec) -> dict[str, jnp.ndarray]:
    """Everything the model implies for the given units under one posterior draw.

    Returns
    -------
    dict
        ``cluster_prob`` (unit, cluster); ``mu0``, ``mu1``: expected outcome without and with
        treatment (model scale); ``cate``: ``mu1 - mu0``, the unit CATE on the outcome's mean
        scale (model units; times ``Standardizer.outcome_sd`` for the original scale);
        ``eta0``, ``tau``: linear predictors (part, unit).
    """
    prob, eta0, tau = linear_predictors(params, inputs, spec)
    mu0 = outcome_mean(spec.likelihood, eta0, unit_scale(params, inputs, spec, 0), spec.floor)
    mu1 = outcome_mean(spec.likelihood, eta0 + tau, unit_scale(params, inputs, spec, 1), spec.floor)
    # where the mean is the linear predictor, mu1 - mu0 is tau itself: taken as it is, it
    # is exact, and the baseline is not computed where only the CATE is used (the derived
    # pass of a 10^5-unit fit: 18 against 40 ms a chunk)
    cate = tau[0] if spec.likelihood in IDENTITY_MEAN else mu1 - mu0
    return {
        "cluster_prob": prob,
        "mu0": mu0,
        "mu1": mu1,
        "cate": cate,
        "eta0": eta0,
        "tau": tau,
    }


def effect_model(
    inputs: ModelInputs,
    outcome: jnp.ndarray | None = None,
    *,
    spec: ModelSpec,
    subsample_size: int | None = None,
    anchor: Anchor | None = None,
) -> None:
    """NumPyro model of the effect clusters.

    Parameters
    ----------
    inputs : ModelInputs
        Embedding, Gaussian-process basis, covariates, treatment, group codes (model scale).
    outcome : array (unit,), optional
        Outcome on the model scale; None to sample it (posterior predictive).
    spec : ModelSpec
        Clusters, likelihood, sizes.
    subsample_size : int, optional
        Minibatch size over units (stochastic variational inference only).
    anchor : Anchor, optional
        A control variate for the minibatch's log-likelihood (SVI on minibatches; see
        :class:`imgcate.anchors.Anchor`); ignored without an outcome.
    """
    params = sample_parameters(spec)
    n_units = inputs.treatment.shape[0]
    anchored = anchor is not None and outcome is not None
    with numpyro.plate("unit", n_units, subsample_size=subsample_size) as idx:
        rows = inputs if subsample_size is None else inputs.take(idx)
        observed = outcome if outcome is None or subsample_size is None else outcome[idx]
        _, eta0, tau = linear_predictors(params, rows, spec)
        numpyro.sample("outcome", _outcome_family(params, rows, eta0, tau, spec), obs=observed)
        if anchored:  # less each unit's log-likelihood, linearized at the anchor (scaled up)
            from imgcate.anchors import anchored_terms  # imgcate.anchors imports this module

            units, trial = anchored_terms(params, anchor, rows, observed, spec)
            numpyro.factor("anchor_units", units)
    if anchored:  # plus the whole trial's log-likelihood, linearized at the anchor
        numpyro.factor("anchor_trial", trial)


def unit_log_likelihood(
    params: dict, inputs: ModelInputs, outcome: jnp.ndarray, spec: ModelSpec
) -> jnp.ndarray:
    """Each unit's log-likelihood under one draw.

    Parameters
    ----------
    params : dict
        One value of every parameter site, by name.
    inputs : ModelInputs
        The units' model inputs.
    outcome : array (unit,)
        Their outcome on the model scale.
    spec : ModelSpec
        The model's shape.

    Returns
    -------
    array (unit,)
        Each unit's log-likelihood, as :func:`effect_model` scores it.
    """
    _, eta0, tau = linear_predictors(params, inputs, spec)
    return _outcome_family(params, inputs, eta0, tau, spec).log_prob(outcome)


def _outcome_family(params: dict, inputs: ModelInputs, eta0, tau, spec: ModelSpec):
    """The outcome's distribution given the linear predictors of the units ``inputs``."""
    t = inputs.treatment
    scale = unit_scale(params, inputs, spec, t)  # bernoulli: 1, not used
    return outcome_distribution(
        spec.likelihood, eta0 + t * tau, scale, params.get("nu"), spec.floor
    )
