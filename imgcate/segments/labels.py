"""Segments of chips: SLIC superpixels of a colour composite, or a regular grid."""

from __future__ import annotations

from typing import Literal

import numpy as np

from imgcate.chips import Chips, as_chips
from imgcate.errors import InputError
from imgcate.optional import require
from imgcate.validation import check_choice, check_positive_int

SegmentMethod = Literal["slic", "grid"]


SEGMENT_METHODS = ("slic", "grid")


def _grid_shape(n_segments: int, height: int, width: int) -> tuple[int, int]:
    """(rows, cols) with rows * cols == n_segments, as square as the chip's aspect allows."""
    pairs = [(r, n_segments // r) for r in range(1, n_segments + 1) if n_segments % r == 0]
    aspect = height / width
    rows, cols = min(pairs, key=lambda p: abs(np.log((p[0] / p[1]) / aspect)))
    if rows > height or cols > width:
        raise InputError(
            f"n_segments={n_segments} gives a {rows} x {cols} grid, finer than the "
            f"{height} x {width} px chips; use fewer segments."
        )
    return rows, cols


def grid_labels(height: int, width: int, n_segments: int) -> np.ndarray:
    """Regular-grid segment labels of one chip, row-major: shape (y, x), values 0..n-1.

    Parameters
    ----------
    height, width : int
        Chip size in pixels.
    n_segments : int
        Number of blocks; factorized into rows x cols as close to the chip's aspect as possible
        (16 -> 4 x 4, 12 -> 3 x 4).

    Returns
    -------
    numpy.ndarray
        int32, shape (y, x).

    Examples
    --------
    >>> grid_labels(4, 4, 4)
    array([[0, 0, 1, 1],
           [0, 0, 1, 1],
           [2, 2, 3, 3],
           [2, 2, 3, 3]], dtype=int32)
    """
    rows, cols = _grid_shape(check_positive_int("n_segments", n_segments), height, width)
    r = np.arange(height) * rows // height
    c = np.arange(width) * cols // width
    return (r[:, None] * cols + c[None, :]).astype(np.int32)


def composite(
    values: np.ndarray,
    bands: tuple[int, ...] | None = None,
    percentiles: tuple[float, float] = (2.0, 98.0),
) -> np.ndarray:
    """A percentile-stretched colour composite of one chip: (band, y, x) -> (y, x, channel).

    Parameters
    ----------
    values : numpy.ndarray
        One chip, shape (band, y, x).
    bands : tuple of int, optional
        0-based bands for the channels; default (3, 2, 1) (false colour NIR/red/green for
        Landsat band order) when the chip has at least 4 bands, else all bands.
    percentiles : (float, float)
        Each channel is mapped linearly from these percentiles to [0, 1] and clipped.

    Returns
    -------
    numpy.ndarray
        float64 in [0, 1], shape (y, x, channel).
    """
    n_bands = values.shape[0]
    if bands is None:
        bands = (3, 2, 1) if n_bands >= 4 else tuple(range(n_bands))
    bands = tuple(int(b) for b in bands)
    bad = [b for b in bands if not 0 <= b < n_bands]
    if bad:
        raise InputError(
            f"bands={bands} names band(s) {bad} but the chips have {n_bands} bands "
            f"(0-based: 0..{n_bands - 1})."
        )
    img = np.moveaxis(np.asarray(values, dtype=np.float64)[list(bands)], 0, -1)
    lo, hi = np.percentile(img, percentiles, axis=(0, 1))
    span = np.where(hi > lo, hi - lo, 1.0)
    return np.clip((img - lo) / span, 0.0, 1.0)


def _slic_labels(
    values: np.ndarray, n_segments: int, compactness: float, bands: tuple[int, ...] | None
) -> np.ndarray:
    slic = require(
        "skimage.segmentation", "segments", "SLIC superpixels (segment_chips(method='slic'))"
    ).slic

    img = composite(values, bands)
    labels = slic(
        img,
        n_segments=n_segments,
        compactness=compactness,
        start_label=0,
        channel_axis=-1,
        convert2lab=False,
        enforce_connectivity=True,
    )
    _, contiguous = np.unique(labels, return_inverse=True)
    return contiguous.reshape(labels.shape).astype(np.int32)


def segment_chips(
    chips: Chips | np.ndarray,
    method: SegmentMethod = "slic",
    *,
    n_segments: int = 16,
    compactness: float = 0.3,
    bands: tuple[int, ...] | None = None,
) -> np.ndarray:
    """Segment each chip into SLIC superpixels or a regular grid.

    Parameters
    ----------
    chips : Chips or array_like
        Single-date chips, (image, band, y, x).
    method : {"slic", "grid"}
        ``"slic"``: SLIC superpixels (scikit-image) of a percentile-stretched colour composite
        (see :func:`composite`); the number of segments per chip is close to, not exactly,
        ``n_segments``. ``"grid"``: ``n_segments`` regular blocks, the same in every chip, so
        segment s is the same grid position in every image.
    n_segments : int
        Target number of segments.
    compactness : float
        SLIC trade-off between colour similarity and square shape (higher = squarer). The
        composite is clustered in its [0, 1] stretched values (not CIELAB, so any band count
        works), which puts useful values near 0.1-1 rather than scikit-image's Lab-scale 10;
        0.3 gives close to ``n_segments`` superpixels on noisy 32 px chips.
    bands : tuple of int, optional
        0-based bands of the SLIC composite (default (3, 2, 1) with >= 4 bands, else all).

    Returns
    -------
    numpy.ndarray
        int32, shape (image, y, x): segment label of each pixel, 0..n_i-1 per chip.

    Raises
    ------
    InputError
        For an unknown method, a non-positive ``n_segments``, a grid finer than the chip, or
        bands the chips do not have.

    Notes
    -----
    SLIC and the grid are deterministic, so no seed is needed.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(2, 3, 16, 16))
    >>> segment_chips(x, "grid", n_segments=4).shape
    (2, 16, 16)
    """
    check_choice("method", method, SEGMENT_METHODS)
    n_segments = check_positive_int("n_segments", n_segments)
    chips = as_chips(chips)
    n_img, _, height, width = chips.values.shape
    if method == "grid":
        return np.broadcast_to(
            grid_labels(height, width, n_segments), (n_img, height, width)
        ).copy()
    if compactness <= 0:
        raise InputError(f"compactness={compactness} must be > 0 (0.3 is a good start).")
    return np.stack([_slic_labels(v, n_segments, compactness, bands) for v in chips.values])
