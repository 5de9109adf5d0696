"""Doubly robust (AIPW) scores of unit-level effects, the input of RATE and calibration."""

from __future__ import annotations

from typing import Any

import numpy as np

from imgcate.validation import (
    as_propensity,
    as_treatment,
    as_vector,
)


def aipw_scores(outcome: Any, treatment: Any, propensity: Any, mu0: Any, mu1: Any) -> np.ndarray:
    """Doubly robust (AIPW) scores of the unit-level treatment effect.

    ``Γ_i = mu1_i − mu0_i + t_i (y_i − mu1_i) / e_i − (1 − t_i)(y_i − mu0_i) / (1 − e_i)``.

    Parameters
    ----------
    outcome, treatment : array_like, shape (unit,)
        Observed outcome and binary 0/1 treatment.
    propensity : float or array_like, shape (unit,)
        P(treatment = 1 | x), strictly in (0, 1); a scalar when it is known by design.
    mu0, mu1 : array_like, shape (unit,)
        Predicted outcomes under control and treatment (ideally cross-fitted).

    Returns
    -------
    numpy.ndarray, shape (unit,)
        The scores; their mean is the AIPW estimate of the average treatment effect.

    Raises
    ------
    InputError
        For mismatched lengths, a non-binary treatment or propensities outside (0, 1).

    Examples
    --------
    >>> aipw_scores([1.0, 0.0], [1, 0], 0.5, [0.0, 0.0], [1.0, 1.0]).tolist()
    [1.0, 1.0]
    """
    y = as_vector("outcome", outcome)
    n = len(y)
    t = as_treatment(treatment, n)
    e = as_propensity(propensity, n)
    m0 = as_vector("mu0", mu0, n)
    m1 = as_vector("mu1", mu1, n)
    return m1 - m0 + t * (y - m1) / e - (1 - t) * (y - m0) / (1 - e)
