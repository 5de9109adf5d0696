"""Computing a map: :func:`predict_map` covers a region with tiles (:mod:`imgcate.maps.grid`),
runs them in blocks (:mod:`imgcate.maps.blocks`, :mod:`imgcate.maps.tiles`) in this process or
on Dask workers (:mod:`imgcate.maps.runners`), saves finished blocks for resuming
(:mod:`imgcate.maps.resume`) and assembles the xarray Dataset.

Memory per block is flat in the region's size; the fit travels to Dask workers as the bytes of
its saved file and is rebuilt once per worker.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from imgcate.bands import check_band_identity
from imgcate.errors import ExtrapolationWarning, InputError, RasterError
from imgcate.intervals import interval_names
from imgcate.maps.blocks import empty_map, run_blocks
from imgcate.maps.flags import overlap_layers, warn_extrapolation, warn_overlap
from imgcate.maps.grid import TileGrid, check_tiles, tile_grid
from imgcate.maps.tiles import MAP_VARIABLES, TileJob, draw_count
from imgcate.prediction import overlap_line
from imgcate.provenance import collect, dumps, settled_identity
from imgcate.raster import band_indexes, open_raster, raster_label, raster_source
from imgcate.results import EffectFit
from imgcate.validation import check_prob
from imgcate.windows import read_or_explain, scale_values

log = logging.getLogger("imgcate")


#: Tile side (px) for fits whose encoder does not know the trial's chip size.
DEFAULT_TILE_SIZE = 32


#: Side (px) of the decimated read of a raster for its band statistics (:func:`_sample_stats`),
#: and of each of the windows read instead where the raster is larger and has no overviews.
SAMPLE_SIDE, SAMPLE_WINDOWS = 256, 16


def _sample_windows(ds: Any) -> list[Any] | None:
    """:data:`SAMPLE_WINDOWS` windows of at most :data:`SAMPLE_SIDE` px a side spread evenly
    over the raster (starting on block edges where its blocks are no larger, so that each
    decompresses one block), or None where a decimated read of the whole raster is cheap (it
    is small, or GDAL reads an overview)."""
    from rasterio.windows import Window

    if ds.height <= 2 * SAMPLE_SIDE and ds.width <= 2 * SAMPLE_SIDE or ds.overviews(1):
        return None
    side = int(np.sqrt(SAMPLE_WINDOWS))
    h, w = min(SAMPLE_SIDE, ds.height), min(SAMPLE_SIDE, ds.width)
    bh, bw = ds.block_shapes[0]

    def starts(size: int, extent: int, block: int) -> np.ndarray:
        first = np.linspace(0, extent - size, side).round().astype(int)
        if block <= size:  # aligned down to a block edge: still within the raster
            first = first // block * block
        return np.unique(first)

    return [
        Window(int(c), int(r), w, h)
        for r in starts(h, ds.height, bh)
        for c in starts(w, ds.width, bw)
    ]


def _sample_stats(ds: Any, indexes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Per-band means and sds of the raster, as the trial's chip statistics were measured
    (nodata left out): from a decimated read (at most 256 x 256 px) of a small raster or of
    its overviews, else from every fourth pixel of 16 windows of 256 x 256 px spread over it,
    so that the check costs the same for a scene and for a country (a decimated read without
    overviews reads every block)."""
    windows = _sample_windows(ds)
    if windows is None:
        height, width = min(ds.height, SAMPLE_SIDE), min(ds.width, SAMPLE_SIDE)
        shape = (len(indexes), height, width)
        parts = [read_or_explain(ds, list(indexes), out_shape=shape, masked=True)]
    else:  # every fourth pixel: about as many as the decimated read
        step = int(np.sqrt(len(windows)))
        parts = [
            read_or_explain(ds, list(indexes), window=w, masked=True)[:, ::step, ::step]
            for w in windows
        ]
    arr = np.ma.concatenate(
        [np.ma.masked_invalid(p.astype(np.float64)).reshape(len(indexes), -1) for p in parts],
        axis=1,
    )
    return np.ma.filled(arr.mean(1), 0.0), np.ma.filled(arr.std(1), 0.0)


#: Band statistics of local raster files already sampled in this process, by their files
#: (:func:`imgcate.provenance.settled_identity` of each, sidecars included) and bands, at
#: most :data:`STATS_KEPT` of them: maps of several regions of one scene sample it once (the
#: band check read 0.03 s of a 1-s map).
_STATS: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
STATS_KEPT = 8
#: Drivers whose datasets are their local files (with sidecars that ``ds.files`` lists).
STATS_DRIVERS = ("GTiff", "COG")


