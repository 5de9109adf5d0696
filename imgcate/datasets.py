"""The small real data imgcate ships: a Landsat 7 scene, an elevation model over it, and a
simulated trial in 300 villages on the scene (with its documented truth) and four districts.

The files live in the repository's ``data/landsat/`` folder (with their provenance and the
Apache-2.0 licence notice) and are packaged into the wheel as ``imgcate/data/landsat/``; the
accessors find them from a clone, an editable install or an installed wheel, whatever the
working directory.

Examples
--------
>>> from imgcate.datasets import landsat_path
>>> landsat_path().name
'L7_ETMs.tif'
>>> villages_path().name
'villages.csv'
"""

from __future__ import annotations

from pathlib import Path

from imgcate.errors import InputError

#: Names of the six bands of :func:`landsat_path` (Landsat 7 ETM+ bands 1, 2, 3, 4, 5, 7).
LANDSAT_BANDS = ("blue", "green", "red", "nir", "swir1", "swir2")

#: Landsat 7 ETM+ band numbers of those six bands.
LANDSAT_BAND_NUMBERS = (1, 2, 3, 4, 5, 7)

#: Where the data lie: inside the installed package (wheel), or beside it in a clone
#: (editable install).
_PACKAGE = Path(__file__).resolve().parent


def data_dir() -> Path:
    """The folder holding the shipped data sets (``landsat/``).

    Raises
    ------
    InputError
        If the data are missing (an install without its data files).
    """
    for folder in (_PACKAGE / "data", _PACKAGE.parent / "data"):
        if (folder / "landsat").is_dir():
            return folder
    raise InputError(
        f"imgcate's data files are missing (looked in {_PACKAGE / 'data'} and "
        f"{_PACKAGE.parent / 'data'}); reinstall imgcate, or run from a clone of the repository."
    )


def _landsat_file(name: str) -> Path:
    path = data_dir() / "landsat" / name
    if not path.is_file():
        raise InputError(f"{path} is missing; reinstall imgcate or restore the file from git.")
    return path


def landsat_path() -> Path:
    """The real Landsat 7 ETM+ scene of Olinda / Recife (Brazil): ``L7_ETMs.tif``.

    Six bands (1, 2, 3, 4, 5, 7), uint8, 349 x 352 pixels at 28.5 m, EPSG:31985 (SIRGAS 2000 /
    UTM 25S); urban areas, vegetation, coast and ocean. USGS Landsat data (public domain), from
    the example data of the ``stars`` R package (Apache-2.0).
    """
    return _landsat_file("L7_ETMs.tif")


def elevation_path() -> Path:
    """The elevation model over the Landsat scene: ``olinda_dem_utm25s.tif``.

    float32, 111 x 111 pixels at about 90 m, on the same UTM 25S grid as
    :func:`landsat_path`.
    """
    return _landsat_file("olinda_dem_utm25s.tif")


def villages_path() -> Path:
    """A simulated randomized trial in 300 villages on the Landsat scene: ``villages.csv``.

    Columns: ``village`` (id ``V001``..), ``lon``, ``lat`` (EPSG:4326), ``treatment`` (0/1,
    half treated at random), ``outcome``, ``baseline_index`` and ``elevation_m`` (covariates;
    elevation from :func:`elevation_path`). The truth, by construction: outcome = 1 + 0.5 x
    baseline_index + 2 x treatment x [more than 30 % of the 16 x 16 px (456 m) square around
    the village is vegetated, NDVI > 0.2] + N(0, 1) noise; so the effect is 2 in green
    villages and 0 elsewhere (:func:`villages_truth_path` has it per village). Made by
    ``data/landsat/make_villages.py``.
    """
    return _landsat_file("villages.csv")


def villages_truth_path() -> Path:
    """The truth of :func:`villages_path`: ``village``, ``vegetated_share``, ``true_cluster``
    (1 = more than 30 % vegetated) and ``true_cate`` (2 or 0)."""
    return _landsat_file("villages_truth.csv")


def districts_path() -> Path:
    """Four rectangular "districts" (``district``: south-west, ...) quartering the Landsat
    scene, EPSG:4326: ``districts.gpkg``, for polygon aggregates of a map."""
    return _landsat_file("districts.gpkg")


def landsat_band_files(folder: str | Path, *, overwrite: bool = False) -> list[Path]:
    """Write the Landsat scene as single-band GeoTIFFs ``B1.tif``, ``B2.tif``, ... ``B7.tif``
    in ``folder``, the way a downloaded scene comes (without band descriptions).

    Returns
    -------
    list of pathlib.Path
        The six files, in band order (1, 2, 3, 4, 5, 7); stack them with
        :func:`imgcate.raster.stack_bands` (names: :data:`LANDSAT_BANDS`).
    """
    import rasterio

    from imgcate.output import atomic_path, ensure_folder

    folder = ensure_folder(folder)
    out: list[Path] = []
    with rasterio.open(landsat_path()) as src:
        profile = {**src.profile, "count": 1}
        for index, number in enumerate(LANDSAT_BAND_NUMBERS, start=1):
            path = folder / f"B{number}.tif"
            with atomic_path(path, overwrite=overwrite) as tmp:
                with rasterio.open(tmp, "w", **{**profile, "driver": "GTiff"}) as dst:
                    dst.write(src.read(index), 1)
            out.append(path)
    return out
