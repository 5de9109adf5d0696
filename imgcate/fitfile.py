"""The fit file: one zip archive with the posterior (netCDF), the settings, the
standardizer and the encoder, everything needed to predict later.

Archive members: ``idata.nc`` (ArviZ InferenceData, h5netcdf), ``meta.json`` (format version,
:class:`~imgcate.config.FitConfig` and the provenance record), ``standardizer.npz``, and for
fits that keep their encoder ``encoder.json`` and ``encoder.npz``.
"""

from __future__ import annotations

import contextlib
import io
import json
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imgcate.config import FitConfig, Standardizer
from imgcate.embeddings import encoder_from_state
from imgcate.errors import InputError
from imgcate.output import atomic_path

if TYPE_CHECKING:
    import arviz as az

#: Version of the archive layout; files of another version are refused.
FORMAT_VERSION = 6

#: Older versions this imgcate still reads, and the likelihoods it cannot read from them
#: (format 3's hurdle had a log-normal positive part, format 4's and later a gamma one;
#: formats 3 and 4 stored the Gaussian-process basis, which format 5 computes again; format 6
#: may hold the targeting slope, which an imgcate reading format 5 would leave out).
READABLE = {3: ("hurdle",), 4: (), 5: ()}

#: Settings that fits saved before they existed were fitted with.
OLDER_FIT_SETTINGS = {"baseline_clusters": "shared", "restart_chains": False}

#: How the stored cluster summaries define a cluster's effect (``meta.json``
#: ``cluster_effects``). Files without it (saved before 2026-12-05) weighted every unit by its
#: membership; :func:`imgcate.load_fit` recomputes their summaries, and those of files before
#: format 5 (summed over every unit in float32: off by up to 0.003 at a million units).
CLUSTER_EFFECTS = "average CATE of the units most probably in the cluster"


def saved_settings(config: dict[str, Any]) -> dict[str, Any]:
    """A saved fit's settings (its ``meta.json`` ``config``), with those an older file lacks
    filled in as it was fitted (:data:`OLDER_FIT_SETTINGS`)."""
    return {**OLDER_FIT_SETTINGS, **config}


