"""Raster access shared by chips and maps: opening, band lookup, windowed reads."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.io import DatasetReader
from rasterio.windows import Window

from imgcate.errors import InputError, RasterError


def open_raster(raster: Any) -> tuple[DatasetReader, bool]:
    """An open dataset and whether we opened it (so must close it).

    Raises
    ------
    RasterError
        If the path does not exist, the dataset is closed, or GDAL cannot open it.
    """
    if isinstance(raster, DatasetReader):
        if raster.closed:
            raise RasterError(f"raster {raster.name!r} is closed; pass an open dataset or a path.")
        return raster, False
    if not isinstance(raster, str | Path):
        raise InputError(
            f"raster must be a path or an open rasterio dataset, got {type(raster).__name__}."
        )
    path = Path(raster)
    if not path.exists() and "://" not in str(raster):
        raise RasterError(f"raster {str(raster)!r} does not exist; check the path.")
    try:
        return rasterio.open(raster), True
    except rasterio.errors.RasterioError as exc:
        raise RasterError(
            f"raster {str(raster)!r} could not be opened ({exc}); check that it is a valid "
            "GeoTIFF/VRT (re-download or re-export it, e.g. with gdal_translate)."
        ) from exc


def band_indexes(ds: DatasetReader, bands: Sequence[int | str] | None) -> list[int]:
    """1-based band numbers of ``bands`` (numbers or descriptions; None: every band)."""
    if bands is None:
        return list(range(1, ds.count + 1))
    names = list(ds.descriptions)
    out = []
    for band in bands:
        if isinstance(band, str):
            if band not in names:
                raise InputError(
                    f"band {band!r} is not among the band names {names} of raster {ds.name!r}; "
                    "pass 1-based band numbers or one of those names."
                )
            out.append(names.index(band) + 1)
        elif isinstance(band, int | np.integer) and 1 <= band <= ds.count:
            out.append(int(band))
        else:
            raise InputError(
                f"band {band!r} is not a band of raster {ds.name!r} (1..{ds.count}); bands are "
                "1-based as in rasterio."
            )
    return out


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


def read_windows(
    ds: DatasetReader,
    x: np.ndarray,
    y: np.ndarray,
    shape: tuple[int, int],
    indexes: list[int],
    scale: float | Sequence[float] | None,
) -> WindowRead:
    """One windowed read per chip centred on (x, y) in the raster CRS."""
    h, w = shape
    rows, cols = rasterio.transform.rowcol(ds.transform, x, y)
    row_off = np.asarray(rows) - h // 2
    col_off = np.asarray(cols) - w // 2
    n = len(x)
    values = np.zeros((n, len(indexes), h, w), np.float32)
    missing = np.ones((n, h, w), bool)
    transforms = []
    for i in range(n):
        r0, c0 = int(row_off[i]), int(col_off[i])
        transforms.append(rasterio.windows.transform(Window(c0, r0, w, h), ds.transform))
        rr0, cc0 = max(r0, 0), max(c0, 0)
        rr1, cc1 = min(r0 + h, ds.height), min(c0 + w, ds.width)
        if rr1 <= rr0 or cc1 <= cc0:
            continue
        window = Window(cc0, rr0, cc1 - cc0, rr1 - rr0)
        data = ds.read(indexes, window=window, masked=True)
        arr = np.ma.getdata(data).astype(np.float32)
        mask = np.ma.getmaskarray(data) | ~np.isfinite(arr)
        sl = (slice(rr0 - r0, rr1 - r0), slice(cc0 - c0, cc1 - c0))
        values[i][(slice(None), *sl)] = np.where(mask, 0.0, arr)
        missing[i][sl] = mask.any(axis=0)
    if scale is not None:
        values = values * np.asarray(scale, np.float32).reshape(-1, 1, 1)
    names = tuple(ds.descriptions[j - 1] or f"band_{j}" for j in indexes)
    return WindowRead(values, missing, tuple(transforms), ds.crs, names)
