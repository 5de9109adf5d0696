"""Posterior effect maps over regions with no experiment.

```
EffectFit + raster + region ─ tile_grid ─→ TileGrid ─ predict_map ─→ xarray.Dataset (y, x)
xarray.Dataset ─ write_cog ─→ Cloud-Optimized GeoTIFF + PNG preview
xarray.Dataset + polygons ─ aggregate_by_polygon ─→ GeoDataFrame (GeoPackage)
```

A region (polygons or bounds) is covered by a grid of tiles of ``tile_size`` pixels whose
top-left corners lie every ``stride`` pixels from the raster's origin (so the maps of two regions
of one raster line up). Each tile is read with a windowed read, embedded with the fit's encoder
exactly as the trial's chips were, and pushed through every posterior draw of the fit
(:meth:`~imgcate.results.EffectFit.effect_function`). One output pixel is one tile: a
``stride`` x ``stride`` cell centred on the tile.

Tiles are processed in blocks of ``block_tiles``; memory per block is flat in the region's size.
Blocks run in-process (``workers=1``) or on Dask, and each finished block can be saved to a
checkpoint directory so that an interrupted job resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from affine import Affine

from imgcate.errors import ExtrapolationWarning, InputError, RasterError
from imgcate.intervals import interval_names
from imgcate.output import atomic_path, check_writable
from imgcate.raster import band_indexes, open_raster
from imgcate.validation import check_prob

log = logging.getLogger("imgcate")

#: Tile side (px) for fits whose encoder does not know the trial's chip size.
DEFAULT_TILE_SIZE = 32

#: Variables of a map with (y, x) dims, in the band order of :func:`write_cog`.
MAP_VARIABLES = ("mean", "sd", "lower", "upper", "prob_positive", "extrapolation")
#: Tiles outside the trial's support above which :func:`predict_map` warns.
EXTRAPOLATION_WARN_SHARE = 0.1
_MANIFEST = "imgcate-map-job.json"


# ------------------------------------------------------------------------------ the tile grid
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

    def blocks(self, block_tiles: int) -> list[np.ndarray]:
        """Flat (row-major) indices of the region's tiles, split into blocks."""
        flat = np.flatnonzero(self.mask.ravel())
        return [flat[i : i + block_tiles] for i in range(0, len(flat), block_tiles)]

    def coords(self) -> tuple[np.ndarray, np.ndarray]:
        """Cell-centre coordinates (y, x) of the output grid in the raster CRS."""
        h, w = self.shape
        t = self.transform
        x = t.c + (np.arange(w) + 0.5) * t.a
        y = t.f + (np.arange(h) + 0.5) * t.e
        return y, x


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
    return "(" + ", ".join(f"{v:.6g}" for v in bounds) + ")"


def tile_grid(
    raster: Any, region: Any = None, *, tile_size: int = 32, stride: int | None = None
) -> TileGrid:
    """The tiles of a map of ``region`` over ``raster``.

    Parameters
    ----------
    raster : path or open rasterio dataset
    region : path, GeoDataFrame, GeoSeries, shapely polygon, (west, south, east, north) or None
        Polygons in any CRS (reprojected to the raster's), bounds in the raster CRS, or None
        for the whole raster. Tiles whose cell touches a polygon are kept.
    tile_size : int
        Tile side in pixels (use the chip size of the trial).
    stride : int, optional
        Spacing of the tiles in pixels (default ``tile_size``: tiles side by side).

    Returns
    -------
    TileGrid

    Raises
    ------
    RasterError
        If the region does not overlap the raster, or the raster is smaller than one tile.
    """
    from rasterio.features import rasterize

    tile_size, stride = _check_tiles(tile_size, stride)
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
        full = t * Affine.translation(offset, offset) * Affine.scale(stride)
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
        row_lo, row_hi, col_lo, col_hi = _cell_range(~full, bounds)
        row_lo, col_lo = max(row_lo, 0), max(col_lo, 0)
        row_hi, col_hi = min(row_hi, rows_all - 1), min(col_hi, cols_all - 1)
        if not overlap or row_hi < row_lo or col_hi < col_lo:
            raise RasterError(
                f"{name} (bounds {_fmt_bounds(bounds)} in the raster CRS) does not overlap the "
                f"tiles of raster {ds.name!r} (bounds {_fmt_bounds(tuple(rb))}); give a region "
                "inside the raster's extent."
            )
        shape = (row_hi - row_lo + 1, col_hi - col_lo + 1)
        transform = full * Affine.translation(col_lo, row_lo)
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


def _cell_range(inverse: Affine, bounds: Sequence[float]) -> tuple[int, int, int, int]:
    """Rows and columns of the cells of a north-up grid that intersect ``bounds``."""
    c0, r0 = inverse * (bounds[0], bounds[3])
    c1, r1 = inverse * (bounds[2], bounds[1])
    c0, c1 = sorted((c0, c1))
    r0, r1 = sorted((r0, r1))
    return math.floor(r0), math.ceil(r1) - 1, math.floor(c0), math.ceil(c1) - 1


def _check_tiles(tile_size: int, stride: int | None) -> tuple[int, int]:
    stride = tile_size if stride is None else stride
    for label, value in (("tile_size", tile_size), ("stride", stride)):
        if not isinstance(value, int | np.integer) or value < 1:
            raise InputError(f"{label}={value!r} must be a positive number of pixels.")
    return int(tile_size), int(stride)


