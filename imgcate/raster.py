"""Raster access shared by chips and maps: opening, band stacks, band lookup (windowed reads:
:mod:`imgcate.windows`).

Several single-band files (a Landsat scene as ``B1.tif`` ... ``B7.tif``) are one raster once
stacked: :func:`stack_bands` writes a VRT whose bands carry descriptions (no GDAL command-line
tools needed), and every function that takes a raster also takes a mapping
``{band name: file}`` (stacked on the fly, in that order).

A raster (or a band file) may be a URL: ``http://`` and ``https://`` addresses (or GDAL's own
``/vsicurl/...`` names) are read with HTTP range requests through GDAL's ``/vsicurl/``, with the
settings of :data:`HTTP_GDAL_OPTIONS` (:func:`raster_env`).
"""

from __future__ import annotations

import contextlib
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import rasterio
from rasterio.io import DatasetReader

from imgcate.errors import InputError, RasterError

#: GDAL settings for rasters read over HTTP(S) (``/vsicurl/``), set by :func:`raster_env`
#: around every open of such a raster (chips, map tiles, Dask workers included; GDAL keeps them
#: for the open file) and every read of a map's block. A setting the user gave as an
#: environment variable, or in an enclosing ``rasterio.Env``, wins.
HTTP_GDAL_OPTIONS: dict[str, str] = {
    # the server is not asked to list the folder, nor for sidecar files (.aux.xml, .ovr, .msk)
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    # a request that fails with HTTP 429/500/502/503/504 (or a timeout) is sent again, after
    # 1 s, then about 2 s, 4 s (GDAL doubles the delay)
    "GDAL_HTTP_MAX_RETRY": "3",
    "GDAL_HTTP_RETRY_DELAY": "1",
    # seconds to connect, and for a whole request
    "GDAL_HTTP_CONNECTTIMEOUT": "20",
    "GDAL_HTTP_TIMEOUT": "60",
    # adjacent blocks of a window come in one request
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    # blocks read once are kept in memory, at most 64 MiB per open raster
    "VSI_CACHE": "TRUE",
    "VSI_CACHE_SIZE": str(64 * 2**20),
}

#: File extensions that GDAL is told are the only ones on the server
#: (``CPL_VSIL_CURL_ALLOWED_EXTENSIONS``), when every URL of a raster ends with one of them.
HTTP_EXTENSIONS = (".tif", ".tiff", ".vrt")

_URL = re.compile(r"^(/vsicurl/)?https?://", re.IGNORECASE)


def is_url(raster: Any) -> bool:
    """Whether ``raster`` is text naming a raster over HTTP(S): ``http://...``, ``https://...``
    or ``/vsicurl/http...``."""
    return isinstance(raster, str) and bool(_URL.match(raster.strip()))


def gdal_path(raster: str) -> str:
    """The name GDAL opens for a raster argument: ``/vsicurl/`` + a URL; anything else as is."""
    text = raster.strip()
    if is_url(text) and not text.lower().startswith("/vsicurl/"):
        return "/vsicurl/" + text
    return text


def _url_of(name: str) -> str:
    """The URL of a ``/vsicurl/`` name (the name itself for anything else)."""
    return name[len("/vsicurl/") :] if name.lower().startswith("/vsicurl/") else name


def file_stem(file: Any) -> str:
    """A file's name without suffix (of the URL's path for a URL): the default band name of a
    single-band file in a stack."""
    if is_url(file):
        return PurePosixPath(urlsplit(_url_of(str(file).strip())).path).stem
    return Path(str(file)).stem


def vrt_sources(vrt: str) -> list[str]:
    """The source files a VRT names (``SourceFilename``), from its XML text or a ``.vrt``
    file's path.

    Raises
    ------
    xml.etree.ElementTree.ParseError, OSError
        If the text is not XML or the file cannot be read.
    """
    text = vrt.lstrip()
    root = ET.fromstring(text) if text.startswith("<VRTDataset") else ET.parse(vrt).getroot()
    return [n.text or "" for n in root.iter("SourceFilename")]


