"""Band identity: which band is which, checked by description and by what the bands hold.

Chips record their band names and each band's mean and sd (``Chips.spec()``); an encoder
keeps that record, and so does every fit made from its embeddings. New chips and map tiles are
checked against it:

- described bands must carry the trial's names in the trial's order (else a ``RasterError``
  that shows both lists);
- undescribed bands, where the trial's were named, are assumed to be in the trial's order and
  a :class:`~imgcate.errors.BandWarning` says so, naming that order;
- whatever the names, bands whose means and sds fit the trial's clearly better in another
  order (a reversed or shuffled stack) give a :class:`~imgcate.errors.BandWarning` naming
  that order, and bands that all look the trial's times one factor (other units) give one
  naming the factor.

:func:`rgb_bands` finds the red, green and blue bands by name, for true-colour figures.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from imgcate.errors import BandWarning, RasterError

#: A permutation of the bands is reported when its mismatch is below this share of the
#: mismatch of the order given, and the order given is off by more than
#: :data:`MISMATCH_FLOOR` trial sds per band on average.
PERMUTATION_GAIN = 0.5
MISMATCH_FLOOR = 0.75

#: Values are reported as scaled when every band's mean (of the bands whose trial mean is
#: clearly off zero) and sd is the trial's times about one factor, at least this far from 1
#: (either way), the bands' ratios within a factor of :data:`SCALE_SPREAD` of one another.
SCALE_WARN = 3.0
SCALE_SPREAD = 2.0

#: Two bands of a suggested order are called alike (their order among themselves not told by
#: their values) when exchanging them costs less than this many trial sds in all.
ALIKE = 1.0


def default_names(n: int) -> list[str]:
    """Names given to undescribed bands: ``band_1``, ``band_2``, ..."""
    return [f"band_{i + 1}" for i in range(n)]


def is_described(names: Sequence[str]) -> bool:
    """Whether band names are real descriptions rather than the ``band_i`` defaults."""
    names = list(names)
    return bool(names) and all(
        n and n != d for n, d in zip(names, default_names(len(names)), strict=True)
    )


def band_stats(values: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-band mean and sd over every pixel of chips (..., band, y, x)."""
    arr = np.asarray(values, dtype=np.float64)
    moved = np.moveaxis(arr, -3, 0).reshape(arr.shape[-3], -1)
    return moved.mean(axis=1).tolist(), moved.std(axis=1).tolist()


def order_costs(
    means: Sequence[float], spec: dict[str, Any], sds: Sequence[float] | None = None
) -> np.ndarray:
    """Mismatch of each new band taken for each trial band.

    Parameters
    ----------
    means, sds : sequence of float
        Per-band means (and sds, optional) of the new data.
    spec : dict
        The trial's chip spec (``band_mean``, ``band_sd``).

    Returns
    -------
    ndarray (trial band, new band)
        The difference of means in trial sds, plus twice the absolute log ratio of the sds
        (when given).
    """
    want = np.asarray(spec["band_mean"], float)
    sd = np.maximum(np.asarray(spec.get("band_sd") or np.ones_like(want), float), 1e-9)
    cost = np.abs(np.asarray(means, float)[None, :] - want[:, None]) / sd[:, None]
    if sds is not None and spec.get("band_sd"):
        ratio = np.maximum(np.asarray(sds, float), 1e-9)[None, :] / sd[:, None]
        cost = cost + 2 * np.abs(np.log(ratio))
    return cost


def best_order(
    means: Sequence[float], spec: dict[str, Any], sds: Sequence[float] | None = None
) -> tuple[list[int], float, float]:
    """The band order whose statistics best fit the trial's, and the mismatch
    (:func:`order_costs`) of it and of the order given, per band."""
    from scipy.optimize import linear_sum_assignment

    cost = order_costs(means, spec, sds)
    rows, cols = linear_sum_assignment(cost)
    order = cols[np.argsort(rows)].tolist()
    return order, float(cost[rows, cols].mean()), float(np.diag(cost).mean())


