"""Speed and peak memory of predict_map: tiles per second for 32 x 32 x 6 tiles.

Prints JSON: one record per (tiles, workers) with tiles/s and the peak resident memory of the
whole process tree (this process and its Dask workers), sampled every 50 ms. The fit uses the
default encoder (random convolutional features, 256 features, 16 components) on a 300-unit
synthetic trial (NUTS, one chain); the mapped raster is a synthetic 6-band scene covered by
tiles every 8 px, and regions of it give the tile counts.

    python benchmarks/map_speed.py            # 10,000 and 100,000 tiles, 1 and 2 workers
    python benchmarks/map_speed.py --quick    # 2,000 and 10,000 tiles
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import threading
import time
import warnings
from pathlib import Path

import psutil

TILE, STRIDE = 32, 8


def tree_rss() -> int:
    """Resident memory of this process and all its descendants, in bytes."""
    me = psutil.Process()
    total = me.memory_info().rss
    for child in me.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:
            pass
    return total


class PeakMemory:
    """Samples the process tree's RSS in a thread; ``peak`` in bytes."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval, self.peak = interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss())
            time.sleep(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_rss())


def make_fit(workdir: Path, seed: int):
    from imgcate import ConvergenceWarning
    from imgcate.chips import extract_chips
    from imgcate.embeddings import embed
    from imgcate.inference import fit
    from imgcate.simulate import simulate_scene_trial, synthetic_scene

    scene = workdir / "trial_scene.tif"
    synthetic_scene(scene, seed=seed, width=384, height=384)
    sim = simulate_scene_trial(scene, seed=seed, n_units=300, chip_size=TILE)
    chips = extract_chips(sim.trial, scene, TILE)
    emb = embed(chips, "rcf", seed=seed)  # the default encoder
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return fit(
            sim.trial,
            emb,
            n_clusters=2,
            seed=seed,
            num_warmup=200,
            num_samples=200,
            num_chains=1,
            progress=False,
        )


def run(fit, raster: Path, n_tiles: int, workers: int, seed: int) -> dict:
    import rasterio

    from imgcate.maps import predict_map

    side = math.ceil(math.sqrt(n_tiles))
    with rasterio.open(raster) as src:
        t = src.transform
    # bounds whose cells are side x side tiles of the raster-wide grid
    off = (TILE - STRIDE) / 2
    x0, y0 = t * (off + 0.5, off + 0.5)
    x1, y1 = t * (off + side * STRIDE - 0.5, off + side * STRIDE - 0.5)
    with warnings.catch_warnings(), PeakMemory() as mem:
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        ds = predict_map(
            fit,
            raster,
            (x0, y1, x1, y0),
            tile_size=TILE,
            stride=STRIDE,
            workers=workers,
            progress=False,
            seed=seed,
        )
        seconds = time.perf_counter() - start
    tiles = int(ds["mean"].notnull().sum())
    return {
        "tiles": tiles,
        "workers": workers,
        "seconds": round(seconds, 2),
        "tiles_per_s": round(tiles / seconds, 1),
        "peak_memory_mb": round(mem.peak / 2**20),
        "max_draws": 500,
        "block_tiles": 2048,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 and 10,000 tiles.")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    counts = [2_000, 10_000] if args.quick else [10_000, 100_000]
    from imgcate.simulate import synthetic_scene

    with tempfile.TemporaryDirectory() as workdir:
        workdir = Path(workdir)
        fit = make_fit(workdir, args.seed)
        side = math.ceil(math.sqrt(max(counts)))
        size = (side - 1) * STRIDE + TILE
        raster = workdir / "map_scene.tif"
        synthetic_scene(raster, seed=args.seed + 1, width=size, height=size)
        # warm-up (JIT compilation) so that the figures measure throughput
        run(fit, raster, 256, 1, args.seed)
        records = [run(fit, raster, n, w, args.seed) for n in counts for w in args.workers]
    print(
        json.dumps(
            {
                "benchmark": "map_speed",
                "tile": [6, TILE, TILE],
                "encoder": "rcf (256 features, 16 components)",
                "cpu_count": psutil.cpu_count(),
                "results": records,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
