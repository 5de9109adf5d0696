"""Map statistics per polygon, weighted by area."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from shapely.geometry import box

from imgcate.maps import aggregate_by_polygon

TILE = 32  # the chip size of the fit (MAP_TILE in tests/conftest.py)
MAP_OPTS = {"tile_size": TILE, "max_draws": 100, "progress": False, "seed": 1}


def test_aggregate_by_polygon_weights_cells_by_area(full_map, tmp_path):
    t = rasterio.Affine(*full_map.attrs["transform"])
    # one polygon covering cells (2..3, 4..5) fully; another covering half of cell (0, 0)
    x0, y0 = t * (4, 2)
    x1, y1 = t * (6, 4)
    cx0, cy0 = t * (0, 0)
    cx1, cy1 = t * (0.5, 1)
    polys = gpd.GeoDataFrame(
        {"name": ["a", "b"]},
        geometry=[box(x0, y1, x1, y0), box(cx0, cy1, cx1, cy0)],
        crs=full_map.attrs["crs"],
    )
    out = aggregate_by_polygon(full_map, polys, tmp_path / "districts.gpkg")
    mean = full_map["mean"].values
    assert out.loc[0, "mean"] == pytest.approx(mean[2:4, 4:6].mean(), rel=1e-6)
    assert out.loc[0, "n_tiles"] == 4 and out.loc[0, "covered_share"] == pytest.approx(1)
    assert out.loc[1, "mean"] == pytest.approx(mean[0, 0], rel=1e-6)
    assert out.loc[0, "lower_5"] == pytest.approx(
        full_map["lower"].values[2:4, 4:6].mean(), rel=1e-6
    )
    back = gpd.read_file(tmp_path / "districts.gpkg")
    assert list(back["name"]) == ["a", "b"]
    # polygons in another CRS come back in it, as given, with the same numbers
    lonlat = polys.to_crs(4326)
    again = aggregate_by_polygon(full_map, lonlat)
    assert again.crs == lonlat.crs and again.geometry.equals(lonlat.geometry)
    np.testing.assert_allclose(again["mean"], out["mean"], rtol=1e-6)


def test_a_table_without_geometries_as_polygons_is_a_clear_error(tmp_path):
    """A units CSV given where polygons go: an InputError naming the file, not pandas'
    AttributeError from deep inside."""
    from imgcate import datasets
    from imgcate.errors import InputError
    from imgcate.maps.aggregate import read_polygons

    with pytest.raises(InputError, match="villages.csv.*holds no geometries"):
        read_polygons(datasets.villages_path())


def test_a_map_file_in_place_of_the_dataset_is_a_clear_error(tmp_path):
    """A written map's path given for the dataset: an InputError naming what to pass and the
    calls that read a written map, not an AttributeError on str.attrs."""
    from imgcate import datasets
    from imgcate.errors import InputError

    polygons = gpd.GeoDataFrame(geometry=[box(0, 0, 1, 1)], crs="EPSG:4326")
    with pytest.raises(InputError, match="not str 'effect_map.tif'.*polygon_effects"):
        aggregate_by_polygon("effect_map.tif", polygons)
    with pytest.raises(InputError, match="not (Posix|Windows)Path"):
        aggregate_by_polygon(datasets.landsat_path(), polygons)
