"""What every simulator returns: a :class:`SimulatedTrial` (the trial, its image embeddings
and the truth that generated it), with a :class:`Truth` per scenario."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.special import softmax

from imgcate.embeddings import Embeddings
from imgcate.errors import InputError
from imgcate.units import Trial


@dataclass(frozen=True)
class Truth:
    """What generated a simulated trial, unit by unit (every scenario knows these).

    Attributes
    ----------
    tau_unit : numpy.ndarray
        Shape (unit,): each unit's realised treatment effect on the outcome scale.
    cate : numpy.ndarray
        Shape (unit,): the effect expected given what the unit's image shows, the estimand of
        a model's unit CATE (equal to ``tau_unit`` where the image fixes the effect).
    propensity : numpy.ndarray
        Shape (unit,): each unit's probability of treatment.
    mu0 : numpy.ndarray
        Shape (unit,): each unit's expected outcome without treatment.
    """

    tau_unit: np.ndarray
    cate: np.ndarray
    propensity: np.ndarray
    mu0: np.ndarray

    @property
    def ate(self) -> float:
        """The sample average treatment effect, the mean of ``tau_unit``."""
        return float(np.mean(self.tau_unit))


@dataclass(frozen=True)
class MixtureTruth(Truth):
    """Truth of :func:`~imgcate.simulate.simulate_trial`: latent clusters of a Gaussian mixture.

    Attributes
    ----------
    cluster : numpy.ndarray
        Shape (unit,): true effect cluster of each unit (0..K-1, ordered by effect).
    tau_cluster : numpy.ndarray
        Shape (cluster,): effect of each cluster on the outcome scale.
    cluster_prob : numpy.ndarray
        Shape (unit, cluster): true ``P(cluster = k | embedding)``; ``cate`` is
        ``cluster_prob @ tau_cluster``.
    centers, spread, weights :
        Mixture centres (cluster, feature), the embedding noise sd and the cluster shares, to
        compute the truth of new embeddings (:meth:`cate_of`).
    """

    cluster: np.ndarray
    tau_cluster: np.ndarray
    cluster_prob: np.ndarray
    centers: np.ndarray
    spread: float
    weights: np.ndarray

    @property
    def tau_cluster_assigned(self) -> np.ndarray:
        """Shape (cluster,): each cluster's effect as the model defines it (``tau_cluster`` of
        :meth:`imgcate.EffectFit.cluster_effects`): the average of ``cate`` over the trial's
        units whose most probable cluster (``cluster_prob``) is k. Where clusters overlap in
        the embedding it lies inside ``tau_cluster``: an image that may belong to either has
        an effect in between."""
        assigned = self.cluster_prob.argmax(1)
        return np.array([self.cate[assigned == k].mean() for k in range(len(self.tau_cluster))])

    def cluster_prob_of(self, embedding: np.ndarray) -> np.ndarray:
        """True cluster probabilities of new embeddings, shape (n, cluster)."""
        e = np.asarray(embedding, dtype=float)
        logits = (e @ self.centers.T - 0.5 * (self.centers**2).sum(1)) / self.spread**2
        return softmax(logits + np.log(self.weights), axis=1)

    def cate_of(self, embedding: np.ndarray) -> np.ndarray:
        """True conditional effect of new embeddings, shape (n,)."""
        return self.cluster_prob_of(embedding) @ self.tau_cluster


@dataclass(frozen=True)
class SceneTruth(Truth):
    """Truth of a trial on a scene (:func:`~imgcate.simulate.simulate_scene_trial`,
    :func:`~imgcate.simulate.landsat_trial`): the cluster is a function of the chip.

    Attributes
    ----------
    cluster : numpy.ndarray
        int, shape (unit,): true cluster 0..K-1 (ordered by effect).
    tau_cluster : numpy.ndarray
        Shape (cluster,): effect of each cluster on the outcome scale; with ``ramp`` the ends
        of the curve, not any unit's effect (``tau_unit`` is).
    share : numpy.ndarray
        Shape (unit,): the chip statistic the cluster is a function of (built-up or vegetated
        share of the chip's pixels).
    thresholds : numpy.ndarray
        Shape (cluster - 1,): cut points on ``share``; ``cluster = digitize(share, thresholds)``.
    chip_size : int
        Chip size in pixels the statistic was computed on (window centred on the unit's pixel).
    """

    cluster: np.ndarray
    tau_cluster: np.ndarray
    share: np.ndarray
    thresholds: np.ndarray
    chip_size: int


@dataclass(frozen=True)
class ConfoundedTruth(Truth):
    """Truth of :func:`~imgcate.simulate.simulate_confounded`: a latent image property drives
    both targeting and outcomes.

    Attributes
    ----------
    latent : numpy.ndarray
        Shape (unit,): the latent "built-up share" the features are noisy functions of.
    mu1 : numpy.ndarray
        Shape (unit,): each unit's expected outcome under treatment.
    """

    latent: np.ndarray
    mu1: np.ndarray

    @classmethod
    def constant_effect(
        cls, ate: float, propensity: np.ndarray, mu0: np.ndarray, latent: np.ndarray
    ) -> ConfoundedTruth:
        """The truth of a design whose effect is ``ate`` for every unit."""
        n_units = len(mu0)
        return cls(
            tau_unit=np.full(n_units, float(ate)),
            cate=np.full(n_units, float(ate)),
            propensity=propensity,
            mu0=mu0,
            latent=latent,
            mu1=mu0 + ate,
        )


@dataclass(frozen=True)
class SimulatedTrial:
    """A simulated trial: the Trial, the embeddings of its images, and the truth.

    Every simulator in :mod:`imgcate.simulate` returns one.

    Attributes
    ----------
    trial : Trial
        The units (id, lon/lat or x/y, treatment, outcome, covariates, ...).
    embeddings : Embeddings or None
        One row per image (keyed by ``trial.image_keys``); None for trials on a scene, whose
        images are the chips of ``scene`` (cut them with :func:`imgcate.extract_chips`).
    truth : Truth
        What generated the trial (a :class:`MixtureTruth`, :class:`SceneTruth` or
        :class:`ConfoundedTruth`).
    scene : pathlib.Path or None
        The raster the units sit on (trials on a scene).
    land_cover : numpy.ndarray or None
        Shape (y, x): the scene's land-cover classes (trials on a scene).
    """

    trial: Trial
    embeddings: Embeddings | None
    truth: Truth
    scene: Path | None = None
    land_cover: np.ndarray | None = None

    @property
    def treatment(self) -> np.ndarray:
        """The 0/1 treatment, shape (unit,)."""
        return self.trial.treatment_array

    @property
    def outcome(self) -> np.ndarray:
        """The outcome, shape (unit,)."""
        return self.trial.outcome_array

    @property
    def features(self) -> np.ndarray:
        """Each unit's image embedding in unit order, shape (unit, feature)."""
        if self.embeddings is None:
            raise InputError(
                "this simulated trial has no embeddings (its images are the chips of "
                f"{str(self.scene)!r}); cut and embed them: imgcate.embed("
                "imgcate.extract_chips(sim.trial, sim.scene, size), seed=0)."
            )
        return np.array(self.embeddings.for_keys(self.trial.image_keys))  # the caller's copy

    def difference_in_means(
        self, groups: np.ndarray, n_groups: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The oracle's effect of each group of units and its standard error: treated against
        untreated difference in means of the outcome less its true untreated mean
        (``truth.mu0``), so that no baseline is estimated; its standard error is Neyman's
        (each arm's variance with divisor n - 1). A yardstick for a model's intervals of the
        same groups (their sds, their misses).

        Parameters
        ----------
        groups : numpy.ndarray
            Shape (unit,): each unit's group, an integer 0..G-1 (e.g.
            ``truth.cluster_prob.argmax(1)``).
        n_groups : int, optional
            G (default: the largest label + 1); groups without units get NaN.

        Returns
        -------
        estimate, se : numpy.ndarray
            Shape (G,) each; NaN where an arm of the group has fewer than two units.

        Raises
        ------
        InputError
            If ``groups`` is not one non-negative integer per unit, or has a label of
            ``n_groups`` or more; or if the outcome is binary and ``truth.mu0`` is not a
            probability (a bernoulli :func:`~imgcate.simulate.simulate_trial`, whose truth is
            on the log-odds scale).

        Examples
        --------
        >>> from imgcate.simulate import simulate_trial
        >>> sim = simulate_trial(seed=0, n_units=2000, n_clusters=2)
        >>> estimate, se = sim.difference_in_means(sim.truth.cluster)
        >>> bool((abs(estimate - sim.truth.tau_cluster) < 4 * se).all())
        True
        """
        groups = np.asarray(groups)
        n = self.trial.n_units
        if groups.shape != (n,) or not np.issubdtype(groups.dtype, np.integer):
            raise InputError(
                f"groups must be one integer per unit (shape ({n},)), got shape "
                f"{groups.shape} of {groups.dtype}."
            )
        if n and groups.min() < 0:
            raise InputError("groups must be labels 0..G-1; some are negative.")
        size = int(groups.max()) + 1 if n else 0
        if n_groups is not None:
            if size > n_groups:
                raise InputError(f"groups has labels up to {size - 1}, beyond n_groups={n_groups}.")
            size = n_groups
        binary = np.isin(self.outcome, (0.0, 1.0)).all()
        if n and binary and ((self.truth.mu0 < 0) | (self.truth.mu0 > 1)).any():
            raise InputError(
                "this trial's outcome is binary but its truth's untreated means are not "
                "probabilities (simulate_trial(likelihood='bernoulli') keeps them, and the "
                "effects, on the log-odds scale): the oracle's difference in means needs the "
                "expected untreated outcome; use a gaussian or student_t trial."
            )
        residual = self.outcome - self.truth.mu0
        treated = self.treatment == 1
        means, variances, counts = [], [], []
        for arm in (treated, ~treated):
            g, r = groups[arm], residual[arm]
            count = np.bincount(g, minlength=size).astype(float)
            total = np.bincount(g, weights=r, minlength=size)
            mean = total / np.maximum(count, 1)
            square = np.bincount(g, weights=(r - mean[g]) ** 2, minlength=size)
            means.append(mean)
            variances.append(square / np.maximum(count - 1, 1))
            counts.append(count)
        enough = (counts[0] >= 2) & (counts[1] >= 2)
        estimate = np.where(enough, means[0] - means[1], np.nan)
        se = np.sqrt(
            variances[0] / np.maximum(counts[0], 1) + variances[1] / np.maximum(counts[1], 1)
        )
        return estimate, np.where(enough, se, np.nan)
