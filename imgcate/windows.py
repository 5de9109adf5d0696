"""Windowed reads of chips from an open raster: the chip's shape in pixels, the pixel under a
point, reads that name the raster when GDAL fails, and the multiplier of raw values."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import rasterio
import rasterio.errors
from affine import Affine
from rasterio.io import DatasetReader
from rasterio.windows import Window

from imgcate.errors import InputError, RasterError
from imgcate.raster import raster_label


def chip_shape(ds: DatasetReader, size: float | tuple, size_unit: str) -> tuple[int, int]:
    """(height, width) in pixels of a chip of ``size`` pixels or metres on ``ds``."""
    sy, sx = (size, size) if np.isscalar(size) else tuple(size)
    if size_unit == "m":
        if ds.crs is None or not ds.crs.is_projected:
            raise InputError(
                f"size_unit='m' needs a projected raster, but {ds.name!r} has CRS {ds.crs}; "
                "give the size in pixels (size_unit='px') or reproject the raster."
            )
        sy, sx = sy / abs(ds.transform.e), sx / abs(ds.transform.a)
    h, w = int(round(float(sy))), int(round(float(sx)))
    if h < 1 or w < 1:
        raise InputError(f"size={size!r} {size_unit} gives an empty chip; use a larger size.")
    if h > ds.height or w > ds.width:
        raise InputError(
            f"size={size!r} {size_unit} gives {h} x {w} px chips, larger than raster "
            f"{ds.name!r} ({ds.height} x {ds.width} px); use a smaller size."
        )
    return h, w


@dataclass
class WindowRead:
    """Chips read from one raster, before edge and nodata handling."""

    values: np.ndarray  # (image, band, y, x) float32
    missing: np.ndarray  # (image, y, x) bool: outside the raster or nodata
    transforms: tuple[Affine, ...]
    crs: Any
    band_names: tuple[str, ...]


def scale_values(scale: Any) -> tuple[float, ...] | None:
    """``scale`` (a multiplier of raw values, one or one per band) as a tuple of floats.

    Parameters
    ----------
    scale : float, sequence of float or None
        One multiplier for every band, or one per band read.

    Returns
    -------
    tuple of float or None
        The multipliers; None where ``scale`` is None.

    Raises
    ------
    InputError
        If a value is not a finite number above 0 (0 makes every chip blank), or is text or
        a boolean."""
    if scale is None:
        return None
    try:
        array = np.atleast_1d(np.asarray(scale))
        numbers = array.dtype.kind in "iuf"  # not text ("0.5"), not True / False
        values = tuple(float(v) for v in array.ravel()) if numbers and array.ndim == 1 else ()
    except (TypeError, ValueError):
        values = ()
    if not values or not all(np.isfinite(v) and v > 0 for v in values):
        raise InputError(
            f"scale={scale!r} must be a number above 0, or one per band (e.g. 0.0001 for "
            "reflectance stored as integers times 10,000)."
        )
    return values


def gdal_errors() -> tuple[type[BaseException], ...]:
    """GDAL's own error class as rasterio raises it for a failed read (``CPLE_BaseError``,
    beside ``RasterioIOError``); none where another rasterio moved it."""
    try:
        from rasterio._err import CPLE_BaseError
    except ImportError:  # moved in another rasterio: its read errors are still RasterioError
        return ()
    return (CPLE_BaseError,)


def gdal_words(exc: BaseException) -> str:
    """A GDAL error's text without "See previous exception for details." (an exception the
    user does not see)."""
    return str(exc).replace(" See previous exception for details.", "").strip()


def read_or_explain(ds: DatasetReader, indexes, **options: Any) -> np.ma.MaskedArray:
    """``ds.read(indexes, **options)``; a read GDAL fails (a damaged or cut-short file) is a
    :class:`~imgcate.errors.RasterError` naming the raster and what to do.

    Parameters
    ----------
    ds : rasterio.io.DatasetReader
        An open raster.
    indexes : int or list of int
        Bands to read (1-based).
    **options
        ``DatasetReader.read``'s keywords (``window``, ``out_shape``, ``masked``, ...).

    Returns
    -------
    numpy.ndarray or numpy.ma.MaskedArray
        What ``ds.read`` returns.

    Raises
    ------
    RasterError
        If GDAL cannot read the pixels; it names the raster and the window's rows and columns.
    """
    try:
        return ds.read(indexes, **options)
    except rasterio.errors.RasterioError as exc:
        w = options.get("window")
        at = "" if w is None else f" at rows {w.row_off}-{w.row_off + w.height - 1}"
        at += "" if w is None else f", columns {w.col_off}-{w.col_off + w.width - 1}"
        raise RasterError(
            f"raster {raster_label(ds)!r} could not be read{at} ({gdal_words(exc)}); the file "
            "may be damaged or cut short: check it (gdalinfo -checksum), then re-download or "
            "re-export it."
        ) from exc


#: How near (in pixels) a point may lie before a pixel's left or top edge and still count as
#: on it: a coordinate computed from a pixel corner (a map cell's centre on the Landsat scene's
#: 28.5 m grid) comes back from the inverse transform as 127.99999999999858 or 136.00000000000003.
PIXEL_EDGE_TOL = 1e-6


def pixel_of(transform: Affine, x, y) -> tuple[np.ndarray, np.ndarray]:
    """Row and column of the pixels holding the points (x, y) in the raster CRS, a point on
    a pixel's left or top edge in that pixel, to :data:`PIXEL_EDGE_TOL` pixels: so a chip
    centred on a pixel corner is the same chip whatever the rounding of the corner's
    coordinates (``rasterio.transform.rowcol`` floors the rounded value).

    Parameters
    ----------
    transform : affine.Affine
        The raster's transform (pixel to CRS coordinates).
    x, y : array_like
        Point coordinates in the raster CRS.

    Returns
    -------
    rows, cols : numpy.ndarray
        Integer pixel indices (outside the raster where the points are).
    """
    inverse = ~transform
    x, y = np.asarray(x, float), np.asarray(y, float)
    col = inverse.a * x + inverse.b * y + inverse.c
    row = inverse.d * x + inverse.e * y + inverse.f
    return (
        np.floor(row + PIXEL_EDGE_TOL).astype(int),
        np.floor(col + PIXEL_EDGE_TOL).astype(int),
    )


def read_windows(
    ds: DatasetReader,
    x: np.ndarray,
    y: np.ndarray,
    shape: tuple[int, int],
    indexes: list[int],
    scale: float | Sequence[float] | None,
) -> WindowRead:
    """One windowed read per chip centred on (x, y) in the raster CRS (:func:`pixel_of`)."""
    h, w = shape
    rows, cols = pixel_of(ds.transform, x, y)
    row_off = np.asarray(rows) - h // 2
    col_off = np.asarray(cols) - w // 2
    n = len(x)
    values = np.zeros((n, len(indexes), h, w), np.float32)
    missing = np.ones((n, h, w), bool)
    transforms = []
    for i in range(n):
        r0, c0 = int(row_off[i]), int(col_off[i])
        transforms.append(ds.transform @ Affine.translation(c0, r0))  # the window's
        rr0, cc0 = max(r0, 0), max(c0, 0)
        rr1, cc1 = min(r0 + h, ds.height), min(c0 + w, ds.width)
        if rr1 <= rr0 or cc1 <= cc0:
            continue
        window = Window(cc0, rr0, cc1 - cc0, rr1 - rr0)
        data = read_or_explain(ds, indexes, window=window, masked=True)
        arr = np.ma.getdata(data).astype(np.float32)
        mask = np.ma.getmaskarray(data) | ~np.isfinite(arr)
        sl = (slice(rr0 - r0, rr1 - r0), slice(cc0 - c0, cc1 - c0))
        values[i][(slice(None), *sl)] = np.where(mask, 0.0, arr)
        missing[i][sl] = mask.any(axis=0)
    if scale is not None:
        values = values * np.asarray(scale, np.float32).reshape(-1, 1, 1)
    names = tuple(ds.descriptions[j - 1] or f"band_{j}" for j in indexes)
    return WindowRead(values, missing, tuple(transforms), ds.crs, names)
