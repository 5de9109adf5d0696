"""One block of a map: read its tiles (:class:`TileReader`, which tries a failed read again),
embed them with the fit's encoder, summarize the posterior effect of each tile."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from imgcate.ates import outside_overlap
from imgcate.errors import RasterError
from imgcate.prediction import overlap_line, support_distance
from imgcate.raster import open_raster, raster_env, raster_label
from imgcate.results import EffectFit
from imgcate.targeting import image_propensity
from imgcate.windows import gdal_errors

log = logging.getLogger("imgcate")

#: Variables with (y, x) dims that every map has, in the band order of :func:`write_cog`; a
#: fit with a targeting slope adds ``image_propensity`` (:data:`imgcate.maps.cog.OVERLAP_BANDS`).
MAP_VARIABLES = ("mean", "sd", "lower", "upper", "prob_positive", "extrapolation")

#: Seconds to wait before each new try of a block whose read failed (a dropped connection, an
#: HTTP error that GDAL's own retries did not overcome): three more tries, then the map stops.
READ_RETRY_DELAYS = (0.5, 1.0, 2.0)


@dataclass(frozen=True)
class TileJob:
    """Everything a worker needs besides the fit (small and picklable)."""

    raster: str
    indexes: tuple[int, ...]
    scale: tuple[float, ...] | None
    tile_size: int
    stride: int
    row0: int
    col0: int
    n_cols: int
    prob: float
    max_draws: int | None
    seed: int
    batch_size: int

    @classmethod
    def on_grid(
        cls,
        fit: EffectFit,
        raster: str,
        indexes: tuple[int, ...],
        scale: tuple[float, ...] | None,
        grid: Any,
        *,
        prob: float,
        max_draws: int | None,
        seed: int,
        block_tiles: int,
    ) -> TileJob:
        """The job of a map over ``grid`` (a :class:`~imgcate.maps.grid.TileGrid`): its tile
        geometry, and batches no larger than a block or the fit's encoder takes."""
        return cls(
            raster=raster,
            indexes=indexes,
            scale=scale,
            tile_size=grid.tile_size,
            stride=grid.stride,
            row0=grid.row0,
            col0=grid.col0,
            n_cols=grid.shape[1],
            prob=float(prob),
            max_draws=max_draws,
            seed=int(seed),
            batch_size=min(fit.encoder.batch_size, block_tiles),
        )

    @property
    def model_key(self) -> tuple:
        """The settings a :class:`TileModel` depends on: maps of other regions or rasters
        with the same settings (and fit) can share one, and its compiled code."""
        return (self.prob, self.max_draws, self.seed, self.batch_size)


class TileModel:
    """The fit reduced to what a map needs: encoder, jitted effect draws, support."""

    def __init__(self, fit: EffectFit, job: TileJob) -> None:
        import jax

        self.encoder = fit.encoder
        self.standardizer = fit.standardizer
        self.n_clusters = fit.n_clusters
        self.effect = jax.jit(fit.effect_function(max_draws=job.max_draws, seed=job.seed))
        self.support_mean, self.support_prec, self.support_limit = fit.trial_support()
        self.overlap = overlap_line(fit)  # None: no image_propensity layer
        self.prob = job.prob
        self.batch_size = job.batch_size

    def draws(self, tiles: np.ndarray) -> dict[str, np.ndarray]:
        """Posterior draws of the CATE of tiles (tile, band, y, x), ``cate`` (sample, tile),
        with where each tile stands against the trial: ``outside_support`` (tile,) and, for a
        fit with a targeting slope, ``outside_overlap`` (tile,); NaN where a tile's embedding
        is not finite."""
        import jax.numpy as jnp

        n = len(tiles)
        raw = self.encoder.transform(_pad(tiles, self.batch_size), batch_size=self.batch_size)
        cate, _ = self.effect(jnp.asarray(raw, jnp.float32))
        cate = np.asarray(cate, np.float64)[:, :n]
        bad = ~np.isfinite(np.asarray(raw[:n])).all(axis=1)
        emb = self.standardizer.embedding(np.where(bad[:, None], 0.0, raw[:n]))
        dist = support_distance(emb, self.support_mean, self.support_prec)
        out = {"cate": cate, "outside_support": (dist > self.support_limit).astype(float)}
        if self.overlap is not None:
            p = image_propensity(emb, *self.overlap)
            out["outside_overlap"] = outside_overlap(p).astype(float)
        for value in out.values():
            value[..., bad] = np.nan
        return out

    def __call__(self, tiles: np.ndarray) -> dict[str, np.ndarray]:
        """Summaries of the posterior effect for tiles (tile, band, y, x)."""
        import jax.numpy as jnp

        n = len(tiles)
        padded = _pad(tiles, self.batch_size)
        raw = self.encoder.transform(padded, batch_size=self.batch_size)
        cate, prob = (
            np.asarray(a, np.float64)[:, :n] for a in self.effect(jnp.asarray(raw, jnp.float32))
        )
        lo = (1 - self.prob) / 2
        lower, upper = np.quantile(cate, [lo, 1 - lo], axis=0)
        emb = self.standardizer.embedding(raw[:n])
        dist = support_distance(emb, self.support_mean, self.support_prec)
        out = {
            "mean": cate.mean(0),
            "sd": cate.std(0),
            "lower": lower,
            "upper": upper,
            "prob_positive": (cate > 0).mean(0),
            "extrapolation": dist,
            "cluster_prob": prob.mean(0),
        }
        if self.overlap is not None:
            out["image_propensity"] = image_propensity(emb, *self.overlap)
        # a tile whose embedding or effect is not finite (pixels out of float range) is NaN in
        # every layer, never a confident number such as prob_positive = 0
        bad = ~(np.isfinite(np.asarray(raw[:n])).all(axis=1) & np.isfinite(cate).all(axis=0))
        if bad.any():
            for value in out.values():
                value[bad] = np.nan
        return out


