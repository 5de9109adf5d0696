"""The fitted effect model: effects, intervals, prediction, diagnostics.

:class:`EffectFit` is what :func:`~imgcate.inference.fit` returns and :func:`load_fit` reads
back (the file format is in :mod:`imgcate.fitfile`). Every number it reports comes from the
model's :func:`~imgcate.model.unit_quantities` under the posterior draws
(:mod:`imgcate.posterior`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from imgcate.config import FitConfig, Standardizer
from imgcate.diagnostics import (
    ate_gap,
    checks_passed,
    checks_skipped,
    diagnostics_table,
    divergent_transitions,
    restart_note,
    sampling_problems,
)
from imgcate.errors import ConvergenceWarning, FitError, InputError, ModelCheckWarning
from imgcate.fitfile import read_fit_file, write_fit_file
from imgcate.intervals import interval_names, quantiles
from imgcate.model import ModelSpec
from imgcate.outcome_checks import outcome_check, outcome_problems
from imgcate.posterior import (
    evaluate,
    fit_spec,
    flat,
    site_draws,
    too_large,
    trial_inputs,
    unit_summaries,
    with_derived,
)
from imgcate.prediction import Prediction, effect_function, embedding_support, predict

if TYPE_CHECKING:
    import arviz as az

#: Below this membership dependence the clusters are not image-driven (summary() says so).
WEAK_MEMBERSHIP = 0.3


@dataclass(frozen=True)
class EffectFit:
    """Result of :func:`imgcate.fit`: the posterior and everything needed to predict.

    Attributes
    ----------
    idata : arviz.InferenceData
        Groups posterior, posterior_predictive, log_likelihood, sample_stats, observed_data
        (outcome on the model scale) and constant_data (embedding, treatment, covariates
        on the model scale). Posterior variables on the outcome's original scale:
        ``tau_unit`` (unit CATE), ``tau_cluster`` (each cluster's average CATE), ``ate``,
        ``cluster_share``; ``effect_share_clusters`` and ``membership_dependence`` describe
        the clusters (:meth:`heterogeneity`).
    config : FitConfig
    standardizer : Standardizer
    encoder : object, optional
        Encoder that embedded the trial's chips (reused by :meth:`predict` on new chips).
    provenance : dict
        Where the fit came from (:func:`imgcate.provenance.collect`: imgcate version, time,
        command, inputs with hashes, seeds); saved with the fit.
    """

    idata: az.InferenceData
    config: FitConfig
    standardizer: Standardizer
    encoder: Any = None
    provenance: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ display
    def _headline(self) -> list[tuple[str, str]]:
        post = self.idata.posterior
        draws = post.sizes["chain"] * post.sizes["draw"]
        rows = [
            (
                "model",
                f"{self.config.label}, likelihood={self.config.likelihood_label}, "
                f"deviation={self.config.deviation}",
            ),
            (
                "data",
                f"{len(self.unit_ids):,} units, "
                f"{self.idata.constant_data.sizes['feature']} embedding components",
            ),
            (
                "inference",
                f"{self.config.method_label}, {post.sizes['chain']} x "
                f"{post.sizes['draw']} = {draws:,} draws",
            ),
        ]
        ate = self._draws("ate")
        rows.append(("ATE", f"{ate.mean():.3g} (sd {ate.std():.2g})"))
        if "tau_cluster" in post:
            tau = self._draws("tau_cluster").mean(0)
            share = self._draws("cluster_share").mean(0)
            effects = (f"{t:.3g} ({100 * p:.0f}%)" for t, p in zip(tau, share, strict=True))
            rows.append(("cluster effects", ", ".join(effects)))
        if "membership_dependence" in post:
            rows.append(
                (
                    "clusters",
                    f"explain {100 * self._draws('effect_share_clusters').mean():.0f}% "
                    "of the effect's variance; membership dependence "
                    f"{self._draws('membership_dependence').mean():.2f}",
                )
            )
        version = self.provenance.get("imgcate_version")
        if version:
            rows.append(("made by", f"imgcate {version}, {self.provenance.get('created_utc', '')}"))
        return rows

    def __repr__(self) -> str:
        lines = [f"  {name}: {value}" for name, value in self._headline()]
        return "EffectFit(\n" + "\n".join(lines) + "\n)"

    def _repr_html_(self) -> str:
        from html import escape

        cells = "".join(
            f"<tr><th style='text-align:left'>{escape(name)}</th>"
            f"<td style='text-align:left'>{escape(value)}</td></tr>"
            for name, value in self._headline()
        )
        return f"<table><caption>imgcate EffectFit</caption>{cells}</table>"

    # ------------------------------------------------------------------ internals
    def _draws(self, name: str) -> np.ndarray:
        return flat(self.idata.posterior[name].values)

    @property
    def n_clusters(self) -> int:
        """Number of effect clusters K."""
        return self.config.n_clusters

    @property
    def spec(self) -> ModelSpec:
        """The model's shape (:class:`~imgcate.model.ModelSpec`)."""
        return fit_spec(self)

    @property
    def unit_ids(self) -> np.ndarray:
        """Ids of the trial's units."""
        return self.idata.constant_data["unit"].values

    def in_sample(self) -> dict[str, np.ndarray]:
        """Unit CATE (sample, unit; original scale) and cluster probabilities (sample, unit,
        cluster) of the trial's own units, from every posterior draw."""
        q = evaluate(site_draws(self), trial_inputs(self), self.spec)
        return {"cate": q["cate"] * self.standardizer.outcome_sd, "cluster_prob": q["cluster_prob"]}

    # ------------------------------------------------------------------ diagnostics
    def diagnostics(self) -> pd.DataFrame:
        """R-hat and bulk/tail ESS of what users read (unit CATE: its worst unit)."""
        return diagnostics_table(self.idata)

    def check_convergence(self) -> list[str]:
        """NUTS: warn (ConvergenceWarning) about R-hat > 1.01, low ESS, divergences or chains in
        different modes, and return the problems; none for SVI (one guide, no chains)."""
        problems = sampling_problems(self.idata, self.config)
        for message in problems:
            warnings.warn(f"imgcate fit: {message}.", ConvergenceWarning, stacklevel=3)
        return problems

    def check_outcome(self, *, max_draws: int = 500, seed: int = 0) -> pd.DataFrame:
        """Posterior predictive check of the outcome's distribution in each arm.

        Compares the observed mean, sd, 10/50/90 % quantiles, skewness, ``spread_on_image``
        (the R² of the spread about each unit's predictive median on the image) and (with a
        mass at the minimum) the share at the floor with those of outcomes replicated from the
        posterior (``posterior_predictive``; ``arviz.plot_ppc`` draws them). :func:`imgcate.fit`
        warns (:class:`~imgcate.ModelCheckWarning`) when one is missed.

        Parameters
        ----------
        max_draws : int
            Replicated data sets used (a random subset of the posterior draws).
        seed : int
            Seed of that subset.

        Returns
        -------
        pandas.DataFrame
            Indexed by arm and statistic: observed, replicated mean, 99 % interval, two-sided
            posterior predictive p-value, ``missed`` (p < 0.01); original outcome scale.
        """
        if "posterior_predictive" not in self.idata.groups():
            raise FitError(too_large(self, "posterior_predictive group"))
        rep = flat(self.idata.posterior_predictive["outcome"].values)
        rows = np.random.default_rng(seed).permutation(len(rep))[:max_draws]
        std = self.standardizer
        replicated = rep[np.sort(rows)] * std.outcome_sd + std.outcome_mean
        const = self.idata.constant_data
        z = const["embedding"].values if "embedding" in const else None
        return outcome_check(self.observed_outcome(), replicated, const["treatment"].values, z)

    def check_model(self) -> list[str]:
        """Warn (:class:`~imgcate.ModelCheckWarning`) when the replicated outcomes miss the
        observed outcome's distribution (:meth:`check_outcome`); return the problems."""
        problems = self._model_problems()
        for message in problems:
            warnings.warn(f"imgcate fit: {message}", ModelCheckWarning, stacklevel=3)
        return problems

    # ------------------------------------------------------------------ tables
    def cluster_effects(self, prob: float = 0.9) -> pd.DataFrame:
        """Average effect and share of each cluster with central intervals (original scale).

        A cluster's effect is the average CATE of the units most probably in it (under each
        draw), on the outcome's mean scale: the same for every likelihood, and whatever the
        memberships' sharpness.

        Returns
        -------
        DataFrame
            One row per cluster: ``tau_mean``, ``tau_sd``, interval columns named by percentile,
            ``share_mean`` (average membership probability).
        """
        lo_name, hi_name = interval_names(prob)
        tau = self._draws("tau_cluster")
        lo, hi = quantiles(tau, prob)
        return pd.DataFrame(
            {
                "cluster": np.arange(self.n_clusters),
                "tau_mean": tau.mean(0),
                "tau_sd": tau.std(0),
                f"tau_{lo_name}": lo,
                f"tau_{hi_name}": hi,
                "share_mean": self._draws("cluster_share").mean(0),
            }
        ).set_index("cluster")

    def unit_effects(self, prob: float = 0.9) -> pd.DataFrame:
        """Unit CATE with intervals and P(cluster k | image), one row per trial unit.

        ``cluster`` is each unit's most probable cluster. The CATE is the effect on the
        outcome's mean given the unit's image, covariates and random intercepts. A fit given
        a propensity adds it as ``propensity``: outside [0.1, 0.9] effects are extrapolated
        (:func:`imgcate.ates.overlap_note`).
        """
        from imgcate.ates import given_propensity

        lo_name, hi_name = interval_names(prob)
        q = unit_summaries(self, prob)
        out = pd.DataFrame(
            {
                "unit": self.unit_ids,
                "tau_mean": q["mean"],
                "tau_sd": q["sd"],
                f"tau_{lo_name}": q["lo"],
                f"tau_{hi_name}": q["hi"],
                "prob_positive": q["prob_positive"],
            }
        )
        for k in range(self.n_clusters):
            out[f"cluster_prob_{k}"] = q["cluster_prob"][:, k]
        out["cluster"] = q["cluster_prob"].argmax(1)
        scores = given_propensity(self)
        return out if scores is None else out.assign(propensity=scores)

    def ate(
        self, prob: float = 0.9, seed: int = 0, trim: str | float | None = None
    ) -> pd.DataFrame:
        """The model-implied ATE beside design-based estimates (:func:`imgcate.ates.ate_table`).

        Rows ``model_implied``; ``aipw`` for a fit given a propensity score (doubly robust,
        with that score and cross-fitted outcome regressions on the fit's embedding and
        covariates; ``seed`` sets their folds); ``difference_in_means``, Neyman's standard
        error (HC2) or a cluster-robust one (CR2, Student-t interval with G - 1 df) when units
        share their assignment or their image (the trial's ``cluster`` column, else a shared
        ``image_id``). In a randomized trial the model's ATE and the difference in means
        estimate the same thing, and in an observational study the model's and AIPW's: a gap
        points at a misspecified outcome model. ``vcov``: how each standard error was computed
        (NaN where a cluster holds a whole arm, and why). ``trim`` (``"crump"``, or e.g. 0.1):
        every row on the units that :func:`imgcate.confounding.trim` keeps by the propensity
        given, the effect where the arms overlap (``attrs["trim"]``).
        """
        from imgcate.ates import ate_table

        return ate_table(self, prob, seed, trim)

    def observed_outcome(self) -> np.ndarray:
        """The trial's outcome on its original scale (unit,)."""
        if "outcome_original" in self.idata.constant_data:
            return self.idata.constant_data["outcome_original"].values.astype(float)
        y = self.idata.observed_data["outcome"].values.astype(float)
        return y * self.standardizer.outcome_sd + self.standardizer.outcome_mean

    def heterogeneity(self, prob: float = 0.9) -> pd.DataFrame:
        """How the clusters describe the effect, with intervals (K >= 2).

        Rows: ``effect_share_clusters``, the share of the unit CATE's variance over the
        trial's units that the cluster averages explain (the rest is the continuous deviation,
        with the targeting slope of a fit given a propensity);
        ``membership_dependence``, the mutual information between cluster and image as a share
        of log K (0: every image has the same membership, so the clusters say nothing about
        images; 1: every image sits in one cluster for sure); ``effect_sd``, the spread of the
        unit CATE over the trial's units. ``effect_sd`` is positive in every draw by
        construction (a spread), so it is not a test of heterogeneity: compare models
        (:func:`imgcate.compare_clusters`) for that.
        """
        lo_name, hi_name = interval_names(prob)
        post = self.idata.posterior  # fits saved before effect_sd was stored: from tau_unit
        sd = self._draws("effect_sd") if "effect_sd" in post else None
        rows = {"effect_sd": self._draws("tau_unit").std(1) if sd is None else sd}
        for name in ("effect_share_clusters", "membership_dependence"):
            if name in self.idata.posterior:
                rows[name] = self._draws(name)
        table = {}
        for name, draws in rows.items():
            lo, hi = quantiles(draws, prob)
            table[name] = {"mean": draws.mean(), "sd": draws.std(), lo_name: lo, hi_name: hi}
        return pd.DataFrame(table).T

    def tidy(self, prob: float = 0.9) -> pd.DataFrame:
        """Headline estimates as a tidy table: cluster effects, cluster shares, ATE.

        Columns ``term``, ``estimate`` (posterior mean), ``std_err`` (posterior sd) and the
        interval bounds named by percentile.
        """
        lo_name, hi_name = interval_names(prob)
        rows = []
        for name in ("tau_cluster", "cluster_share"):
            draws = self._draws(name)
            lo, hi = quantiles(draws, prob)
            for k in range(self.n_clusters):
                rows.append((f"{name}[{k}]", draws[:, k].mean(), draws[:, k].std(), lo[k], hi[k]))
        draws = self._draws("ate")
        lo, hi = quantiles(draws, prob)
        rows.append(("ate", draws.mean(), draws.std(), lo, hi))
        return pd.DataFrame(rows, columns=["term", "estimate", "std_err", lo_name, hi_name])

    def membership_weights(
        self, prob: float = 0.9, *, basis: str = "input", names: Sequence[str] | None = None
    ) -> pd.DataFrame:
        """Which embedding features move an image from one effect cluster to another.

        The log-odds of cluster k against cluster 0 (k = 1 .. K-1; clusters are ordered by
        their effect parameter, so for K = 2 a positive weight means "more likely in the
        higher-effect cluster") are linear in the image's embedding: ``intercept_k + z @ w_k``,
        with ``z`` the whitened principal components of the standardized embedding
        (``basis="model"``). ``basis="input"`` maps the weights back through that projection,
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
        weights = self._draws("membership")  # (sample, component, contrast)
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

    def summary(self, prob: float = 0.9, *, out_of_sample: Any = None) -> str:
        """A printable summary: settings, cluster effects, how much the clusters explain and
        how image-driven they are, ATE check, diagnostics; ``out_of_sample`` (a
        :class:`~imgcate.evaluate.CrossfitResult` of this trial) adds its out-of-sample test."""
        from imgcate.ates import given_propensity, overlap_note, targeting_slope_line

        fmt = {"float_format": lambda v: f"{v:.3f}"}
        ate = self.ate(prob)  # once: a fit given a propensity cross-fits AIPW for it
        overlap = overlap_note(given_propensity(self))
        lines = [
            f"imgcate effect fit: {self.config.label}, likelihood={self.config.likelihood_label}, "
            f"deviation={self.config.deviation}, method={self.config.method_label}, "
            f"units={len(self.unit_ids)}, features={self.idata.constant_data.sizes['feature']}",
            "",
            "Cluster effects (average CATE of each cluster, outcome's mean scale):",
            self.cluster_effects(prob).to_string(**fmt),
            "",
            "Average treatment effect:",
            ate.to_string(**fmt),
        ]
        lines += [slope] if (slope := targeting_slope_line(self, prob)) else []
        if self.n_clusters > 1:
            lines += ["", "How the clusters describe the effect:"]
            lines += [self.heterogeneity(prob).to_string(**fmt), *self._cluster_notes()]
        if out_of_sample is not None:
            lines += ["", out_of_sample.summary(unit_ids=self.unit_ids)]
        lines += ["", self._diagnostics_line(), "Checks:"]
        problems = self._problems(ate)
        return "\n".join(
            lines
            + ([f"- {p}" for p in problems] or [f"- none failed: {checks_passed(self, ate)}."])
            + [f"- not checked: {skipped}" for skipped in checks_skipped(self)]
            + [f"- note: {note}." for note in [restart_note(self.idata), overlap] if note]
        )

    def _diagnostics_line(self) -> str:
        if self.config.method != "nuts":
            if "svi_loss" not in self.idata.groups():
                return "Diagnostics: SVI"
            loss = self.idata.svi_loss["loss"].values
            steps = f"{len(loss):,} steps{self.config.minibatch_label}"
            return f"Diagnostics: SVI, final loss {loss[-1]:.6g} after {steps}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            diag = self.diagnostics()
        r_hat = f"{diag['r_hat'].max():.3f}" if diag["r_hat"].notna().any() else "n/a (one chain)"
        worst = f"max R-hat {r_hat}, min bulk ESS {diag['ess_bulk'].min():.0f}"
        return f"Diagnostics: {worst}, divergences {divergent_transitions(self.idata)}"

    def _problems(self, ate: pd.DataFrame | None = None) -> list[str]:
        """Every failed check in words: convergence, outcome distribution, ATE gap."""
        problems = sampling_problems(self.idata, self.config)
        return problems + self._model_problems(ate)

    def _model_problems(self, ate: pd.DataFrame | None = None) -> list[str]:
        """Failed model checks in words: the outcome's distribution (not kept for very large
        fits) and the ATE against the design's (:func:`imgcate.diagnostics.ate_gap`; ``ate``:
        the ATE table where the caller has it, at any ``prob``)."""
        problems, cfg = [], self.config
        if "posterior_predictive" in self.idata.groups():
            problems += outcome_problems(self.check_outcome(), cfg.likelihood, cfg.noise_scale)
        gap = ate_gap(self.ate() if ate is None else ate)
        return problems + ([gap] if gap else [])

    def _cluster_notes(self) -> list[str]:
        if self.config.equal_effects:  # compare_clusters' null: clusters of the baseline only
            return ["The clusters share one effect (equal_effects): they shape the baseline only."]
        notes = []
        dependence = float(self._draws("membership_dependence").mean())
        if dependence < WEAK_MEMBERSHIP:
            notes.append(
                f"Membership barely depends on the image ({dependence:.2f} of a clean split): "
                "the clusters do not sort images into groups; read the unit CATE (the smooth "
                "model without clusters, imgcate.fit(n_clusters=1), describes it too)."
            )
        share = float(self._draws("effect_share_clusters").mean())
        rest = "; the continuous deviation holds the rest" if share < 0.995 else ""
        notes.append(
            f"The clusters explain {100 * share:.0f}% of the effect's variance over the "
            f"trial's units{rest}."
        )
        return notes

    def loo(self) -> az.ELPDData:
        """PSIS-LOO of the fit (ArviZ; Pareto-k warnings as ArviZ gives them)."""
        import arviz as az

        if "log_likelihood" not in self.idata.groups():
            raise FitError(too_large(self, "pointwise log-likelihood"))
        return az.loo(self.idata, pointwise=True)

    def report(self, path: str | Path, **options: Any) -> Path:
        """Write a self-contained HTML or Markdown page (by ``path``'s suffix) for a referee;
        ``options`` as in :func:`imgcate.report.write_report` (``comparison``, ``crossfit``)."""
        from imgcate.report import write_report

        return write_report(self, path, **options)

    # ------------------------------------------------------------------ prediction
    def trial_support(self) -> tuple[np.ndarray, np.ndarray, float]:
        """Where the trial's embeddings lie (model scale): their mean, the precision matrix of
        their Mahalanobis distance, and the 99th percentile of the units' own distances."""
        return embedding_support(self.idata.constant_data["embedding"].values)

    def predict(
        self,
        embeddings: Any,
        *,
        covariates: Any = None,
        max_draws: int | None = None,
        seed: int = 0,
    ) -> Prediction:
        """Posterior CATE and cluster probabilities for images, in or out of the trial.

        Parameters
        ----------
        embeddings : Embeddings, ndarray (image, feature) or Chips
            Raw embeddings (as passed to :func:`fit`), or chips, which are embedded with the
            fit's encoder exactly as the trial's chips were.
        covariates : array (image, covariate), optional
            Covariates on their original scale (default: the trial's means). Only the
            bernoulli, censored and hurdle likelihoods' effects depend on them.
        max_draws : int, optional
            Use a random subset of this many posterior draws (faster maps).
        seed : int
            Seed of that subset.

        Returns
        -------
        Prediction
            Draws of CATE (sample, image) and cluster probabilities (sample, image, cluster),
            and an extrapolation score per image (for a fit with a targeting slope also the
            propensity each image alone predicts). Each image is taken as a new unit: random
            intercepts at their mean; otherwise the same computation as :meth:`unit_effects`.

        Raises
        ------
        InputError
            For embeddings of the wrong width, or with NaN or infinite values.

        Warns
        -----
        ExtrapolationWarning
            When more than a tenth of the images lie outside the trial's support.
        OverlapWarning
            When more than a tenth have an image-predicted propensity outside [0.1, 0.9].
        """
        return predict(self, embeddings, covariates=covariates, max_draws=max_draws, seed=seed)

    def effect_function(self, *, max_draws: int | None = None, seed: int = 0):
        """A pure JAX function from raw embeddings (image, feature_in) to posterior draws of
        ``(cate, cluster_prob)``, (sample, image) and (sample, image, cluster): differentiable,
        ``jit``- and ``vmap``-able (see :func:`imgcate.prediction.effect_function`)."""
        return effect_function(self, max_draws=max_draws, seed=seed)

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
            provenance=self.provenance,
            overwrite=overwrite,
        )


def load_fit(path: str | Path) -> EffectFit:
    """Load a fit written by :meth:`EffectFit.save` (one saved before 2026-12-05 gets its
    cluster summaries recomputed as :meth:`EffectFit.cluster_effects` now defines them).

    Raises
    ------
    InputError
        If the file is missing, not an imgcate fit, corrupt, or written by an imgcate whose
        model this one no longer has (the message says how to refit).
    """
    parts = read_fit_file(path)
    fit = EffectFit(**{k: v for k, v in parts.items() if k != "summaries_current"})
    return fit if parts["summaries_current"] else with_derived(fit)