def _files_identity(ds: Any) -> tuple | None:
    """The identity of every file of a dataset (:func:`~imgcate.provenance.settled_identity`),
    or None where one is not a settled local file or the driver reads more than its files."""
    if ds.driver not in STATS_DRIVERS:
        return None
    try:
        files = list(ds.files)
        ids = [settled_identity(f) for f in files]  # one stat each; OSError: no such file
    except OSError:
        return None
    if not files or any(i is None for i in ids):
        return None
    return tuple(ids)


def raster_band_stats(ds: Any, indexes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Per-band means and sds of an open raster (:func:`_sample_stats`), kept for the next map
    of the same files while they stay the same, unchanged (:func:`_files_identity`: a GeoTIFF
    and its sidecars, such as a ``.aux.xml`` with its nodata; a file changed in the last 2 s
    is sampled every time). Rasters read over HTTP, VRTs (whose sources may change beneath
    them), other drivers and in-memory datasets are sampled every time. The arrays are
    read-only (they are shared)."""
    before = _files_identity(ds)
    key = None if before is None else (before, tuple(indexes))
    kept = _STATS.get(key) if key is not None else None
    if kept is not None:
        return kept
    means, sds = _sample_stats(ds, indexes)
    means.setflags(write=False)
    sds.setflags(write=False)
    if key is not None and _files_identity(ds) == before:  # not changed while being read
        while len(_STATS) >= STATS_KEPT:
            _STATS.pop(next(iter(_STATS), None), None)
        _STATS[key] = (means, sds)
    return means, sds


def check_bands(
    fit: EffectFit,
    ds: Any,
    bands: Sequence[int | str] | None,
    scale: Any = None,
    stacklevel: int = 4,
) -> tuple[int, ...]:
    """Band numbers to read, checked against the trial's chips (count, names, order); a
    warning points ``stacklevel`` frames up (the caller of the caller by default)."""
    indexes = band_indexes(ds, bands)
    want = fit.encoder.n_bands
    names = [ds.descriptions[i - 1] or f"band_{i}" for i in indexes]
    label = raster_label(ds)
    if len(indexes) != want:
        raise RasterError(
            f"raster {label!r} gives {len(indexes)} band(s) {names} but the fit's encoder was "
            f"fitted on {want}-band chips; map a raster with the trial's bands (or choose them "
            "with bands=[...] / --band)."
        )
    spec = fit.encoder.chip_spec or {}
    means = sds = factor = None
    if spec.get("band_mean"):
        means, sds = raster_band_stats(ds, indexes)
        factor = scale if scale is not None else spec.get("scale")
        factor = np.resize(np.asarray(1.0 if factor is None else factor, float), len(means))
        means, sds = means * np.abs(factor), sds * np.abs(factor)
    check_band_identity(
        [ds.descriptions[i - 1] or f"band_{j + 1}" for j, i in enumerate(indexes)],
        spec,
        source=f"raster {label!r}",
        means=means,
        sds=sds,
        stacklevel=stacklevel,
        scale=factor,
    )
    return tuple(indexes)


def fit_tile_size(fit: EffectFit, tile_size: int | None = None) -> int:
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
        tile_size = check_tiles(tile_size, None)[0]
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


def check_crs(fit: EffectFit, ds: Any) -> None:
    """Refuse a raster in another CRS than the trial's chips (their pixels would be another
    ground footprint, shape and orientation); say how to reproject it.

    A map is not reprojected on the fly: resampling changes pixel values, and tiles cut from
    resampled pixels are not the chips the encoder was fitted on. Reprojecting once, at the
    chips' pixel size, is explicit and can be checked.

    Raises
    ------
    RasterError
        If the encoder records the chips' CRS and the raster's differs.
    """
    from rasterio.crs import CRS

    spec = getattr(fit.encoder, "chip_spec", None) or {}
    if spec.get("crs") is None or ds.crs is None:
        return
    try:
        chips_crs = CRS.from_user_input(spec["crs"])
    except Exception:  # noqa: BLE001 - an unreadable record cannot be checked
        return
    if chips_crs == ds.crs:
        return
    code = chips_crs.to_string()
    pixel = spec.get("pixel_size")
    res = f" -tr {pixel[0]:g} {pixel[1]:g}" if pixel else ""
    rio_res = f" --res {pixel[0]:g}" if pixel else ""
    raise RasterError(
        f"raster {raster_label(ds)!r} is in {ds.crs.to_string()} but the trial's chips were cut "
        f"from a raster in {code}; imgcate does not reproject tiles on the fly (resampled "
        f"pixels are not the chips the encoder saw). Reproject it to the chips' CRS and pixel "
        f"size first: gdalwarp -t_srs {code}{res} -r bilinear IN.tif OUT.tif (or rio warp IN.tif "
        f"OUT.tif --dst-crs {code}{rio_res})."
    )


def chip_settings(
    fit: EffectFit,
    ds: Any,
    tile_size: int | None,
    scale: float | Sequence[float] | None,
    stacklevel: int = 3,
) -> tuple[int, tuple[float, ...] | None]:
    """Tile size and scale as the trial's chips were cut (``fit.encoder.chip_spec``); a
    warning points ``stacklevel`` frames up (the caller's caller by default)."""
    spec = fit.encoder.chip_spec or {}
    tile_size = fit_tile_size(fit, tile_size)
    scale = scale_values(scale if scale is not None else spec.get("scale"))
    check_crs(fit, ds)
    pixel = spec.get("pixel_size")
    if pixel is not None and ds.crs is not None and spec.get("crs") is not None:
        res = np.abs(ds.res)
        if not np.allclose(res, pixel, rtol=0.01):
            warnings.warn(
                f"raster {ds.name!r} has {res[0]:g} x {res[1]:g} pixels but the trial's chips "
                f"had {pixel[0]:g} x {pixel[1]:g}; tiles of {tile_size} px then cover another "
                "ground footprint than the chips. Resample the raster to the trial's resolution.",
                ExtrapolationWarning,
                stacklevel=stacklevel,
            )
    return tile_size, scale


def check_map_options(
    fit: EffectFit, prob: float, max_draws: int | None, block_tiles: int, workers: int
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
    fit: EffectFit,
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
    provenance: dict | None = None,
) -> xr.Dataset:
    """Posterior predictive map of the treatment effect over a region of a raster.

    The region is covered by tiles (see :func:`tile_grid`); each tile is read, embedded with
    ``fit.encoder`` and its CATE computed under ``max_draws`` posterior draws. One output pixel
    is one tile.

    Parameters
    ----------
    fit : EffectFit
        A fit that carries its encoder (fitted on embeddings from :func:`imgcate.embed`).
    raster : path, URL or open rasterio dataset
        A raster with the bands of the trial's chips (same values: give ``scale`` if the chips
        were extracted with one). A URL (``https://.../scene.tif``, e.g. a Cloud-Optimized
        GeoTIFF) is read with HTTP range requests and imgcate's GDAL settings
        (:data:`imgcate.raster.HTTP_GDAL_OPTIONS`); a block whose read fails is tried again
        (:data:`imgcate.maps.tiles.READ_RETRY_DELAYS`) before the map stops.
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
        be able to read ``raster`` by the same path or URL. Overrides ``workers``.
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
    provenance : dict, optional
        Where the map comes from (:func:`imgcate.provenance.collect`; the command line passes
        the fit file, the raster and the command). Default: the raster's files and hashes and
        the fit's digest. Stored as the attr ``provenance`` (JSON) and in the GeoTIFF's tags.

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
          trial's own distances (attr ``support_limit``), else 0;
        - for a fit with a targeting slope: ``image_propensity``, the propensity the tile's image
          alone predicts (as :meth:`EffectFit.predict`'s column), and ``outside_overlap``, 1
          where it lies outside [0.1, 0.9] (docs/confounding.md, "Limited overlap").

        Scalar coordinate ``spatial_ref`` (attrs ``crs_wkt``, ``GeoTransform``); attrs ``crs``
        (WKT), ``transform`` (affine a, b, c, d, e, f), ``prob``, ``seed``, ``max_draws``,
        ``n_draws``, ``tile_size``, ``stride``, ``support_limit``, ``imgcate_version``,
        ``raster``, ``fit_digest`` (SHA-256 of the fit's posterior, standardizer and encoder)
        and ``provenance`` (JSON).

    Raises
    ------
    RasterError
        If the raster lacks the fit's bands, or the region does not overlap it; or when a
        block cannot be read after its retries (the message says how to resume: the blocks
        saved in ``checkpoint_dir`` so far are kept).
    InputError
        For bad options, or a checkpoint directory of another job.

    Warns
    -----
    ExtrapolationWarning
        When more than 10% of the tiles lie outside the trial's support.
    OverlapWarning
        For a fit with a targeting slope, when more than 10% of the tiles have an
        ``image_propensity`` outside [0.1, 0.9].

    Examples
    --------
    >>> ds = predict_map(fit, "scene.tif", (400000, 50000, 410000, 60000))  # doctest: +SKIP
    >>> write_cog(ds, "effect_map.tif")  # doctest: +SKIP
    """
    check_map_options(fit, prob, max_draws, block_tiles, workers)
    job, grid, label, source = map_job(
        fit, raster, region, tile_size, stride, prob, max_draws, block_tiles, seed, bands, scale
    )
    out = {name: np.full(grid.shape, np.nan, np.float32) for name in MAP_VARIABLES}
    out["cluster_prob"] = np.full(grid.shape + (fit.n_clusters,), np.nan, np.float32)
    if overlap_line(fit) is not None:
        out["image_propensity"] = np.full(grid.shape, np.nan, np.float32)
    digest = run_blocks(
        fit,
        job,
        grid,
        lambda flat, result: _place(out, flat, result),
        block_tiles=block_tiles,
        workers=workers,
        scheduler=scheduler,
        checkpoint_dir=checkpoint_dir,
        progress=progress,
        on_block=on_block,
    )
    if not np.isfinite(out["mean"]).any():
        raise empty_map(grid, label)
    model_limit = fit.trial_support()[2]
    extra = source_attrs(label, digest, source, seed, provenance)
    return _to_dataset(out, grid, fit, job, model_limit, extra)


def source_attrs(label: str, digest: str, source: Any, seed: int, provenance: dict | None) -> dict:
    """A map's ``raster``, ``fit_digest`` and ``provenance`` attrs: ``provenance`` if given,
    else the raster's record (:func:`~imgcate.provenance.collect`) with the map's seed."""
    record = provenance or collect({"raster": source}, seeds={"map": int(seed)})
    return {"raster": label, "fit_digest": digest, "provenance": dumps(record)}


def map_job(
    fit: EffectFit,
    raster: str | Path | Any,
    region: Any,
    tile_size: int | None,
    stride: int | None,
    prob: float,
    max_draws: int | None,
    block_tiles: int,
    seed: int,
    bands: Sequence[int | str] | None,
    scale: float | Sequence[float] | None,
) -> tuple[TileJob, TileGrid, str, Any]:
    """A map's job and tile grid, its raster's label (for messages and tags) and its source
    (for the provenance), with the raster's bands, CRS and the region checked."""
    scale = scale_values(scale)  # before the band check scales the raster's statistics
    ds, owned = open_raster(raster)
    try:
        # warnings point at the caller of predict_map / write_map, two frames above
        indexes = check_bands(fit, ds, bands, scale, stacklevel=5)
        tile_size, scale = chip_settings(fit, ds, tile_size, scale, stacklevel=4)
        grid = tile_grid(ds, region, tile_size=tile_size, stride=stride, stacklevel=4)
        path, label, source = str(ds.name), raster_label(ds), raster_source(raster)
    finally:
        if owned:
            ds.close()
    if scale is not None and len(scale) not in (1, len(indexes)):
        raise InputError(
            f"scale has {len(scale)} values; give one or one per band ({len(indexes)})."
        )
    job = TileJob.on_grid(
        fit,
        path,
        indexes,
        scale,
        grid,
        prob=prob,
        max_draws=max_draws,
        seed=seed,
        block_tiles=block_tiles,
    )
    return job, grid, label, source


def _place(out: dict, flat: np.ndarray, result: dict) -> None:
    for name, value in result.items():
        target = out[name]
        target.reshape((-1,) + target.shape[2:])[flat] = value


def _to_dataset(
    out: dict, grid: TileGrid, fit: EffectFit, job: TileJob, limit: float, extra: dict
) -> xr.Dataset:
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
        attrs=map_attrs(grid, fit, job, limit, extra),
    )
    if "image_propensity" in out:
        ds = ds.assign(overlap_layers(out["image_propensity"]))
    for name in ds.data_vars:
        ds[name].attrs["grid_mapping"] = "spatial_ref"
    scored = np.isfinite(outside)
    warn_extrapolation(int((outside[scored] == 1).sum()), int(scored.sum()), limit, stacklevel=4)
    if "outside_overlap" in ds:
        flags = ds["outside_overlap"].values
        warn_overlap(int((flags == 1).sum()), int(np.isfinite(flags).sum()), stacklevel=4)
    return ds


def map_attrs(grid: TileGrid, fit: EffectFit, job: TileJob, limit: float, extra: dict) -> dict:
    """A map's attrs (:func:`predict_map`'s Returns): its grid, job and support limit, with
    ``extra`` (``raster``, ``fit_digest``, ``provenance``)."""
    from imgcate import __version__

    return {
        "crs": grid.crs_wkt,
        "transform": list(grid.transform)[:6],
        "prob": job.prob,
        "seed": job.seed,
        "max_draws": -1 if job.max_draws is None else job.max_draws,
        "n_draws": draw_count(fit, job.max_draws, job.seed),
        "tile_size": job.tile_size,
        "stride": job.stride,
        "support_limit": limit,
        "region": grid.region,
        "imgcate_version": __version__,
        **extra,
    }
