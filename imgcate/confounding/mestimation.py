"""Estimating equations of a fitted propensity model, for standard errors that account for it.

An ATE estimator that plugs in an estimated propensity ``e(x; beta_hat)`` is one block of a
stacked M-estimator: the propensity model's equations ``mean g_i(beta) = 0`` and the
estimator's own ``mean phi_i(theta, beta) = 0``. Its influence function is
``phi_i - H A^{-1} g_i`` (up to the estimator's own Jacobian), with
``A = mean dg_i/dbeta`` and ``H = mean dphi_i/dbeta`` (Lunceford & Davidian 2004, sec. 3;
Stefanski & Boos 2002). For a correctly specified maximum-likelihood propensity this removes
the part of ``phi`` explained by the score, so the variance is smaller than with the
propensity treated as known.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class EstimatingEquations:
    """A propensity model's estimating equations at its estimate.

    Attributes
    ----------
    estfun : numpy.ndarray
        Shape (unit, parameter): each unit's ``g_i(beta_hat)`` (their sum is zero at the
        estimate, up to the solver's tolerance).
    jacobian : numpy.ndarray
        Shape (parameter, parameter): ``A = mean_i dg_i / dbeta`` at the estimate.
    score_gradient : numpy.ndarray
        Shape (unit, parameter): ``de_i / dbeta`` at the scores the estimators use (zero for
        scores moved by clipping).
    """

    estfun: np.ndarray
    jacobian: np.ndarray
    score_gradient: np.ndarray

    def correction(self, h: np.ndarray) -> np.ndarray:
        """``H A^{-1} g_i`` per unit, shape (unit,): subtract it from an estimating function
        whose mean derivative with respect to beta is ``h`` (shape (parameter,)).

        A pseudo-inverse is used so that collinear features (redundant equations) are allowed.
        """
        return self.estfun @ (np.linalg.pinv(self.jacobian).T @ h)


def design_matrix(x: np.ndarray) -> np.ndarray:
    """``[1, standardized x]`` with constant columns dropped, shape (unit, parameter)."""
    sd = x.std(axis=0)
    keep = sd > 0
    z = (x[:, keep] - x[:, keep].mean(axis=0)) / sd[keep]
    return np.column_stack([np.ones(len(x)), z])


def logistic_equations(
    design: np.ndarray,
    t: np.ndarray,
    fitted: np.ndarray,
    coef: np.ndarray,
    C: float,
    scores: np.ndarray,
    free: np.ndarray,
) -> EstimatingEquations:
    """Equations of an L2-penalized logistic regression (penalty ``||coef[1:]||^2 / (2 C)``
    on the summed log likelihood): ``g_i = (t_i - fitted_i) x_i - P coef / (C n)``.

    ``fitted`` are the model's probabilities at ``coef``; ``scores`` are those the estimators
    use (cross-fitted: from models fitted without the unit's fold, which share this
    linearization to first order), ``free`` marks those not moved by clipping.
    """
    n, p = design.shape
    penalty = np.ones(p)
    penalty[0] = 0.0
    estfun = (t - fitted)[:, None] * design - (penalty * coef) / (C * n)
    curvature = fitted * (1 - fitted)
    jacobian = -(design * curvature[:, None]).T @ design / n - np.diag(penalty) / (C * n)
    gradient = (scores * (1 - scores) * free)[:, None] * design
    return EstimatingEquations(estfun, jacobian, gradient)
