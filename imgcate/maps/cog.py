"""Writing maps: a multi-band Cloud-Optimized GeoTIFF with named bands and a PNG preview."""

from __future__ import annotations

import contextlib
import logging
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from affine import Affine

from imgcate.errors import ImgcateError, InputError
from imgcate.intervals import interval_names
from imgcate.optional import require
from imgcate.output import atomic_path, check_writable, staging_folder, write_error

#: The bands of a map of a fit with a targeting slope (:func:`band_names`).
OVERLAP_BANDS = ("image_propensity", "outside_overlap")


def band_names(dataset: xr.Dataset) -> list[str]:
    """Band descriptions :func:`write_cog` gives, in order.

    ``mean, sd, lower_<p>, upper_<p>, prob_positive, cluster_prob_0..,`` then, for a fit
    given a propensity, ``image_propensity, outside_overlap,`` then ``extrapolation,
    outside_support``, with ``p`` the interval percentiles (``lower_5``, ``upper_95`` for
    ``prob=0.9``); ``outside_support`` is 1 where the tile lies outside the trial's support,
    ``outside_overlap`` where its image-predicted propensity is outside [0.1, 0.9].
    """
    return map_band_names(
        float(dataset.attrs["prob"]), dataset.sizes["cluster"], has_overlap_layers(dataset)
    )


def has_overlap_layers(dataset: xr.Dataset) -> bool:
    """Whether a map has the overlap layers; one without the other is refused."""
    present = [name in dataset for name in OVERLAP_BANDS]
    if any(present) and not all(present):
        raise InputError(
            f"the map has {[n for n in OVERLAP_BANDS if n in dataset]} without "
            f"{[n for n in OVERLAP_BANDS if n not in dataset]}; give both or neither."
        )
    return all(present)


def map_band_names(prob: float, n_clusters: int, overlap: bool = False) -> list[str]:
    """:func:`band_names` of a map of interval probability ``prob`` and ``n_clusters``, with
    the overlap bands where ``overlap``."""
    lo, hi = (n.rstrip("%") for n in interval_names(prob))
    names = ["mean", "sd", f"lower_{lo}", f"upper_{hi}", "prob_positive"]
    names += [f"cluster_prob_{k}" for k in range(n_clusters)]
    names += list(OVERLAP_BANDS) if overlap else []
    return names + ["extrapolation", "outside_support"]


def _layers(dataset: xr.Dataset) -> np.ndarray:
    layers = [dataset[v].values for v in ("mean", "sd", "lower", "upper", "prob_positive")]
    layers += list(dataset["cluster_prob"].values)
    layers += [dataset[v].values for v in OVERLAP_BANDS] if has_overlap_layers(dataset) else []
    layers.append(dataset["extrapolation"].values)
    layers.append(dataset["outside_support"].values)
    return np.stack(layers).astype(np.float32)


#: Dataset attrs written as GeoTIFF dataset tags.
TAGS = (
    "prob",
    "seed",
    "max_draws",
    "n_draws",
    "tile_size",
    "stride",
    "support_limit",
    "imgcate_version",
    "region",
    "raster",
    "fit_digest",
)


def _tags(dataset: xr.Dataset) -> dict[str, str]:
    return map_tags(dataset.attrs)


def map_tags(attrs: dict[str, Any]) -> dict[str, str]:
    """GeoTIFF tags of a map of ``attrs``: those in :data:`TAGS`, the provenance (JSON) and
    the command."""
    from imgcate.provenance import KEY, loads

    tags = {k: str(attrs[k]) for k in TAGS if k in attrs}
    record = loads(attrs.get("provenance"))
    if record:
        tags[KEY] = attrs["provenance"]
        if record.get("command"):
            tags["command"] = " ".join(record["command"])
        fit = (record.get("inputs") or {}).get("fit")
        if isinstance(fit, dict) and fit.get("sha256"):
            tags["fit_sha256"] = fit["sha256"]
    return tags


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


def preview_path(path: Path) -> Path:
    """Where a map's PNG preview goes: beside it, with suffix ``.png``."""
    return path.with_suffix(".png")


