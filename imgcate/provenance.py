"""Provenance: where an output came from, recorded inside it.

:func:`collect` returns one JSON-able dict that every writer stores with its output: the
embeddings file (Parquet metadata), the chips file, the fit file (``meta.json``), the map
(GeoTIFF tags) and the polygon aggregates (GeoPackage metadata). ``imgcate info FILE`` prints it.

Examples
--------
>>> from imgcate.provenance import collect
>>> record = collect(command=["imgcate", "fit", "units.csv"], seeds={"fit": 0})
>>> sorted(record)
['command', 'created_utc', 'imgcate_version', 'inputs', 'python', 'seeds']
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from stat import S_ISREG
from typing import Any

#: Key under which writers store the record (GeoTIFF tag, Parquet and GeoPackage metadata).
KEY = "imgcate_provenance"


#: Hashes computed in this process, by file identity (:func:`file_sha256`).
_HASHES: dict[tuple, str] = {}
#: Seconds since its last change under which a file's hash is not kept: file times move only
#: once per clock tick on many kernels (1-10 ms), so a file rewritten within one tick at the
#: same size would keep its identity.
SETTLED_S = 2.0


def settled_identity(path: str | Path) -> tuple | None:
    """A local file's identity (device, inode, size, modification and change times in ns)
    for what is kept of it in this process, or None while it changed within the last
    :data:`SETTLED_S` seconds (what is computed of it then is not kept) or where ``path`` is
    not a regular file (a directory). Raises ``OSError`` where nothing is at ``path``."""
    stat = Path(path).stat()
    if not S_ISREG(stat.st_mode) or time.time() - max(stat.st_mtime, stat.st_ctime) <= SETTLED_S:
        return None
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes.

    Kept for the rest of the process while the file's identity stays the same
    (:func:`settled_identity`): the maps of several regions of one large raster hash it once,
    not once each (a 700 MB scene took 0.4 s a map)."""
    key = settled_identity(path)
    known = _HASHES.get(key) if key is not None else None
    if known is not None:
        return known
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    value = digest.hexdigest()
    if key is not None:
        if len(_HASHES) > 1000:
            _HASHES.clear()
        _HASHES[key] = value
    return value


def _describe(path: Any) -> dict[str, Any]:
    """Absolute path, size and SHA-256 of a local file; a VRT also lists its source files."""
    if isinstance(path, Mapping):  # already described (an upstream record)
        return dict(path)
    text = str(path)
    local = Path(text)
    if "://" in text or not local.is_file():
        return {"path": text}
    out: dict[str, Any] = {
        "path": str(local.resolve()),
        "bytes": local.stat().st_size,
        "sha256": file_sha256(local),
    }
    if local.suffix.lower() == ".vrt":
        sources = vrt_sources(local)
        if sources:
            out["sources"] = [_describe(s) for s in sources]
    return out


def vrt_sources(path: str | Path) -> list[str]:
    """Paths of the files a VRT reads (relative ones resolved against the VRT's folder)."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError):
        return []
    out = []
    for node in root.iter("SourceFilename"):
        name = (node.text or "").strip()
        if not name:
            continue
        if node.get("relativeToVRT") == "1":
            name = str((Path(path).parent / name).resolve())
        if name not in out:
            out.append(name)
    return out


def collect(
    inputs: Mapping[str, Any] | None = None,
    *,
    command: Sequence[str] | str | None = None,
    seeds: Mapping[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A provenance record: imgcate version, inputs with content hashes, command, seeds, time.

    Parameters
    ----------
    inputs : mapping of str to path or list of paths, optional
        What was read, by role (``{"units": "villages.csv", "raster": ["B1.tif", "B2.tif"]}``).
        Each local file is recorded with its absolute path, size and SHA-256 (a VRT also with
        its sources); anything else (a URL, an in-memory object) by its text.
    command : sequence of str or str, optional
        The command line (default: ``sys.argv``).
    seeds : mapping, optional
        The seeds used, by step (``{"encoder": 0, "fit": 0}``).
    **extra
        Any further JSON-able items (settings, column roles), stored as given.

    Returns
    -------
    dict
        ``imgcate_version``, ``created_utc`` (ISO 8601), ``python``, ``command`` (list of str),
        ``inputs`` (role to a file record or a list of them), ``seeds``, then ``extra``;
        JSON-serializable (checked).

    Raises
    ------
    InputError
        If an extra item cannot be written as JSON.
    """
    from imgcate import __version__
    from imgcate.errors import InputError

    if command is None:
        command = list(sys.argv)
    elif isinstance(command, str):
        command = [command]
    described: dict[str, Any] = {}
    for role, value in (inputs or {}).items():
        if value is None:
            continue
        if isinstance(value, str | Path):
            described[role] = _describe(value)
        elif isinstance(value, Mapping) and ("path" in value or "object" in value):
            described[role] = dict(value)
        elif isinstance(value, Mapping):
            described[role] = {str(k): _describe(v) for k, v in value.items()}
        elif isinstance(value, Sequence):
            described[role] = [_describe(v) for v in value]
        else:
            described[role] = {"object": type(value).__name__}
    record = {
        "imgcate_version": __version__,
        "created_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "command": [str(c) for c in command],
        "inputs": described,
        "seeds": dict(seeds or {}),
        **extra,
    }
    try:
        json.dumps(record)
    except TypeError as exc:
        raise InputError(f"provenance items must be JSON-serializable ({exc}).") from exc
    return record


def dumps(record: Mapping[str, Any] | None) -> str:
    """The record as compact JSON text (for a tag or a metadata value)."""
    return json.dumps(record or {}, separators=(",", ":"), sort_keys=True)


def loads(text: str | bytes | None) -> dict[str, Any]:
    """A record read back from :func:`dumps` text; an empty dict for None or unreadable text."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def summary_lines(record: Mapping[str, Any], indent: str = "  ") -> list[str]:
    """Human-readable lines of a record (what ``imgcate info`` prints)."""
    if not record:
        return [f"{indent}(none recorded)"]
    lines = []
    for key in ("imgcate_version", "created_utc", "python"):
        if key in record:
            lines.append(f"{indent}{key}: {record[key]}")
    if record.get("command"):
        lines.append(f"{indent}command: {' '.join(record['command'])}")
    for role, value in (record.get("inputs") or {}).items():
        items = value if isinstance(value, list) else [value]
        if isinstance(value, dict) and "path" not in value and "object" not in value:
            items = [dict(v, band=k) for k, v in value.items()]
        for item in items:
            digest = item.get("sha256")
            label = f" [{item['band']}]" if "band" in item else ""
            where = item.get("path", item.get("object", "?"))
            lines.append(
                f"{indent}input {role}{label}: {where}"
                + (f" (sha256 {digest[:16]}...)" if digest else "")
            )
    if record.get("seeds"):
        seeds = ", ".join(f"{k}={v}" for k, v in record["seeds"].items())
        lines.append(f"{indent}seeds: {seeds}")
    for key, value in record.items():
        if key not in ("imgcate_version", "created_utc", "python", "command", "inputs", "seeds"):
            text = value if isinstance(value, str) else json.dumps(value)
            lines.append(f"{indent}{key}: {text}")
    return lines
