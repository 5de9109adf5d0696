"""Effects for images the trial did not have: posterior draws of their CATE and cluster
probabilities, with an extrapolation score, through the model's own
:func:`~imgcate.model.unit_quantities` (so a trial unit predicted as a new image gets exactly
its in-sample effect, random intercepts aside)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from imgcate.ates import OVERLAP_LIMITS, outside_overlap
from imgcate.embeddings import Embeddings
from imgcate.errors import ExtrapolationWarning, FitError, InputError, OverlapWarning
from imgcate.intervals import interval_names, quantiles
from imgcate.kernels import basis_features
from imgcate.model import ModelInputs, unit_quantities
from imgcate.posterior import fit_spec, site_draws
from imgcate.targeting import image_propensity
from imgcate.validation import as_float_array, check_positive_int, seed_int

if TYPE_CHECKING:
    from imgcate.results import EffectFit


@dataclass(frozen=True)
class Prediction:
    """Posterior draws of effects for a set of images (in or out of the trial).

    Attributes
    ----------
    image_ids : ndarray (image,)
    cate : ndarray (sample, image)
        Conditional average treatment effect on the outcome's original scale.
    cluster_prob : ndarray (sample, image, cluster)
    extrapolation : ndarray (image,)
        Mahalanobis distance of each embedding from the trial's embeddings (model scale).
    support_limit : float
        99th percentile of the trial units' own distances; beyond it an image is flagged.
    image_propensity : ndarray (image,) or None
        For a fit with a targeting slope (given a propensity its images predict): the
        propensity each image alone predicts (:func:`imgcate.targeting.image_propensity`);
        outside :data:`imgcate.ates.OVERLAP_LIMITS` one arm is rare among trial units like
        it, and its effect is carried over from units unlike it. None otherwise (a randomized
        fit, or one whose images do not predict the targeting).
    """

    image_ids: np.ndarray
    cate: np.ndarray
    cluster_prob: np.ndarray
    extrapolation: np.ndarray
    support_limit: float
    image_propensity: np.ndarray | None = None

    @property
    def outside_overlap(self) -> np.ndarray | None:
        """True where :attr:`image_propensity` lies outside
        :data:`imgcate.ates.OVERLAP_LIMITS` (None without it)."""
        if self.image_propensity is None:
            return None
        return outside_overlap(self.image_propensity)

    @property
    def outside_support(self) -> np.ndarray:
        """True where the embedding lies beyond the trial's support (extrapolation)."""
        return self.extrapolation > self.support_limit

    def to_frame(self, prob: float = 0.9) -> pd.DataFrame:
        """One row per image: CATE mean, sd, interval, P(CATE > 0), cluster probabilities,
        the extrapolation score and, for a fit with a targeting slope, ``image_propensity`` and
        ``outside_overlap``."""
        lo_name, hi_name = interval_names(prob)
        lo, hi = quantiles(self.cate, prob)
        out = pd.DataFrame(
            {
                "image": self.image_ids,
                "tau_mean": self.cate.mean(0),
                "tau_sd": self.cate.std(0),
                f"tau_{lo_name}": lo,
                f"tau_{hi_name}": hi,
                "prob_positive": (self.cate > 0).mean(0),
            }
        )
        for k in range(self.cluster_prob.shape[-1]):
            out[f"cluster_prob_{k}"] = self.cluster_prob[:, :, k].mean(0)
        out["extrapolation"] = self.extrapolation
        out["outside_support"] = self.outside_support
        if self.image_propensity is not None:
            out["image_propensity"] = self.image_propensity
            out["outside_overlap"] = self.outside_overlap
        return out


def draw_indices(fit: EffectFit, max_draws: int | None = None, seed: int = 0) -> np.ndarray:
    """Posterior draws (flattened over chains) used when ``max_draws`` subsamples them."""
    seed = seed_int(seed)
    if seed < 0:
        raise InputError(f"seed={seed} is negative; give a seed of 0 or more (e.g. seed=0).")
    if max_draws is not None:
        max_draws = check_positive_int("max_draws", max_draws)
    post = fit.idata.posterior
    total = post.sizes["chain"] * post.sizes["draw"]
    if max_draws is None or max_draws >= total:
        return np.arange(total)
    return np.sort(np.random.default_rng(seed).choice(total, max_draws, replace=False))


