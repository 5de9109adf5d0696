"""One block of a map: read its tiles, embed them with the fit's encoder, summarize the
posterior effect of each tile."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from imgcate.results import EffectFit

#: Variables of a map with (y, x) dims, in the band order of :func:`write_cog`.
MAP_VARIABLES = ("mean", "sd", "lower", "upper", "prob_positive", "extrapolation")


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


class TileModel:
    """The fit reduced to what a map needs: encoder, jitted effect draws, support."""

    def __init__(self, fit: EffectFit, job: TileJob) -> None:
        import jax

        self.encoder = fit.encoder
        self.standardizer = fit.standardizer
        self.n_clusters = fit.n_clusters
        self.effect = jax.jit(fit.effect_function(max_draws=job.max_draws, seed=job.seed))
        self.support_mean, self.support_prec, self.support_limit = fit.trial_support()
        self.prob = job.prob
        self.batch_size = job.batch_size

    def draws(self, tiles: np.ndarray) -> np.ndarray:
        """Posterior draws of the CATE of tiles (tile, band, y, x): shape (sample, tile)."""
        import jax.numpy as jnp

        n = len(tiles)
        raw = self.encoder.transform(_pad(tiles, self.batch_size), batch_size=self.batch_size)
        cate, _ = self.effect(jnp.asarray(raw, jnp.float32))
        cate = np.asarray(cate, np.float64)[:, :n]
        cate[:, ~np.isfinite(np.asarray(raw[:n])).all(axis=1)] = np.nan
        return cate

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
        emb = self.standardizer.embedding(raw[:n]) - self.support_mean
        dist = np.sqrt(np.einsum("ij,jk,ik->i", emb, self.support_prec, emb))
        out = {
            "mean": cate.mean(0),
            "sd": cate.std(0),
            "lower": lower,
            "upper": upper,
            "prob_positive": (cate > 0).mean(0),
            "extrapolation": dist,
            "cluster_prob": prob.mean(0),
        }
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


def compute_block(model: TileModel, ds: Any, job: TileJob, flat: np.ndarray) -> dict:
    """Map statistics (float32) of the tiles at flat grid indices; NaN for incomplete tiles."""
    rows, cols = np.divmod(flat, job.n_cols)
    tiles, valid = read_tiles(ds, job, rows, cols)
    out = {name: np.full(len(flat), np.nan, np.float32) for name in MAP_VARIABLES}
    out["cluster_prob"] = np.full((len(flat), model.n_clusters), np.nan, np.float32)
    if valid.any():
        for name, value in model(tiles[valid]).items():
            out[name][valid] = value
    return out
