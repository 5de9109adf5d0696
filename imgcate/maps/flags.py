"""Where a map's tiles stand against the trial: outside its support (the extrapolation
score) or, for a fit with a targeting slope, outside its overlap (the image-predicted
propensity); the layers that say so and the warnings when many tiles are."""

from __future__ import annotations

import warnings

import numpy as np

from imgcate.ates import OVERLAP_LIMITS, outside_overlap
from imgcate.errors import ExtrapolationWarning, OverlapWarning
from imgcate.prediction import EXTRAPOLATION_WARN_SHARE


def overlap_layers(propensity: np.ndarray) -> dict[str, tuple]:
    """The map variables of a fit with a targeting slope: ``image_propensity`` and
    ``outside_overlap`` (1 outside :data:`imgcate.ates.OVERLAP_LIMITS`, NaN where no tile)."""
    lo, hi = OVERLAP_LIMITS
    dims = ("y", "x")
    return {
        "image_propensity": (
            dims,
            propensity,
            {"long_name": "propensity the tile's image alone predicts (the fit's targeting)"},
        ),
        "outside_overlap": (
            dims,
            overlap_flags(propensity),
            {"long_name": f"1 if image_propensity is outside [{lo}, {hi}]"},
        ),
    }


def overlap_flags(propensity: np.ndarray) -> np.ndarray:
    """The ``outside_overlap`` layer (float32) of tiles' image-predicted propensities: 1
    outside :data:`imgcate.ates.OVERLAP_LIMITS`, 0 inside, NaN where no tile."""
    flags = np.where(np.isnan(propensity), np.nan, outside_overlap(propensity))
    return flags.astype(np.float32)


def warn_overlap(outside: int, scored: int, stacklevel: int = 3) -> None:
    """Warn when more than :data:`EXTRAPOLATION_WARN_SHARE` of a map's ``scored`` tiles have
    an image-predicted propensity outside :data:`imgcate.ates.OVERLAP_LIMITS`."""
    share = outside / scored if scored else 0.0
    if share > EXTRAPOLATION_WARN_SHARE:
        lo, hi = OVERLAP_LIMITS
        warnings.warn(
            f"{share:.0%} of the map's tiles have an image-predicted propensity outside "
            f"[{lo}, {hi}]: among the trial's units like them one arm was rare, so their "
            "effects are carried over from units unlike them and their intervals can be far "
            "too narrow (see the 'outside_overlap' layer).",
            OverlapWarning,
            stacklevel=stacklevel,
        )


def warn_extrapolation(outside: int, scored: int, limit: float, stacklevel: int = 3) -> None:
    """Warn when more than :data:`EXTRAPOLATION_WARN_SHARE` of a map's ``scored`` tiles (with
    an extrapolation score) lie outside the trial's support."""
    share = outside / scored if scored else 0.0
    if share > EXTRAPOLATION_WARN_SHARE:
        warnings.warn(
            f"{share:.0%} of the map's tiles lie outside the trial's support (extrapolation > "
            f"{limit:.2f}); their effects are extrapolation, not evidence (see the "
            "'outside_support' layer).",
            ExtrapolationWarning,
            stacklevel=stacklevel,
        )