# ------------------------------------------------------------------------------ one block
@dataclass(frozen=True)
class _Job:
    """Everything a worker needs besides the fit (small and picklable)."""

    raster: str
    indexes: tuple[int, ...]
    scale: tuple[float, ...] | None
    tile_size: int
    stride: int
    row0: int
    col0: int
    n_cols: int
    prob: float
    max_draws: int | None
    seed: int
    batch_size: int


class _TileModel:
    """The fit reduced to what a map needs: encoder, jitted effect draws, support."""

    def __init__(self, fit: Any, job: _Job) -> None:
        import jax

        self.encoder = fit.encoder
        self.standardizer = fit.standardizer
        self.n_clusters = fit.n_clusters
        self.effect = jax.jit(fit.effect_function(max_draws=job.max_draws, seed=job.seed))
        self.support_mean, self.support_prec, self.support_limit = fit.trial_support()
        self.prob = job.prob
        self.batch_size = job.batch_size

    def __call__(self, tiles: np.ndarray) -> dict[str, np.ndarray]:
        """Summaries of the posterior effect for tiles (tile, band, y, x)."""
        import jax.numpy as jnp

        n = len(tiles)
        padded = _pad(tiles, self.batch_size)
        raw = self.encoder.transform(padded, batch_size=self.batch_size)
        cate, prob = (
            np.asarray(a, np.float64)[:, :n] for a in self.effect(jnp.asarray(raw, jnp.float32))
        )
        lo = (1 - self.prob) / 2
        lower, upper = np.quantile(cate, [lo, 1 - lo], axis=0)
        emb = self.standardizer.embedding(raw[:n]) - self.support_mean
        dist = np.sqrt(np.einsum("ij,jk,ik->i", emb, self.support_prec, emb))
        return {
            "mean": cate.mean(0),
            "sd": cate.std(0),
            "lower": lower,
            "upper": upper,
            "prob_positive": (cate > 0).mean(0),
            "extrapolation": dist,
            "cluster_prob": prob.mean(0),
        }


def _pad(values: np.ndarray, multiple: int) -> np.ndarray:
    """Repeat the last row so the length is a multiple (one compiled shape per size)."""
    extra = -len(values) % multiple
    if not extra:
        return values
    return np.concatenate([values, np.repeat(values[-1:], extra, axis=0)])


def _runs(cols: np.ndarray, max_run: int = 256) -> Iterator[np.ndarray]:
    """Split sorted column indices into runs of consecutive values."""
    cuts = np.flatnonzero(np.diff(cols) != 1) + 1
    for run in np.split(cols, cuts):
        for i in range(0, len(run), max_run):
            yield run[i : i + max_run]