def check_map_path(path: Path, preview: bool) -> None:
    """Refuse a map named as its own preview would be (``.png``), which would lose one."""
    if preview and preview_path(path) == path:
        raise InputError(
            f"output {str(path)!r} ends in .png, the name its PNG preview takes; name the map "
            f"{str(path.with_suffix('.tif'))!r} (a GeoTIFF), or leave the preview out "
            "(preview=False, --no-preview)."
        )


class _GdalMessages(logging.Handler):
    """Collects GDAL's warnings (rasterio logs them on ``rasterio._env``)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def gdal_messages(silent: bool = True):
    """GDAL's warnings and errors during the block, collected (whatever the log level) and
    kept from the log when ``silent``."""
    logger = logging.getLogger("rasterio._env")
    handler, level, propagate = _GdalMessages(), logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    logger.propagate = propagate and not silent
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def _refused_options(options: dict[str, Any]) -> list[str]:
    """GDAL's objections to COG creation options, from a copy of a tiny raster in memory
    (GDAL only warns about an unknown option or value, and then ignores it)."""
    import rasterio
    import rasterio.shutil
    from rasterio._err import CPLE_BaseError
    from rasterio.io import MemoryFile

    probe = {k: v for k, v in options.items() if k != "BLOCKSIZE"}  # checked above
    if not probe:
        return []
    profile = {"driver": "GTiff", "width": 32, "height": 32, "count": 2, "dtype": "float32"}
    profile.update(crs="EPSG:4326", transform=Affine(1e-3, 0, 0, 0, -1e-3, 0), nodata=np.nan)
    with MemoryFile() as source, gdal_messages() as messages:
        with source.open(**profile) as dst:
            dst.write(np.zeros((2, 32, 32), np.float32))
        target = f"/vsimem/imgcate-co-probe-{id(messages)}.tif"
        try:
            rasterio.shutil.copy(source.name, target, driver="COG", **probe)
        except (rasterio.errors.RasterioError, CPLE_BaseError) as exc:
            messages.append(str(exc))
        finally:
            with contextlib.suppress(Exception):
                rasterio.shutil.delete(target)
    keys = ("creation option", "not recognised", "not supported", "unexpected value")
    found = [re.sub(r"^CPLE_\w+ in ", "", m).rstrip(". ") for m in messages]
    for name in ("RESAMPLING", "OVERVIEW_RESAMPLING", "WARP_RESAMPLING"):
        if name in options and str(options[name]).upper() not in RESAMPLING_METHODS:
            found.append(f"{name}={options[name]!r} is not a resampling method")
    return [m for m in dict.fromkeys(found) if any(k in m for k in keys) or "resampling" in m]


#: Resampling methods GDAL's overviews and warping know (``RESAMPLING`` and its kin).
RESAMPLING_METHODS = (
    "NEAREST",
    "AVERAGE",
    "BILINEAR",
    "CUBIC",
    "CUBICSPLINE",
    "LANCZOS",
    "MODE",
    "RMS",
    "GAUSS",
    "MIN",
    "MAX",
    "MED",
    "Q1",
    "Q3",
    "SUM",
)


def check_creation_options(co: dict[str, Any] | None) -> None:
    """Check COG creation options before any work: ``BLOCKSIZE`` (GDAL aborts the process on
    some values) and every other option and value as GDAL's COG driver knows them (GDAL
    itself only warns about an unknown one, and ignores it).

    Raises
    ------
    InputError
        If ``BLOCKSIZE`` is not a multiple of 16 between 16 and 4096, or GDAL does not know an
        option or its value (e.g. ``COMPRESS=BOGUS``).
    """
    if co is not None and not isinstance(co, dict):
        raise InputError(
            f"co={co!r} must be a dict of GDAL COG creation options, e.g. "
            "co={'COMPRESS': 'ZSTD'} (on the command line: --co COMPRESS=ZSTD)."
        )
    options = {str(k).upper(): v for k, v in (co or {}).items()}
    if "BLOCKSIZE" in options:
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
    refused = _refused_options(options)
    if refused:
        raise InputError(
            f"GDAL's COG driver refuses the creation options {options}: {'; '.join(refused)}. "
            "Give options and values it knows (e.g. co={'COMPRESS': 'ZSTD'}, --co COMPRESS=ZSTD;"
            " COMPRESS is one of NONE, LZW, DEFLATE, ZSTD, LZMA, JPEG, WEBP, LERC)."
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
    ``tile_size``, ``stride``, ``support_limit``, ``imgcate_version``, ``region``, ``raster``
    (the source raster), ``fit_digest``, and where the map has a provenance record
    ``imgcate_provenance`` (JSON: inputs with SHA-256, command, seeds), ``command`` and
    ``fit_sha256`` (of the fit file). ``imgcate info MAP`` prints them.

    Raises
    ------
    OutputExistsError
        If a file exists and ``overwrite`` is False (nothing is written).
    InputError
        If ``path`` is a link, folder or special file, or GDAL refuses a creation option.
    WriteError
        If the disk is full, read-only or forbidden (nothing partial is left; the staging
        folder ``.<name>.<pid>.<random>.staging`` beside ``path`` is removed, and one left by a
        killed write is removed by the next).

    Examples
    --------
    >>> write_cog(predict_map(fit, "scene.tif"), "effect_map.tif")  # doctest: +SKIP
    """
    import rasterio

    path = Path(path)
    check_map_path(path, preview)
    check_writable(path, overwrite)
    if preview:
        check_writable(preview_path(path), overwrite)
    missing = [v for v in ("mean", "cluster_prob", "extrapolation") if v not in dataset]
    if missing or "crs" not in dataset.attrs:
        raise InputError(
            f"dataset lacks {missing or ['crs attr']}; pass the output of predict_map."
        )
    layers = _layers(dataset)
    options = cog_options(layers.shape[1:], co)
    profile = staging_profile(
        dataset.attrs["crs"], dataset.attrs["transform"], layers.shape[1:], len(layers)
    )
    if preview:
        check_preview()
    with atomic_path(path, overwrite=overwrite) as tmp, staging_folder(path) as workdir:
        staging = workdir / "staging.tif"
        with write_errors(path):  # the options were checked above: what fails now is the disk
            with rasterio.open(staging, "w", **profile) as dst:
                dst.write(layers)
                label_bands(dst, band_names(dataset), _tags(dataset))
            copy_to_cog(staging, tmp, options)
        if preview:
            write_preview(
                preview_dataset(tmp, dataset.attrs), preview_path(path), overwrite=overwrite
            )
    return path