def draw_count(fit: EffectFit, max_draws: int | None, seed: int) -> int:
    """How many posterior draws ``fit.effect_function(max_draws=..., seed=...)`` uses."""
    method = getattr(fit, "draw_indices", None)
    if method is None:  # the draw subset moved to imgcate.prediction
        from imgcate.prediction import draw_indices

        return len(draw_indices(fit, max_draws, seed))
    return len(method(max_draws, seed))


def _pad(values: np.ndarray, multiple: int) -> np.ndarray:
    """Repeat the last row so the length is a multiple (one compiled shape per size)."""
    extra = -len(values) % multiple
    if not extra:
        return values
    return np.concatenate([values, np.repeat(values[-1:], extra, axis=0)])


def _runs(cols: np.ndarray, max_run: int = 256) -> Iterator[np.ndarray]:
    """Split sorted column indices into runs of consecutive values."""
    cuts = np.flatnonzero(np.diff(cols) != 1) + 1
    for run in np.split(cols, cuts):
        for i in range(0, len(run), max_run):
            yield run[i : i + max_run]


def read_tiles(
    ds: Any, job: TileJob, rows: np.ndarray, cols: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Tiles (tile, band, y, x) float32 at grid positions, and whether each is complete."""
    from numpy.lib.stride_tricks import sliding_window_view
    from rasterio.windows import Window

    t, s = job.tile_size, job.stride
    values = np.empty((len(rows), len(job.indexes), t, t), np.float32)
    valid = np.empty(len(rows), bool)
    start = 0
    for row in np.unique(rows):  # rows come sorted (row-major order)
        for run in _runs(cols[rows == row]):
            r0, c0 = (job.row0 + int(row)) * s, (job.col0 + int(run[0])) * s
            width = (len(run) - 1) * s + t
            data = ds.read(list(job.indexes), window=Window(c0, r0, width, t), masked=True)
            arr = np.ma.getdata(data).astype(np.float32)
            bad = (np.ma.getmaskarray(data) | ~np.isfinite(arr)).any(axis=0)
            tiles = sliding_window_view(arr, t, axis=2)[:, :, ::s]  # (band, y, tile, x)
            stop = start + len(run)
            values[start:stop] = np.moveaxis(tiles, 2, 0)
            valid[start:stop] = ~sliding_window_view(bad, t, axis=1)[:, ::s].any(axis=(0, 2))
            start = stop
    if job.scale is not None:
        values *= np.asarray(job.scale, np.float32).reshape(-1, 1, 1)
    return values, valid


def _read_errors() -> tuple[type[BaseException], ...]:
    """What a failed read raises: GDAL's errors through rasterio (RasterioIOError, or a
    CPLE_* error itself), or ours from reopening."""
    import rasterio.errors

    return (rasterio.errors.RasterioError, *gdal_errors(), RasterError)


class TileReader:
    """Reads blocks of tiles from a job's raster, opened once (with :func:`raster_env`'s GDAL
    settings for a URL) and kept open.

    A read that fails is tried again on a freshly opened raster after each wait of
    ``delays``; when every try fails, a :class:`~imgcate.errors.RasterError` names the raster,
    the block and its pixel window.

    Parameters
    ----------
    job : TileJob
        The map job (its raster, bands and tile geometry).
    delays : sequence of float
        Seconds before each new try (default :data:`READ_RETRY_DELAYS`).
    """

    def __init__(self, job: TileJob, delays: Sequence[float] = READ_RETRY_DELAYS) -> None:
        self.job = job
        self.delays = tuple(float(d) for d in delays)
        self._ds: Any = None

    def __enter__(self) -> TileReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the raster (it is opened again by the next read)."""
        if self._ds is not None:
            ds, self._ds = self._ds, None
            ds.close()

    def read(self, flat: np.ndarray, block: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Tiles (tile, band, y, x) at flat grid indices, and whether each is complete.

        Raises
        ------
        RasterError
            If every try fails; it names the raster, the block and its pixel window.
        """
        rows, cols = np.divmod(np.asarray(flat), self.job.n_cols)
        errors = _read_errors()
        failures: list[BaseException] = []
        waits = (0.0, *self.delays)
        for attempt, wait in enumerate(waits):
            time.sleep(wait)
            try:
                with raster_env(self.job.raster):
                    if self._ds is None:
                        self._ds, _ = open_raster(self.job.raster)
                    return read_tiles(self._ds, self.job, rows, cols)
            except errors as exc:
                failures.append(exc)
                self.close()
                again = (
                    f"; trying again in {waits[attempt + 1]:g} s"
                    if attempt + 1 < len(waits)
                    else ""
                )
                log.warning(
                    "reading %s failed on try %d of %d (%s)%s",
                    self._where(rows, cols, block),
                    attempt + 1,
                    len(waits),
                    _error_text(exc),
                    again,
                )
        raise RasterError(
            f"reading {self._where(rows, cols, block)} failed {len(failures)} times (first "
            f"{_error_text(failures[0])}); check that the raster is reachable (for a URL: "
            "that the server is up and still serves the file)."
        ) from failures[-1]

    def _where(self, rows: np.ndarray, cols: np.ndarray, block: int | None) -> str:
        """``block 3 of raster '...' (pixel rows 96-160, columns 0-384)``."""
        job, t, s = self.job, self.job.tile_size, self.job.stride
        r0, r1 = (job.row0 + int(rows.min())) * s, (job.row0 + int(rows.max())) * s + t
        c0, c1 = (job.col0 + int(cols.min())) * s, (job.col0 + int(cols.max())) * s + t
        name = "tiles" if block is None else f"block {block}"
        return (
            f"{name} of raster {raster_label(job.raster)!r} (pixel rows {r0}-{r1}, "
            f"columns {c0}-{c1})"
        )


def _error_text(exc: BaseException) -> str:
    """An error and the GDAL error behind it (rasterio's message alone says 'see previous');
    for our own error on reopening, the GDAL error that caused it (its advice comes later)."""
    if isinstance(exc, RasterError) and exc.__cause__ is not None:
        exc = exc.__cause__
    text = f"{type(exc).__name__}: {exc}"
    cause = exc.__cause__ or exc.__context__
    if cause is not None and str(cause) and str(cause) not in text:
        text += f"; {type(cause).__name__}: {cause}"
    return text


def pieces(flat: np.ndarray, size: int) -> list[np.ndarray]:
    """A block's flat tile indices in pieces of ``size`` (:attr:`TileJob.batch_size`, one
    encoder batch): the unit of work in this process and on Dask workers alike, so that a
    block's values do not depend on where its pieces ran."""
    return [flat[i : i + size] for i in range(0, len(flat), size)]


def merge_pieces(parts: Sequence[dict]) -> dict:
    """The statistics of a block from those of its pieces, in order."""
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def compute_piece(model: TileModel, reader: TileReader, index: int, flat: np.ndarray) -> dict:
    """Map statistics (float32) of one piece (:func:`pieces`) of block ``index``: the tiles at
    flat grid indices; NaN for incomplete tiles."""
    tiles, valid = reader.read(flat, index)
    out = {name: np.full(len(flat), np.nan, np.float32) for name in MAP_VARIABLES}
    out["cluster_prob"] = np.full((len(flat), model.n_clusters), np.nan, np.float32)
    if model.overlap is not None:
        out["image_propensity"] = np.full(len(flat), np.nan, np.float32)
    if valid.any():
        for name, value in model(tiles[valid]).items():
            out[name][valid] = value
    return out


def compute_block(model: TileModel, reader: TileReader, index: int, flat: np.ndarray) -> dict:
    """Map statistics (float32) of the tiles at flat grid indices (block ``index``), piece by
    piece (:func:`pieces`); NaN for incomplete tiles."""
    size = reader.job.batch_size
    return merge_pieces([compute_piece(model, reader, index, p) for p in pieces(flat, size)])