def effect_function(
    fit: EffectFit,
    *,
    max_draws: int | None = None,
    seed: int = 0,
    covariates: np.ndarray | None = None,
):
    """A pure JAX function from raw embeddings to posterior effect draws.

    The returned ``f(embedding)`` maps a (image, feature_in) array of raw embeddings (as
    given to :func:`imgcate.fit`) to ``(cate, cluster_prob)`` of shapes (sample, image) and
    (sample, image, cluster), CATE on the outcome's original scale. It is differentiable and
    can be ``jax.vmap``-ed or ``jax.jit``-ed, so segment occlusion and gradient saliency run
    through it end to end. New images are new units: random intercepts at their mean (0);
    covariates at the trial's mean unless given (model scale, (image, covariate) or
    (covariate,)); they matter only for the bernoulli, censored and hurdle likelihoods.
    """
    rows = draw_indices(fit, max_draws, seed)
    std = fit.standardizer
    spec = fit_spec(fit)
    params = {k: jnp.asarray(v, jnp.float32) for k, v in site_draws(fit, rows).items()}
    mean = jnp.asarray(std.embedding_mean, jnp.float32)
    sd = jnp.asarray(std.embedding_sd, jnp.float32)
    projection = jnp.asarray(std.projection, jnp.float32)
    basis_arrays = tuple(jnp.asarray(a, jnp.float32) for a in std.basis_arrays)
    fixed = None if covariates is None else jnp.asarray(covariates, jnp.float32)
    scale = std.outcome_sd

    def effect(embedding):
        z = ((embedding - mean) / sd) @ projection
        n = z.shape[0]
        x = jnp.zeros((n, spec.n_covariates), z.dtype) if fixed is None else fixed
        x = jnp.broadcast_to(x, (n, spec.n_covariates))
        inputs = ModelInputs(
            embedding=z,
            basis=basis_features(z, *basis_arrays),
            covariates=x,
            treatment=jnp.zeros(n, jnp.int32),
        )
        q = jax.vmap(lambda p: unit_quantities(p, inputs, spec))(params)
        return q["cate"] * scale, q["cluster_prob"]

    return effect


def raw_embeddings(fit: EffectFit, new: Any) -> tuple[np.ndarray, np.ndarray]:
    """(values, image ids) of embeddings, an array, or chips embedded by the fit's encoder."""
    if isinstance(new, Embeddings):
        values, ids = new.values, new.image_ids
    elif hasattr(new, "values") and np.ndim(new.values) >= 4:
        if fit.encoder is None:
            raise FitError("this fit has no encoder; pass embeddings instead of chips.")
        as_float_array("chip values", new.values)  # NaN or infinite pixels are refused
        values, ids = np.asarray(fit.encoder.transform(new)), np.asarray(new.image_ids)
        if not np.isfinite(values).all():
            raise InputError(
                "the fit's encoder gives NaN or infinite embeddings for these chips (pixel "
                "values out of range?); check their scale against the trial's chips."
            )
    else:
        values = as_float_array("embeddings", new)
        if values.ndim != 2:
            raise InputError(f"embeddings must be (image, feature), got shape {values.shape}.")
        ids = np.arange(len(values))
    values = as_float_array("embeddings", values, ndim=2)
    big = np.abs(values) > np.finfo(np.float32).max
    if big.any():
        raise InputError(
            f"embeddings hold {int(big.sum())} value(s) beyond the float32 range (first at "
            f"{np.argwhere(big)[0].tolist()}); give embeddings on the trial's scale."
        )
    return values, ids


def support_distance(embedding: np.ndarray, mean: np.ndarray, prec: np.ndarray) -> np.ndarray:
    """Each row's Mahalanobis distance (model scale) to the trial's embeddings: ``mean`` and
    ``prec`` as :func:`embedding_support` gives them."""
    centred = embedding - mean
    return np.sqrt(np.einsum("ij,jk,ik->i", centred, prec, centred))


