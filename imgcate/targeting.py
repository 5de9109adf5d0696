"""The targeting direction: where a fit given a propensity lets its effect have a slope of
its own (docs/model.md, "The targeting slope")."""

from __future__ import annotations

import numpy as np

#: The share of logit(propensity)'s variance the embedding must explain for the effect to get
#: a slope along it: below it the targeting is not on the image (a covariate, a stratum) and a
#: direction fitted to it would be noise.
MIN_TARGETING_R2 = 0.05


def targeting_direction(z: np.ndarray, propensity: np.ndarray | None) -> tuple[float, ...]:
    """The direction of the embedding along which a fit's effect gets its targeting slope.

    Parameters
    ----------
    z : ndarray (unit, feature)
        The model-scale embedding of the trial's units.
    propensity : ndarray (unit,) or None
        The scores given to ``fit`` (clipped to [1e-6, 1 - 1e-6] here); None for a
        randomized trial.

    Returns
    -------
    tuple of float
        ``w`` whose scores ``z w`` are the least-squares fit of logit(propensity), scaled to
        unit sd over the units; () for no propensity, or where the embedding explains less
        than :data:`MIN_TARGETING_R2` of the log-odds' variance.

    Examples
    --------
    >>> z = np.random.default_rng(0).normal(size=(200, 2))
    >>> w = targeting_direction(z, 1 / (1 + np.exp(-z[:, 0])))
    >>> round(float((z @ np.array(w)).std()), 6), bool(abs(w[1]) < 1e-12)
    (1.0, True)
    """
    if propensity is None:
        return ()
    z = np.asarray(z, float)
    p = np.clip(np.asarray(propensity, float), 1e-6, 1 - 1e-6)
    logit = np.log(p) - np.log1p(-p)
    mean = z.mean(0)
    cross = z.T @ z - len(z) * np.outer(mean, mean)  # d x d: no (unit, d) copy at 10^6 units
    coef = np.linalg.lstsq(cross, z.T @ (logit - logit.mean()), rcond=None)[0]
    scores = z @ coef
    if logit.var() == 0 or scores.var() < MIN_TARGETING_R2 * logit.var():
        return ()
    return tuple(coef / scores.std())


def targeting_line(
    z: np.ndarray, direction: tuple[float, ...], propensity: np.ndarray
) -> tuple[float, float]:
    """How the targeting score ``z w`` predicts logit(propensity): the intercept and slope of
    the least-squares line (the fit :func:`targeting_direction` made, along its direction).

    Parameters
    ----------
    z : ndarray (unit, feature)
        The model-scale embedding of the trial's units.
    direction : tuple of float
        ``w`` from :func:`targeting_direction` (not empty).
    propensity : ndarray (unit,)
        The scores given to ``fit`` (clipped to [1e-6, 1 - 1e-6] here).

    Returns
    -------
    tuple of float
        ``(a, b)``: ``expit(a + b z w)`` is the propensity the image alone predicts
        (:func:`image_propensity`).

    Examples
    --------
    >>> z = np.random.default_rng(0).normal(size=(500, 2))
    >>> p = 1 / (1 + np.exp(-(0.5 + 2 * z[:, 0])))
    >>> a, b = targeting_line(z, targeting_direction(z, p), p)
    >>> round(a, 6), round(b / float(z[:, 0].std()), 6)
    (0.5, 2.0)
    """
    p = np.clip(np.asarray(propensity, float), 1e-6, 1 - 1e-6)
    logit = np.log(p) - np.log1p(-p)
    scores = np.asarray(z, float) @ np.asarray(direction, float)
    slope = float(np.cov(scores, logit, bias=True)[0, 1] / scores.var())
    return float(logit.mean() - slope * scores.mean()), slope


def image_propensity(
    z: np.ndarray, direction: tuple[float, ...], line: tuple[float, float]
) -> np.ndarray:
    """The propensity an image alone predicts, ``expit(a + b z w)``: the part of the trial's
    targeting that its images explain, so that a new image can be placed against the trial's
    overlap.

    Parameters
    ----------
    z : ndarray (image, feature)
        Model-scale embeddings (of the trial's units or of new images).
    direction : tuple of float
        ``w`` from :func:`targeting_direction`.
    line : tuple of float
        ``(a, b)`` from :func:`targeting_line`.

    Returns
    -------
    ndarray (image,)
        The image-predicted propensities, in (0, 1) (0 or 1 only in floating point, at
        log-odds beyond about 37).

    Examples
    --------
    >>> image_propensity(np.array([[0.0], [1.0]]), (1.0,), (0.0, 2.0)).round(3)
    array([0.5  , 0.881])
    """
    a, b = line
    log_odds = a + b * (np.asarray(z, float) @ np.asarray(direction, float))
    return 0.5 * (1.0 + np.tanh(0.5 * log_odds))  # expit, without overflow at large |log-odds|
