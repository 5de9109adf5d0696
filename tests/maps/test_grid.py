"""Tile grids: polygons in any CRS line up with the raster-wide grid."""

from __future__ import annotations

import warnings

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from shapely.geometry import Polygon, box

from imgcate.errors import RegionWarning
from imgcate.maps import predict_map, tile_grid

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


def test_bounds_past_the_raster_warn_that_only_the_part_inside_is_mapped(inputs):
    """A region reaching past the scene is mapped where it overlaps the scene, with a
    RegionWarning naming the sides and pointing at the caller; bounds inside do not warn."""
    scene, fit = inputs
    with rasterio.open(scene) as src:
        b, px = src.bounds, src.res[0]
    west, south = b.left + 40 * px, b.bottom + 40 * px
    past = r"^bounds \([^)]*\) reaches past the east, north edges of raster"
    with pytest.warns(RegionWarning, match=past) as caught:
        part = predict_map(fit, scene, (west, south, b.right + 500, b.top + 500), **MAP_OPTS)
    assert [w.filename for w in caught if w.category is RegionWarning] == [__file__]
    inside = tile_grid(scene, (west, south, b.right, b.top), tile_size=TILE)
    assert part["mean"].shape == inside.shape and np.isfinite(part["mean"].values).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RegionWarning)
        tile_grid(scene, (west, south, b.right, b.top), tile_size=TILE)  # within a pixel
        tile_grid(scene, None, tile_size=TILE)
        tile_grid(scene, (west, south, b.right + 500, b.top), tile_size=TILE, stacklevel=None)


def test_a_stride_wider_than_the_tiles_warns_of_the_ground_left_out(inputs):
    """stride=64 with 32-px tiles: each cell takes its centre tile's value, so three quarters
    of the ground is not looked at; the warning says so (a user's district averages from such
    a map read 'covered_share 1.0'). A stride up to the tile size does not warn."""
    scene, _ = inputs
    with pytest.warns(RegionWarning, match=r"stride=64 is wider .* so 75% of the ground") as w:
        tile_grid(scene, None, tile_size=TILE, stride=64)
    assert [c.filename for c in w] == [__file__]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RegionWarning)
        tile_grid(scene, None, tile_size=TILE, stride=TILE)
        tile_grid(scene, None, tile_size=TILE, stride=64, stacklevel=None)
