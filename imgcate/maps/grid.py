"""The tile grid of a map: which tiles of a raster cover a region (polygons or bounds)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine

from imgcate.errors import InputError, RasterError, RegionWarning
from imgcate.raster import open_raster


@dataclass(frozen=True)
class TileGrid:
    """Where the tiles of a map lie in a raster.

    Attributes
    ----------
    raster : str
        Path of the raster.
    tile_size, stride : int
        Tile side and spacing of tile corners, in raster pixels.
    row0, col0 : int
        Position of the grid's first tile in the raster-wide tile grid; the tile at grid
        position (i, j) covers raster rows ``(row0 + i) * stride`` .. ``+ tile_size``.
    mask : numpy.ndarray
        bool (y, x): tiles inside the region (the others are NaN in the map).
    transform : affine.Affine
        Geotransform of the output grid (one pixel = one ``stride``-wide cell centred on a tile).
    crs_wkt : str
        CRS of the raster and of the map, as WKT.
    region : str
        Description of the region (for messages).
    """

    raster: str
    tile_size: int
    stride: int
    row0: int
    col0: int
    mask: np.ndarray
    transform: Affine
    crs_wkt: str
    region: str

    @property
    def shape(self) -> tuple[int, int]:
        """(y, x) size of the output grid."""
        return self.mask.shape

    @property
    def n_tiles(self) -> int:
        """Tiles inside the region."""
        return int(self.mask.sum())

    def blocks(self, block_tiles: int) -> TileBlocks:
        """Flat (row-major) indices of the region's tiles, split into blocks of
        ``block_tiles`` (the last may be smaller); each block's indices are made when it is
        asked for."""
        return TileBlocks(self.mask, block_tiles)

    def coords(self) -> tuple[np.ndarray, np.ndarray]:
        """Cell-centre coordinates (y, x) of the output grid in the raster CRS."""
        h, w = self.shape
        t = self.transform
        x = t.c + (np.arange(w) + 0.5) * t.a
        y = t.f + (np.arange(h) + 0.5) * t.e
        return y, x


class TileBlocks:
    """The region's tiles in blocks, as flat (row-major) indices of the grid, made on demand.

    ``blocks[i]`` equals ``np.flatnonzero(mask.ravel())[i * size : (i + 1) * size]``, found
    from the tiles counted per row: what is held is 8 bytes a row, not 8 a tile (800 MB at
    10^8 tiles), so a map's blocks cost memory only while they are worked on. ``len`` and
    iteration work as for a list; an index may be negative.
    """

    def __init__(self, mask: np.ndarray, size: int) -> None:
        self.mask = mask
        self.size = int(size)
        self.row_ends = np.cumsum(mask.sum(axis=1, dtype=np.int64))  # tiles up to each row's end
        self.n_tiles = int(self.row_ends[-1]) if len(self.row_ends) else 0

    def __len__(self) -> int:
        return -(-self.n_tiles // self.size)

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[i] for i in range(len(self)))

    def _index(self, index: int) -> int:
        if not isinstance(index, int | np.integer):
            raise TypeError(f"block index must be an integer, got {type(index).__name__}")
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"block {index} of {len(self)}")
        return int(index)

    def size_of(self, index: int) -> int:
        """Tiles in block ``index``."""
        index = self._index(index)
        return min(self.size, self.n_tiles - index * self.size)

    def __getitem__(self, index: int) -> np.ndarray:
        index = self._index(index)
        start = index * self.size
        stop = start + self.size_of(index)
        first = int(np.searchsorted(self.row_ends, start, side="right"))
        last = int(np.searchsorted(self.row_ends, stop - 1, side="right"))
        before = int(self.row_ends[first - 1]) if first else 0
        width = self.mask.shape[1]
        flat = np.flatnonzero(self.mask[first : last + 1].ravel()) + first * width
        return flat[start - before : stop - before]


def _describe_region(region: Any) -> str:
    if region is None:
        return "the whole raster"
    if isinstance(region, str | Path):
        return f"region file {str(region)!r}"
    if _is_bounds(region):
        return f"bounds {tuple(float(v) for v in region)}"
    n = len(region) if hasattr(region, "__len__") else 1
    return f"region of {n} polygon(s)"


def _is_bounds(region: Any) -> bool:
    return (
        isinstance(region, tuple | list)
        and len(region) == 4
        and all(isinstance(v, int | float | np.number) for v in region)
    )


def _region_polygons(region: Any, crs: Any):
    """A GeoSeries of polygons in ``crs`` (None for bounds or the whole raster)."""
    import geopandas as gpd
    from shapely.geometry.base import BaseGeometry

    name = _describe_region(region)
    if isinstance(region, str | Path):
        if not Path(region).exists():
            raise InputError(
                f"{name} does not exist; give a vector file (GeoPackage, "
                "GeoJSON, shapefile) of polygons."
            )
        try:
            region = gpd.read_file(region)
        except Exception as exc:  # noqa: BLE001 - pyogrio raises many types
            raise InputError(f"{name} could not be read as a vector file ({exc}).") from exc
    if isinstance(region, BaseGeometry):
        region = gpd.GeoSeries([region], crs=crs)
    if isinstance(region, gpd.GeoDataFrame):
        region = region.geometry
    if not isinstance(region, gpd.GeoSeries):
        raise InputError(
            f"region must be a vector file path, a GeoDataFrame, a shapely polygon or bounds "
            f"(west, south, east, north), got {type(region).__name__}."
        )
    region = region[~region.is_empty & region.notna()]
    if len(region) == 0:
        raise InputError(f"{name} holds no geometries; give at least one polygon.")
    kinds = set(region.geom_type)
    if not kinds <= {"Polygon", "MultiPolygon"}:
        raise InputError(f"{name} holds {sorted(kinds)} geometries; give polygons.")
    if region.crs is None:
        raise InputError(f"{name} has no CRS; set one (e.g. gdf.set_crs('EPSG:4326')).")
    return region.to_crs(crs)


def _fmt_bounds(bounds: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.10g}" for v in bounds) + ")"  # metres: no 9.1e+06


def _region_words(name: str, bounds: Sequence[float], where: str = "") -> str:
    """A region in a message: bounds name themselves; polygons get their extent (``bounds``),
    followed by ``where`` (such as "in the raster's CRS") inside the same brackets."""
    if name.startswith("bounds"):
        return f"{name} ({where})" if where else name
    return f"{name} (extent {_fmt_bounds(bounds)}{' ' + where if where else ''})"


def tile_grid(
    raster: Any,
    region: Any = None,
    *,
    tile_size: int = 32,
    stride: int | None = None,
    stacklevel: int | None = 2,
) -> TileGrid:
    """The tiles of a map of ``region`` over ``raster``.

    Parameters
    ----------
    raster : path, URL or open rasterio dataset
    region : path, GeoDataFrame, GeoSeries, shapely polygon, (west, south, east, north) or None
        Polygons in any CRS (reprojected to the raster's), bounds in the raster CRS, or None
        for the whole raster. Tiles whose cell touches a polygon are kept.
    tile_size : int
        Tile side in pixels (use the chip size of the trial).
    stride : int, optional
        Spacing of the tiles in pixels (default ``tile_size``: tiles side by side).
    stacklevel : int or None
        Where a :class:`~imgcate.errors.RegionWarning` points, as ``warnings.warn`` counts
        from here (2, the default: this function's caller); None: no warning (a caller that
        reports the region's coverage itself).

    Returns
    -------
    TileGrid

    Warns
    -----
    RegionWarning
        If the region reaches more than a pixel past the raster on any side: the grid covers
        only the part inside. And if ``stride`` is wider than ``tile_size``: the tiles leave
        gaps between them.

    Raises
    ------
    RasterError
        If the region does not overlap the raster, or the raster is smaller than one tile.
    """
    from rasterio.features import rasterize

    tile_size, stride = check_tiles(tile_size, stride)
    ds, owned = open_raster(raster)
    try:
        if ds.crs is None:
            raise RasterError(f"raster {ds.name!r} has no CRS; assign one (rio edit-info --crs).")
        t = ds.transform
        if t.b != 0 or t.d != 0:
            raise RasterError(f"raster {ds.name!r} is rotated; warp it north-up first (gdalwarp).")
        rows_all = (ds.height - tile_size) // stride + 1
        cols_all = (ds.width - tile_size) // stride + 1
        if ds.height < tile_size or ds.width < tile_size:
            raise RasterError(
                f"raster {ds.name!r} ({ds.width} x {ds.height} px) is smaller than one tile of "
                f"{tile_size} px; use a smaller tile_size."
            )
        # the raster-wide output grid: cells of stride px centred on the tiles
        offset = (tile_size - stride) / 2
        full = t @ Affine.translation(offset, offset) @ Affine.scale(stride)
        name = _describe_region(region)
        polygons = None
        if region is None:
            bounds = tuple(ds.bounds)
        elif _is_bounds(region):
            bounds = tuple(float(v) for v in region)
            if not (bounds[0] < bounds[2] and bounds[1] < bounds[3]):
                raise InputError(
                    f"{name} must be (west, south, east, north) with west < east and south < north."
                )
        else:
            polygons = _region_polygons(region, ds.crs)
            bounds = tuple(polygons.total_bounds)
        rb = ds.bounds
        overlap = (
            bounds[0] < rb.right
            and bounds[2] > rb.left
            and bounds[1] < rb.top
            and bounds[3] > rb.bottom
        )
        row_lo, row_hi, col_lo, col_hi = cell_range(~full, bounds)
        row_lo, col_lo = max(row_lo, 0), max(col_lo, 0)
        row_hi, col_hi = min(row_hi, rows_all - 1), min(col_hi, cols_all - 1)
        if not overlap or row_hi < row_lo or col_hi < col_lo:
            what = _region_words(name, bounds, "in the raster's CRS")
            degrees = (
                polygons is None
                and not ds.crs.is_geographic
                and all(abs(v) <= 180 for v in bounds[::2])
                and all(abs(v) <= 90 for v in bounds[1::2])
            )
            hint = f" (these look like degrees; the raster's CRS is {ds.crs})" * degrees
            raise RasterError(
                f"{what} does not overlap the tiles of raster {ds.name!r} (bounds "
                f"{_fmt_bounds(tuple(rb))}); give a region inside the raster's extent{hint}."
            )
        if region is not None and stacklevel is not None:
            warn_past_raster(name, bounds, ds, stacklevel + 1)
        if stride > tile_size and stacklevel is not None:
            warnings.warn(
                f"stride={stride} is wider than the tiles ({tile_size} px): each cell of "
                f"{stride} px takes the value of the tile at its centre, so "
                f"{1 - (tile_size / stride) ** 2:.0%} of the ground is not looked at, and the "
                "map's outer cells reach past the raster; a coverage share of its polygons "
                "counts cells, not ground. Give a stride of at most the tile size for a map "
                "of all of it.",
                RegionWarning,
                stacklevel=stacklevel,
            )
        shape = (row_hi - row_lo + 1, col_hi - col_lo + 1)
        transform = full @ Affine.translation(col_lo, row_lo)
        if polygons is None:
            mask = np.ones(shape, bool)
        else:
            mask = rasterize(
                ((g, 1) for g in polygons),
                out_shape=shape,
                transform=transform,
                all_touched=True,
                fill=0,
                dtype="uint8",
            ).astype(bool)
            if not mask.any():
                raise RasterError(
                    f"{name} touches no tile of raster {ds.name!r}; give a "
                    "region inside the raster's extent."
                )
        return TileGrid(
            raster=str(ds.name),
            tile_size=tile_size,
            stride=stride,
            row0=row_lo,
            col0=col_lo,
            mask=mask,
            transform=transform,
            crs_wkt=ds.crs.to_wkt(),
            region=name,
        )
    finally:
        if owned:
            ds.close()


def warn_past_raster(name: str, bounds: Sequence[float], ds: Any, stacklevel: int) -> None:
    """Warn (:class:`~imgcate.errors.RegionWarning`, ``stacklevel`` counted from here) when
    ``bounds`` reach more than a pixel past the raster ``ds`` on a side: the map is then of
    the part inside, and a user who asked for more should know that the rest is not mapped."""
    px, py = abs(ds.transform.a), abs(ds.transform.e)
    left, bottom, right, top = ds.bounds
    sides = [
        side
        for side, past in (
            ("west", left - bounds[0] > px),
            ("south", bottom - bounds[1] > py),
            ("east", bounds[2] - right > px),
            ("north", bounds[3] - top > py),
        )
        if past
    ]
    if sides:
        what, edges = _region_words(name, bounds), "edge" if len(sides) == 1 else "edges"
        warnings.warn(
            f"{what} reaches past the {', '.join(sides)} {edges} of raster {ds.name!r} "
            f"(bounds {_fmt_bounds(tuple(ds.bounds))}, in its CRS as is the region's "
            "extent): the map covers only the part inside the raster; the rest is left out, "
            "not mapped.",
            RegionWarning,
            stacklevel=stacklevel,
        )


def cell_range(inverse: Affine, bounds: Sequence[float]) -> tuple[int, int, int, int]:
    """Rows and columns of the cells of a north-up grid that intersect ``bounds``."""
    c0, r0 = inverse @ (bounds[0], bounds[3])
    c1, r1 = inverse @ (bounds[2], bounds[1])
    c0, c1 = sorted((c0, c1))
    r0, r1 = sorted((r0, r1))
    return math.floor(r0), math.ceil(r1) - 1, math.floor(c0), math.ceil(c1) - 1


def check_tiles(tile_size: int, stride: int | None) -> tuple[int, int]:
    stride = tile_size if stride is None else stride
    for label, value in (("tile_size", tile_size), ("stride", stride)):
        if not isinstance(value, int | np.integer) or value < 1:
            raise InputError(f"{label}={value!r} must be a positive number of pixels.")
    return int(tile_size), int(stride)
