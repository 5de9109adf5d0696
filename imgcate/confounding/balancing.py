"""Covariate-balancing propensity scores (Imai & Ratkovic 2014), exactly identified for the ATE.

The logistic propensity ``e_i = sigmoid(x_i' beta)`` whose inverse-probability weights balance
the mean of every feature column between the arms:

    sum_i (t_i / e_i - (1 - t_i) / (1 - e_i)) x_i = 0          (x_i includes the constant)

These are the gradient conditions of the convex loss (Zhao 2019, "tailored loss")

    L(beta) = sum_i t_i (exp(-f_i) - f_i) + (1 - t_i) (exp(f_i) + f_i),   f_i = x_i' beta,

so Newton's method on ``L`` finds the unique solution whenever the features do not separate
the arms. With the constant among the columns the Hajek weights of each arm sum to the same
total, so the weighted means of every column are equal: exact balance. With an L2 penalty
``||beta[1:]||^2 / (2 C)`` the balance is approximate.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import expit

from imgcate.confounding.mestimation import EstimatingEquations
from imgcate.errors import SeparationError

#: Largest |logit| the solver accepts before declaring the arms separated by the features.
MAX_LOGIT = 25.0


def _loss_parts(design: np.ndarray, t: np.ndarray, beta: np.ndarray, lam: np.ndarray):
    f = design @ beta
    if np.abs(f).max() > MAX_LOGIT:
        return np.inf, f
    loss = np.mean(t * (np.exp(-f) - f) + (1 - t) * (np.exp(f) + f))
    return loss + 0.5 * np.sum(lam * beta**2), f


def fit_cbps(
    design: np.ndarray, t: np.ndarray, C: float | None = None, max_iter: int = 100
) -> tuple[np.ndarray, dict[str, Any]]:
    """Coefficients of the exactly identified ATE CBPS by damped Newton steps.

    Parameters
    ----------
    design : numpy.ndarray
        ``[1, standardized features]``, shape (unit, parameter).
    t : numpy.ndarray
        0/1 treatment, shape (unit,).
    C : float, optional
        Inverse L2 penalty on the non-constant coefficients (per unit, as in logistic
        regression); None balances exactly.

    Returns
    -------
    beta, info
        Coefficients (parameter,) and ``{"iterations", "max_abs_gradient"}``.

    Raises
    ------
    SeparationError
        When the features separate treated from control units (no balancing weights exist).
    """
    n, p = design.shape
    lam = np.zeros(p)
    if C is not None:
        lam[1:] = 1.0 / (float(C) * n)
    beta = np.zeros(p)
    beta[0] = np.log(t.mean() / (1 - t.mean()))
    loss, f = _loss_parts(design, t, beta, lam)
    ridge = 1e-12 * np.eye(p)
    iterations = 0
    for iterations in range(1, max_iter + 1):  # noqa: B007 (reported below)
        grad = design.T @ (-t * (np.exp(-f) + 1) + (1 - t) * (np.exp(f) + 1)) / n + lam * beta
        curvature = t * np.exp(-f) + (1 - t) * np.exp(f)
        hess = (design * curvature[:, None]).T @ design / n + np.diag(lam) + ridge
        step = np.linalg.lstsq(hess, grad, rcond=None)[0]
        decrement = float(grad @ step)  # twice the predicted decrease of the loss
        if np.abs(grad).max() < 1e-10 or decrement < 1e-20:
            break
        size = 1.0
        while size > 1e-10:
            new_loss, new_f = _loss_parts(design, t, beta - size * step, lam)
            if new_loss <= loss - 1e-4 * size * decrement:
                break
            size /= 2
        else:
            if np.abs(grad).max() < 1e-7:  # converged to the loss's floating-point resolution
                break
            raise SeparationError(separated_message(C))
        beta, loss, f = beta - size * step, new_loss, new_f
    return beta, {"iterations": iterations, "max_abs_gradient": float(np.abs(grad).max())}


def separated_message(C: float | str | None) -> str:
    """What to do when the balancing fit drives a log-odds past :data:`MAX_LOGIT`."""
    if C is None:
        what = "no weights balance them exactly"
        advice = (
            "C='auto' (the weakest penalty that has a solution: a strong one, such as C=0.01, "
            "leaves confounding behind) or method='logistic'"
        )
    elif C == "auto":
        what = f"no penalty down to C={CBPS_AUTO_C_GRID[-1]:g} has a solution"
        advice = "drop the feature that (nearly) identifies the treatment, or method='logistic'"
    else:
        what = f"the balancing fit with C={C:g} found no solution"
        advice = f"a smaller C (a stronger penalty, e.g. C={float(C) / 10:g}) or C='auto'"
    return (
        f"the features (nearly) separate treated from control units, so {what} "
        f"(covariate-balancing propensity). Such a study has units that only one arm "
        f"represents. Get scores with {advice}, check their weighted balance "
        f"(diagnostics['max_abs_smd']), and estimate the effect where the arms overlap "
        f"(ate_estimates(..., trim='crump'))."
    )


#: Penalties ``estimate_propensity(method="cbps", C="auto")`` tries, weakest first, after the
#: exact fit: it keeps the first with a solution.
CBPS_AUTO_C_GRID = (10.0, 3.0, 1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001)


def cbps_equations(
    design: np.ndarray,
    t: np.ndarray,
    beta: np.ndarray,
    C: float | None,
    scores: np.ndarray,
    free: np.ndarray,
) -> EstimatingEquations:
    """The balance conditions as estimating equations:
    ``g_i = (t_i / e_i - (1 - t_i) / (1 - e_i)) x_i - lam beta`` with Jacobian
    ``-mean[(t (1 - e) / e + (1 - t) e / (1 - e)) x x'] - diag(lam)``."""
    n, p = design.shape
    lam = np.zeros(p)
    if C is not None:
        lam[1:] = 1.0 / (float(C) * n)
    e = expit(design @ beta)
    estfun = (t / e - (1 - t) / (1 - e))[:, None] * design - lam * beta
    curvature = t * (1 - e) / e + (1 - t) * e / (1 - e)
    jacobian = -(design * curvature[:, None]).T @ design / n - np.diag(lam)
    gradient = (scores * (1 - scores) * free)[:, None] * design
    return EstimatingEquations(estfun, jacobian, gradient)