def _read_tiles(
    ds: Any, job: _Job, rows: np.ndarray, cols: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Tiles (tile, band, y, x) float32 at grid positions, and whether each is complete."""
    from numpy.lib.stride_tricks import sliding_window_view
    from rasterio.windows import Window

    t, s = job.tile_size, job.stride
    values = np.empty((len(rows), len(job.indexes), t, t), np.float32)
    valid = np.empty(len(rows), bool)
    start = 0
    for row in np.unique(rows):  # rows come sorted (row-major order)
        for run in _runs(cols[rows == row]):
            r0, c0 = (job.row0 + int(row)) * s, (job.col0 + int(run[0])) * s
            width = (len(run) - 1) * s + t
            data = ds.read(list(job.indexes), window=Window(c0, r0, width, t), masked=True)
            arr = np.ma.getdata(data).astype(np.float32)
            bad = (np.ma.getmaskarray(data) | ~np.isfinite(arr)).any(axis=0)
            tiles = sliding_window_view(arr, t, axis=2)[:, :, ::s]  # (band, y, tile, x)
            stop = start + len(run)
            values[start:stop] = np.moveaxis(tiles, 2, 0)
            valid[start:stop] = ~sliding_window_view(bad, t, axis=1)[:, ::s].any(axis=(0, 2))
            start = stop
    if job.scale is not None:
        values *= np.asarray(job.scale, np.float32).reshape(-1, 1, 1)
    return values, valid


def _compute_block(model: _TileModel, ds: Any, job: _Job, flat: np.ndarray) -> dict:
    """Map statistics (float32) of the tiles at flat grid indices; NaN for incomplete tiles."""
    rows, cols = np.divmod(flat, job.n_cols)
    tiles, valid = _read_tiles(ds, job, rows, cols)
    out = {name: np.full(len(flat), np.nan, np.float32) for name in MAP_VARIABLES}
    out["cluster_prob"] = np.full((len(flat), model.n_clusters), np.nan, np.float32)
    if valid.any():
        for name, value in model(tiles[valid]).items():
            out[name][valid] = value
    return out


# ------------------------------------------------------------------------------ shipping the fit
def _fit_bytes(fit: Any) -> bytes:
    """The fit as :meth:`EffectFit.save` bytes (rebuilt on Dask workers)."""
    with tempfile.TemporaryDirectory() as workdir:
        path = fit.save(Path(workdir) / "fit.imgcate")
        return path.read_bytes()


def _fit_from_bytes(data: bytes) -> Any:
    from imgcate.results import load_fit

    with tempfile.TemporaryDirectory() as workdir:
        path = Path(workdir) / "fit.imgcate"
        path.write_bytes(data)
        return load_fit(path)


def _fingerprint(fit: Any) -> str:
    """A digest of everything in the fit that a map depends on (stable across saves)."""
    h = hashlib.sha256()
    post = fit.idata.posterior
    for name in sorted(post.data_vars):
        h.update(name.encode())
        h.update(np.ascontiguousarray(post[name].values).tobytes())
    for name, value in sorted(asdict(fit.standardizer).items()):
        h.update(name.encode())
        h.update(np.ascontiguousarray(np.asarray(value, np.float64)).tobytes())
    config, arrays = fit.encoder.get_state()
    h.update(json.dumps(config, sort_keys=True).encode())
    for name in sorted(arrays):
        h.update(name.encode())
        h.update(np.ascontiguousarray(arrays[name]).tobytes())
    return h.hexdigest()


def _dask_block(payload: bytes, digest: str, job: _Job, flat: np.ndarray) -> dict:
    """A block on a Dask worker; the fit is rebuilt once per worker and kept on it."""
    import rasterio
    from distributed import get_worker

    worker = get_worker()
    cache = worker.__dict__.setdefault("_imgcate_map_models", {})
    key = (digest, job)
    if key not in cache:
        cache.clear()
        cache[key] = _TileModel(_fit_from_bytes(payload), job)
    with rasterio.open(job.raster) as ds:
        return _compute_block(cache[key], ds, job, flat)


# ------------------------------------------------------------------------------ running blocks
def _run_local(fit: Any, job: _Job, todo: list[tuple[int, np.ndarray]]):
    import rasterio

    model = _TileModel(fit, job)
    with rasterio.open(job.raster) as ds:
        for index, flat in todo:
            yield index, _compute_block(model, ds, job, flat)


def _run_dask(
    fit: Any,
    job: _Job,
    todo: list[tuple[int, np.ndarray]],
    workers: int,
    scheduler: str | None,
    digest: str,
):
    """Blocks on a Dask cluster, at most two in flight per worker (flat memory)."""
    from distributed import Client, LocalCluster, as_completed

    cluster = None
    if scheduler is None:
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
        client = Client(cluster)
    else:
        try:
            client = Client(scheduler, timeout="20s")
        except OSError as exc:
            raise InputError(
                f"no Dask scheduler answers at {scheduler!r} ({exc}); start one "
                "(dask scheduler) or leave scheduler out."
            ) from exc
    try:
        n_workers = max(1, len(client.scheduler_info().get("workers", {})))
        [payload] = client.scatter([_fit_bytes(fit)], broadcast=True)
        pending = iter(todo)
        futures = {}
        queue = as_completed()

        def submit() -> None:
            item = next(pending, None)
            if item is not None:
                fut = client.submit(_dask_block, payload, digest, job, item[1], pure=False)
                futures[fut] = item[0]
                queue.add(fut)

        for _ in range(2 * n_workers):
            submit()
        for fut in queue:
            index = futures.pop(fut)
            result = fut.result()
            fut.release()
            submit()
            yield index, result
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


# ------------------------------------------------------------------------------ checkpoints
def _open_checkpoints(directory: Path, key: str) -> set[int]:
    """Blocks already saved in ``directory`` for this job (creating its manifest)."""
    directory.mkdir(parents=True, exist_ok=True)
    manifest = directory / _MANIFEST
    if manifest.exists():
        saved = json.loads(manifest.read_text()).get("job")
        if saved != key:
            raise InputError(
                f"checkpoint directory {str(directory)!r} holds the blocks of another map job "
                "(other fit, raster, region or options); give an empty directory or delete it "
                "to start over."
            )
    else:
        with atomic_path(manifest) as tmp:
            tmp.write_text(json.dumps({"job": key}))
    done = set()
    for path in directory.glob("block-*.npz"):
        done.add(int(path.stem.split("-")[1]))
    return done


def _save_block(directory: Path, index: int, result: dict) -> None:
    with atomic_path(directory / f"block-{index:07d}.npz", overwrite=True) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **result)


def _load_block(directory: Path, index: int) -> dict:
    with np.load(directory / f"block-{index:07d}.npz") as data:
        return {name: data[name] for name in data.files}


def _job_key(fit: Any, job: _Job, grid: TileGrid, block_tiles: int) -> str:
    stat = os.stat(job.raster)
    parts = {
        "fit": _fingerprint(fit),
        "job": asdict(job),
        "block_tiles": block_tiles,
        "raster_size": stat.st_size,
        "raster_mtime": stat.st_mtime_ns,
        "transform": list(grid.transform)[:6],
        "mask": hashlib.sha256(np.packbits(grid.mask).tobytes()).hexdigest(),
        "shape": list(grid.shape),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


# ------------------------------------------------------------------------------ predict_map
def _check_bands(fit: Any, ds: Any, bands: Sequence[int | str] | None) -> tuple[int, ...]:
    indexes = band_indexes(ds, bands)
    want = fit.encoder.n_bands
    names = [ds.descriptions[i - 1] or f"band_{i}" for i in indexes]
    if len(indexes) != want:
        raise RasterError(
            f"raster {ds.name!r} gives {len(indexes)} band(s) {names} but the fit's encoder was "
            f"fitted on {want}-band chips; map a raster with the trial's bands (or choose them "
            "with bands=[...] / --band)."
        )
    spec = fit.encoder.chip_spec or {}
    fit_names = spec.get("band_names") or []
    described = all(ds.descriptions[i - 1] for i in indexes)
    fit_described = any(name != f"band_{j + 1}" for j, name in enumerate(fit_names))
    if described and fit_described and list(fit_names) != names:
        raise RasterError(
            f"raster {ds.name!r} has bands {names} but the trial's chips had bands "
            f"{list(fit_names)}; map a raster with those bands (or choose them with "
            "bands=[...] / --band)."
        )
    return tuple(indexes)


def fit_tile_size(fit: Any, tile_size: int | None = None) -> int:
    """The map tile size for a fit: the size of the trial's chips, which its encoder records.

    Parameters
    ----------
    fit : EffectFit
        A fit that carries its encoder.
    tile_size : int, optional
        A requested size; it must equal the chips' size when the encoder knows it.

    Returns
    -------
    int
        ``tile_size``, else the chips' size, else 32 (encoders fitted on plain arrays).

    Raises
    ------
    InputError
        If ``tile_size`` differs from the chips' size, or the chips were not square.
    """
    if tile_size is not None:
        tile_size = _check_tiles(tile_size, None)[0]
    encoder = getattr(fit, "encoder", None)  # None: predict_map says why it cannot map
    size = (getattr(encoder, "chip_spec", None) or {}).get("size_px")
    if size is None:
        return DEFAULT_TILE_SIZE if tile_size is None else int(tile_size)
    if tile_size is None and size[0] != size[1]:
        raise InputError(
            f"the trial's chips were {size[0]}x{size[1]} px and map tiles are square; pass "
            "tile_size (--tile-size) explicitly."
        )
    if tile_size is not None and list(size) != [tile_size, tile_size]:
        raise InputError(
            f"tile_size={tile_size} px, but the trial's chips were {size[0]}x{size[1]} px and "
            "the embedding depends on the footprint; omit tile_size (--tile-size) to use the "
            "chips' size."
        )
    return int(size[0])


def _chip_settings(
    fit: Any, ds: Any, tile_size: int | None, scale: float | Sequence[float] | None
) -> tuple[int, tuple[float, ...] | None]:
    """Tile size and scale as the trial's chips were cut (``fit.encoder.chip_spec``)."""
    spec = fit.encoder.chip_spec or {}
    tile_size = fit_tile_size(fit, tile_size)
    if scale is None and spec.get("scale") is not None:
        scale = spec["scale"]
    if scale is not None:
        scale = tuple(float(v) for v in np.atleast_1d(scale))
    pixel = spec.get("pixel_size")
    if pixel is not None and ds.crs is not None and spec.get("crs") == str(ds.crs):
        res = np.abs(ds.res)
        if not np.allclose(res, pixel, rtol=0.01):
            warnings.warn(
                f"raster {ds.name!r} has {res[0]:g} x {res[1]:g} pixels but the trial's chips "
                f"had {pixel[0]:g} x {pixel[1]:g}; tiles of {tile_size} px then cover another "
                "ground footprint than the chips. Resample the raster to the trial's resolution.",
                ExtrapolationWarning,
                stacklevel=3,
            )
    return tile_size, scale


def _check_options(
    fit: Any, prob: float, max_draws: int | None, block_tiles: int, workers: int
) -> None:
    check_prob(prob)
    if getattr(fit, "encoder", None) is None:
        raise InputError(
            "this fit has no encoder, so new tiles cannot be embedded; fit on "
            "embeddings made by imgcate.embed (which keeps the encoder)."
        )
    for label, value in (
        ("block_tiles", block_tiles),
        ("workers", workers),
        ("max_draws", 1 if max_draws is None else max_draws),
    ):
        if not isinstance(value, int | np.integer) or value < 1:
            raise InputError(f"{label}={value!r} must be a positive integer.")


def predict_map(
    fit: Any,
    raster: str | Path | Any,
    region: Any = None,
    *,
    tile_size: int | None = None,
    stride: int | None = None,
    prob: float = 0.9,
    max_draws: int | None = 500,
    block_tiles: int = 2048,
    workers: int = 1,
    scheduler: str | None = None,
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
    seed: int = 0,
    bands: Sequence[int | str] | None = None,
    scale: float | Sequence[float] | None = None,
    on_block: Callable[[int, int], None] | None = None,
) -> xr.Dataset:
    """Posterior predictive map of the treatment effect over a region of a raster.

    The region is covered by tiles (see :func:`tile_grid`); each tile is read, embedded with
    ``fit.encoder`` and its CATE computed under ``max_draws`` posterior draws. One output pixel
    is one tile.

    Parameters
    ----------
    fit : EffectFit
        A fit that carries its encoder (fitted on embeddings from :func:`imgcate.embed`).
    raster : path or open rasterio dataset
        A raster with the bands of the trial's chips (same values: give ``scale`` if the chips
        were extracted with one).
    region : path, GeoDataFrame, GeoSeries, shapely polygon, (west, south, east, north) or None
        Polygons in any CRS (reprojected to the raster's), bounds in the raster's CRS, or None
        for the whole raster.
    tile_size : int, optional
        Tile side in pixels. Default: the size of the trial's chips, which the fit's encoder
        records (32 for encoders fitted on plain arrays); another size is an error for such a
        fit, because the embedding depends on the footprint.
    stride : int, optional
        Distance between tiles in pixels (default ``tile_size``); smaller gives a finer map of
        overlapping tiles.
    prob : float
        Probability of the central credible interval (``lower``, ``upper``).
    max_draws : int or None
        Posterior draws used (a seeded random subset; None uses all).
    block_tiles : int
        Tiles per block; memory per block is flat in the region's size.
    workers : int
        1 runs in this process; more start a ``dask.distributed.LocalCluster`` of that many
        single-threaded worker processes.
    scheduler : str, optional
        Address of a running Dask scheduler (e.g. ``"tcp://10.0.0.5:8786"``); its workers must
        be able to read ``raster`` by the same path. Overrides ``workers``.
    checkpoint_dir : path, optional
        Save each finished block here; a job run again with the same directory (and the same
        inputs) skips the blocks already saved and gives the same map.
    progress : bool
        Show a progress bar (tqdm).
    seed : int
        Seed of the posterior draw subset.
    bands : sequence of int or str, optional
        1-based band numbers or descriptions to read (default all bands).
    scale : float or sequence of float, optional
        Multiplier of the raw values (per band). Default: the ``scale`` the trial's chips were
        extracted with (recorded by the encoder); give it for a raster stored in other units.
    on_block : callable, optional
        Called as ``on_block(done, total)`` after each block is finished (and saved); an
        exception it raises stops the job (the blocks saved so far are kept).

    Returns
    -------
    xarray.Dataset
        Dims (y, x), and cluster for ``cluster_prob``; coordinates are cell centres in the
        raster CRS. Variables (float32, NaN outside the region or raster, or where a tile
        holds nodata):

        - ``mean``, ``sd``: posterior mean and sd of the CATE (outcome scale);
        - ``lower``, ``upper``: central ``prob`` interval (attrs ``quantile``);
        - ``prob_positive``: posterior P(CATE > 0);
        - ``cluster_prob`` (cluster, y, x): posterior mean P(cluster = k);
        - ``extrapolation``: Mahalanobis distance of the tile's embedding from the trial's
          embeddings (model scale);
        - ``outside_support``: 1 where ``extrapolation`` exceeds the 99th percentile of the
          trial's own distances (attr ``support_limit``), else 0.

        Scalar coordinate ``spatial_ref`` (attrs ``crs_wkt``, ``GeoTransform``); attrs ``crs``
        (WKT), ``transform`` (affine a, b, c, d, e, f), ``prob``, ``seed``, ``max_draws``,
        ``n_draws``, ``tile_size``, ``stride``, ``support_limit``, ``imgcate_version``.

    Raises
    ------
    RasterError
        If the raster lacks the fit's bands, or the region does not overlap it.
    InputError
        For bad options, or a checkpoint directory of another job.

    Warns
    -----
    ExtrapolationWarning
        When more than 10% of the tiles lie outside the trial's support.

    Examples
    --------
    >>> ds = predict_map(fit, "scene.tif", (400000, 50000, 410000, 60000))  # doctest: +SKIP
    >>> write_cog(ds, "effect_map.tif")  # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    _check_options(fit, prob, max_draws, block_tiles, workers)
    ds, owned = open_raster(raster)
    try:
        indexes = _check_bands(fit, ds, bands)
        tile_size, scale = _chip_settings(fit, ds, tile_size, scale)
        grid = tile_grid(ds, region, tile_size=tile_size, stride=stride)
        path = str(ds.name)
    finally:
        if owned:
            ds.close()
    if scale is not None and len(scale) not in (1, len(indexes)):
        raise InputError(
            f"scale has {len(scale)} values; give one or one per band ({len(indexes)})."
        )
    job = _Job(
        raster=path,
        indexes=indexes,
        scale=scale,
        tile_size=grid.tile_size,
        stride=grid.stride,
        row0=grid.row0,
        col0=grid.col0,
        n_cols=grid.shape[1],
        prob=float(prob),
        max_draws=max_draws,
        seed=int(seed),
        batch_size=min(fit.encoder.batch_size, block_tiles),
    )
    blocks = grid.blocks(block_tiles)
    out = {name: np.full(grid.shape, np.nan, np.float32) for name in MAP_VARIABLES}
    out["cluster_prob"] = np.full(grid.shape + (fit.n_clusters,), np.nan, np.float32)
    done: set[int] = set()
    directory = None if checkpoint_dir is None else Path(checkpoint_dir)
    if directory is not None:
        done = _open_checkpoints(directory, _job_key(fit, job, grid, block_tiles))
        done &= set(range(len(blocks)))
        for index in sorted(done):
            _place(out, blocks[index], _load_block(directory, index))
    todo = [(i, flat) for i, flat in enumerate(blocks) if i not in done]
    log.info(
        "mapping %d tiles in %d blocks (%d saved already)", grid.n_tiles, len(blocks), len(done)
    )
    if not todo:
        runner = iter(())
    elif scheduler is None and workers == 1:
        runner = _run_local(fit, job, todo)
    else:
        runner = _run_dask(fit, job, todo, workers, scheduler, _fingerprint(fit))
    bar = tqdm(
        total=grid.n_tiles,
        initial=sum(len(blocks[i]) for i in done),
        unit="tile",
        desc="imgcate map",
        disable=not progress,
    )
    try:
        for index, result in runner:
            if directory is not None:
                _save_block(directory, index, result)
            _place(out, blocks[index], result)
            done.add(index)
            bar.update(len(blocks[index]))
            if on_block is not None:
                on_block(len(done), len(blocks))
    finally:
        bar.close()
        if hasattr(runner, "close"):
            runner.close()
    model_limit = fit.trial_support()[2]
    return _to_dataset(out, grid, fit, job, model_limit)


def _place(out: dict, flat: np.ndarray, result: dict) -> None:
    for name, value in result.items():
        target = out[name]
        target.reshape((-1,) + target.shape[2:])[flat] = value


def _to_dataset(out: dict, grid: TileGrid, fit: Any, job: _Job, limit: float) -> xr.Dataset:
    y, x = grid.coords()
    dims = ("y", "x")
    extrap = out["extrapolation"]
    outside = np.where(np.isnan(extrap), np.nan, extrap > limit).astype(np.float32)
    lo_name, hi_name = interval_names(job.prob)
    lo = (1 - job.prob) / 2
    gt = " ".join(f"{v!r}" for v in grid.transform.to_gdal())
    data = {
        "mean": (dims, out["mean"], {"long_name": "posterior mean CATE"}),
        "sd": (dims, out["sd"], {"long_name": "posterior sd of the CATE"}),
        "lower": (dims, out["lower"], {"long_name": f"CATE {lo_name} quantile", "quantile": lo}),
        "upper": (
            dims,
            out["upper"],
            {"long_name": f"CATE {hi_name} quantile", "quantile": 1 - lo},
        ),
        "prob_positive": (dims, out["prob_positive"], {"long_name": "P(CATE > 0)"}),
        "cluster_prob": (
            ("cluster",) + dims,
            np.moveaxis(out["cluster_prob"], -1, 0),
            {"long_name": "P(cluster = k)"},
        ),
        "extrapolation": (
            dims,
            extrap,
            {"long_name": "Mahalanobis distance from the trial's embeddings"},
        ),
        "outside_support": (
            dims,
            outside,
            {"long_name": "1 if extrapolation > support_limit", "support_limit": limit},
        ),
    }
    from imgcate import __version__

    n_draws = len(fit.draw_indices(job.max_draws, job.seed))
    ds = xr.Dataset(
        data,
        coords={
            "y": y,
            "x": x,
            "cluster": np.arange(fit.n_clusters),
            "spatial_ref": (
                (),
                0,
                {"crs_wkt": grid.crs_wkt, "spatial_ref": grid.crs_wkt, "GeoTransform": gt},
            ),
        },
        attrs={
            "crs": grid.crs_wkt,
            "transform": list(grid.transform)[:6],
            "prob": job.prob,
            "seed": job.seed,
            "max_draws": -1 if job.max_draws is None else job.max_draws,
            "n_draws": n_draws,
            "tile_size": job.tile_size,
            "stride": job.stride,
            "support_limit": limit,
            "raster": job.raster,
            "region": grid.region,
            "imgcate_version": __version__,
        },
    )
    for name in ds.data_vars:
        ds[name].attrs["grid_mapping"] = "spatial_ref"
    share = float(np.nanmean(outside)) if np.isfinite(outside).any() else 0.0
    if share > EXTRAPOLATION_WARN_SHARE:
        warnings.warn(
            f"{share:.0%} of the map's tiles lie outside the trial's support (extrapolation > "
            f"{limit:.2f}); their effects are extrapolation, not evidence (see the "
            "'outside_support' layer).",
            ExtrapolationWarning,
            stacklevel=3,
        )
    return ds


# ------------------------------------------------------------------------------ writing
def band_names(dataset: xr.Dataset) -> list[str]:
    """Band descriptions :func:`write_cog` gives, in order.

    ``mean, sd, lower_<p>, upper_<p>, prob_positive, cluster_prob_0.., extrapolation`` with
    ``p`` the interval percentiles (``lower_5``, ``upper_95`` for ``prob=0.9``).
    """
    lo, hi = (n.rstrip("%") for n in interval_names(float(dataset.attrs["prob"])))
    names = ["mean", "sd", f"lower_{lo}", f"upper_{hi}", "prob_positive"]
    names += [f"cluster_prob_{k}" for k in range(dataset.sizes["cluster"])]
    return names + ["extrapolation"]


def _layers(dataset: xr.Dataset) -> np.ndarray:
    layers = [dataset[v].values for v in ("mean", "sd", "lower", "upper", "prob_positive")]
    layers += list(dataset["cluster_prob"].values)
    layers.append(dataset["extrapolation"].values)
    return np.stack(layers).astype(np.float32)


def _default_blocksize(shape: tuple[int, int]) -> int:
    """Internal tile size: a quarter of the larger side, a power of two in [16, 512]."""
    side = max(shape) / 4
    return int(min(512, max(16, 2 ** math.ceil(math.log2(max(side, 1))))))


class _SmallBlocksizeFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "value for BLOCKSIZE creation option" not in record.getMessage()


@contextlib.contextmanager
def _quiet_small_blocksize():
    """GDAL's COG driver warns for blocks under 128 px but writes them (a valid COG); small maps
    get them on purpose, so that they still have overviews. Other GDAL messages pass."""
    logger, flt = logging.getLogger("rasterio._env"), _SmallBlocksizeFilter()
    logger.addFilter(flt)
    try:
        yield
    finally:
        logger.removeFilter(flt)


def _preview_path(path: Path) -> Path:
    return path.with_suffix(".png")


def check_creation_options(co: dict[str, Any] | None) -> None:
    """Check COG creation options GDAL would abort the process on (``BLOCKSIZE``).

    Raises
    ------
    InputError
        If ``BLOCKSIZE`` is not a multiple of 16 between 16 and 4096.
    """
    options = {str(k).upper(): v for k, v in (co or {}).items()}
    if "BLOCKSIZE" not in options:
        return
    value = options["BLOCKSIZE"]
    try:
        size = int(str(value))
    except ValueError:
        size = 0
    if not 16 <= size <= 4096 or size % 16:
        raise InputError(
            f"BLOCKSIZE={value!r} must be a multiple of 16 between 16 and 4096 "
            "(e.g. co={'BLOCKSIZE': 256}, --co BLOCKSIZE=256)."
        )


def write_cog(
    dataset: xr.Dataset,
    path: str | Path,
    *,
    overwrite: bool = False,
    preview: bool = True,
    co: dict[str, Any] | None = None,
) -> Path:
    """Write a map as a multi-band Cloud-Optimized GeoTIFF (and a PNG preview beside it).

    Parameters
    ----------
    dataset : xarray.Dataset
        From :func:`predict_map`.
    path : path
        The GeoTIFF; written to a temporary name and renamed when complete.
    overwrite : bool
        Replace existing files (the GeoTIFF and its preview).
    preview : bool
        Also write ``path`` with suffix ``.png``: mean CATE, P(CATE > 0) and the
        extrapolation score with colour bars, tiles outside the trial's support hatched.
    co : dict, optional
        GDAL COG creation options (e.g. ``{"COMPRESS": "ZSTD", "BLOCKSIZE": 256}``); the
        defaults are DEFLATE compression, AVERAGE overviews and a block size suited to the
        map's size.

    Returns
    -------
    pathlib.Path

    Notes
    -----
    Bands are named (descriptions) as :func:`band_names` lists them; nodata is NaN (outside
    the region or raster). Dataset tags: ``prob``, ``seed``, ``max_draws``, ``n_draws``,
    ``tile_size``, ``stride``, ``support_limit``, ``imgcate_version``, ``region``.

    Raises
    ------
    OutputExistsError
        If a file exists and ``overwrite`` is False (nothing is written).

    Examples
    --------
    >>> write_cog(predict_map(fit, "scene.tif"), "effect_map.tif")  # doctest: +SKIP
    """
    import rasterio
    import rasterio.shutil
    from rasterio._err import CPLE_BaseError
    from rasterio.crs import CRS

    path = Path(path)
    check_writable(path, overwrite)
    if preview:
        check_writable(_preview_path(path), overwrite)
    missing = [v for v in ("mean", "cluster_prob", "extrapolation") if v not in dataset]
    if missing or "crs" not in dataset.attrs:
        raise InputError(
            f"dataset lacks {missing or ['crs attr']}; pass the output of predict_map."
        )
    layers = _layers(dataset)
    names = band_names(dataset)
    height, width = layers.shape[1:]
    options = {
        "COMPRESS": "DEFLATE",
        "PREDICTOR": "YES",
        "OVERVIEW_RESAMPLING": "AVERAGE",
        "RESAMPLING": "AVERAGE",
        "BLOCKSIZE": _default_blocksize((height, width)),
    }
    options.update({str(k).upper(): v for k, v in (co or {}).items()})
    check_creation_options(options)
    tags = {
        k: str(dataset.attrs[k])
        for k in (
            "prob",
            "seed",
            "max_draws",
            "n_draws",
            "tile_size",
            "stride",
            "support_limit",
            "imgcate_version",
            "region",
        )
        if k in dataset.attrs
    }
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": len(layers),
        "dtype": "float32",
        "crs": CRS.from_wkt(dataset.attrs["crs"]),
        "transform": Affine(*dataset.attrs["transform"][:6]),
        "nodata": np.nan,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with (
        atomic_path(path, overwrite=overwrite) as tmp,
        tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as workdir,
    ):
        staging = Path(workdir) / "staging.tif"
        with rasterio.open(staging, "w", **profile) as dst:
            dst.write(layers)
            for i, name in enumerate(names, start=1):
                dst.set_band_description(i, name)
                dst.update_tags(i, name=name)
            dst.update_tags(**tags)
        try:
            with _quiet_small_blocksize():
                rasterio.shutil.copy(staging, tmp, driver="COG", **options)
        except (rasterio.errors.RasterioError, CPLE_BaseError) as exc:
            raise InputError(
                f"GDAL could not write the COG with options {options} ({exc}); "
                "check the co=/--co values."
            ) from exc
        if preview:
            write_preview(dataset, _preview_path(path), overwrite=overwrite)
    return path


def write_preview(
    dataset: xr.Dataset, path: str | Path, *, overwrite: bool = False, dpi: int = 110
) -> Path:
    """A PNG of the map: mean CATE, P(CATE > 0) and extrapolation, each with a colour bar.

    Tiles outside the trial's support are hatched on the first two panels. Written to a
    temporary name and renamed.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    t = Affine(*dataset.attrs["transform"][:6])
    h, w = dataset.sizes["y"], dataset.sizes["x"]
    extent = (t.c, t.c + w * t.a, t.f + h * t.e, t.f)
    mean = dataset["mean"].values
    limit = float(np.nanmax(np.abs(mean))) if np.isfinite(mean).any() else 1.0
    outside = dataset["outside_support"].values == 1
    panels = [
        ("mean", "posterior mean CATE", "RdBu_r", -limit or -1, limit or 1),
        ("prob_positive", "P(CATE > 0)", "PuOr_r", 0, 1),
        ("extrapolation", "extrapolation (Mahalanobis)", "viridis", None, None),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2), constrained_layout=True)
    for ax, (var, label, cmap, vmin, vmax) in zip(axes, panels, strict=True):
        image = ax.imshow(
            dataset[var].values,
            extent=extent,
            cmap=cmap,
            vmin=vmin,
            vmax=vmax,
            interpolation="nearest",
        )
        if var != "extrapolation" and outside.any():
            ax.contourf(
                dataset["x"].values,
                dataset["y"].values,
                outside.astype(float),
                levels=[0.5, 1.5],
                colors="none",
                hatches=["////"],
            )
        elif var == "extrapolation":
            ax.contour(
                dataset["x"].values,
                dataset["y"].values,
                np.nan_to_num(dataset[var].values),
                levels=[dataset.attrs["support_limit"]],
                colors="white",
                linewidths=0.8,
            )
        fig.colorbar(image, ax=ax, shrink=0.85)
        ax.set_title(label, fontsize=10)
        ax.tick_params(labelsize=7)
    fig.suptitle(
        f"imgcate effect map ({dataset.attrs.get('n_draws', '?')} draws, tiles "
        f"{dataset.attrs.get('tile_size')} px every {dataset.attrs.get('stride')} px); "
        "hatched / outlined: outside the trial's support",
        fontsize=9,
    )
    with atomic_path(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------ aggregation
def aggregate_by_polygon(
    dataset: xr.Dataset, polygons: Any, path: str | Path | None = None, *, overwrite: bool = False
):
    """Area-weighted map statistics per polygon (e.g. districts), optionally as a GeoPackage.

    Each polygon's value is the mean of the tile values weighted by the area of each tile's
    cell inside the polygon (cells without a value are left out). This averages the tiles'
    posterior means, and likewise their interval bounds: the ``lower``/``upper`` columns are
    area-weighted means of the tiles' bounds, **not** a credible interval of the polygon's
    average effect (which would need every tile's draws); they are wider than that interval.

    Parameters
    ----------
    dataset : xarray.Dataset
        From :func:`predict_map`.
    polygons : path, GeoDataFrame or GeoSeries
        Polygons in any CRS (reprojected to the map's).
    path : path, optional
        Also write a GeoPackage here (temporary name, then renamed).
    overwrite : bool
        Replace an existing ``path``.

    Returns
    -------
    geopandas.GeoDataFrame
        The polygons (their columns kept, in the map's CRS) with ``mean``, ``lower_<p>``,
        ``upper_<p>``, ``prob_positive``, ``extrapolation``, ``outside_support_share``,
        ``covered_share`` (share of the polygon's area with a map value) and ``n_tiles``.
    """
    import geopandas as gpd
    import shapely

    if path is not None:
        check_writable(path, overwrite)
    if isinstance(polygons, str | Path):
        gdf = gpd.read_file(polygons)
    elif isinstance(polygons, gpd.GeoSeries):
        gdf = gpd.GeoDataFrame(geometry=polygons)
    elif isinstance(polygons, gpd.GeoDataFrame):
        gdf = polygons.copy()
    else:
        raise InputError(
            f"polygons must be a vector file path or a GeoDataFrame, got {type(polygons).__name__}."
        )
    if gdf.crs is None:
        raise InputError("polygons have no CRS; set one (e.g. gdf.set_crs('EPSG:4326')).")
    gdf = gdf.to_crs(dataset.attrs["crs"]).reset_index(drop=True)
    t = Affine(*dataset.attrs["transform"][:6])
    h, w = dataset.sizes["y"], dataset.sizes["x"]
    lo, hi = band_names(dataset)[2:4]
    variables = {
        "mean": "mean",
        lo: "lower",
        hi: "upper",
        "prob_positive": "prob_positive",
        "extrapolation": "extrapolation",
        "outside_support_share": "outside_support",
    }
    values = {col: dataset[var].values for col, var in variables.items()}
    rows = []
    for geom in gdf.geometry:
        r0, r1, c0, c1 = _cell_range(~t, geom.bounds)
        r0, c0, r1, c1 = max(r0, 0), max(c0, 0), min(r1, h - 1), min(c1, w - 1)
        row = dict.fromkeys(variables, np.nan) | {"covered_share": 0.0, "n_tiles": 0}
        if r1 >= r0 and c1 >= c0 and geom.area > 0:
            rr, cc = np.mgrid[r0 : r1 + 1, c0 : c1 + 1]
            x0, y0 = t * (cc.ravel(), rr.ravel())
            x1, y1 = t * (cc.ravel() + 1, rr.ravel() + 1)
            cells = shapely.box(
                np.minimum(x0, x1), np.minimum(y0, y1), np.maximum(x0, x1), np.maximum(y0, y1)
            )
            area = shapely.area(shapely.intersection(cells, geom))
            ok = np.isfinite(values["mean"][rr.ravel(), cc.ravel()]) & (area > 0)
            if ok.any():
                weight = area[ok] / area[ok].sum()
                for col in variables:
                    row[col] = float(weight @ values[col][rr.ravel()[ok], cc.ravel()[ok]])
                row["covered_share"] = float(area[ok].sum() / geom.area)
                row["n_tiles"] = int(ok.sum())
        rows.append(row)
    import pandas as pd

    out = gpd.GeoDataFrame(
        pd.concat([gdf.drop(columns="geometry"), pd.DataFrame(rows)], axis=1),
        geometry=gdf.geometry,
        crs=gdf.crs,
    )
    if path is not None:
        path = Path(path)
        with (
            atomic_path(path, overwrite=overwrite) as tmp,
            tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as workdir,
        ):
            staged = Path(workdir) / path.name
            out.to_file(staged, driver="GPKG", layer=path.stem)
            os.replace(staged, tmp)
    return out