def http_sources(raster: Any) -> list[str]:
    """The URLs (as ``/vsicurl/`` names) a raster argument reads: the raster's own, a band
    mapping's, or those a VRT (in memory or a local ``.vrt`` file) refers to."""
    if isinstance(raster, Mapping):
        names = [str(v) for v in raster.values()]
    else:
        text = str(raster) if isinstance(raster, str | Path) else str(getattr(raster, "name", ""))
        names = [text]
        try:
            if text.lstrip().startswith("<VRTDataset") or (
                text.lower().endswith(".vrt") and Path(text).is_file()
            ):
                names = vrt_sources(text)
        except (ET.ParseError, OSError):
            pass
    return [gdal_path(n) for n in names if is_url(n)]


def gdal_options(raster: Any) -> dict[str, str]:
    """The GDAL settings :func:`raster_env` sets for ``raster``: :data:`HTTP_GDAL_OPTIONS` (and
    ``CPL_VSIL_CURL_ALLOWED_EXTENSIONS`` when every URL ends with one of
    :data:`HTTP_EXTENSIONS`) for a raster read over HTTP, none for a local one; less those the
    user set as environment variables or in an enclosing ``rasterio.Env``."""
    urls = http_sources(raster)
    if not urls:
        return {}
    options = dict(HTTP_GDAL_OPTIONS)
    paths = [urlsplit(_url_of(u)).path.lower() for u in urls]
    if all(p.endswith(HTTP_EXTENSIONS) for p in paths):
        options["CPL_VSIL_CURL_ALLOWED_EXTENSIONS"] = ",".join(HTTP_EXTENSIONS)
    given = set(os.environ)
    if rasterio.env.hasenv():
        given |= set(rasterio.env.getenv())
    return {k: v for k, v in options.items() if k not in given}


@contextlib.contextmanager
def raster_env(raster: Any) -> Iterator[None]:
    """A ``rasterio.Env`` with :func:`gdal_options` for ``raster`` (nothing for a local file).

    Examples
    --------
    >>> with raster_env("https://example.org/scene.tif"):  # doctest: +SKIP
    ...     ds = rasterio.open(gdal_path("https://example.org/scene.tif"))
    """
    options = gdal_options(raster)
    if not options:
        yield
        return
    with rasterio.Env(**options):
        yield


def _single_band_names(files: Sequence[Any]) -> list[str]:
    return [file_stem(f) for f in files]