def write_fit_file(
    path: str | Path,
    *,
    idata: az.InferenceData,
    config: FitConfig,
    standardizer: Standardizer,
    encoder: Any = None,
    provenance: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the parts of a fit to one zip archive (temporary name, then renamed).

    The posterior's netCDF is built in memory, so a full or read-only disk fails in the zip
    write (a :class:`~imgcate.errors.WriteError` naming ``path``), never inside HDF5.
    """
    nc = _netcdf_bytes(idata)
    with atomic_path(path, overwrite=overwrite) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("idata.nc", nc)
            meta = {
                "format_version": FORMAT_VERSION,
                "config": asdict(config),
                "cluster_effects": CLUSTER_EFFECTS,
                "provenance": provenance or {},
            }
            zf.writestr("meta.json", json.dumps(meta, indent=2))
            zf.writestr("standardizer.npz", _npz_bytes(asdict(standardizer)))
            if encoder is not None:
                encoder_config, arrays = encoder.get_state()
                zf.writestr("encoder.json", json.dumps(encoder_config))
                zf.writestr("encoder.npz", _npz_bytes(arrays))
    return Path(path)


def _netcdf_bytes(idata: az.InferenceData) -> bytes:
    """The InferenceData as one netCDF-4 file (h5netcdf, zlib-compressed), built in memory the
    way :meth:`arviz.InferenceData.to_netcdf` writes it: the attrs at the root, each group in
    its own netCDF group. (HDF5 writing to a disk that fills up can crash the process.)"""
    buf = io.BytesIO()
    with _local_locks():
        _write_groups(idata, buf)
    return buf.getvalue()


def _local_locks():
    """xarray takes a Dask-distributed lock keyed by the target when a Dask client is running,
    which fails for an in-memory target; the write is local, so Dask's synchronous scheduler
    (and a local lock) is the right one."""
    try:
        import dask
    except ImportError:
        return contextlib.nullcontext()
    return dask.config.set(scheduler="synchronous")


def _write_groups(idata: az.InferenceData, buf: io.BytesIO) -> None:
    import xarray as xr

    mode = "w"
    if idata.attrs:
        xr.Dataset(attrs=idata.attrs).to_netcdf(buf, mode=mode, engine="h5netcdf")
        mode = "a"
    for group in idata.groups():
        data = getattr(idata, group)
        encoding = {
            name: {"zlib": True}
            for name, values in data.variables.items()
            if values.dtype.kind in "biufcS"
        }
        data.to_netcdf(buf, mode=mode, group=group, engine="h5netcdf", encoding=encoding)
        mode = "a"


def _npz_bytes(arrays: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return buf.getvalue()


def _checked_meta(meta: Any, path: Path) -> dict:
    """``meta.json`` of a fit file this imgcate can read, or an error saying what to do."""
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise InputError(
            f"{str(path)!r} is not a readable imgcate fit file (meta.json is not "
            "a fit's settings); write it again with EffectFit.save() (or imgcate fit)."
        )
    version = meta.get("format_version")
    if version == 1:
        raise InputError(
            f"{str(path)!r} was written by imgcate 0.1 (fit format 1), whose effect model "
            "(a mixture over clusters with a linear baseline) this imgcate no longer has; "
            "refit with imgcate.fit(trial, embeddings, ...) on the same data (see CHANGELOG.md)."
        )
    if version == 2:
        raise InputError(
            f"{str(path)!r} was written by an imgcate whose Gaussian-process terms used random "
            "Fourier features (fit format 2); this imgcate uses the kernel's eigenfunctions "
            "and cannot predict from that fit: refit with imgcate.fit(trial, embeddings, ...) "
            "(or imgcate fit) on the same data (see CHANGELOG.md)."
        )
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise InputError(
            f"{str(path)!r} has fit format {version}, written by a newer imgcate; this imgcate "
            f"reads format {FORMAT_VERSION}: upgrade imgcate (pip install -U imgcate) to read "
            "it, or refit with this version."
        )
    if version in READABLE and meta["config"].get("likelihood") in READABLE[version]:
        raise InputError(
            f"{str(path)!r} is a {meta['config']['likelihood']} fit written by an imgcate "
            f"whose hurdle likelihood had a log-normal positive part (fit format {version}); "
            "this imgcate's has a gamma one and cannot predict from that fit: refit with "
            "imgcate.fit(trial, embeddings, likelihood='hurdle', ...) (or imgcate fit) on the "
            "same data (see CHANGELOG.md)."
        )
    if version != FORMAT_VERSION and version not in READABLE:
        raise InputError(
            f"{str(path)!r} has fit format {version!r}, which no imgcate wrote; the file is "
            "damaged or not a fit: write it again with EffectFit.save() (or imgcate fit)."
        )
    unknown = sorted(set(meta["config"]) - set(FitConfig.__dataclass_fields__))
    if unknown:  # a setting added after this imgcate: the fit may depend on it
        raise InputError(
            f"{str(path)!r} has fit settings this imgcate does not know ({', '.join(unknown)}): "
            "it was probably written by a newer imgcate: upgrade imgcate (pip install -U "
            "imgcate) to read it, or refit with this version."
        )
    return meta


def read_fit_file(path: str | Path) -> dict[str, Any]:
    """The parts of a fit file: ``idata``, ``config``, ``standardizer``, ``encoder``,
    ``provenance``, and ``summaries_current``: whether its stored cluster summaries follow
    today's definition (:data:`CLUSTER_EFFECTS`).

    Raises
    ------
    InputError
        If the file is missing, not an imgcate fit, or corrupt.
    """
    import arviz as az

    path = Path(path)
    if not path.exists():
        raise InputError(f"fit file {str(path)!r} does not exist.")
    try:
        with zipfile.ZipFile(path) as zf:
            meta = _checked_meta(json.loads(zf.read("meta.json")), path)
            # read in memory, not unpacked to a temporary folder: a full or size-limited disk
            # must not make a good fit file look damaged. load() returns the loaded copy.
            idata = az.from_netcdf(io.BytesIO(zf.read("idata.nc")), engine="h5netcdf").load()
            arrays = np.load(io.BytesIO(zf.read("standardizer.npz")))
            std = Standardizer(**{k: (float(v) if v.ndim == 0 else v) for k, v in arrays.items()})
            encoder = None
            if "encoder.json" in zf.namelist():
                enc_arrays = dict(np.load(io.BytesIO(zf.read("encoder.npz"))))
                encoder = encoder_from_state(json.loads(zf.read("encoder.json")), enc_arrays)
            config = FitConfig(**saved_settings(meta["config"]))
    except InputError:  # a ValueError too: keep its own message
        raise
    except (zipfile.BadZipFile, KeyError, OSError, ValueError, TypeError) as exc:
        raise InputError(
            f"{str(path)!r} is not a readable imgcate fit file ({type(exc).__name__}: {exc}); "
            "write it again with EffectFit.save() (or imgcate fit)."
        ) from exc
    record = meta.get("provenance")
    return {
        "idata": idata,
        "config": config,
        "standardizer": std,
        "encoder": encoder,
        "provenance": record if isinstance(record, dict) else {},
        "summaries_current": meta.get("cluster_effects") == CLUSTER_EFFECTS
        and meta.get("format_version") in (5, FORMAT_VERSION),
    }
