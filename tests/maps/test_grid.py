"""Tile grids: polygons in any CRS line up with the raster-wide grid."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import rasterio
from shapely.geometry import Polygon, box

from imgcate.maps import predict_map

TILE = 32  # the chip size of the fit (MAP_TILE in tests/conftest.py)
MAP_OPTS = {"tile_size": TILE, "max_draws": 100, "progress": False, "seed": 1}


def test_polygons_in_another_crs_line_up_with_the_full_map(inputs, full_map, tmp_path):
    scene, fit = inputs
    with rasterio.open(scene) as src:
        b = src.bounds
        crs = src.crs
    x0, y0 = b.left + 3000, b.bottom + 2000
    poly = Polygon([(x0, y0), (x0 + 4000, y0), (x0, y0 + 3000)])  # a triangle
    region = gpd.GeoDataFrame({"name": ["district"]}, geometry=[poly], crs=crs).to_crs(4326)
    path = tmp_path / "region.gpkg"
    region.to_file(path)
    part = predict_map(fit, scene, path, stride=16, **MAP_OPTS)
    inside = np.isfinite(part["mean"].values)
    assert inside.sum() > 10 and not inside.all()
    sub = full_map.sel(x=part.x, y=part.y)
    np.testing.assert_array_equal(part["mean"].values[inside], sub["mean"].values[inside])
    # every kept cell touches the polygon
    cell = 16 * 30
    for yy, xx in zip(*np.nonzero(inside), strict=True):
        x, y = float(part.x[xx]), float(part.y[yy])
        assert box(x - cell / 2, y - cell / 2, x + cell / 2, y + cell / 2).intersects(
            region.to_crs(crs).geometry[0]
        )