def alike_bands(
    order: Sequence[int],
    means: Sequence[float],
    spec: dict[str, Any],
    sds: Sequence[float] | None = None,
) -> list[int]:
    """Positions of ``order`` whose bands' order among themselves the values do not tell.

    Parameters
    ----------
    order : sequence of int
        A band order (:func:`best_order`): the new band taken for each trial band.
    means, spec, sds
        As in :func:`order_costs`.

    Returns
    -------
    list of int
        Positions whose new band could be exchanged with another's at a cost below
        :data:`ALIKE` trial sds.
    """
    cost = order_costs(means, spec, sds)
    alike = set()
    for i in range(len(order)):
        for k in range(i + 1, len(order)):
            kept = cost[i, order[i]] + cost[k, order[k]]
            if cost[i, order[k]] + cost[k, order[i]] - kept < ALIKE:
                alike.update((i, k))
    return sorted(alike)


def check_band_identity(
    names: Sequence[str],
    spec: dict[str, Any] | None,
    *,
    source: str,
    means: Sequence[float] | None = None,
    sds: Sequence[float] | None = None,
    hint: str = "choose them with bands=[...] / --band",
    error: type[Exception] = RasterError,
    stacklevel: int = 3,
    scale: Sequence[float] | None = None,
) -> None:
    """Check bands against the trial's chips (``spec``, from ``Chips.spec()``).

    Parameters
    ----------
    names : sequence of str
        Band descriptions of the new data (``band_i`` for undescribed bands).
    spec : dict or None
        The trial's chip record (``encoder.chip_spec``); None checks nothing.
    source : str
        How messages name the new data (a raster path, "chips").
    means, sds : sequence of float, optional
        Per-band means and sds of the new data (as the trial's were measured), for the order
        check.
    hint : str
        How to choose bands, for the messages.
    error : exception class
        What to raise (:class:`~imgcate.errors.RasterError` for rasters, ``InputError`` for
        chips).
    stacklevel : int
        Where warnings point, as ``warnings.warn`` counts from here.
    scale : sequence of float, optional
        The factor per band the new data were read with (``means`` and ``sds`` include it),
        where another may be given (maps' ``scale=``): a warning of bands in other units
        then names the scale that brings them to the trial's. None: the data must be
        converted (new chips, read with the trial's scale).

    Raises
    ------
    RasterError
        If described bands differ from the trial's described bands, or their number does.

    Warns
    -----
    BandWarning
        Undescribed bands where the trial's were named (the order assumed is named), or band
        means that fit the trial's clearly better in another order.
    """
    if not spec:
        return
    names = list(names)
    want = list(spec.get("band_names") or [])
    if want and len(want) != len(names):
        raise error(
            f"{source} gives {len(names)} band(s) {names} but the trial's chips had "
            f"{len(want)}: {want}; {hint}."
        )
    if is_described(want) and is_described(names) and names != want:
        same = sorted(names) == sorted(want)
        what = "the same bands in another order" if same else "other bands"
        fix = (
            f"reorder them (bands={want!r} / --band {' --band '.join(want)})"
            if same
            else (
                f"give the trial's bands ({hint}); or, if these are the trial's bands under "
                "other names (stacked single-band files are named by file), name them in order "
                f"(--band-name {' --band-name '.join(want)}; names= or a mapping in Python)"
            )
        )
        raise error(
            f"{source} has bands {names} but the trial's chips had bands {want}: {what}; {fix}."
        )
    if is_described(want) and not is_described(names):
        warnings.warn(
            f"{source} has no band descriptions, so its bands are assumed to be, in order, "
            f"{want}; describe them (imgcate.raster.stack_bands(..., names=...)) to have them "
            "checked.",
            BandWarning,
            stacklevel=stacklevel,
        )
    if means is None or not spec.get("band_mean") or len(spec["band_mean"]) != len(names):
        return
    factor = common_scale(means, spec, sds)
    if factor is not None:
        if scale is not None:
            fix = np.asarray(scale, float) / factor
            shown = f"{fix[0]:.3g}" if np.allclose(fix, fix[0]) else str([f"{v:.3g}" for v in fix])
            fix_text = f"read them with scale={shown} (--scale)"
        else:
            fix_text = f"convert them to the trial's units (multiply them by {1 / factor:.3g})"
        warnings.warn(
            f"the values of {source} look {factor:.3g} times the trial's chips' (every band's "
            "mean and sd): other units, or a scale factor not applied? If they are the same "
            f"bands, {fix_text}; as they are, they are far from what the fit saw.",
            BandWarning,
            stacklevel=stacklevel,
        )
        return
    order, best, given = best_order(means, spec, sds)
    if (
        order != list(range(len(names)))
        and given > MISMATCH_FLOOR
        and best < PERMUTATION_GAIN * given
    ):
        label = want if is_described(want) else default_names(len(names))
        looks = [names[j] for j in order]
        reversed_ = order == list(range(len(names)))[::-1]
        alike = alike_bands(order, means, spec, sds)
        unsure = (
            f"; but {[looks[i] for i in alike]} have values too alike to tell their order "
            f"among themselves (as the trial's {[label[i] for i in alike]}), so that part is a "
            "guess: find their order in the stack's own record, not from this list"
            if alike
            else ""
        )
        warnings.warn(
            f"the bands of {source} look {'reversed' if reversed_ else 'out of order'}: their "
            f"values fit the trial's bands {label} best in the order {looks} (mismatch "
            f"{best:.2f} vs {given:.2f} trial sds per band in the order given){unsure}; check "
            f"the stack's band order ({hint}).",
            BandWarning,
            stacklevel=stacklevel,
        )


