"""Output helpers: nothing is written half (temporary name, then rename), and an output that
cannot be written says which file and why; :func:`progress_bar` for long loops.

Temporary files and staging folders sit beside their output as ``.<name>.<pid>.<random>.tmp``
(or ``.staging``); they are removed when the write fails for any reason, and those left by a
process that was killed (SIGKILL, power loss) are removed by the next write of the same output.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from imgcate.errors import ImgcateError, InputError, OutputExistsError, WriteError

#: What to do about each OS error an output can meet.
CAUSES = {
    errno.ENOSPC: "the disk is full; free space or write to another disk",
    errno.EDQUOT: "the disk quota is exceeded; free space or write to another disk",
    errno.EFBIG: "the file size limit was reached (ulimit -f); raise it or write a smaller output",
    errno.EROFS: "the file system is read-only; choose an output path on a writable disk",
    errno.EACCES: "permission denied; choose a folder you can write or change its permissions",
    errno.EPERM: "operation not permitted; choose a folder you can write",
    errno.ENAMETOOLONG: "the file name is too long; choose a shorter name or folder",
}


def write_error(path: str | Path, exc: BaseException, detail: str = "") -> WriteError:
    """A :class:`WriteError` naming ``path`` and the cause of ``exc`` (an OSError, or a GDAL or
    HDF5 error whose ``detail`` messages say what failed), with what to do about it."""
    code = getattr(exc, "errno", None) if getattr(exc, "strerror", None) else None
    text = " ".join(str(exc).split())[:300]
    if detail:
        text = f"{text}; {' '.join(detail.split())[:300]}"
    if code is None:  # GDAL and h5py errors carry the cause in their text, if at all
        code = _code_in(text) or _diagnose(Path(path).absolute().parent)
    what = CAUSES.get(code, "check the disk and the folder, or choose another output path")
    name = errno.errorcode.get(code, type(exc).__name__) if code else type(exc).__name__
    return WriteError(f"cannot write {str(path)!r}: {what} ({name}: {text}); nothing was written.")


def _code_in(text: str) -> int | None:
    lower = text.lower()
    for code, words in (
        (errno.ENOSPC, ("no space", "disk full", "free disk space")),
        (errno.EFBIG, ("file too large", "file size limit")),
        (errno.EROFS, ("read-only",)),
        (errno.EACCES, ("permission denied",)),
    ):
        if any(w in lower for w in words):
            return code
    return None


def _diagnose(folder: Path, margin: int = 1 << 20) -> int | None:
    """The likely cause of a failed write into ``folder`` when the error did not say: a
    read-only or forbidden folder, a nearly full disk, or a file size limit."""
    import resource

    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        info = os.statvfs(folder)
    except OSError:
        return None
    if info.f_flag & os.ST_RDONLY:
        return errno.EROFS
    if not os.access(folder, os.W_OK | os.X_OK):
        return errno.EACCES
    if info.f_bavail * info.f_frsize < margin:
        return errno.ENOSPC
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY and soft < 1 << 30:
        return errno.EFBIG
    return None


def _special(path: Path) -> str | None:
    """Why ``path`` (an existing entry or a link) is not a plain file to replace, or None."""
    if path.is_symlink():
        return f"a symbolic link to {os.readlink(path)!r}; give the real file path"
    if not path.exists():
        return None
    mode = path.stat().st_mode
    if stat.S_ISDIR(mode):
        return "a folder; give a file name"
    if not stat.S_ISREG(mode):
        kind = "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a device or special file"
        return f"{kind}; write to a regular file path instead"
    return None


def check_writable(path: str | Path, overwrite: bool) -> Path:
    """Refuse to replace an existing file unless ``overwrite``, and a path that cannot be written.

    Checked before any work, so a long job does not fail only at the end: the output must be a
    regular file or absent (symbolic links, folders, devices and FIFOs are refused, even with
    ``overwrite``), and the nearest existing folder above it must be a writable folder (missing
    folders are created on writing).

    Raises
    ------
    OutputExistsError
        If ``path`` exists and ``overwrite`` is False.
    InputError
        If ``path`` is a link, folder or special file, or its folder cannot be written.
    WriteError
        If the path itself cannot be used (a name too long).
    """
    path = Path(path)
    try:
        special = _special(path)
        if special is not None:
            raise InputError(f"output {str(path)!r} is {special}.")
        if path.exists() and not overwrite:
            raise OutputExistsError(
                f"{path} exists; pass overwrite=True (--overwrite) to replace it."
            )
        folder = path.absolute().parent
        while not folder.exists():
            folder = folder.parent
    except ImgcateError:  # OutputExistsError is an OSError too
        raise
    except OSError as exc:
        raise write_error(path, exc) from exc
    if not folder.is_dir():
        raise InputError(
            f"cannot write {path}: {folder} is a file, not a folder; choose another output path."
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(
            f"cannot write {path}: folder {folder} is not writable ({_why_not(folder)}); "
            "choose another output path."
        )
    return path


def _why_not(folder: Path) -> str:
    """Why a folder cannot be written, in words."""
    code = _diagnose(folder)
    return {errno.EROFS: "a read-only file system", errno.EACCES: "permission denied"}.get(
        code, "no write permission"
    )


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
        raise InputError(
            f"output folder {path} is not writable ({_why_not(path)}); choose another."
        )
    return path


def _temporary_name(path: Path, suffix: str) -> Path:
    return path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{suffix}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale(folder: str | Path, name: str | None = None) -> list[Path]:
    """Remove the temporary files and staging folders that killed processes left in ``folder``
    (of the output ``name``, or of every output); those of live processes are kept.

    Returns
    -------
    list of pathlib.Path
        What was removed.
    """
    folder = Path(folder)
    stem = re.escape(name) if name is not None else ".+"
    pattern = re.compile(rf"^\.{stem}\.(\d+)\.[0-9a-f]{{8}}\.(tmp|staging)$")
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        found = pattern.match(entry.name)
        if found is None or _pid_alive(int(found.group(1))):
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
    return removed


@contextlib.contextmanager
def staging_folder(path: str | Path) -> Iterator[Path]:
    """A hidden folder beside ``path`` for intermediate files of its write, removed afterwards
    whatever happens (and by the next write of ``path`` if this process is killed)."""
    path = Path(path)
    folder = _temporary_name(path, ".staging")
    try:
        folder.mkdir(parents=True)
    except OSError as exc:
        raise write_error(path, exc) from exc
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def atomic_path(path: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block succeeds.

    An OS error inside the block (disk full, read-only disk, permission) becomes a
    :class:`WriteError` naming ``path``; the temporary file is removed on any exception, and
    stale ones of a killed earlier write of ``path`` are removed first.
    """
    path = check_writable(path, overwrite)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(path, exc) from exc
    remove_stale(path.parent, path.name)
    tmp = _temporary_name(path, ".tmp")
    try:
        yield tmp
        if _special(path) is not None:  # became a link or device while we wrote
            raise InputError(f"output {str(path)!r} is {_special(path)}.")
        os.replace(tmp, path)
    except ImgcateError:
        raise
    except OSError as exc:
        raise write_error(path, exc) from exc
    finally:
        with contextlib.suppress(OSError):
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp)
            elif tmp.exists() or tmp.is_symlink():
                tmp.unlink()


def write_table(frame: Any, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write a table (a :class:`pandas.DataFrame`) as CSV without its index, through
    :func:`atomic_path`: the file appears whole or not at all.

    Returns
    -------
    pathlib.Path
        The path written.
    """
    with atomic_path(path, overwrite=overwrite) as tmp:
        frame.to_csv(tmp, index=False)
    return Path(path)


def progress_bar(iterable: Any, show: bool, desc: str, total: int | None = None) -> Any:
    """``iterable`` wrapped in a tqdm progress bar labelled ``desc`` when ``show``, else as is.

    In a notebook the bar is a widget where ipywidgets is installed, and text otherwise (tqdm's
    notebook bar would warn "IProgress not found" and print nothing useful)."""
    if not show:
        return iterable
    try:
        import ipywidgets  # noqa: F401  (the notebook bar needs it)
        from tqdm.auto import tqdm
    except ImportError:
        from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total)
