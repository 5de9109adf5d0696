"""The fitted effect-cluster model: effects, intervals, prediction, diagnostics.

:class:`EffectFit` is what :func:`~imgcate.inference.fit` returns and :func:`load_fit` reads
back (the file format is in :mod:`imgcate.fitfile`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from scipy import stats as sps

from imgcate.config import FitConfig, Standardizer
from imgcate.diagnostics import convergence_problems, diagnostics_table
from imgcate.embeddings import Embeddings
from imgcate.errors import ConvergenceWarning, FitError, InputError
from imgcate.fitfile import read_fit_file, write_fit_file
from imgcate.intervals import interval_names, quantiles
from imgcate.model import membership_logits

if TYPE_CHECKING:
    import arviz as az


def _flat(values: np.ndarray) -> np.ndarray:
    """(chain, draw, ...) -> (sample, ...)."""
    return values.reshape((-1,) + values.shape[2:])


@dataclass(frozen=True)
class Prediction:
    """Posterior draws of effects for a set of images (in or out of the trial).

    Attributes
    ----------
    image_ids : ndarray (image,)
    cate : ndarray (sample, image)
        Conditional average treatment effect on the outcome scale.
    cluster_prob : ndarray (sample, image, cluster)
    extrapolation : ndarray (image,)
        Mahalanobis distance of each embedding from the trial's embeddings (model scale).
    support_limit : float
        99th percentile of the trial units' own distances; beyond it an image is flagged.
    """

    image_ids: np.ndarray
    cate: np.ndarray
    cluster_prob: np.ndarray
    extrapolation: np.ndarray
    support_limit: float

    @property
    def outside_support(self) -> np.ndarray:
        """True where the embedding lies beyond the trial's support (extrapolation)."""
        return self.extrapolation > self.support_limit

    def to_frame(self, prob: float = 0.9) -> pd.DataFrame:
        """One row per image: CATE mean, sd, interval, P(CATE > 0), cluster probabilities."""
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
        return out