def common_scale(
    means: Sequence[float], spec: dict[str, Any], sds: Sequence[float] | None = None
) -> float | None:
    """The factor by which new data's bands look scaled against the trial's, or None.

    A factor is returned when at least two bands have trial means clearly off zero (beyond
    one trial sd), the new means of those bands are their trial means times positive ratios
    within a factor of :data:`SCALE_SPREAD` of one another, and so are the sds where given, and
    the ratios' geometric mean is at least :data:`SCALE_WARN` from 1: reflectance stored as
    integers (x 10,000) against chips read as fractions, for example."""
    want = np.asarray(spec["band_mean"], float)
    want_sd = np.asarray(spec.get("band_sd") or np.zeros_like(want), float)
    keep = np.abs(want) > np.maximum(want_sd, 1e-12)
    if keep.sum() < 2:
        return None
    ratios = np.asarray(means, float)[keep] / want[keep]
    if sds is not None and spec.get("band_sd"):
        spread = keep & (want_sd > 1e-12)
        ratios = np.concatenate([ratios, np.asarray(sds, float)[spread] / want_sd[spread]])
    if not (np.all(ratios > 0) and ratios.max() <= SCALE_SPREAD * ratios.min()):
        return None
    factor = float(np.exp(np.mean(np.log(ratios))))
    return factor if max(factor, 1 / factor) >= SCALE_WARN else None


def rgb_bands(names: Sequence[str]) -> tuple[int, int, int] | None:
    """0-based indexes of the red, green and blue bands, found by name; None if one is missing.

    A band matches when its name holds the colour as a word, in any case ("red", "Red",
    "B4_red", "SR_B2 blue"); "red edge" bands are passed over.
    """
    found = []
    for colour in ("red", "green", "blue"):
        word = re.compile(rf"\b{colour}\b", re.I)
        hits = [
            i
            for i, name in enumerate(names)
            if word.search(str(name).replace("_", " ")) and "edge" not in str(name).lower()
        ]
        if not hits:
            return None
        found.append(hits[0])
    return found[0], found[1], found[2]
