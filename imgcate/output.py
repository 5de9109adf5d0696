"""Output helpers: nothing is written half (temporary name, then rename)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from imgcate.errors import InputError, OutputExistsError


def check_writable(path: str | Path, overwrite: bool) -> Path:
    """Refuse to replace an existing file unless ``overwrite``, and a path that cannot be written.

    Checked before any work, so a long job does not fail only at the end: the nearest existing
    folder above ``path`` must be a writable folder (missing folders are created on writing).
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"output {path} is a folder; give a file name.")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it.")
    folder = path.absolute().parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise InputError(
            f"cannot write {path}: {folder} is a file, not a folder; choose another output path."
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(
            f"cannot write {path}: folder {folder} is not writable; choose another output path."
        )
    return path


def ensure_folder(path: str | Path) -> Path:
    """Create the output folder ``path`` (and its parents), or say why it cannot be used."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"output folder {path} is a file; choose a folder name.")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create output folder {path} ({exc}); choose another.") from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise InputError(f"output folder {path} is not writable; choose another.")
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block succeeds."""
    path = check_writable(path, overwrite)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise InputError(f"cannot write {path} ({exc}); choose another output path.") from exc
    os.close(fd)
    os.remove(tmp)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
