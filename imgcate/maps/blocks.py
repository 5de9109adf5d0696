"""The block loop of a map (:func:`run_blocks`): its blocks saved for resuming, the others
computed in this process or on Dask (:mod:`imgcate.maps.runners`), each handed to a sink as
it is finished, so that nothing of the map is held here beyond the blocks in flight."""

from __future__ import annotations

import logging
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from imgcate.errors import MapInterrupted, RasterError
from imgcate.maps.grid import TileGrid
from imgcate.maps.resume import (
    fingerprint,
    job_record,
    open_checkpoints,
    reuse_blocks,
    save_block,
)
from imgcate.maps.runners import run_dask, run_local
from imgcate.maps.tiles import TileJob
from imgcate.prediction import overlap_line
from imgcate.results import EffectFit

log = logging.getLogger("imgcate")


def run_blocks(
    fit: EffectFit,
    job: TileJob,
    grid: TileGrid,
    place: Callable[[np.ndarray, dict], None],
    *,
    block_tiles: int,
    workers: int = 1,
    scheduler: str | None = None,
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
    on_block: Callable[[int, int], None] | None = None,
) -> str:
    """Every block of a map handed to ``place(flat, result)`` once, in no set order: the
    blocks saved in ``checkpoint_dir`` first, then those computed (and saved). Nothing of the
    map is held here beyond the blocks in flight. Returns the fit's digest
    (:func:`~imgcate.maps.resume.fingerprint`)."""
    from tqdm import tqdm

    blocks = grid.blocks(block_tiles)
    done: set[int] = set()
    directory = None if checkpoint_dir is None else Path(checkpoint_dir)
    digest = fingerprint(fit)  # a pass over the posterior: once, for the key, workers, attrs
    key = ""
    bar = tqdm(
        total=grid.n_tiles,
        mininterval=1.0,
        unit="tile",
        desc="imgcate map",
        disable=not progress,
    )
    runner: Any = iter(())
    try:
        if directory is not None:
            layers = overlap_line(fit) is not None  # the overlap layers: in the record
            record = job_record(digest, job, grid, block_tiles, layers)
            saved, key = open_checkpoints(directory, record)
            saved &= set(range(len(blocks)))
            sizes = {i: blocks.size_of(i) for i in saved}
            for index, result in reuse_blocks(directory, key, sizes):
                place(blocks[index], result)
                done.add(index)
                bar.update(blocks.size_of(index))
        log.info(
            "mapping %d tiles in %d blocks (%d saved already)",
            grid.n_tiles,
            len(blocks),
            len(done),
        )
        todo = ((i, blocks[i]) for i in range(len(blocks)) if i not in done)
        if len(done) == len(blocks):
            pass
        elif scheduler is None and workers == 1:
            runner = run_local(fit, job, todo, digest)
        else:
            runner = run_dask(fit, job, todo, workers, scheduler, digest)
        for index, result in runner:
            if directory is not None:
                save_block(directory, index, result, key)
            place(blocks[index], result)
            done.add(index)
            bar.update(blocks.size_of(index))
            if on_block is not None:
                on_block(len(done), len(blocks))
    except RasterError as exc:  # a block that could not be read, tried again and again
        raise RasterError(f"{exc} {_resume_advice(directory, len(done), len(blocks))}") from exc
    except KeyboardInterrupt as exc:  # Ctrl-C: say what was kept, and how to go on
        advice = _resume_advice(directory, len(done), len(blocks), "where it stopped")
        raise MapInterrupted(f"map interrupted. {advice}") from exc
    finally:
        bar.close()
        if hasattr(runner, "close"):
            runner.close()
    return digest


def empty_map(grid: TileGrid, label: str) -> RasterError:
    """The error of a map whose every tile holds nodata."""
    return RasterError(
        f"every tile of {grid.region} in raster {label!r} holds nodata (or NaN) pixels, so "
        "the map would be empty; give a region where the raster has data, or check the "
        "raster's nodata value (rio edit-info --nodata)."
    )


#: The option that saves a map's blocks, in Python and on the command line.
GIVE_CHECKPOINTS = "give checkpoint_dir= (imgcate map --resume-dir)"


def _rerun(directory: str | Path) -> str:
    """The advice to run a map again with its checkpoint folder, in Python and on the command
    line (:func:`imgcate.cli.common.in_cli_words` keeps the latter)."""
    return (
        f"run the same map again with checkpoint_dir={str(directory)!r} (imgcate map ... "
        f"--resume-dir {shlex.quote(str(directory))})"
    )


def copy_advice(directory: str | Path | None) -> str:
    """What to do after a map stopped while its finished blocks were being written out."""
    if directory is None:
        return (
            f"Its blocks were not saved; {GIVE_CHECKPOINTS} so that a rerun only writes the file."
        )
    return (
        f"Every block is saved in {str(directory)!r}: {_rerun(directory)} to write the file "
        "without computing them again."
    )


def _resume_advice(
    directory: Path | None, done: int, total: int, where: str = "the block that failed"
) -> str:
    """What to do after a map stopped: rerun with its checkpoint folder, which keeps the blocks
    finished so far."""
    if directory is None:
        return (
            f"The map stopped after {done} of {total} blocks, none of them saved; "
            f"{GIVE_CHECKPOINTS} so that a rerun keeps the blocks finished and continues from "
            f"{where}."
        )
    return (
        f"{done} of {total} blocks are finished and saved in {str(directory)!r}; "
        f"{_rerun(directory)} to continue from {where}."
    )