def vrt_xml(
    files: Sequence[str | Path] | Mapping[str, str | Path], names: Sequence[str] | None = None
) -> str:
    """The XML of a VRT stacking the bands of ``files`` in order, each band described.

    Parameters
    ----------
    files : sequence of paths or URLs, or mapping of band name to path or URL
        Rasters on one grid (same CRS, transform and size); every band of each is used.
    names : sequence of str, optional
        One description per output band (default: the mapping's keys; else each file's own
        band descriptions, or its file name without suffix for a single-band file).

    Raises
    ------
    RasterError
        If a file is missing, unreadable, or on another grid than the first.
    InputError
        If ``names`` does not give one name per band.
    """
    if isinstance(files, Mapping):
        if names is not None:
            raise InputError("give band names as the mapping's keys or as names=, not both.")
        names, files = [str(k) for k in files], list(files.values())
    files = [f.strip() if is_url(f) else Path(str(f)) for f in files]
    if not files:
        raise InputError("no raster files to stack; give at least one.")
    bands, grid, dtypes = [], None, set()
    for path in files:
        ds, _ = open_raster(path)
        with ds:
            this = (ds.crs, ds.transform, ds.width, ds.height)
            if grid is None:
                grid, first = this, path
            elif this[0] != grid[0] or not this[1].almost_equals(grid[1]) or this[2:] != grid[2:]:
                raise RasterError(
                    f"raster {str(path)!r} is on another grid than {str(first)!r} (CRS "
                    f"{this[0]} vs {grid[0]}, {this[2]}x{this[3]} vs {grid[2]}x{grid[3]} px, "
                    f"transform {tuple(this[1])[:6]} vs {tuple(grid[1])[:6]}); resample the "
                    "bands to one grid first (e.g. rio warp --like)."
                )
            for j in range(1, ds.count + 1):
                own = ds.descriptions[j - 1]
                stem = file_stem(path)
                default = stem if ds.count == 1 else f"{stem}_{j}"
                bands.append(
                    (
                        path,
                        j,
                        ds.dtypes[j - 1],
                        ds.nodatavals[j - 1],
                        own or default,
                        ds.block_shapes[j - 1],
                    )
                )
                dtypes.add(ds.dtypes[j - 1])
    if names is not None:
        names = [str(n) for n in names]
        if len(names) != len(bands):
            raise InputError(
                f"{len(names)} band names for {len(bands)} bands in {[str(f) for f in files]}; "
                "give one name per band."
            )
        if len(set(names)) != len(names):
            raise InputError(f"band names {names} repeat a name; give each band its own.")
    else:
        names = [b[4] for b in bands]
    crs, transform, width, height = grid
    dtype = dtypes.pop() if len(dtypes) == 1 else "Float32"
    gdal_type = {
        "uint8": "Byte",
        "int8": "Int8",
        "uint16": "UInt16",
        "int16": "Int16",
        "uint32": "UInt32",
        "int32": "Int32",
        "float32": "Float32",
        "float64": "Float64",
    }.get(str(dtype), "Float32")
    root = ET.Element("VRTDataset", rasterXSize=str(width), rasterYSize=str(height))
    if crs is not None:
        ET.SubElement(root, "SRS").text = crs.to_wkt()
    ET.SubElement(root, "GeoTransform").text = ", ".join(repr(v) for v in transform.to_gdal())
    for i, ((path, j, band_type, nodata, _, block), name) in enumerate(
        zip(bands, names, strict=True), start=1
    ):
        band = ET.SubElement(root, "VRTRasterBand", dataType=gdal_type, band=str(i))
        ET.SubElement(band, "Description").text = name
        if nodata is not None:
            ET.SubElement(band, "NoDataValue").text = repr(float(nodata))
        source = ET.SubElement(band, "ComplexSource" if nodata is not None else "SimpleSource")
        ET.SubElement(source, "SourceFilename", relativeToVRT="0").text = (
            gdal_path(path) if is_url(path) else str(path.resolve())
        )
        ET.SubElement(source, "SourceBand").text = str(j)
        ET.SubElement(
            source,
            "SourceProperties",
            RasterXSize=str(width),
            RasterYSize=str(height),
            DataType={"uint8": "Byte"}.get(band_type, gdal_type),
            BlockXSize=str(block[1]),
            BlockYSize=str(block[0]),
        )
        window = {"xOff": "0", "yOff": "0", "xSize": str(width), "ySize": str(height)}
        ET.SubElement(source, "SrcRect", **window)
        ET.SubElement(source, "DstRect", **window)
        if nodata is not None:
            ET.SubElement(source, "NODATA").text = repr(float(nodata))
    return ET.tostring(root, encoding="unicode")


