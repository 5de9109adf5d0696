"""Posterior effect maps over regions with no experiment.

```
EffectFit + raster + region ─ tile_grid ─→ TileGrid ─ predict_map ─→ xarray.Dataset (y, x)
xarray.Dataset ─ write_cog ─→ Cloud-Optimized GeoTIFF + PNG preview
EffectFit + raster + region ─ write_map ─→ the same GeoTIFF, written block by block
xarray.Dataset + polygons ─ aggregate_by_polygon ─→ GeoDataFrame (GeoPackage)
EffectFit + raster + polygons ─ polygon_effects ─→ GeoDataFrame: joint-draw polygon effects
```

A region (polygons or bounds) is covered by a grid of tiles of ``tile_size`` pixels whose
top-left corners lie every ``stride`` pixels from the raster's origin (so the maps of two regions
of one raster line up). Each tile is read with a windowed read, embedded with the fit's encoder
exactly as the trial's chips were, and pushed through every posterior draw of the fit
(:meth:`~imgcate.results.EffectFit.effect_function`). One output pixel is one tile: a
``stride`` x ``stride`` cell centred on the tile.

Tiles are processed in blocks of ``block_tiles``; memory per block is flat in the region's size.
:func:`predict_map` returns the map's grids (about 40 bytes a tile); :func:`write_map` writes them
to the GeoTIFF as the blocks finish, so a map of any size holds only its blocks in flight.
Blocks run in-process (``workers=1``) or on Dask, and each finished block can be saved to a
checkpoint directory so that an interrupted job resumes where it stopped.
"""

from imgcate.maps.aggregate import aggregate_by_polygon
from imgcate.maps.cog import band_names, check_creation_options, write_cog, write_preview
from imgcate.maps.compute import DEFAULT_TILE_SIZE, fit_tile_size, predict_map
from imgcate.maps.grid import TileGrid, tile_grid
from imgcate.maps.polygons import polygon_effects
from imgcate.maps.tiles import MAP_VARIABLES
from imgcate.maps.written import WrittenMap, write_map

__all__ = [
    "DEFAULT_TILE_SIZE",
    "MAP_VARIABLES",
    "TileGrid",
    "WrittenMap",
    "aggregate_by_polygon",
    "band_names",
    "check_creation_options",
    "fit_tile_size",
    "polygon_effects",
    "predict_map",
    "tile_grid",
    "write_cog",
    "write_map",
    "write_preview",
]
