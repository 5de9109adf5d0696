"""Resuming a map: finished blocks are saved to a checkpoint folder keyed by everything the map
depends on (the fit, the raster, the region, the options), so a rerun skips them."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from imgcate.errors import InputError
from imgcate.maps.grid import TileGrid
from imgcate.maps.tiles import TileJob
from imgcate.output import atomic_path

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


def open_checkpoints(directory: Path, key: str) -> set[int]:
    """Blocks already saved in ``directory`` for this job (creating its manifest)."""
    directory.mkdir(parents=True, exist_ok=True)
    manifest = directory / MANIFEST
    if manifest.exists():
        saved = json.loads(manifest.read_text()).get("job")
        if saved != key:
            raise InputError(
                f"checkpoint directory {str(directory)!r} holds the blocks of another map job "
                "(other fit, raster, region or options); give an empty directory or delete it "
                "to start over."
            )
    else:
        with atomic_path(manifest) as tmp:
            tmp.write_text(json.dumps({"job": key}))
    done = set()
    for path in directory.glob("block-*.npz"):
        done.add(int(path.stem.split("-")[1]))
    return done


def save_block(directory: Path, index: int, result: dict) -> None:
    with atomic_path(directory / f"block-{index:07d}.npz", overwrite=True) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **result)


def load_block(directory: Path, index: int) -> dict:
    with np.load(directory / f"block-{index:07d}.npz") as data:
        return {name: data[name] for name in data.files}


def job_key(fit: Any, job: TileJob, grid: TileGrid, block_tiles: int) -> str:
    stat = os.stat(job.raster)
    parts = {
        "fit": fingerprint(fit),
        "job": asdict(job),
        "block_tiles": block_tiles,
        "raster_size": stat.st_size,
        "raster_mtime": stat.st_mtime_ns,
        "transform": list(grid.transform)[:6],
        "mask": hashlib.sha256(np.packbits(grid.mask).tobytes()).hexdigest(),
        "shape": list(grid.shape),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
