"""The chips file: one ``.npz`` archive with the chip values, the unit index, the chips'
geotransforms and CRS, band names, scale, dates and provenance.

:meth:`imgcate.Chips.save` writes it and :func:`load_chips` reads it back (``imgcate chips``
writes one, ``imgcate embed`` reads it).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from imgcate.errors import InputError
from imgcate.output import atomic_path

#: Version of the archive layout; files of another version are refused.
FORMAT_VERSION = 1

_ID_ARRAYS = ("image_ids", "unit_ids", "unit_keys", "dropped_units")


def _plain(ids: np.ndarray) -> np.ndarray:
    """Ids as an array ``np.load`` reads without pickle (object ids become text)."""
    ids = np.asarray(ids)
    return ids.astype(str) if ids.dtype == object else ids


def write_chips(chips: Any, path: str | Path, *, overwrite: bool = False, provenance=None) -> Path:
    """Write :class:`~imgcate.chips.Chips` to ``path`` (``.npz``; temporary name, then renamed)."""
    path = Path(path)
    if path.suffix.lower() != ".npz":
        raise InputError(f"chips file {str(path)!r} must end in .npz; rename it.")
    meta = {
        "format_version": FORMAT_VERSION,
        "kind": "imgcate.chips",
        "crs": None if chips.crs is None else chips.crs.to_wkt(),
        "band_names": list(chips.band_names),
        "dates": None if chips.dates is None else [str(d) for d in chips.dates],
        "scale": None if chips.scale is None else list(chips.scale),
        "spec": chips.spec(),
        "provenance": provenance or {},
    }
    arrays = {name: _plain(getattr(chips, name)) for name in _ID_ARRAYS}
    arrays["values"] = chips.values
    arrays["unit_image"] = chips.unit_image
    arrays["kept"] = chips.kept
    arrays["padded"] = chips.padded
    if chips.transforms:
        arrays["transforms"] = np.array([list(t)[:6] for t in chips.transforms], float)
    arrays["meta"] = np.array(json.dumps(meta))
    with atomic_path(path, overwrite=overwrite) as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, **arrays)
    return path


def read_chips_meta(path: str | Path) -> dict[str, Any]:
    """The JSON record of a chips file (band names, spec, provenance) without its values."""
    with np.load(path, allow_pickle=False) as data:
        return json.loads(str(data["meta"]))


def load_chips(path: str | Path):
    """Read chips written by :meth:`Chips.save <imgcate.Chips.save>`.

    Returns
    -------
    Chips
        As saved, with ``provenance`` the record stored with them.

    Raises
    ------
    InputError
        If the file is missing or not an imgcate chips file.
    """
    from affine import Affine
    from rasterio.crs import CRS

    from imgcate.chips import Chips

    path = Path(path)
    if not path.is_file():
        raise InputError(f"chips file {str(path)!r} does not exist; check the path.")
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            arrays = {name: data[name] for name in data.files if name != "meta"}
    except zipfile.BadZipFile as exc:  # cut short or damaged
        raise InputError(
            f"chips file {str(path)!r} is damaged or cut short ({exc}); write it again with "
            "Chips.save() or imgcate chips."
        ) from exc
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(
            f"{str(path)!r} is not an imgcate chips file ({type(exc).__name__}: {exc}); write it "
            "with Chips.save() or imgcate chips."
        ) from exc
    if meta.get("kind") != "imgcate.chips" or meta.get("format_version") != FORMAT_VERSION:
        raise InputError(
            f"{str(path)!r} is not an imgcate chips file of format {FORMAT_VERSION}; write it "
            "again with Chips.save() or imgcate chips."
        )
    transforms = arrays.pop("transforms", None)
    return Chips(
        values=arrays["values"],
        image_ids=arrays["image_ids"],
        unit_image=arrays["unit_image"],
        transforms=None if transforms is None else tuple(Affine(*t) for t in transforms),
        crs=None if meta["crs"] is None else CRS.from_wkt(meta["crs"]),
        band_names=tuple(meta["band_names"]),
        dates=None if meta["dates"] is None else tuple(meta["dates"]),
        unit_ids=arrays["unit_ids"],
        unit_keys=arrays["unit_keys"],
        kept=arrays["kept"],
        padded=arrays["padded"],
        dropped_units=arrays["dropped_units"],
        scale=None if meta["scale"] is None else tuple(meta["scale"]),
        provenance=meta.get("provenance") or {},
    )
