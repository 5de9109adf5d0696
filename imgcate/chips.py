"""Image chips: windowed raster reads centred on each unit, with explicit edge and nodata handling.

A :class:`Chips` holds one chip per distinct image (units that share an ``image_id``, or that sit
at the same location, share one chip) and the index from units to chips.

Sequences (several dates) are stored in one :class:`Chips` whose ``values`` have shape
(date, image, band, y, x) and whose ``dates`` name the dates; every date holds the same images
in the same order, so ``unit_image`` applies to each date.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import geopandas as gpd
import numpy as np
import pandas as pd
from affine import Affine
from rasterio.io import DatasetReader

from imgcate.bands import band_stats
from imgcate.errors import InputError, RasterError
from imgcate.provenance import collect
from imgcate.raster import band_indexes, open_raster, raster_source
from imgcate.units import Trial
from imgcate.validation import check_choice
from imgcate.windows import WindowRead, chip_shape, read_windows, scale_values

Layout = Literal["band_first", "band_last"]
LAYOUTS = ("band_first", "band_last")
SizeUnit = Literal["px", "m"]
OnEdge = Literal["error", "pad", "drop"]
SIZE_UNITS = ("px", "m")
ON_EDGE = ("error", "pad", "drop")


class NothingLeftError(RasterError):
    """``on_edge="drop"`` dropped every chip (a chunk of :func:`imgcate.embed_to_file` may)."""


@dataclass(frozen=True)
class Chips:
    """Image chips, one per distinct image, and the index from units to chips.

    Attributes
    ----------
    values : numpy.ndarray
        float32, shape (image, band, y, x); for sequences (date, image, band, y, x).
    image_ids : numpy.ndarray
        Shape (image,): the image key of each chip (the first unit key that uses it).
    unit_image : numpy.ndarray
        int, shape (unit,): the chip (row of ``values``) each kept unit looks at.
    transforms : tuple of affine.Affine or None
        The geotransform of each chip (for sequences, those of the first date), or None for
        in-memory chips.
    crs : rasterio.crs.CRS or None
        CRS of the chips (of the first date for sequences).
    band_names : tuple of str
        One name per band.
    dates : tuple or None
        Date labels of a sequence; None for a single date.
    unit_ids : numpy.ndarray
        Shape (unit,): ids of the units kept (all units unless ``on_edge="drop"`` removed some).
    unit_keys : numpy.ndarray
        Shape (unit,): image key (``trial.image_keys``) of each kept unit.
    kept : numpy.ndarray
        bool, shape (n_units of the trial,): which trial units were kept; subset the trial with
        ``trial.subset(chips.kept)`` after ``on_edge="drop"``.
    padded : numpy.ndarray
        bool, shape (image,): chips whose edge or nodata pixels were filled (``on_edge="pad"``).
    dropped_units : numpy.ndarray
        Ids of the units dropped by ``on_edge="drop"`` (empty otherwise).
    scale : tuple of float or None
        The multiplier applied to the raw values (one per band, or one for all), or None.
    provenance : dict
        Where the chips came from (:func:`imgcate.provenance.collect`: raster files and their
        hashes, settings, imgcate version); saved with them.
    """

    values: np.ndarray
    image_ids: np.ndarray
    unit_image: np.ndarray
    transforms: tuple[Affine, ...] | None = None
    crs: Any = None
    band_names: tuple[str, ...] = ()
    dates: tuple | None = None
    unit_ids: np.ndarray | None = None
    unit_keys: np.ndarray | None = None
    kept: np.ndarray | None = None
    padded: np.ndarray | None = None
    dropped_units: np.ndarray = field(default_factory=lambda: np.array([]))
    scale: tuple[float, ...] | None = None
    provenance: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        values = np.asarray(self.values, dtype=np.float32)
        want = 5 if self.dates is not None else 4
        if values.ndim != want:
            dims = "(date, image, band, y, x)" if want == 5 else "(image, band, y, x)"
            raise InputError(f"chip values must have shape {dims}, got {values.shape}.")
        if not np.isfinite(values).all():
            bad = np.flatnonzero(~np.isfinite(values).reshape(*values.shape[:-3], -1).all(-1))
            raise InputError(
                f"chip values hold NaN or infinite pixels (chips at flat positions "
                f"{bad[:5].tolist()}); fill or drop them first (extract_chips(on_edge='pad' "
                "or 'drop') does this for nodata)."
            )
        n_img = values.shape[-4]
        ids = np.asarray(self.image_ids)
        if len(ids) != n_img:
            raise InputError(f"chips hold {n_img} images but {len(ids)} image ids.")
        if self.dates is not None and len(self.dates) != values.shape[0]:
            raise InputError(f"chips hold {values.shape[0]} dates but {len(self.dates)} labels.")
        unit_image = np.asarray(self.unit_image, dtype=np.int64)
        if unit_image.size and (unit_image.min() < 0 or unit_image.max() >= n_img):
            raise InputError("unit_image points outside the chips; it must index rows of values.")
        names = tuple(self.band_names) or tuple(f"band_{i + 1}" for i in range(values.shape[-3]))
        if len(names) != values.shape[-3]:
            raise InputError(f"{len(names)} band names for {values.shape[-3]} bands.")
        defaults = {
            "unit_ids": np.arange(len(unit_image)) if self.unit_ids is None else self.unit_ids,
            "unit_keys": ids[unit_image] if self.unit_keys is None else self.unit_keys,
            "kept": np.ones(len(unit_image), bool) if self.kept is None else self.kept,
            "padded": np.zeros(n_img, bool) if self.padded is None else self.padded,
        }
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "image_ids", ids)
        object.__setattr__(self, "unit_image", unit_image)
        object.__setattr__(self, "band_names", names)
        for name, value in defaults.items():
            object.__setattr__(self, name, np.asarray(value))

    def spec(self) -> dict[str, Any]:
        """How these chips were cut: size in pixels, band names, scale, pixel size and CRS, and
        each band's mean and sd (so that a stack in another band order is noticed).

        An encoder fitted on the chips keeps this (``encoder.chip_spec``, saved with a fit), so
        that :func:`~imgcate.maps.predict_map` cuts its tiles the same way.
        """
        pixel = None
        if self.transforms:
            t = self.transforms[0]
            pixel = [abs(float(t.a)), abs(float(t.e))]
        mean, sd = band_stats(self.values)
        return {
            "size_px": [int(self.values.shape[-2]), int(self.values.shape[-1])],
            "band_names": list(self.band_names),
            "scale": None if self.scale is None else [float(v) for v in self.scale],
            "pixel_size": pixel,
            "crs": None if self.crs is None else str(self.crs),
            "band_mean": mean,
            "band_sd": sd,
        }

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the chips to one ``.npz`` file (temporary name, then renamed), with their
        geotransforms, CRS, band names, scale and provenance; read it with
        :func:`imgcate.load_chips`."""
        from imgcate.chipfile import write_chips

        return write_chips(self, path, overwrite=overwrite, provenance=self.provenance)

    def __repr__(self) -> str:
        shape = "x".join(str(v) for v in self.values.shape)
        where = f", crs={self.crs.to_string() if self.crs is not None else None}"
        return (
            f"Chips({self.n_images} images of {self.n_bands} bands {list(self.band_names)}, "
            f"values {shape}, {len(self.unit_image)} units{where})"
        )

    @property
    def n_images(self) -> int:
        """Number of distinct chips."""
        return self.values.shape[-4]

    @property
    def n_bands(self) -> int:
        """Number of bands."""
        return self.values.shape[-3]

    @property
    def is_sequence(self) -> bool:
        """Whether the chips hold several dates."""
        return self.dates is not None

    def date(self, index: int) -> Chips:
        """The chips of one date of a sequence, as single-date :class:`Chips`."""
        if not self.is_sequence:
            raise InputError("these chips hold a single date; date() needs a sequence.")
        return Chips(
            values=self.values[index],
            image_ids=self.image_ids,
            unit_image=self.unit_image,
            transforms=self.transforms,
            crs=self.crs,
            band_names=self.band_names,
            unit_ids=self.unit_ids,
            unit_keys=self.unit_keys,
            kept=self.kept,
            padded=self.padded,
            dropped_units=self.dropped_units,
            scale=self.scale,
        )

    def coarsen(self, factor: int) -> Chips:
        """The same chips at ``factor`` times coarser resolution (block means of pixels).

        The footprint is unchanged; ``factor`` must divide the chip size. Used to ask what the
        images show at a coarser resolution (e.g. 30 m Landsat vs 250 m MODIS-like pixels).
        """
        height, width = self.values.shape[-2:]
        if factor < 1 or height % factor or width % factor:
            raise InputError(
                f"factor={factor} must be a positive divisor of the chip size {height}x{width}."
            )
        shape = self.values.shape[:-2] + (height // factor, factor, width // factor, factor)
        coarse = self.values.reshape(shape).mean(axis=(-1, -3))
        transforms = (
            None
            if self.transforms is None
            else tuple(t @ Affine.scale(factor) for t in self.transforms)
        )
        return replace(self, values=coarse, transforms=transforms)

    def for_units(self) -> np.ndarray:
        """Chip values per kept unit, shape (unit, band, y, x) (or with a leading date axis)."""
        return self.values[..., self.unit_image, :, :, :]


def chips_from_array(
    values: Any,
    image_ids: Any = None,
    *,
    band_names: Sequence[str] | None = None,
    dates: Sequence | None = None,
    layout: Layout | None = None,
) -> Chips:
    """Wrap an in-memory array as :class:`Chips` (one unit per image).

    Parameters
    ----------
    values : array_like
        Shape (image, band, y, x), or (date, image, band, y, x) when ``dates`` is given; with
        ``layout="band_last"``, (image, y, x, band) as most imaging and R packages hold images
        (moved to band first).
    image_ids : array_like, optional
        Shape (image,); defaults to 0..n-1.
    band_names : sequence of str, optional
    dates : sequence, optional
        Date labels of a sequence.
    layout : {"band_first", "band_last"}, optional
        Where the band axis is. Default: band first, except that an array whose second and
        third axes are equal and larger than the last one, such as (100, 35, 35, 3), looks like
        band last and is refused until ``layout`` says which it is.

    Returns
    -------
    Chips
        With ``transforms=None`` and ``crs=None``.

    Raises
    ------
    InputError
        For a wrong number of axes, an ambiguous layout, NaN or infinite pixels, or duplicate
        image ids.

    Examples
    --------
    >>> import numpy as np
    >>> chips_from_array(np.zeros((3, 4, 8, 8)), ["a", "b", "c"]).n_images
    3
    """
    if layout is not None:
        check_choice("layout", layout, LAYOUTS)
    arr = np.asarray(values, dtype=np.float32)
    if arr.ndim != (5 if dates is not None else 4):
        raise InputError(
            f"values has shape {arr.shape}; give (image, band, y, x), or (date, image, band, y, x) "
            "with dates=."
        )
    band, y, x = arr.shape[-3:]
    if layout is None and band == y and x < y:
        raise InputError(
            f"values has shape {arr.shape}: (image, y, x, band) images with {x} bands of "
            f"{band} x {y} px, or {band} bands of {y} x {x} px? Pass layout='band_last' for "
            "(image, y, x, band) arrays (they are moved to band first), or layout='band_first' "
            "if the band axis is the second."
        )
    if layout == "band_last":
        arr = np.moveaxis(arr, -1, -3)
    if not np.isfinite(arr).all():
        raise InputError("chip values hold NaN or infinite pixels; fill or drop them first.")
    n = arr.shape[-4]
    ids = np.arange(n) if image_ids is None else np.asarray(image_ids)
    if pd.Index(ids).has_duplicates:
        raise InputError("image_ids has duplicates; give each chip its own id.")
    return Chips(
        values=arr,
        image_ids=ids,
        unit_image=np.arange(n),
        band_names=tuple(band_names or ()),
        dates=None if dates is None else tuple(dates),
        unit_ids=ids,
        unit_keys=ids,
    )


def as_chips(chips: Any) -> Chips:
    """Single-date :class:`Chips` from Chips or an (image, band, y, x) array (one unit per
    image); a sequence of dates is refused."""
    if not isinstance(chips, Chips):
        chips = chips_from_array(chips)
    if chips.is_sequence:
        raise InputError(
            "chips hold a sequence of dates; segment sensitivity works on single-date chips "
            "from a fit on single-date embeddings (select one date with chips.date(i))."
        )
    return chips


def _ids_text(ids: np.ndarray, limit: int = 8) -> str:
    shown = np.asarray(ids)[:limit].tolist()
    more = f" and {len(ids) - limit} more" if len(ids) > limit else ""
    return f"{shown}{more}"


def _group_units(trial: Trial) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Chip keys, unit→chip index, and chip centre (x, y) in the trial CRS.

    Units sharing an image key share a chip centred on their mean location; keys whose centres
    coincide share one chip too.
    """
    keys = trial.image_keys
    x, y = trial.xy()
    key_codes, uniq_keys = pd.factorize(pd.Series(keys), sort=False)
    cx = np.bincount(key_codes, weights=x) / np.bincount(key_codes)
    cy = np.bincount(key_codes, weights=y) / np.bincount(key_codes)
    loc_codes, _ = pd.factorize(pd.Series(list(zip(cx, cy, strict=True))), sort=False)
    n_chips = loc_codes.max() + 1
    first_key = np.full(n_chips, -1)
    for k, c in enumerate(loc_codes):
        if first_key[c] < 0:
            first_key[c] = k
    chip_ids = np.asarray(uniq_keys)[first_key]
    return chip_ids, loc_codes[key_codes], cx[first_key], cy[first_key]


#: The start of the warning that images share a chip because they share a location.
SHARED_LOCATIONS = "sit at the same location as another"


def warn_shared_locations(trial: Trial, unit_chip=None, stacklevel: int = 3) -> None:
    """Warn (UserWarning) when images (units, without an ``image_id``) share a chip only
    because they sit at one location (the model then treats them as one image). ``unit_chip``:
    each unit's chip (computed when None); ``stacklevel`` as ``warnings.warn`` counts here."""
    if unit_chip is None:
        unit_chip = _group_units(trial)[1]
    keys = pd.Series(trial.image_keys)
    images_per_chip = keys.groupby(unit_chip).nunique()
    merged = images_per_chip.index[images_per_chip.to_numpy() > 1]
    if not len(merged):
        return
    shared = keys[np.isin(unit_chip, merged)].unique()
    what = "images" if trial.image_id is not None else "units"
    warnings.warn(
        f"{len(shared)} {what} ({_ids_text(shared)}) {SHARED_LOCATIONS}, so "
        f"they share one chip ({len(merged)} chip(s) for them): the model treats them as one "
        "image. Check their coordinates, or give them a shared image_id column to say so.",
        UserWarning,
        stacklevel=stacklevel,
    )


def _extract_one(ds, trial, cx, cy, size, size_unit, bands, scale) -> WindowRead:
    if ds.crs is None:
        raise RasterError(
            f"raster {ds.name!r} has no CRS, so unit locations cannot be placed on it; "
            "assign one (e.g. rio edit-info --crs EPSG:....)."
        )
    geo = gpd.GeoSeries(gpd.points_from_xy(cx, cy), crs=trial.crs).to_crs(ds.crs)
    xr, yr = geo.x.to_numpy(), geo.y.to_numpy()
    b = ds.bounds
    outside = ~((xr >= b.left) & (xr <= b.right) & (yr >= b.bottom) & (yr <= b.top))
    outside |= ~np.isfinite(xr) | ~np.isfinite(yr)
    _check_outside(ds, trial, outside)
    shape = chip_shape(ds, size, size_unit)
    indexes = band_indexes(ds, bands)
    scale = scale_values(scale)
    if scale is not None and np.size(scale) not in (1, len(indexes)):
        raise InputError(
            f"scale has {np.size(scale)} values for {len(indexes)} bands; give one per band "
            "read (or a single number for all)."
        )
    return read_windows(ds, xr, yr, shape, indexes, scale)


def _check_outside(ds: DatasetReader, trial: Trial, outside: np.ndarray) -> None:
    if not outside.any():
        return
    _, unit_chip, _, _ = _group_units(trial)
    units = trial.ids[outside[unit_chip]]
    raise RasterError(
        f"units {_ids_text(units)} lie outside raster {ds.name!r} (bounds {tuple(ds.bounds)} in "
        f"{ds.crs}); check the units' CRS ({trial.crs}) and coordinates{_swap_hint(ds, trial)}, "
        "or drop those units with trial.subset(...)."
    )


def _swap_hint(ds: DatasetReader, trial: Trial) -> str:
    """'; lon and lat look swapped' when exchanging x and y would put every unit on the raster."""
    if trial.crs is None or not trial.crs.is_geographic:
        return ""
    x, y = trial.xy()
    try:
        geo = gpd.GeoSeries(gpd.points_from_xy(y, x), crs=trial.crs).to_crs(ds.crs)
    except Exception:  # noqa: BLE001 - swapped values may not be valid coordinates at all
        return ""
    b = ds.bounds
    inside = (geo.x >= b.left) & (geo.x <= b.right) & (geo.y >= b.bottom) & (geo.y <= b.top)
    return "; lon and lat look swapped" if bool(inside.all()) else ""


def _fill(values: np.ndarray, missing: np.ndarray) -> np.ndarray:
    """Fill missing pixels with the chip's band mean over valid pixels (zero if none)."""
    out = values.copy()
    for i in np.flatnonzero(missing.any(axis=(1, 2))):
        valid = ~missing[i]
        for b in range(values.shape[1]):
            mean = float(values[i, b][valid].mean()) if valid.any() else 0.0
            out[i, b][~valid] = mean
    return out


def extract_chips(
    trial: Trial,
    raster: Any,
    size: float | tuple[float, float],
    *,
    size_unit: SizeUnit = "px",
    bands: Sequence[int | str] | None = None,
    on_edge: OnEdge = "error",
    scale: float | Sequence[float] | None = None,
    seed: int | None = None,
    dates: Sequence | None = None,
) -> Chips:
    """Read one chip centred on each distinct image of a trial.

    Unit coordinates are reprojected to the raster's CRS; the chip of an image is the window of
    ``size`` pixels (or metres) whose centre pixel holds the image's location (the mean location of
    the units sharing its ``image_id``). One windowed read per distinct image.

    Parameters
    ----------
    trial : Trial
    raster : path, URL, open rasterio dataset, mapping of band name to file, or a list of them
        Any CRS, band count and dtype. A mapping ``{"blue": "B1.tif", "green": "B2.tif", ...}``
        stacks single-band files into one raster whose bands carry those names (see
        :func:`imgcate.raster.stack_bands`). A list (one raster per date) gives a chip sequence
        with values (date, image, band, y, x). A URL (``https://.../scene.tif``, best a
        Cloud-Optimized GeoTIFF; files of a mapping too) is read with HTTP range requests,
        only the chips' windows (:func:`imgcate.raster.open_raster`).
    size : float or (height, width)
        Chip size; for an even pixel size the centre pixel sits just below/right of the middle.
    size_unit : {"px", "m"}
        Unit of ``size`` ("m" needs a projected raster; rounded to whole pixels).
    bands : sequence of int or str, optional
        1-based band numbers or band descriptions (default: all bands).
    on_edge : {"error", "pad", "drop"}
        What to do with a chip that crosses the raster edge or holds nodata pixels: raise a
        :class:`RasterError` listing the units (default); fill those pixels with the chip's band
        mean over valid pixels (zero if none) and record it in ``Chips.padded``; or drop those
        images and their units (see ``Chips.kept`` and ``Chips.dropped_units``).
    scale : float or sequence of float, optional
        Multiplier applied to the raw values (per band if a sequence), e.g. 1e-4 for reflectance.
    seed : int, optional
        Accepted for a uniform signature; extraction is deterministic and draws no random numbers.
    dates : sequence, optional
        Labels of the dates when ``raster`` is a list (default 0..n-1).

    Returns
    -------
    Chips

    Raises
    ------
    RasterError
        When the raster cannot be opened, has no CRS, a unit lies outside it, or (with
        ``on_edge="error"``) a chip crosses its edge or holds nodata.
    InputError
        For invalid options.

    Examples
    --------
    >>> chips = extract_chips(trial, "scene.tif", 32)  # doctest: +SKIP
    >>> chips.values.shape  # doctest: +SKIP
    (120, 6, 32, 32)
    """
    check_choice("size_unit", size_unit, SIZE_UNITS)
    check_choice("on_edge", on_edge, ON_EDGE)
    del seed
    rasters = list(raster) if isinstance(raster, list | tuple) else [raster]
    if not rasters:
        raise InputError("raster is an empty list; give at least one raster.")
    is_seq = isinstance(raster, list | tuple)
    chip_ids, unit_chip, cx, cy = _group_units(trial)
    warn_shared_locations(trial, unit_chip)
    reads = []
    for item in rasters:
        ds, owned = open_raster(item)
        try:
            reads.append(_extract_one(ds, trial, cx, cy, size, size_unit, bands, scale))
        finally:
            if owned:
                ds.close()
    shapes = {r.values.shape[1:] for r in reads}
    if len(shapes) > 1:
        raise RasterError(
            f"the rasters of the sequence give chips of different shapes {sorted(shapes)}; use "
            "rasters with the same bands and resolution (or size_unit='px')."
        )
    missing = np.stack([r.missing for r in reads])  # (date, image, y, x)
    bad = missing.any(axis=(0, 2, 3))
    unit_bad = bad[unit_chip]
    values = np.stack([r.values for r in reads])
    padded = np.zeros(len(chip_ids), bool)
    kept = np.ones(trial.n_units, bool)
    dropped = np.array([], dtype=trial.ids.dtype)
    if bad.any() and on_edge == "error":
        raise RasterError(
            f"the chips of units {_ids_text(trial.ids[unit_bad])} cross the raster edge or hold "
            f"nodata pixels; pass on_edge='pad' to fill them with the band mean, on_edge='drop' "
            "to drop those units, or use a smaller size."
        )
    if bad.any() and on_edge == "pad":
        values = np.stack([_fill(v, m) for v, m in zip(values, missing, strict=True)])
        padded = bad
        blank = missing.all(axis=(2, 3)).any(axis=0)[unit_chip]
        if blank.any():
            warnings.warn(
                f"the chips of units {_ids_text(trial.ids[blank])} hold no valid pixel (all "
                "nodata or outside the raster), so on_edge='pad' makes them blank images that "
                "say nothing about the place; drop them (on_edge='drop') or check the raster's "
                "nodata value.",
                UserWarning,
                stacklevel=2,
            )
    if bad.any() and on_edge == "drop":
        keep_chip = ~bad
        kept = ~unit_bad
        dropped = trial.ids[unit_bad]
        if not keep_chip.any():
            raise NothingLeftError(
                "every chip crosses the raster edge or holds nodata, so on_edge='drop' leaves "
                "nothing; use on_edge='pad' or a smaller size."
            )
        new_index = np.cumsum(keep_chip) - 1
        values, chip_ids = values[:, keep_chip], chip_ids[keep_chip]
        reads = [
            WindowRead(
                r.values,
                r.missing,
                tuple(t for t, k in zip(r.transforms, keep_chip, strict=True) if k),
                r.crs,
                r.band_names,
            )
            for r in reads
        ]
        unit_chip = new_index[unit_chip[kept]]
        padded = padded[keep_chip]
    first = reads[0]
    return Chips(
        values=values if is_seq else values[0],
        image_ids=chip_ids,
        unit_image=unit_chip,
        transforms=tuple(first.transforms),
        crs=first.crs,
        band_names=first.band_names,
        dates=(tuple(dates) if dates is not None else tuple(range(len(rasters))))
        if is_seq
        else None,
        unit_ids=trial.ids[kept],
        unit_keys=trial.image_keys[kept],
        kept=kept,
        padded=padded,
        dropped_units=dropped,
        scale=None if scale is None else tuple(float(v) for v in np.atleast_1d(scale)),
        provenance=collect(
            {"raster": [raster_source(r) for r in rasters] if is_seq else raster_source(raster)},
            settings={"size": size, "size_unit": size_unit, "on_edge": on_edge},
        ),
    )
