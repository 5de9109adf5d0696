"""The small real data imgcate ships: a Landsat 7 scene and an elevation model over it.

The files live in the repository's ``data/landsat/`` folder (with their provenance and the
Apache-2.0 licence notice) and are packaged into the wheel as ``imgcate/data/landsat/``; the
accessors find them from a clone, an editable install or an installed wheel, whatever the
working directory.

Examples
--------
>>> from imgcate.datasets import landsat_path
>>> landsat_path().name
'L7_ETMs.tif'
"""

from __future__ import annotations

from pathlib import Path

from imgcate.errors import InputError

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