@contextlib.contextmanager
def write_errors(path: Path):
    """What GDAL or the disk raise while a map is written becomes a :class:`WriteError` naming
    ``path`` and GDAL's messages (imgcate's own errors pass)."""
    import rasterio
    from rasterio._err import CPLE_BaseError

    with gdal_messages(silent=False) as messages:
        try:
            yield
        except ImgcateError:
            raise
        except (OSError, rasterio.errors.RasterioError, CPLE_BaseError) as exc:
            raise write_error(path, exc, "; ".join(messages)) from exc


def check_preview() -> None:
    """Refuse a preview without matplotlib before a map is computed or written."""
    require("matplotlib", "maps", "the map preview (preview=False or --no-preview does without)")


def cog_options(shape: tuple[int, int], co: dict[str, Any] | None) -> dict[str, Any]:
    """The COG creation options of a map of ``shape`` (y, x): imgcate's defaults (DEFLATE,
    AVERAGE overviews, a block size suited to the size) updated by ``co``, checked."""
    check_creation_options(co)
    options = {
        "COMPRESS": "DEFLATE",
        "PREDICTOR": "YES",
        "OVERVIEW_RESAMPLING": "AVERAGE",
        "RESAMPLING": "AVERAGE",
        "BLOCKSIZE": _default_blocksize(shape),
    }
    options.update({str(k).upper(): v for k, v in (co or {}).items()})
    check_creation_options(options)
    return options


def staging_profile(crs_wkt: str, transform: Any, shape: tuple[int, int], count: int) -> dict:
    """rasterio profile of the plain GeoTIFF a map is written to before its COG copy."""
    from rasterio.crs import CRS

    return {
        "driver": "GTiff",
        "width": shape[1],
        "height": shape[0],
        "count": count,
        "dtype": "float32",
        "crs": CRS.from_wkt(crs_wkt),
        "transform": Affine(*list(transform)[:6]),
        "nodata": np.nan,
        "BIGTIFF": "IF_SAFER",
    }


