"""Resuming a map: finished blocks are saved to a checkpoint folder keyed by everything the map
depends on (the fit, the raster, the region, the options), so a rerun skips them."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from imgcate.errors import CheckpointWarning, InputError
from imgcate.maps.grid import TileGrid
from imgcate.maps.tiles import TileJob
from imgcate.output import atomic_path, remove_stale, write_error
from imgcate.raster import is_url, raster_label, vrt_sources

log = logging.getLogger("imgcate")

#: Name of the file that says which job a checkpoint folder holds.
MANIFEST = "imgcate-map-job.json"


def fingerprint(fit: Any) -> str:
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


def _label(directory: Path) -> str:
    return f"checkpoint directory {str(directory)!r} (checkpoint_dir / --resume-dir)"


def open_checkpoints(directory: Path, record: dict[str, Any]) -> tuple[set[int], str]:
    """Blocks saved in ``directory`` for this job (its job file, which holds the job's
    :func:`job_record` and key, is created on first use), and the job's key.

    The job file must hold this job's key: a folder of another job (the error names what
    differs), or a damaged job file, is refused with how to start over. Temporary files of a
    killed run are removed. The blocks found are verified only when read (:func:`load_block`).

    Raises
    ------
    InputError
        If ``directory`` is a file, holds another job or files of no job, or its job file is
        damaged.
    WriteError
        If the folder or its job file cannot be written (read-only, forbidden, full disk).
    """
    if directory.exists() and not directory.is_dir():
        raise InputError(f"{_label(directory)} is a file; give a folder.")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(directory, exc) from exc
    if not os.access(directory, os.W_OK | os.X_OK):
        raise InputError(f"{_label(directory)} is not writable; give a folder you can write.")
    remove_stale(directory)
    key = job_key(record)
    manifest = directory / MANIFEST
    if manifest.exists():
        try:
            saved = json.loads(manifest.read_text())
            if not isinstance(saved, dict) or not isinstance(saved.get("job"), str):
                raise ValueError("it does not name a job")
        except (OSError, ValueError) as exc:
            raise InputError(
                f"{_label(directory)}: its job file {MANIFEST} is damaged "
                f"({type(exc).__name__}: {exc}); delete the folder to start over, or give "
                "another folder."
            ) from exc
        if saved["job"] != key:
            differences = job_differences(saved.get("record") or {}, record)
            if not saved.get("record") or not differences:
                differences = ["other fit, raster, region or options"]
            raise InputError(
                f"{_label(directory)} holds the blocks of another map job "
                f"({'; '.join(differences)}); give an empty directory or delete it to start "
                "over, or map again as that job did to resume it."
            )
    else:
        others = sorted(entry.name for entry in directory.iterdir())
        if others:  # a folder of the user's own: its files would mix with the blocks
            raise InputError(
                f"{_label(directory)} holds files that are not a map job's ({_short(others)}); "
                "give a new or empty folder for the checkpoints."
            )
        with atomic_path(manifest) as tmp:
            tmp.write_text(json.dumps({"job": key, "format": 1, "record": record}, default=str))
    done = set()
    for path in directory.glob("block-*.npz"):
        number = path.stem.split("-")[1]
        if number.isdigit():
            done.add(int(number))
    return done, key


def _block_path(directory: Path, index: int) -> Path:
    return directory / f"block-{index:07d}.npz"


def _digest(key: str, index: int, arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 of a block's arrays (names, dtypes, shapes, bytes), its job and its number."""
    h = hashlib.sha256(f"{key}:{index}".encode())
    for name in sorted(arrays):
        value = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{value.dtype.str}:{value.shape}".encode())
        h.update(value.tobytes())
    return h.hexdigest()


def save_block(directory: Path, index: int, result: dict, key: str = "") -> None:
    """Save a finished block with the SHA-256 of its arrays (temporary name, then renamed)."""
    arrays = {name: np.asarray(value) for name, value in result.items()}
    with atomic_path(_block_path(directory, index), overwrite=True) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays, sha256=np.array(_digest(key, index, arrays)))


def load_block(directory: Path, index: int, key: str = "", n_tiles: int | None = None) -> dict:
    """A saved block, verified: a readable archive whose arrays match their SHA-256 (and hold
    ``n_tiles`` tiles when given).

    Raises
    ------
    ValueError
        If the block is damaged (truncated, altered, of another job or block).
    """
    path = _block_path(directory, index)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise ValueError(f"unreadable, {type(exc).__name__}: {exc}") from exc
    saved = arrays.pop("sha256", None)
    if saved is None or str(saved) != _digest(key, index, arrays):
        raise ValueError("its contents do not match their SHA-256")
    if n_tiles is not None and any(len(v) != n_tiles for v in arrays.values()):
        raise ValueError(f"it does not hold {n_tiles} tiles")
    return arrays


def reuse_blocks(directory: Path, key: str, sizes: dict[int, int]) -> Iterator[tuple[int, dict]]:
    """The verified saved blocks among ``sizes`` (block number: tiles), one at a time, as
    (number, arrays) in order; damaged ones are deleted with a
    :class:`~imgcate.errors.CheckpointWarning`, so that they are computed again."""
    for index in sorted(sizes):
        try:
            arrays = load_block(directory, index, key, sizes[index])
        except ValueError as exc:
            warnings.warn(
                f"block {index} saved in {_label(directory)} is damaged ({exc}); it is "
                "discarded and computed again.",
                CheckpointWarning,
                stacklevel=4,  # this generator, run_blocks, predict_map / write_map, the caller
            )
            with contextlib.suppress(OSError):
                _block_path(directory, index).unlink()
            continue
        yield index, arrays


