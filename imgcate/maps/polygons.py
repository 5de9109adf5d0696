"""Effects per polygon from joint posterior draws: the average effect over each polygon's
tiles, computed under every posterior draw, so its interval is a credible interval of the
polygon's average effect (not an average of the tiles' intervals)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from imgcate.errors import InputError
from imgcate.intervals import interval_names
from imgcate.maps.aggregate import read_polygons
from imgcate.maps.compute import check_bands, chip_settings
from imgcate.maps.grid import TileGrid, cell_range, tile_grid
from imgcate.maps.tiles import TileJob, TileModel, TileReader, draw_count
from imgcate.output import atomic_path, check_writable, staging_folder
from imgcate.raster import open_raster, raster_source
from imgcate.results import EffectFit
from imgcate.validation import check_prob


def cell_weights(grid: TileGrid, geom: Any) -> tuple[np.ndarray, np.ndarray]:
    """Flat grid indices of the cells a polygon covers and the area of each inside it."""
    import shapely

    t, (h, w) = grid.transform, grid.shape
    r0, r1, c0, c1 = cell_range(~t, geom.bounds)
    r0, c0, r1, c1 = max(r0, 0), max(c0, 0), min(r1, h - 1), min(c1, w - 1)
    if r1 < r0 or c1 < c0 or geom.area <= 0:
        return np.array([], int), np.array([])
    rr, cc = np.mgrid[r0 : r1 + 1, c0 : c1 + 1]
    rr, cc = rr.ravel(), cc.ravel()
    x0, y0 = t * (cc, rr)
    x1, y1 = t * (cc + 1, rr + 1)
    cells = shapely.box(
        np.minimum(x0, x1), np.minimum(y0, y1), np.maximum(x0, x1), np.maximum(y0, y1)
    )
    area = shapely.area(shapely.intersection(cells, geom))
    keep = area > 0
    return (rr * w + cc)[keep], area[keep]


def polygon_effects(
    fit: EffectFit,
    raster: Any,
    polygons: Any,
    path: str | Path | None = None,
    *,
    tile_size: int | None = None,
    stride: int | None = None,
    prob: float = 0.9,
    max_draws: int | None = 500,
    seed: int = 0,
    bands: Any = None,
    scale: Any = None,
    block_tiles: int = 2048,
    overwrite: bool = False,
    provenance: dict | None = None,
):
    """Posterior of each polygon's area-weighted average effect, from joint draws.

    The polygons are covered by the map's tile grid (:func:`~imgcate.maps.tile_grid`, the same
    ``tile_size``, ``stride`` and draws as :func:`~imgcate.maps.predict_map`, so where a map
    covers a polygon, the polygon's mean equals the area-weighted mean of the map's ``mean``
    layer; each whole polygon is covered, whatever region a map holds). Under each posterior
    draw, a polygon's effect is the average of its tiles' CATEs weighted by the area of each
    tile's cell inside the polygon; the mean, sd and central ``prob`` interval over draws
    follow. Tiles with nodata are left out (``covered_share`` says how much of the polygon
    had a value).

    Parameters
    ----------
    fit : EffectFit
        A fit that carries its encoder.
    raster : path, URL, open dataset or mapping of band name to file (or URL)
        The raster the map was made from.
    polygons : path, GeoDataFrame or GeoSeries
        Polygons in any CRS (reprojected to the raster's).
    path : path, optional
        Also write a GeoPackage here (temporary name, then renamed), with the provenance in
        its metadata (``imgcate_provenance``).
    tile_size, stride, prob, max_draws, seed, bands, scale, block_tiles :
        As for :func:`~imgcate.maps.predict_map`.
    overwrite : bool
        Replace an existing ``path``.
    provenance : dict, optional
        The record to store (:func:`imgcate.provenance.collect`); default: the raster's files.

    Returns
    -------
    geopandas.GeoDataFrame
        The polygons (their columns and geometries kept, in their own CRS) with ``mean``, ``sd``,
        ``lower_<p>``, ``upper_<p>`` (credible interval of the polygon's average effect),
        ``prob_positive`` (P(average effect > 0)), ``n_tiles``, ``covered_share``,
        ``outside_support_share`` (the area-weighted share of its tiles outside the trial's
        support) and, for a fit with a targeting slope, ``outside_overlap_share``.

    Raises
    ------
    RasterError
        If the raster lacks the fit's bands or the polygons do not overlap it.
    """
    import geopandas as gpd
    import pandas as pd

    from imgcate.provenance import KEY, collect, dumps

    check_prob(prob)
    if path is not None:
        check_writable(path, overwrite)
    if getattr(fit, "encoder", None) is None:
        raise InputError(
            "this fit has no encoder, so tiles cannot be embedded; fit on embeddings made by "
            "imgcate.embed (imgcate embed), which keep their encoder."
        )
    own = read_polygons(polygons)  # returned in their own CRS, as given
    ds, owned = open_raster(raster)
    try:
        indexes = check_bands(fit, ds, bands, scale)
        tile_size, scale = chip_settings(fit, ds, tile_size, scale)
        gdf = own.to_crs(ds.crs)
        # polygons past the raster: their covered_share says so
        grid = tile_grid(ds, gdf, tile_size=tile_size, stride=stride, stacklevel=None)
        name = str(ds.name)
    finally:
        if owned:
            ds.close()
    weights = [cell_weights(grid, geom) for geom in gdf.geometry]
    flat = np.unique(np.concatenate([idx for idx, _ in weights] + [np.array([], int)]))
    job = TileJob.on_grid(
        fit,
        name,
        indexes,
        scale,
        grid,
        prob=prob,
        max_draws=max_draws,
        seed=seed,
        block_tiles=block_tiles,
    )
    model = TileModel(fit, job)
    n_draws = draw_count(fit, max_draws, seed)
    draws = np.full((len(flat), n_draws), np.nan)
    shares = ["outside_support"] + (["outside_overlap"] if model.overlap is not None else [])
    flags = {name: np.full(len(flat), np.nan) for name in shares}
    with TileReader(job) as reader:
        for start in range(0, len(flat), block_tiles):
            part = flat[start : start + block_tiles]
            tiles, valid = reader.read(part)
            if valid.any():
                got = model.draws(tiles[valid])
                draws[start : start + len(part)][valid] = got["cate"].T
                for name in shares:
                    flags[name][start : start + len(part)][valid] = got[name]
    position = {int(f): i for i, f in enumerate(flat)}
    lo_name, hi_name = (
        f"{side}_{n.rstrip('%')}"
        for side, n in zip(("lower", "upper"), interval_names(prob), strict=True)
    )
    lo = (1 - prob) / 2
    rows = []
    for (idx, area), geom in zip(weights, gdf.geometry, strict=True):
        row = {"mean": np.nan, "sd": np.nan, lo_name: np.nan, hi_name: np.nan}
        row |= {"prob_positive": np.nan, "n_tiles": 0, "covered_share": 0.0}
        row |= {f"{name}_share": np.nan for name in shares}
        if len(idx):
            rows_of = [position[int(f)] for f in idx]
            sub = draws[rows_of]
            ok = np.isfinite(sub).all(axis=1)
            if ok.any():
                w = area[ok] / area[ok].sum()
                average = w @ sub[ok]  # (draw,)
                for name in shares:  # the area-weighted share of the polygon's tiles
                    row[f"{name}_share"] = float(w @ flags[name][rows_of][ok])
                lower, upper = np.quantile(average, [lo, 1 - lo])
                row |= {
                    "mean": float(average.mean()),
                    "sd": float(average.std()),
                    lo_name: float(lower),
                    hi_name: float(upper),
                    "prob_positive": float((average > 0).mean()),
                    "n_tiles": int(ok.sum()),
                    "covered_share": float(area[ok].sum() / geom.area),
                }
        rows.append(row)
    out = gpd.GeoDataFrame(
        pd.concat([own.drop(columns="geometry"), pd.DataFrame(rows)], axis=1),
        geometry=own.geometry.to_numpy(),
        crs=own.crs,
    )
    out.attrs.update(prob=prob, n_draws=n_draws, tile_size=grid.tile_size, stride=grid.stride)
    if path is not None:
        record = provenance or collect(
            {"raster": raster_source(raster)}, seeds={"draws": int(seed)}
        )
        path = Path(path)
        with atomic_path(path, overwrite=overwrite) as tmp, staging_folder(path) as workdir:
            staged = workdir / path.name
            out.to_file(
                staged,
                driver="GPKG",
                layer=path.stem,
                layer_metadata={
                    KEY: dumps(record),
                    "prob": str(prob),
                    "n_draws": str(n_draws),
                    "tile_size": str(grid.tile_size),
                    "stride": str(grid.stride),
                },
            )
            os.replace(staged, tmp)
    return out