def label_bands(dst: Any, names: list[str], tags: dict[str, str]) -> None:
    """Name the bands of an open map (descriptions and ``name`` tags) and tag it."""
    for i, name in enumerate(names, start=1):
        dst.set_band_description(i, name)
        dst.update_tags(i, name=name)
    dst.update_tags(**tags)


#: GDAL's block cache while a map is copied to its COG, in MB: the copy's memory stays near
#: 200 MB above the process's (overviews, compression) whatever the map's size; with GDAL's
#: default (5 % of the machine's memory) it grew to 600 MB above it for a 400 MB map.
COPY_CACHE_MB = 64


def copy_to_cog(staging: Path, target: Path, options: dict[str, Any]) -> None:
    """Copy a plain GeoTIFF to a COG (GDAL's COG driver, reading block by block, with a block
    cache of :data:`COPY_CACHE_MB`)."""
    import rasterio
    import rasterio.shutil

    # GDAL_CACHEMAX set while GDAL runs is read as bytes (a number below 100,000 set before
    # GDAL starts is MB); the cache goes back to its size when this Env closes (inside an Env
    # of the caller's, when that one does)
    with _quiet_small_blocksize(), rasterio.Env(GDAL_CACHEMAX=COPY_CACHE_MB * 2**20):
        rasterio.shutil.copy(staging, target, driver="COG", **options)


#: Largest side (cells) of a map drawn in its preview, whose panels are about 400 px wide: a
#: larger map is read for it at a whole fraction of its size (:func:`preview_dataset`), so
#: that the preview's memory stays bounded (about 250 MB for a map of 1,000 x 1,000 cells).
PREVIEW_SIDE = 512


def preview_dataset(path: Path, attrs: dict, side: int | None = None) -> xr.Dataset:
    """The bands :func:`write_preview` draws, read from a written map with ``attrs``: whole
    where it is at most ``side`` (:data:`PREVIEW_SIDE`) cells a side, else at the
    power-of-two fraction of its size that fits, each cell the mean of those it covers (the
    COG's overview at that level); ``outside_support`` where at least half are outside."""
    import rasterio
    from rasterio.enums import Resampling

    side = PREVIEW_SIDE if side is None else side
    with rasterio.open(path) as src:
        over = max(src.height, src.width) / side
        factor = 2 ** math.ceil(math.log2(over)) if over > 1 else 1  # an overview's level
        shape = (math.ceil(src.height / factor), math.ceil(src.width / factor))
        names = list(src.descriptions)
        wanted = ("mean", "prob_positive", "extrapolation", "outside_support")
        read = src.read(
            [names.index(v) + 1 for v in wanted],
            out_shape=(len(wanted), *shape),
            resampling=Resampling.average,
        )
        t = src.transform @ Affine.scale(src.width / shape[1], src.height / shape[0])
    if factor > 1:
        read[-1] = np.where(np.isnan(read[-1]), np.nan, read[-1] >= 0.5)
    x = t.c + (np.arange(shape[1]) + 0.5) * t.a
    y = t.f + (np.arange(shape[0]) + 0.5) * t.e
    data = {v: (("y", "x"), read[i]) for i, v in enumerate(wanted)}
    return xr.Dataset(data, coords={"y": y, "x": x}, attrs={**attrs, "transform": list(t)[:6]})


def axis_labels(crs: Any) -> tuple[str, str]:
    """x and y axis labels of a map in ``crs``, with its units: ``("easting (m)", "northing
    (m)")`` for UTM, ``("longitude (°)", "latitude (°)")`` for a geographic CRS."""
    from pyproj import CRS

    try:
        parsed = CRS.from_user_input(crs)
    except Exception:  # noqa: BLE001 - an unknown CRS still gets labels
        return "x", "y"
    if parsed.is_geographic:
        return "longitude (°)", "latitude (°)"
    unit = parsed.axis_info[0].unit_name if parsed.axis_info else ""
    short = {"metre": "m", "meter": "m", "US survey foot": "ftUS", "foot": "ft"}.get(unit, unit)
    suffix = f" ({short})" if short else ""
    code = parsed.to_epsg()
    where = f", EPSG:{code}" if code else ""
    return f"easting{suffix}{where}", f"northing{suffix}"