def embedding_support(embedding: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Where embeddings (unit, feature; model scale) lie: their mean, the precision matrix of
    their Mahalanobis distance, and the 99th percentile of the units' own distances."""
    emb = np.asarray(embedding, dtype=float)
    mean = emb.mean(0)
    cov = np.cov(emb, rowvar=False) + 1e-6 * np.eye(emb.shape[1])
    prec = np.linalg.inv(np.atleast_2d(cov))
    return mean, prec, float(np.quantile(support_distance(emb, mean, prec), 0.99))


def predict(
    fit: EffectFit,
    embeddings: Any,
    *,
    covariates: Any = None,
    max_draws: int | None = None,
    seed: int = 0,
    stacklevel: int = 3,
) -> Prediction:
    """Posterior CATE and cluster probabilities for images (see :meth:`EffectFit.predict`); an
    :class:`~imgcate.ExtrapolationWarning` or :class:`~imgcate.OverlapWarning` points
    ``stacklevel`` frames up."""
    values, ids = raw_embeddings(fit, embeddings)
    width = len(fit.standardizer.embedding_mean)
    if values.shape[1] != width:
        raise InputError(
            f"embeddings have {values.shape[1]} features but the fit's have {width}; give "
            "embeddings made as the trial's were (the same encoder, or the fit's chips)."
        )
    x = None
    if covariates is not None:
        raw = as_float_array("covariates", np.asarray(covariates, dtype=float), ndim=2)
        if raw.shape != (len(values), len(fit.standardizer.covariate_mean)):
            coords = fit.idata.constant_data.coords
            names = [str(n) for n in coords["covariate"].values] if "covariate" in coords else []
            raise InputError(
                f"covariates have shape {raw.shape}; give one row per image and one column per "
                f"covariate of the fit, in its order: {names} (a fit given a propensity has "
                "it as its last covariate)."
            )
        x = fit.standardizer.covariates(raw)
    effect = jax.jit(effect_function(fit, max_draws=max_draws, seed=seed, covariates=x))
    cate, prob = (np.asarray(a) for a in effect(jnp.asarray(values, jnp.float32)))
    with np.errstate(over="ignore", invalid="ignore"):  # an sd that overflows is non-finite
        finite_sd = np.isfinite(cate.std(0))
    bad = ~(np.isfinite(cate).all(0) & finite_sd & np.isfinite(prob).all((0, 2)))
    if bad.any():  # never a NaN mean with prob_positive = 0, nor an infinite sd
        raise InputError(
            f"the embeddings of images {np.asarray(ids)[bad][:5].tolist()} give non-finite "
            "effects (values far outside the trial's embeddings?); give embeddings on the "
            "trial's scale."
        )
    emb = fit.standardizer.embedding(values)
    mean, prec, limit = fit.trial_support()
    dist = support_distance(emb, mean, prec)
    out = Prediction(
        image_ids=ids,
        cate=cate,
        cluster_prob=prob,
        extrapolation=dist,
        support_limit=limit,
        image_propensity=_image_propensity(fit, emb),
    )
    warn_outside_support(out, stacklevel + 1)
    warn_outside_overlap(out, stacklevel + 1)
    return out


def _image_propensity(fit: EffectFit, emb: np.ndarray) -> np.ndarray | None:
    """The propensity the images ``emb`` (model scale) alone predict, or None (no line)."""
    line = overlap_line(fit)
    return None if line is None else image_propensity(emb, *line)


def overlap_line(fit: EffectFit) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """Where a fit's images predict its targeting, for placing new images against its overlap.

    Parameters
    ----------
    fit : EffectFit
        A fitted effect model.

    Returns
    -------
    tuple or None
        ``(direction, line)``: the targeting direction ``w`` and the intercept and slope of
        logit(propensity) on its score (:func:`imgcate.targeting.image_propensity`'s
        arguments after the embedding); None for a randomized fit, one whose images do not
        predict the targeting (no targeting slope), or one saved before imgcate kept the line.
    """
    const = fit.idata.constant_data
    line = const.attrs.get("targeting_line")
    if "targeting" not in const or line is None:
        return None
    direction = tuple(float(v) for v in const["targeting"].values)
    return direction, tuple(float(v) for v in np.ravel(line))


#: Share of the images of a prediction (or tiles of a map) outside the trial's support above
#: which imgcate warns.
EXTRAPOLATION_WARN_SHARE = 0.1


def warn_outside_overlap(prediction: Prediction, stacklevel: int = 3) -> None:
    """Warn when more than :data:`EXTRAPOLATION_WARN_SHARE` of a prediction's images have an
    image-predicted propensity outside :data:`imgcate.ates.OVERLAP_LIMITS`."""
    outside = prediction.outside_overlap
    if outside is not None and len(outside) and outside.mean() > EXTRAPOLATION_WARN_SHARE:
        first = np.asarray(prediction.image_ids)[outside][:5].tolist()
        lo, hi = OVERLAP_LIMITS
        warnings.warn(
            f"{int(outside.sum())} of {len(outside)} images have an image-predicted "
            f"propensity outside [{lo}, {hi}] (first {first}): among the trial's units like "
            "them one arm was rare, so their effects are carried over from units unlike them "
            "and their intervals can be far too narrow (see the 'image_propensity' column of "
            "to_frame()).",
            OverlapWarning,
            stacklevel=stacklevel,
        )


def warn_outside_support(prediction: Prediction, stacklevel: int = 3) -> None:
    """Warn when more than :data:`EXTRAPOLATION_WARN_SHARE` of a prediction's images lie
    outside the trial's support."""
    outside = prediction.outside_support
    if len(outside) and outside.mean() > EXTRAPOLATION_WARN_SHARE:
        first = np.asarray(prediction.image_ids)[outside][:5].tolist()
        warnings.warn(
            f"{int(outside.sum())} of {len(outside)} images lie outside the trial's support "
            f"(extrapolation > {prediction.support_limit:.2f}; first {first}): their effects "
            "are extrapolation, not evidence (see the 'outside_support' column of to_frame()).",
            ExtrapolationWarning,
            stacklevel=stacklevel,
        )