def stack_bands(
    files: Sequence[str | Path] | Mapping[str, str | Path],
    path: str | Path,
    *,
    names: Sequence[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Stack single-band files (or the bands of several files) into one VRT with named bands.

    Parameters
    ----------
    files : sequence of paths, or mapping of band name to path
        Rasters on one grid, in band order.
    path : path
        The VRT to write (temporary name, then renamed). It refers to the files by absolute
        path, so it stays valid wherever it is read from.
    names : sequence of str, optional
        Band descriptions (default: the mapping's keys, else each file's descriptions or name).
        Name the bands: chips, fits and maps check band identity by these descriptions.
    overwrite : bool
        Replace an existing ``path``.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    RasterError
        If a file is missing, unreadable, or on another grid.
    OutputExistsError
        If ``path`` exists and ``overwrite`` is False.

    Examples
    --------
    >>> stack_bands({"blue": "B1.tif", "green": "B2.tif", "red": "B3.tif"},
    ...             "scene.vrt")  # doctest: +SKIP
    PosixPath('scene.vrt')
    """
    from imgcate.output import atomic_path

    text = vrt_xml(files, names)
    with atomic_path(path, overwrite=overwrite) as tmp:
        Path(tmp).write_text(text)
    return Path(path)


def as_raster(raster: Any) -> Any:
    """A raster argument as something :func:`rasterio.open` takes: a mapping
    ``{band name: file}`` becomes the XML of a VRT stacking them; anything else is unchanged."""
    if isinstance(raster, Mapping):
        return vrt_xml(raster)
    return raster


def raster_label(raster: Any) -> str:
    """How messages name a raster: its path or URL, or ``VRT of [files]`` for an in-memory
    stack."""
    name = str(getattr(raster, "name", raster))
    if name.lstrip().startswith("<VRTDataset"):
        try:
            files = vrt_sources(name)
        except ET.ParseError:
            files = []
        return f"VRT of {[os.path.basename(f) for f in files]}"
    return _url_of(name) if is_url(name) else name


def raster_source(raster: Any) -> Any:
    """What provenance records of a raster argument: a path, the mapping of band files, or
    the files of an in-memory VRT stack."""
    if isinstance(raster, Mapping):
        return {str(k): str(v) for k, v in raster.items()}
    name = str(raster) if isinstance(raster, str | Path) else str(getattr(raster, "name", raster))
    if name.lstrip().startswith("<VRTDataset"):
        names = [n.text or "" for n in ET.fromstring(name).iter("Description")]
        files = vrt_sources(name)
        return dict(zip(names, files, strict=False)) if len(names) == len(files) else files
    return _url_of(name) if is_url(name) else name


_HTTP_HINT = (
    "Check the address (curl -I URL should answer 200 OK) and that the server answers HTTP "
    "range requests (Accept-Ranges: bytes, 206 Partial Content) with a GeoTIFF or VRT; GDAL "
    "settings set as environment variables (GDAL_HTTP_*, CPL_VSIL_CURL_*) override imgcate's "
    "(imgcate.raster.HTTP_GDAL_OPTIONS)."
)


def _open_url(url: str) -> DatasetReader:
    """A raster over HTTP, opened through ``/vsicurl/`` with :func:`raster_env`'s settings."""
    try:
        with raster_env(url):
            return rasterio.open(gdal_path(url))
    except rasterio.errors.RasterioError as exc:
        raise RasterError(
            f"raster {_url_of(url.strip())!r} could not be read over HTTP ({exc}). {_HTTP_HINT}"
        ) from exc


def open_raster(raster: Any) -> tuple[DatasetReader, bool]:
    """An open dataset and whether we opened it (so must close it).

    ``raster`` is a path, a URL (``http(s)://...`` or ``/vsicurl/...``, opened through
    ``/vsicurl/`` with :func:`raster_env`'s settings), an open dataset, VRT XML text, or a
    mapping ``{band name: file or URL}`` (stacked with :func:`vrt_xml`).

    Raises
    ------
    RasterError
        If the path does not exist, the dataset is closed, or GDAL cannot open it (for a URL:
        the server cannot be reached, does not have the file or does not answer range
        requests).
    """
    if isinstance(raster, Mapping):
        raster = vrt_xml(raster)
    if isinstance(raster, str) and raster.lstrip().startswith("<VRTDataset"):
        try:
            with raster_env(raster):
                return rasterio.open(raster), True
        except rasterio.errors.RasterioError as exc:
            hint = f" {_HTTP_HINT}" if http_sources(raster) else ""
            raise RasterError(f"the band stack could not be opened ({exc}).{hint}") from exc
    if is_url(raster):
        return _open_url(raster), True
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
        if re.match(r"^(/vsicurl/)?https?:/[^/]", str(raster), re.IGNORECASE):
            raise RasterError(
                f"raster {str(raster)!r} looks like a URL whose '//' a pathlib.Path removed; "
                "pass the URL as text (a str), not as a Path."
            )
        raise RasterError(f"raster {str(raster)!r} does not exist; check the path.")
    try:
        with raster_env(raster):  # a .vrt file may refer to URLs
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
