"""A map written to its GeoTIFF as its blocks finish (:func:`write_map`), for regions whose
grids would not fit in memory: what is held is the tiles in flight and the rows not yet
complete, not the map."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgcate.errors import MapInterrupted
from imgcate.maps.blocks import copy_advice, empty_map, run_blocks
from imgcate.maps.cog import (
    check_map_path,
    check_preview,
    cog_options,
    copy_to_cog,
    label_bands,
    map_band_names,
    map_tags,
    preview_dataset,
    preview_path,
    staging_profile,
    write_errors,
    write_preview,
)
from imgcate.maps.compute import (
    check_map_options,
    map_attrs,
    map_job,
    source_attrs,
)
from imgcate.maps.flags import overlap_flags, warn_extrapolation, warn_overlap
from imgcate.maps.grid import TileGrid
from imgcate.output import atomic_path, check_writable, staging_folder
from imgcate.prediction import overlap_line
from imgcate.results import EffectFit

log = logging.getLogger("imgcate")

#: Bytes of NaN written at once where the grid has rows without tiles (whole rows, at least
#: one).
EMPTY_BYTES = 4 * 2**20


@dataclass(frozen=True)
class WrittenMap:
    """What :func:`write_map` wrote.

    Attributes
    ----------
    path : pathlib.Path
        The Cloud-Optimized GeoTIFF.
    preview : pathlib.Path or None
        The PNG preview beside it.
    shape : tuple of int
        (y, x) cells of the map.
    tiles : int
        Tiles with an effect (inside the region and free of nodata).
    outside : int
        Of those, tiles outside the trial's support (band ``outside_support`` 1).
    outside_overlap : int or None
        Of those, tiles outside the overlap (band ``outside_overlap`` 1); None for a map
        without the overlap layers.
    """

    path: Path
    preview: Path | None
    shape: tuple[int, int]
    tiles: int
    outside: int
    outside_overlap: int | None = None


class RowWriter:
    """Places finished blocks into an open GeoTIFF of the map's bands, a row of the grid at a
    time: a row is held until its last tile is placed, then written (runs of finished rows in
    one write). Counts the tiles with an effect and those outside the trial's support."""

    def __init__(
        self, dst: Any, grid: TileGrid, limit: float, count: int, path: Path | None = None
    ) -> None:
        self.dst, self.limit, self.count = dst, limit, count
        self.path = Path(dst.name) if path is None else path  # named in a WriteError
        self.width = grid.shape[1]
        self.left = grid.mask.sum(axis=1, dtype=np.int64)  # tiles still to come, per row
        self.open: dict[int, np.ndarray] = {}
        self.tiles = self.outside = self.scored = 0
        self.overlap_outside = self.overlap_scored = 0  # tiles outside [0.1, 0.9], and scored
        empty = np.flatnonzero(self.left == 0)
        step = max(1, EMPTY_BYTES // (4 * self.count * self.width))
        for start in range(0, len(empty), step):
            rows = empty[start : start + step]
            self._write_rows(rows, np.full((self.count, len(rows), self.width), np.nan, np.float32))

    def layers(self, result: dict[str, np.ndarray]) -> np.ndarray:
        """A block's bands (band, tile), in :func:`~imgcate.maps.cog.map_band_names` order."""
        extrapolation = result["extrapolation"]
        outside = np.where(np.isnan(extrapolation), np.nan, extrapolation > self.limit)
        parts = [result[v] for v in ("mean", "sd", "lower", "upper", "prob_positive")]
        parts += list(np.asarray(result["cluster_prob"]).T)
        if "image_propensity" in result:  # a fit with a targeting slope
            propensity = result["image_propensity"]
            flags = overlap_flags(propensity)
            self.overlap_scored += int(np.isfinite(flags).sum())
            self.overlap_outside += int((flags == 1).sum())
            parts += [propensity, flags]
        return np.stack([*parts, extrapolation, outside]).astype(np.float32)

    def place(self, flat: np.ndarray, result: dict[str, np.ndarray]) -> None:
        """Put a block (its tiles' flat grid indices and :func:`compute_block`'s result) in
        place; write the rows it finishes."""
        values = self.layers(result)
        self.tiles += int(np.isfinite(values[0]).sum())
        scored = np.isfinite(values[-1])
        self.scored += int(scored.sum())
        self.outside += int((values[-1][scored] == 1).sum())
        rows, cols = np.divmod(flat, self.width)
        finished = []
        for row in np.unique(rows):
            here = rows == row
            buffer = self.open.get(row)
            if buffer is None:
                buffer = self.open[row] = np.full((self.count, self.width), np.nan, np.float32)
            buffer[:, cols[here]] = values[:, here]
            self.left[row] -= int(here.sum())
            if self.left[row] == 0:
                finished.append(int(row))
        for run in np.split(finished, np.flatnonzero(np.diff(finished) != 1) + 1):
            if len(run):
                block = np.stack([self.open.pop(int(r)) for r in run], axis=1)
                self._write_rows(run, block)

    def _write_rows(self, rows: np.ndarray, values: np.ndarray) -> None:
        from rasterio.windows import Window

        at = 0  # rows of ``values`` written so far
        with write_errors(self.path):
            for run in np.split(rows, np.flatnonzero(np.diff(rows) != 1) + 1):
                if len(run):
                    part = values[:, at : at + len(run)]
                    self.dst.write(part, window=Window(0, int(run[0]), self.width, len(run)))
                    at += len(run)

    def check_complete(self) -> None:
        """Every row written (the map's blocks all placed)."""
        if self.open or (self.left != 0).any():
            raise RuntimeError(
                f"{int((self.left != 0).sum())} rows of the map were not completed; "
                "this is a bug in imgcate."
            )


def write_map(
    fit: EffectFit,
    raster: str | Path | Any,
    path: str | Path,
    region: Any = None,
    *,
    tile_size: int | None = None,
    stride: int | None = None,
    prob: float = 0.9,
    max_draws: int | None = 500,
    block_tiles: int = 2048,
    workers: int = 1,
    scheduler: str | None = None,
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
    seed: int = 0,
    bands: Sequence[int | str] | None = None,
    scale: float | Sequence[float] | None = None,
    on_block: Callable[[int, int], None] | None = None,
    provenance: dict | None = None,
    co: dict[str, Any] | None = None,
    overwrite: bool = False,
    preview: bool = True,
) -> WrittenMap:
    """Map the posterior effect over a region and write it as a Cloud-Optimized GeoTIFF, block
    by block: the same file as ``write_cog(predict_map(...), path)``, without holding the map.

    Each block's tiles go to a plain GeoTIFF beside ``path`` (a hidden staging folder) as the
    grid rows they complete are finished, and that file is copied to the COG at the end; the
    memory held is the blocks in flight and the rows not yet complete, and for the copy
    GDAL's block cache (:data:`~imgcate.maps.cog.COPY_CACHE_MB`), whatever the region's
    size, plus a byte a tile for the region's mask. The staging file takes ``4 * bands``
    bytes a tile of disk (bands: ``7 + n_clusters``, 9 with the overlap layers) until the
    copy.

    Parameters
    ----------
    fit, raster
        As for :func:`~imgcate.maps.predict_map`.
    path : path
        The GeoTIFF; it appears only when complete (and a rerun with ``checkpoint_dir``
        resumes an interrupted map).
    region, tile_size, stride, prob, max_draws, block_tiles, workers, scheduler
        As for :func:`~imgcate.maps.predict_map`.
    checkpoint_dir, progress, seed, bands, scale, on_block, provenance
        As for :func:`~imgcate.maps.predict_map`.
    co : dict, optional
        GDAL COG creation options, as for :func:`~imgcate.maps.write_cog`.
    overwrite : bool
        Replace existing files (the GeoTIFF and its preview).
    preview : bool
        Also write ``path`` with suffix ``.png`` (:func:`~imgcate.maps.write_preview`); a map
        larger than :data:`~imgcate.maps.cog.PREVIEW_SIDE` cells a side is previewed from a
        decimated read.

    Returns
    -------
    WrittenMap
        The paths, the map's shape and its counts of tiles.

    Raises
    ------
    OutputExistsError
        If a file exists and ``overwrite`` is False (checked before the map is computed).
    RasterError, InputError
        As for :func:`~imgcate.maps.predict_map` and :func:`~imgcate.maps.write_cog`; nothing
        is left at ``path``.
    WriteError
        If the disk is full, read-only or forbidden (nothing partial is left).

    Warns
    -----
    ExtrapolationWarning
        When more than 10% of the tiles lie outside the trial's support.
    OverlapWarning
        For a fit with the overlap layers, when more than 10% of the tiles have an
        ``image_propensity`` outside [0.1, 0.9].

    Examples
    --------
    >>> write_map(fit, "scene.tif", "effect_map.tif", workers=2)  # doctest: +SKIP
    """
    import rasterio

    path = Path(path)
    check_map_path(path, preview)
    check_writable(path, overwrite)
    png = preview_path(path) if preview else None
    if png is not None:
        check_writable(png, overwrite)
        check_preview()
    check_map_options(fit, prob, max_draws, block_tiles, workers)
    job, grid, label, source = map_job(
        fit, raster, region, tile_size, stride, prob, max_draws, block_tiles, seed, bands, scale
    )
    options = cog_options(grid.shape, co)
    limit = fit.trial_support()[2]
    names = map_band_names(prob, fit.n_clusters, overlap_line(fit) is not None)
    profile = staging_profile(grid.crs_wkt, grid.transform, grid.shape, len(names))
    with staging_folder(path) as workdir:
        staging = workdir / "staging.tif"
        with write_errors(path):
            dst = rasterio.open(staging, "w", **profile)
        try:  # only the writes' errors are the disk's: the map's own pass as they are
            writer = RowWriter(dst, grid, limit, len(names), path)
            digest = run_blocks(
                fit,
                job,
                grid,
                writer.place,
                block_tiles=block_tiles,
                workers=workers,
                scheduler=scheduler,
                checkpoint_dir=checkpoint_dir,
                progress=progress,
                on_block=on_block,
            )
            writer.check_complete()
            if writer.tiles == 0:
                raise empty_map(grid, label)
            extra = source_attrs(label, digest, source, seed, provenance)
            attrs = map_attrs(grid, fit, job, limit, extra)
            with write_errors(path):
                label_bands(dst, names, map_tags(attrs))
        except BaseException:
            with contextlib.suppress(Exception):
                dst.close()
            raise
        with write_errors(path):
            dst.close()
        log.info("copying the map (%d x %d cells) to its COG %s", *grid.shape, path)
        try:
            with atomic_path(path, overwrite=overwrite) as tmp:
                with write_errors(path):
                    copy_to_cog(staging, tmp, options)
                if png is not None:
                    write_preview(preview_dataset(tmp, attrs), png, overwrite=overwrite)
        except MapInterrupted:
            raise
        except KeyboardInterrupt as exc:  # every block done: only the COG was being written
            raise MapInterrupted(
                f"map interrupted while its COG was written. {copy_advice(checkpoint_dir)}"
            ) from exc
    warn_extrapolation(writer.outside, writer.scored, limit)
    warn_overlap(writer.overlap_outside, writer.overlap_scored)
    overlap = writer.overlap_outside if "outside_overlap" in names else None
    return WrittenMap(path, png, grid.shape, writer.tiles, writer.outside, overlap)
