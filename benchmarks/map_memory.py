"""Peak memory of a written map against its region's size: write_map (block by block) and
write_cog of predict_map (the map in memory), on the same kind of 2-worker Dask cluster.

Prints JSON: for each (path, tiles) the client process's peak resident memory above its level
at the map's start (``VmHWM`` started again through ``/proc/self/clear_refs``; the client is
where the map's grids are held: the workers only compute blocks), the peak of the whole
process tree (workers included, sampled every 50 ms), seconds and tiles; and for each path the
growth of the client's peak per tile from the smallest region to the largest. ``--large``
adds the last step of ``write_map`` alone, its copy of the staging GeoTIFF to the COG
(``imgcate.maps.cog.copy_to_cog``), on maps of random values of 1,000 to 6,000 cells a side
(11 bands): that step's memory is GDAL's, and it is the largest part of a large map's. Each
map runs in a fresh process (the fit loaded from its file, a cluster of its own and a warm-up
map first), so that memory freed by one map but kept by the allocator does not hide the next
one's.
Same fit, raster, regions and settings as ``benchmarks/map_speed.py`` (tiles of 32 px every
8 px, 500 draws).

    python benchmarks/map_memory.py            # 250,000 and 1,000,000 tiles
    python benchmarks/map_memory.py --large    # and write_map of 4,000,000 (every 4 px), and
                                               # the COG copy alone for 1,000-6,000 cells a side
    python benchmarks/map_memory.py --quick    # 20,000 and 80,000 tiles
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import psutil
from fit_speed import reset_peak, status_mb
from map_speed import STRIDE, TILE, PeakMemory, default_block_tiles, make_fit, region

PATHS = ("write_map", "predict_map+write_cog")


def one_map(workdir: Path, path: str, n_tiles: int, seed: int, stride: int = STRIDE) -> dict:
    """One map of about ``n_tiles`` tiles every ``stride`` px by ``path`` on a fresh 2-worker
    cluster (a stride below the raster's 8 px: the same ground, more tiles)."""
    from distributed import Client

    from imgcate.maps import predict_map, write_cog, write_map
    from imgcate.maps.runners import local_cluster
    from imgcate.results import load_fit

    fit = load_fit(workdir / "fit.imgcate")
    raster = workdir / "map_scene.tif"
    opts = {"tile_size": TILE, "stride": STRIDE, "progress": False, "seed": seed}
    bounds = region(raster, round(n_tiles * (stride / STRIDE) ** 2))
    warnings.simplefilter("ignore")
    with local_cluster(2) as cluster, Client(cluster) as client:
        client.wait_for_workers(2)
        address = cluster.scheduler_address
        # the workers' first blocks rebuild the fit and compile: not part of the measure
        warm = region(raster, 4 * default_block_tiles())
        predict_map(fit, raster, warm, scheduler=address, **opts)
        out = workdir / f"{path}-{n_tiles}.tif"
        opts["stride"] = stride
        gc.collect()
        before = status_mb("VmRSS")
        exact = reset_peak()
        with PeakMemory() as tree:
            start = time.perf_counter()
            if path == "write_map":
                written = write_map(fit, raster, out, bounds, scheduler=address, **opts)
                tiles = written.tiles
            else:
                ds = predict_map(fit, raster, bounds, scheduler=address, **opts)
                write_cog(ds, out)
                tiles = int(ds["mean"].notnull().sum())
                del ds
            seconds = time.perf_counter() - start
        peak = status_mb("VmHWM")
    out.unlink()
    out.with_suffix(".png").unlink()
    return {
        "path": path,
        "tiles": tiles,
        "stride": stride,
        "seconds": round(seconds, 1),
        "tiles_per_s": round(tiles / seconds),
        "client_before_mb": before,
        "client_peak_above_start_mb": peak - before if exact else None,
        "tree_peak_mb": round(tree.peak / 2**20),
    }


def one_copy(workdir: Path, side: int) -> dict:
    """The COG copy of a staging GeoTIFF of ``side`` x ``side`` cells and 11 bands."""
    import numpy as np
    import rasterio
    from rasterio.crs import CRS
    from rasterio.windows import Window

    from imgcate.maps.cog import cog_options, copy_to_cog, staging_profile

    staging = workdir / f"staging-{side}.tif"
    wkt = CRS.from_epsg(32636).to_wkt()
    profile = staging_profile(wkt, (30, 0, 0, 0, -30, 0), (side, side), 11)
    rows = np.random.default_rng(0).normal(size=(11, 10, side)).astype(np.float32)
    with rasterio.open(staging, "w", **profile) as dst:
        for row in range(0, side, 10):
            dst.write(
                rows[:, : min(10, side - row)], window=Window(0, row, side, min(10, side - row))
            )
    gc.collect()
    before = status_mb("VmRSS")
    exact = reset_peak()
    start = time.perf_counter()
    copy_to_cog(staging, workdir / f"cog-{side}.tif", cog_options((side, side), None))
    seconds = time.perf_counter() - start
    peak = status_mb("VmHWM")
    staging.unlink()
    (workdir / f"cog-{side}.tif").unlink()
    return {
        "path": "copy_to_cog",
        "cells": side * side,
        "staging_mb": round(side * side * 11 * 4 / 2**20),
        "seconds": round(seconds, 1),
        "client_peak_above_start_mb": peak - before if exact else None,
    }


def growth(records: list[dict]) -> dict:
    """Bytes of client peak per tile from the smallest map to the largest, per path."""
    out = {}
    for path in PATHS:
        rows = sorted((r for r in records if r["path"] == path), key=lambda r: r["tiles"])
        if len(rows) >= 2 and rows[0]["client_peak_above_start_mb"] is not None:
            first, last = rows[0], rows[-1]
            extra = last["client_peak_above_start_mb"] - first["client_peak_above_start_mb"]
            out[path] = round(extra * 2**20 / (last["tiles"] - first["tiles"]), 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20,000 and 80,000 tiles.")
    parser.add_argument("--large", action="store_true", help="also write_map of 4,000,000")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--one", nargs=4, metavar=("WORKDIR", "PATH", "TILES", "STRIDE"), help="internal"
    )
    parser.add_argument("--copy", nargs=2, metavar=("WORKDIR", "SIDE"), help="internal")
    args = parser.parse_args()
    if args.one:
        workdir, path, n_tiles, stride = args.one
        print(json.dumps(one_map(Path(workdir), path, int(n_tiles), args.seed, int(stride))))
        return
    if args.copy:
        print(json.dumps(one_copy(Path(args.copy[0]), int(args.copy[1]))))
        return
    counts = [20_000, 80_000] if args.quick else [250_000, 1_000_000]
    runs = [(path, n, STRIDE) for n in counts for path in PATHS]
    if args.large:
        runs.append(("write_map", 4 * counts[-1], STRIDE // 2))
    from imgcate.simulate import synthetic_scene

    records = []
    with tempfile.TemporaryDirectory() as workdir:
        workdir = Path(workdir)
        side = math.ceil(math.sqrt(max(counts)))
        size = (side - 1) * STRIDE + TILE
        synthetic_scene(workdir / "map_scene.tif", seed=args.seed + 1, width=size, height=size)
        make_fit(workdir, args.seed).save(workdir / "fit.imgcate")
        for path, n_tiles, stride in runs:
            command = [sys.executable, __file__, "--seed", str(args.seed), "--one"]
            run = subprocess.run(
                [*command, str(workdir), path, str(n_tiles), str(stride)],
                capture_output=True,
                text=True,
                check=True,
            )
            records.append(json.loads(run.stdout.strip().splitlines()[-1]))
        copies = []
        for side in (1_000, 3_000, 6_000) if args.large else ():
            command = [sys.executable, __file__, "--copy", str(workdir), str(side)]
            run = subprocess.run(command, capture_output=True, text=True, check=True)
            copies.append(json.loads(run.stdout.strip().splitlines()[-1]))
    print(
        json.dumps(
            {
                "benchmark": "map_memory",
                "tile": [6, TILE, TILE],
                "workers": 2,
                "cpu_count": psutil.cpu_count(),
                "results": records,
                "client_bytes_per_tile": growth(records),
                "copy_to_cog": copies,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
