"""Map statistics per polygon (e.g. districts), area-weighted."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from affine import Affine

from imgcate.errors import InputError
from imgcate.maps.cog import band_names
from imgcate.maps.grid import cell_range
from imgcate.output import atomic_path, check_writable


def read_polygons(polygons: Any):
    """A GeoDataFrame of ``polygons`` (a vector file, GeoDataFrame or GeoSeries) with a CRS."""
    import geopandas as gpd

    if isinstance(polygons, str | Path):
        path = Path(polygons)
        if not path.exists():
            raise InputError(f"polygons file {str(path)!r} does not exist; check the path.")
        gdf = gpd.read_file(path)
        if not isinstance(gdf, gpd.GeoDataFrame) or gdf.geometry.isna().all():
            raise InputError(
                f"polygons file {str(path)!r} holds no geometries (a table without a geometry "
                "column?); give a vector file of polygons (GeoPackage, shapefile, GeoJSON)."
            )
    elif isinstance(polygons, gpd.GeoSeries):
        gdf = gpd.GeoDataFrame(geometry=polygons)
    elif isinstance(polygons, gpd.GeoDataFrame):
        gdf = polygons.copy()
    else:
        raise InputError(
            f"polygons must be a vector file path or a GeoDataFrame, got {type(polygons).__name__}."
        )
    name = f"polygons file {str(polygons)!r}" if isinstance(polygons, str | Path) else "polygons"
    kinds = sorted(set(gdf.geometry.dropna().geom_type) - {"Polygon", "MultiPolygon"})
    if kinds:
        raise InputError(
            f"{name} holds {kinds} geometries, not only polygons; give areas (districts, "
            "a grid of cells): effects at points come from imgcate effects / predict."
        )
    if gdf.crs is None:
        if name == "polygons":
            raise InputError("polygons have no CRS; set one (e.g. gdf.set_crs('EPSG:4326')).")
        raise InputError(
            f"{name} has no CRS; assign one (e.g. ogr2ogr -a_srs EPSG:4326 out.gpkg in.gpkg)."
        )
    return gdf.reset_index(drop=True)


def aggregate_by_polygon(
    dataset: xr.Dataset, polygons: Any, path: str | Path | None = None, *, overwrite: bool = False
):
    """Area-weighted map statistics per polygon (e.g. districts), optionally as a GeoPackage.

    Each polygon's value is the mean of the tile values weighted by the area of each tile's
    cell inside the polygon (cells without a value are left out). This averages the tiles'
    posterior means, and likewise their interval bounds: the ``lower``/``upper`` columns are
    area-weighted means of the tiles' bounds, **not** a credible interval of the polygon's
    average effect (which would need every tile's draws); they are wider than that interval.

    Parameters
    ----------
    dataset : xarray.Dataset
        From :func:`predict_map`.
    polygons : path, GeoDataFrame or GeoSeries
        Polygons in any CRS (reprojected to the map's).
    path : path, optional
        Also write a GeoPackage here (temporary name, then renamed).
    overwrite : bool
        Replace an existing ``path``.

    Returns
    -------
    geopandas.GeoDataFrame
        The polygons (their columns and geometries kept, in their own CRS) with ``mean``,
        ``lower_<p>``, ``upper_<p>``, ``prob_positive``, ``extrapolation``,
        ``outside_support_share``, ``covered_share`` (share of the polygon's area with a map
        value) and ``n_tiles``; for a map of a fit with a targeting slope also
        ``outside_overlap_share``.
    """
    import geopandas as gpd
    import shapely

    if not isinstance(dataset, xr.Dataset):
        raise InputError(
            f"aggregate_by_polygon takes the xarray Dataset of predict_map, not "
            f"{type(dataset).__name__} {str(dataset)[:80]!r}; for a map written to a file, "
            "use polygon_effects(fit, raster, polygons) or `imgcate aggregate MAP POLYGONS "
            "OUTPUT`, which also give each polygon's credible interval."
        )
    if path is not None:
        check_writable(path, overwrite)
    own = read_polygons(polygons).reset_index(drop=True)  # returned in their own CRS
    gdf = own.to_crs(dataset.attrs["crs"])
    t = Affine(*dataset.attrs["transform"][:6])
    h, w = dataset.sizes["y"], dataset.sizes["x"]
    lo, hi = band_names(dataset)[2:4]
    variables = {
        "mean": "mean",
        lo: "lower",
        hi: "upper",
        "prob_positive": "prob_positive",
        "extrapolation": "extrapolation",
        "outside_support_share": "outside_support",
    }
    if "outside_overlap" in dataset:  # a map of a fit with a targeting slope
        variables["outside_overlap_share"] = "outside_overlap"
    values = {col: dataset[var].values for col, var in variables.items()}
    rows = []
    for geom in gdf.geometry:
        r0, r1, c0, c1 = cell_range(~t, geom.bounds)
        r0, c0, r1, c1 = max(r0, 0), max(c0, 0), min(r1, h - 1), min(c1, w - 1)
        row = dict.fromkeys(variables, np.nan) | {"covered_share": 0.0, "n_tiles": 0}
        if r1 >= r0 and c1 >= c0 and geom.area > 0:
            rr, cc = np.mgrid[r0 : r1 + 1, c0 : c1 + 1]
            x0, y0 = t * (cc.ravel(), rr.ravel())
            x1, y1 = t * (cc.ravel() + 1, rr.ravel() + 1)
            cells = shapely.box(
                np.minimum(x0, x1), np.minimum(y0, y1), np.maximum(x0, x1), np.maximum(y0, y1)
            )
            area = shapely.area(shapely.intersection(cells, geom))
            ok = np.isfinite(values["mean"][rr.ravel(), cc.ravel()]) & (area > 0)
            if ok.any():
                weight = area[ok] / area[ok].sum()
                for col in variables:
                    row[col] = float(weight @ values[col][rr.ravel()[ok], cc.ravel()[ok]])
                row["covered_share"] = float(area[ok].sum() / geom.area)
                row["n_tiles"] = int(ok.sum())
        rows.append(row)
    import pandas as pd

    out = gpd.GeoDataFrame(
        pd.concat([own.drop(columns="geometry"), pd.DataFrame(rows)], axis=1),
        geometry=own.geometry.to_numpy(),
        crs=own.crs,
    )
    if path is not None:
        path = Path(path)
        with (
            atomic_path(path, overwrite=overwrite) as tmp,
            tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as workdir,
        ):
            staged = Path(workdir) / path.name
            out.to_file(staged, driver="GPKG", layer=path.stem)
            os.replace(staged, tmp)
    return out