@dataclass(frozen=True)
class EffectFit:
    """Result of :func:`imgcate.fit`: the posterior and everything needed to predict.

    Attributes
    ----------
    idata : arviz.InferenceData
        Groups posterior, log_likelihood, sample_stats, observed_data (outcome on the model
        scale) and constant_data (embedding, treatment, covariates on the model scale).
        ``posterior.tau_cluster`` and ``posterior.ate`` are on the outcome's original scale
        (log-odds for ``tau_cluster`` with a Bernoulli outcome; ``ate`` is then a risk difference).
    config : FitConfig
    standardizer : Standardizer
    encoder : object, optional
        Encoder that embedded the trial's chips (reused by :meth:`predict` on new chips).
    """

    idata: az.InferenceData
    config: FitConfig
    standardizer: Standardizer
    encoder: Any = None

    # ------------------------------------------------------------------ internals
    def _param(self, name: str) -> np.ndarray | None:
        post = self.idata.posterior
        return _flat(post[name].values) if name in post else None

    @property
    def n_clusters(self) -> int:
        """Number of effect clusters K."""
        return self.config.n_clusters

    @property
    def unit_ids(self) -> np.ndarray:
        """Ids of the trial's units."""
        return self.idata.constant_data["unit"].values

    def _baseline(
        self, embedding: np.ndarray, covariates: np.ndarray | None, rows: slice | None = None
    ) -> np.ndarray:
        """Baseline mu0 on the model scale, (sample, unit); covariates None means at their mean."""
        base = self._param("alpha")[:, None] + self._param("gamma") @ embedding.T
        if covariates is not None and covariates.shape[1]:
            base = base + self._param("beta") @ covariates.T
        if rows is not None:
            const = self.idata.constant_data
            for name in ("stratum", "group"):
                if name in const:
                    codes = const[name].values[rows]
                    base = base + (
                        self._param(f"{name}_sd")[:, None] * self._param(f"{name}_raw")[:, codes]
                    )
        return base

    def _cluster_prob(self, embedding: np.ndarray) -> np.ndarray:
        """(sample, unit, cluster) membership probabilities for model-scale embeddings."""
        n_samples = self._param("alpha").shape[0]
        if self.n_clusters == 1:
            return np.ones((n_samples, len(embedding), 1))
        logits = membership_logits(
            jnp.asarray(embedding),
            jnp.asarray(self._param("membership_intercept")),
            jnp.asarray(self._param("membership")),
        )
        return np.asarray(jax.nn.softmax(logits, axis=-1))

    def _cate(self, prob: np.ndarray, base: np.ndarray | None) -> np.ndarray:
        """(sample, unit) CATE on the original scale from cluster probabilities."""
        tau = self._param("tau")
        if self.config.likelihood == "bernoulli":
            from scipy.special import expit

            diff = expit(base[:, :, None] + tau[:, None, :]) - expit(base)[:, :, None]
            return (prob * diff).sum(-1)
        return (prob * tau[:, None, :]).sum(-1) * self.standardizer.outcome_sd

    def _in_sample(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """In-sample cluster probabilities, CATE draws and responsibilities."""
        const = self.idata.constant_data
        emb = const["embedding"].values
        prob = self._cluster_prob(emb)
        base = self._baseline(emb, const["covariates"].values, rows=slice(None))
        cate = self._cate(prob, base)
        resp = self._responsibilities(prob, base)
        return prob, cate, resp

    def _responsibilities(self, prob: np.ndarray, base: np.ndarray) -> np.ndarray:
        """Posterior cluster probabilities given the outcome too, (unit, cluster)."""
        loglik = self._component_loglik(base)
        logw = np.log(np.clip(prob.astype(np.float64), 1e-300, None)) + loglik
        logw -= logw.max(-1, keepdims=True)
        w = np.exp(logw)
        return (w / w.sum(-1, keepdims=True)).mean(0)

    def _component_loglik(self, base: np.ndarray) -> np.ndarray:
        y = self.idata.observed_data["outcome"].values
        t = self.idata.constant_data["treatment"].values
        loc = base[:, :, None] + t[None, :, None] * self._param("tau")[:, None, :]
        if self.config.likelihood == "bernoulli":
            return sps.bernoulli.logpmf(y[None, :, None], 1 / (1 + np.exp(-loc)))
        scale = self._param("sigma")[:, t][:, :, None]
        if self.config.likelihood == "student_t":
            return sps.t.logpdf(y[None, :, None], self._param("nu")[:, None, None], loc, scale)
        return sps.norm.logpdf(y[None, :, None], loc, scale)

    def with_derived(self) -> EffectFit:
        """Add derived posterior variables (original scale); used once by :func:`fit`."""
        post = self.idata.posterior
        n_chain, n_draw = post.sizes["chain"], post.sizes["draw"]
        shape = (n_chain, n_draw)
        derived = {
            "gamma": post["gamma_scale"] * post["gamma_raw"],
        }
        if self.n_clusters > 1:
            derived["membership"] = post["membership_scale"] * post["membership_raw"]
            if "membership_local" in post:  # fits saved before the per-feature sds lack it
                derived["membership"] = derived["membership"] * post["membership_local"]
        scale = 1.0 if self.config.likelihood == "bernoulli" else self.standardizer.outcome_sd
        derived["tau_cluster"] = post["tau"] * scale
        idata = self.idata.copy()
        idata.posterior = post.assign(derived)
        staged = replace(self, idata=idata)
        prob, cate, _ = staged._in_sample()
        share = prob.mean(1).reshape(shape + (self.n_clusters,))
        ate = cate.mean(1).reshape(shape)
        idata.posterior = idata.posterior.assign(
            cluster_share=(("chain", "draw", "cluster"), share),
            ate=(("chain", "draw"), ate),
        )
        return staged

    # ------------------------------------------------------------------ diagnostics
    def diagnostics(self) -> pd.DataFrame:
        """R-hat and bulk/tail ESS of the reported parameters (R-hat is NaN with one chain)."""
        return diagnostics_table(self.idata)

    def check_convergence(self) -> list[str]:
        """Warn (ConvergenceWarning) about R-hat > 1.01, low ESS or divergences; return them."""
        problems = convergence_problems(self.idata)
        for message in problems:
            warnings.warn(f"imgcate fit: {message}.", ConvergenceWarning, stacklevel=3)
        return problems

    # ------------------------------------------------------------------ tables
    def cluster_effects(self, prob: float = 0.9) -> pd.DataFrame:
        """Effect and share of each cluster with central intervals (original scale).

        Returns
        -------
        DataFrame
            One row per cluster: ``tau_mean``, ``tau_sd``, interval columns named by percentile,
            ``share_mean`` (average membership probability).
        """
        lo_name, hi_name = interval_names(prob)
        tau = _flat(self.idata.posterior["tau_cluster"].values)
        share = _flat(self.idata.posterior["cluster_share"].values)
        lo, hi = quantiles(tau, prob)
        return pd.DataFrame(
            {
                "cluster": np.arange(self.n_clusters),
                "tau_mean": tau.mean(0),
                "tau_sd": tau.std(0),
                f"tau_{lo_name}": lo,
                f"tau_{hi_name}": hi,
                "share_mean": share.mean(0),
            }
        ).set_index("cluster")

    def unit_effects(self, prob: float = 0.9) -> pd.DataFrame:
        """Unit CATE with intervals, cluster probabilities and responsibilities.

        ``cluster_prob_k`` is P(cluster k | image) (what :meth:`predict` gives for new images);
        ``responsibility_k`` also uses the unit's observed outcome.
        """
        lo_name, hi_name = interval_names(prob)
        cluster_prob, cate, resp = self._in_sample()
        lo, hi = quantiles(cate, prob)
        out = pd.DataFrame(
            {
                "unit": self.unit_ids,
                "tau_mean": cate.mean(0),
                "tau_sd": cate.std(0),
                f"tau_{lo_name}": lo,
                f"tau_{hi_name}": hi,
                "prob_positive": (cate > 0).mean(0),
            }
        )
        mean_prob = cluster_prob.mean(0)
        for k in range(self.n_clusters):
            out[f"cluster_prob_{k}"] = mean_prob[:, k]
        for k in range(self.n_clusters):
            out[f"responsibility_{k}"] = resp[:, k]
        out["cluster"] = resp.argmax(1)
        return out

    def ate(self, prob: float = 0.9) -> pd.DataFrame:
        """The model-implied ATE beside the design-based difference in means.

        Both should agree in a randomized trial; a gap points at a misspecified model.
        The difference in means uses a Neyman (unequal-variance) standard error and a normal
        interval.
        """
        lo_name, hi_name = interval_names(prob)
        draws = _flat(self.idata.posterior["ate"].values)
        lo, hi = quantiles(draws, prob)
        y = self.idata.observed_data["outcome"].values * self.standardizer.outcome_sd
        y = y + self.standardizer.outcome_mean
        t = self.idata.constant_data["treatment"].values
        treated, control = y[t == 1], y[t == 0]
        se = np.sqrt(treated.var(ddof=1) / len(treated) + control.var(ddof=1) / len(control))
        diff = treated.mean() - control.mean()
        z = sps.norm.ppf(0.5 + prob / 2)
        return pd.DataFrame(
            {
                "estimator": ["model_implied", "difference_in_means"],
                "estimate": [draws.mean(), diff],
                "std_err": [draws.std(), se],
                lo_name: [lo, diff - z * se],
                hi_name: [hi, diff + z * se],
            }
        ).set_index("estimator")

    def tidy(self, prob: float = 0.9) -> pd.DataFrame:
        """Headline estimates as a tidy table: cluster effects, cluster shares, ATE.

        Columns ``term``, ``estimate`` (posterior mean), ``std_err`` (posterior sd) and the
        interval bounds named by percentile.
        """
        lo_name, hi_name = interval_names(prob)
        rows = []
        post = self.idata.posterior
        for name, label in (("tau_cluster", "tau_cluster"), ("cluster_share", "cluster_share")):
            draws = _flat(post[name].values)
            lo, hi = quantiles(draws, prob)
            for k in range(self.n_clusters):
                rows.append((f"{label}[{k}]", draws[:, k].mean(), draws[:, k].std(), lo[k], hi[k]))
        draws = _flat(post["ate"].values)
        lo, hi = quantiles(draws, prob)
        rows.append(("ate", draws.mean(), draws.std(), lo, hi))
        return pd.DataFrame(rows, columns=["term", "estimate", "std_err", lo_name, hi_name])

    def membership_weights(
        self, prob: float = 0.9, *, basis: str = "input", names: Sequence[str] | None = None
    ) -> pd.DataFrame:
        """Which embedding features move an image from one effect cluster to another.

        The log-odds of cluster k against cluster 0 (k = 1 .. K-1; clusters are ordered by
        effect, so for K = 2 a positive weight means "more likely in the higher-effect
        cluster") are linear in the image's embedding: ``intercept_k + z @ w_k``, with ``z``
        the whitened principal components of the standardized embedding (``basis="model"``).
        ``basis="input"`` maps the weights back through that projection,
        ``w_input = standardizer.projection @ w_k``: the change in log-odds per one standard
        deviation of each input feature, the others held fixed. Both give exactly the same
        logits (when the fit kept fewer components than input features, the input weights lie
        in the span of the kept components).

        Parameters
        ----------
        prob : float
            Central interval probability.
        basis : {"input", "model"}
            Features as given to :func:`imgcate.fit` (default) or the model's components.
        names : sequence of str, optional
            Names of the input features (e.g. a table's columns); default 0, 1, ...

        Returns
        -------
        DataFrame
            Index (``feature``, ``contrast``) with ``contrast`` k meaning cluster k against
            cluster 0; columns ``weight_mean``, ``weight_sd``, the interval bounds named by
            percentile and ``prob_positive`` (posterior probability that the weight is > 0).

        Raises
        ------
        FitError
            For a K = 1 fit (no clusters to tell apart).
        InputError
            For an unknown basis or names of the wrong length.
        """
        if self.n_clusters == 1:
            raise FitError("a K=1 fit has one cluster, so no membership weights; fit K >= 2.")
        if basis not in ("input", "model"):
            raise InputError(f"basis={basis!r} must be 'input' or 'model'.")
        lo_name, hi_name = interval_names(prob)
        weights = self._param("membership")  # (sample, component, contrast)
        if basis == "input":
            weights = np.einsum("fc,scj->sfj", self.standardizer.projection, weights)
        n_features = weights.shape[1]
        if names is None:
            labels = np.arange(n_features)
        else:
            labels = np.asarray(list(names))
            if basis != "input" or len(labels) != n_features:
                raise InputError(
                    f"names has {len(labels)} entries; give one per input feature "
                    f"({len(self.standardizer.embedding_mean)}) with basis='input'."
                )
        lo, hi = quantiles(weights, prob)
        index = pd.MultiIndex.from_product(
            [labels, np.arange(1, self.n_clusters)], names=["feature", "contrast"]
        )
        return pd.DataFrame(
            {
                "weight_mean": weights.mean(0).ravel(),
                "weight_sd": weights.std(0).ravel(),
                lo_name: lo.ravel(),
                hi_name: hi.ravel(),
                "prob_positive": (weights > 0).mean(0).ravel(),
            },
            index=index,
        )

    def summary(self, prob: float = 0.9) -> str:
        """A printable summary: settings, cluster effects, ATE check, diagnostics."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            diag = self.diagnostics()
        n_div = 0
        if "sample_stats" in self.idata and "diverging" in self.idata.sample_stats:
            n_div = int(self.idata.sample_stats["diverging"].values.sum())
        lines = [
            f"imgcate effect-cluster fit: K={self.n_clusters}, likelihood={self.config.likelihood},"
            f" method={self.config.method}, units={len(self.unit_ids)}, "
            f"features={self.idata.constant_data.sizes['feature']}",
            "",
            "Cluster effects (original outcome scale):",
            self.cluster_effects(prob).to_string(float_format=lambda v: f"{v:.3f}"),
            "",
            "Average treatment effect:",
            self.ate(prob).to_string(float_format=lambda v: f"{v:.3f}"),
            "",
            f"Diagnostics: max R-hat {diag['r_hat'].max():.3f}, min bulk ESS "
            f"{diag['ess_bulk'].min():.0f}, divergences {n_div}",
        ]
        return "\n".join(lines)

    def loo(self) -> az.ELPDData:
        """PSIS-LOO of the fit (ArviZ)."""
        import arviz as az

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return az.loo(self.idata, pointwise=True)

    # ------------------------------------------------------------------ prediction
    def trial_support(self) -> tuple[np.ndarray, np.ndarray, float]:
        """Where the trial's embeddings lie (model scale): their mean, the precision matrix of
        their Mahalanobis distance, and the 99th percentile of the units' own distances."""
        emb = self.idata.constant_data["embedding"].values
        mean = emb.mean(0)
        cov = np.cov(emb, rowvar=False) + 1e-6 * np.eye(emb.shape[1])
        prec = np.linalg.inv(np.atleast_2d(cov))
        dist = np.sqrt(np.einsum("ij,jk,ik->i", emb - mean, prec, emb - mean))
        return mean, prec, float(np.quantile(dist, 0.99))

    def predict(
        self,
        embeddings: Embeddings | np.ndarray | Any,
        *,
        max_draws: int | None = None,
        seed: int = 0,
    ) -> Prediction:
        """Posterior predictive CATE and cluster probabilities for new images.

        Parameters
        ----------
        embeddings : Embeddings, ndarray (image, feature) or Chips
            Raw embeddings (as passed to :func:`fit`), or chips, which are embedded with the
            fit's encoder exactly as the trial's chips were.
        max_draws : int, optional
            Use a random subset of this many posterior draws (faster maps).
        seed : int
            Seed of that subset.

        Returns
        -------
        Prediction
            Draws of CATE (sample, image) and cluster probabilities (sample, image, cluster),
            and an extrapolation score per image.
        """
        values, ids = self._raw_embeddings(embeddings)
        emb = self.standardizer.embedding(values)
        effect = self.effect_function(max_draws=max_draws, seed=seed)
        cate, prob = (np.asarray(a) for a in effect(jnp.asarray(values, dtype=jnp.float32)))
        mean, prec, limit = self.trial_support()
        dist = np.sqrt(np.einsum("ij,jk,ik->i", emb - mean, prec, emb - mean))
        return Prediction(
            image_ids=ids, cate=cate, cluster_prob=prob, extrapolation=dist, support_limit=limit
        )

    def draw_indices(self, max_draws: int | None = None, seed: int = 0) -> np.ndarray:
        """Posterior draws (flattened over chains) used when ``max_draws`` subsamples them."""
        total = self._param("alpha").shape[0]
        if max_draws is None or max_draws >= total:
            return np.arange(total)
        return np.sort(np.random.default_rng(seed).choice(total, max_draws, replace=False))

    def effect_function(self, *, max_draws: int | None = None, seed: int = 0):
        """A pure JAX function from raw embeddings to posterior effect draws.

        The returned ``f(embedding)`` maps a (image, feature_in) array of raw embeddings (as
        given to :func:`fit`) to ``(cate, cluster_prob)`` of shapes (sample, image) and
        (sample, image, cluster). It is differentiable and can be ``jax.vmap``-ed or
        ``jax.jit``-ed, so segment occlusion and gradient saliency run through it end to end.

        Parameters
        ----------
        max_draws : int, optional
            Use a random subset of this many posterior draws.
        seed : int
            Seed of that subset.
        """
        rows = self.draw_indices(max_draws, seed)
        std = self.standardizer
        mean = jnp.asarray(std.embedding_mean, jnp.float32)
        sd = jnp.asarray(std.embedding_sd, jnp.float32)
        projection = jnp.asarray(std.projection, jnp.float32)
        tau = jnp.asarray(self._param("tau")[rows], jnp.float32)
        bernoulli = self.config.likelihood == "bernoulli"
        alpha = jnp.asarray(self._param("alpha")[rows], jnp.float32)
        gamma = jnp.asarray(self._param("gamma")[rows], jnp.float32)
        k = self.n_clusters
        if k > 1:
            intercept = jnp.asarray(self._param("membership_intercept")[rows], jnp.float32)
            weights = jnp.asarray(self._param("membership")[rows], jnp.float32)
        scale = std.outcome_sd

        def effect(embedding):
            emb = ((embedding - mean) / sd) @ projection
            if k > 1:
                prob = jax.nn.softmax(membership_logits(emb, intercept, weights), axis=-1)
            else:
                prob = jnp.ones((tau.shape[0], emb.shape[0], 1))
            if bernoulli:
                base = alpha[:, None] + gamma @ emb.T
                diff = (
                    jax.nn.sigmoid(base[..., None] + tau[:, None, :])
                    - jax.nn.sigmoid(base)[..., None]
                )
                return (prob * diff).sum(-1), prob
            return (prob * tau[:, None, :]).sum(-1) * scale, prob

        return effect

    def _raw_embeddings(self, new: Any) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(new, Embeddings):
            return new.values, new.image_ids
        if hasattr(new, "values") and np.ndim(new.values) >= 4:
            if self.encoder is None:
                raise FitError("this fit has no encoder; pass embeddings instead of chips.")
            return np.asarray(self.encoder.transform(new)), np.asarray(new.image_ids)
        values = np.asarray(new, dtype=float)
        if values.ndim != 2:
            raise InputError(f"embeddings must be (image, feature), got shape {values.shape}.")
        return values, np.arange(len(values))

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Save to one file (a zip archive) holding everything needed to predict later.

        Written to a temporary name and renamed, so a failure leaves no half-written file.
        Read it back with :func:`load_fit`.
        """
        return write_fit_file(
            path,
            idata=self.idata,
            config=self.config,
            standardizer=self.standardizer,
            encoder=self.encoder,
            overwrite=overwrite,
        )


def load_fit(path: str | Path) -> EffectFit:
    """Load a fit written by :meth:`EffectFit.save`.

    Raises
    ------
    InputError
        If the file is missing, not an imgcate fit, or corrupt.
    """
    return EffectFit(**read_fit_file(path))