def write_preview(
    dataset: xr.Dataset, path: str | Path, *, overwrite: bool = False, dpi: int = 110
) -> Path:
    """A PNG of the map: mean CATE, P(CATE > 0) and extrapolation, each with a colour bar.

    Tiles outside the trial's support are hatched on the first two panels and outlined on the
    third (on a map at least two cells high and wide: contours need two). Every cell of
    ``dataset`` is drawn: :func:`write_cog` and :func:`~imgcate.maps.write_map` draw a map
    larger than :data:`PREVIEW_SIDE` cells a side from a decimated read of it. The extrapolation
    scale stops at its 99th percentile (the colour bar's arrow: beyond), so that a few far
    tiles do not flatten the rest. Written to a temporary name and renamed.
    """
    purpose = "the map preview (write_cog(preview=True) or --preview)"
    require("matplotlib", "maps", purpose).use("Agg", force=False)
    plt = require("matplotlib.pyplot", "maps", purpose)

    path = Path(path)
    t = Affine(*dataset.attrs["transform"][:6])
    h, w = dataset.sizes["y"], dataset.sizes["x"]
    extent = (t.c, t.c + w * t.a, t.f + h * t.e, t.f)
    mean = dataset["mean"].values
    limit = float(np.nanmax(np.abs(mean))) if np.isfinite(mean).any() else 1.0
    outside = dataset["outside_support"].values == 1
    extrapolation = dataset["extrapolation"].values
    # a few far tiles would stretch the scale over the rest: cap it at the 99th percentile
    far = float(np.nanpercentile(extrapolation, 99)) if np.isfinite(extrapolation).any() else None
    panels = [  # variable, title, colour-bar label, colours, limits
        ("mean", "posterior mean CATE", "CATE (outcome units)", "RdBu_r", -limit or -1, limit or 1),
        ("prob_positive", "P(CATE > 0)", "posterior probability", "PuOr_r", 0, 1),
        (
            "extrapolation",
            "extrapolation",
            "Mahalanobis distance to the trial",
            "viridis",
            None,
            far,
        ),
    ]
    xlabel, ylabel = axis_labels(dataset.attrs["crs"])
    outlined = h >= 2 and w >= 2  # matplotlib's contours need two rows and two columns
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2), constrained_layout=True)
    for ax, (var, label, unit, cmap, vmin, vmax) in zip(axes, panels, strict=True):
        image = ax.imshow(
            dataset[var].values,
            extent=extent,
            cmap=cmap,
            vmin=vmin,
            vmax=vmax,
            interpolation="nearest",
        )
        if outlined and var != "extrapolation" and outside.any():
            ax.contourf(
                dataset["x"].values,
                dataset["y"].values,
                outside.astype(float),
                levels=[0.5, 1.5],
                colors="none",
                hatches=["////"],
            )
        elif outlined and var == "extrapolation":
            ax.contour(
                dataset["x"].values,
                dataset["y"].values,
                np.nan_to_num(dataset[var].values),
                levels=[dataset.attrs["support_limit"]],
                colors="white",
                linewidths=0.8,
            )
        capped = var == "extrapolation" and far is not None and np.nanmax(extrapolation) > far
        bar = fig.colorbar(image, ax=ax, shrink=0.85, extend="max" if capped else "neither")
        bar.set_label(unit, fontsize=8)
        bar.ax.tick_params(labelsize=7)
        ax.set_title(label, fontsize=10)
        ax.tick_params(labelsize=7)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.ticklabel_format(useOffset=False, style="plain")
    axes[0].set_ylabel(ylabel, fontsize=8)
    fig.suptitle(
        f"imgcate effect map ({dataset.attrs.get('n_draws', '?')} draws, tiles "
        f"{dataset.attrs.get('tile_size')} px every {dataset.attrs.get('stride')} px)"
        + ("; hatched / outlined: outside the trial's support" if outlined else ""),
        fontsize=9,
    )
    with atomic_path(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return path