def _url_version(url: str) -> dict[str, Any]:
    """What a server says of a file's version: its size, ETag and Last-Modified, from a request
    for its first byte (HEAD is refused by some signed URLs). Empty if the server cannot be
    asked; then a change of the file between an interrupted run and its rerun goes unnoticed."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"Range": "bytes=0-0"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            headers = response.headers
            response.read()
    except (OSError, ValueError, urllib.error.URLError) as exc:
        log.warning(
            "could not ask %s for its version (%s); a change of the file between "
            "this run and a rerun would go unnoticed",
            url,
            exc,
        )
        return {}
    size = (headers.get("Content-Range") or "").rpartition("/")[2]
    return {
        "bytes": size if size.isdigit() else headers.get("Content-Length"),
        "etag": headers.get("ETag"),
        "last_modified": headers.get("Last-Modified"),
    }


def raster_version(raster: str) -> dict[str, Any]:
    """What a map's checkpoints record of the raster, so that a changed raster is not resumed:
    a local file's size and modification time, a URL's size, ETag and Last-Modified (from the
    server), the same for each source of an in-memory band stack; else its name."""
    if raster.lstrip().startswith("<VRTDataset"):
        return {"sources": [raster_version(source) for source in vrt_sources(raster)]}
    if is_url(raster):
        url = raster_label(raster)
        return {"url": url, **_url_version(url)}
    try:
        stat = os.stat(raster)
    except OSError:  # a GDAL name such as /vsis3/...: known by its name only
        return {"name": raster}
    return {"raster_size": stat.st_size, "raster_mtime": stat.st_mtime_ns}


def job_record(
    digest: str, job: TileJob, grid: TileGrid, block_tiles: int, overlap: bool = False
) -> dict[str, Any]:
    """Everything a map job's blocks depend on: the fit (its :func:`fingerprint`, ``digest``),
    the raster's version, the tile geometry, the region and the options (JSON-ready); with
    ``overlap`` (a fit with the overlap layers) their names too, so that blocks saved without
    them are not taken (a map of a fit without them keeps the record of before)."""
    layers = {"layers": ["image_propensity"]} if overlap else {}
    return {
        **layers,
        "fit": digest,
        "job": {**asdict(job), "raster": _raster_name(job.raster)},
        "block_tiles": block_tiles,
        **raster_version(job.raster),
        "transform": list(grid.transform)[:6],
        "mask": hashlib.sha256(np.packbits(grid.mask).tobytes()).hexdigest(),
        "shape": list(grid.shape),
    }


def _raster_name(raster: str) -> str:
    """A local file by its real absolute path (the same file however its path is written: a
    rerun from another folder resumes); a URL, a GDAL name or a band stack as given."""
    if is_url(raster) or raster.lstrip().startswith("<") or not os.path.exists(raster):
        return raster
    return os.path.realpath(raster)


def job_key(record: dict[str, Any]) -> str:
    """The digest of a :func:`job_record`: the name of a checkpoint folder's job."""
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()


#: The options of a :class:`~imgcate.maps.tiles.TileJob` by the name a user gave them.
OPTION_NAMES = {
    "indexes": "bands",
    "scale": "band scale",
    "tile_size": "tile size",
    "stride": "stride",
    "prob": "interval probability",
    "max_draws": "draws",
    "seed": "seed",
    "block_tiles": "block size",
}
#: What follows from other settings (the encoder's batch size from the fit and the block size)
#: or describes the grid that the tile size and stride also move.
DERIVED_KEYS = ("batch_size",)
TILE_OPTIONS = ("tile_size", "stride")
#: Where the region and the tile grid are recorded.
REGION_KEYS = ("transform", "mask", "shape", "row0", "col0", "n_cols")


def _short(name: Any, width: int = 80) -> str:
    """A raster's name for a message (a band stack's XML cut short)."""
    text = repr(name)
    return text if len(text) <= width else text[: width - 4] + "...'"


def job_differences(saved: dict[str, Any], record: dict[str, Any]) -> list[str]:
    """What differs between a checkpoint folder's job and this one, in a user's words (the fit,
    the raster, the region, or named options with their two values); empty where the folder's
    job file has no record (written before 2026-12-06)."""
    saved = json.loads(json.dumps(saved, default=str))  # compare like with like: as stored
    record = json.loads(json.dumps(record, default=str))
    old = {**saved.get("job", {}), **{k: v for k, v in saved.items() if k != "job"}}
    new = {**record.get("job", {}), **{k: v for k, v in record.items() if k != "job"}}
    changed = {k for k in old.keys() | new.keys() if old.get(k) != new.get(k)}
    out = []
    if "fit" in changed:
        out.append("the fit")
    if "raster" in changed:
        names = (_short(old.get("raster")), _short(new.get("raster")))
        out.append(f"the raster (saved {names[0]}, now {names[1]})")
    elif changed - {"fit", *REGION_KEYS, *OPTION_NAMES, *DERIVED_KEYS}:
        out.append("the raster's file, changed since (its size or modification time)")
    if changed & set(REGION_KEYS) and not changed & set(TILE_OPTIONS):  # else the tiles moved
        out.append("the region")
    out += [
        f"{label} (saved {old.get(key)!r}, now {new.get(key)!r})"
        for key, label in OPTION_NAMES.items()
        if key in changed
    ]
    return out
