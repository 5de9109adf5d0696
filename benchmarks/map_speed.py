"""Speed and peak memory of predict_map: tiles per second for 32 x 32 x 6 tiles.

Prints JSON: one record per (mode, tiles, workers) with tiles/s and the peak resident memory
of this process and its Dask cluster's workers, sampled every 50 ms, and the
largest of those samples in each tenth of the map's time (``memory_by_tenth_mb``). The fit
uses the default encoder (random convolutional features, 256 features, 16 components) on a
300-unit synthetic trial (NUTS, one chain); the mapped raster is a synthetic 6-band scene
covered by tiles every 8 px, and regions of it give the tile counts.

Modes: ``local`` is ``workers=1``, the map in this process with every core; ``dask`` runs it on
a Dask cluster of 1 and 2 single-threaded worker processes (the package's
``imgcate.maps.runners.local_cluster``, which pins each worker to its own core), reached through
``scheduler=`` as a cluster elsewhere would be. Strong scaling: the same tiles on 1 and 2
workers; weak scaling: half the tiles on 1 worker against all on 2. The cost model
``seconds = start-up + tiles * per_tile / workers`` is fitted to the 1-worker runs and its
prediction for 2 workers is printed beside the measurement. Cluster start-up (worker
processes, their imports) is timed apart from the maps, and so is each cluster's first map
(``first_map``: two blocks per worker, in which each worker rebuilds the fit and compiles,
once; the maps after it, of other regions, reuse the worker's model). Each map below 10^6 tiles
is made ``--repeat`` times (5) and its median time reported, with every time in
``seconds_each``: single maps of 10,000 tiles take about a second and vary by a tenth.

The Dask maps are made in ``--repeat`` rounds: in each, a cluster of 1 worker and then one of
2 (2 and then 1 in the next round) start, make their first map and an untimed map of the
smallest size (the first map after the warm-up ran 0.1-0.15 s slower than the next ones),
then one map of each size, and stop. This machine's
speed drifts by a tenth over minutes, and all the 1-worker maps made before all the 2-worker
ones gave ratios that drifted with it. ``scaling_2_over_1`` is the ratio of the median times,
``paired_2_over_1`` the median of the rounds' ratios. After each round's maps the machine's
own speed-up of two pinned processes over one is measured on two kernels, one of arithmetic
in a core's own cache and one that streams memory (``paired_2_over_1["machine_compute"]``
and ``["machine_memory"]``; 2 where each core gives a whole core's speed), and
``over_compute`` / ``over_memory`` (inside each ``strong_<tiles>`` entry) are the medians of
each round's map ratio over them: a reference measured in the same minutes, not a ceiling (on
a shared host the machine's speed moves within a round, and the maps' ratio has been above the
kernels'). With ``machine_compute`` near 2 and ``over_compute`` near 1 the maps used the two
cores the machine gave; well below 1, the maps lost speed the machine had, or the machine's
speed moved during the maps. The ``machine_*`` and ``over_*`` keys are left out where the
kernels cannot run (one core, not Linux) or failed (then from that round on). The tile counts
are those of square regions, rounded up (2,025, 50,176 and 100,489). (Two
clusters kept side by side, taking turns map by map, slowed the 1-worker maps: the last
piece's result reached the mapping process 0.03-0.22 s after the worker finished it, against
0.02 s with one cluster.)

    python benchmarks/map_speed.py            # 10,000, 50,000 and 100,000 tiles
    python benchmarks/map_speed.py --large    # and 1,000,000 tiles on 2 workers (memory)
    python benchmarks/map_speed.py --quick    # 2,000 and 10,000 tiles
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import psutil

TILE, STRIDE = 32, 8


def default_block_tiles() -> int:
    """``predict_map``'s default block size (its tiles per block)."""
    import inspect

    from imgcate.maps import predict_map

    return inspect.signature(predict_map).parameters["block_tiles"].default


def tree_rss(pids: list[int] | None = None) -> int:
    """Resident memory, in bytes, of this process and the processes ``pids`` (a cluster's
    workers), or of this process and all its descendants where ``pids`` is None."""
    me = psutil.Process()
    others = me.children(recursive=True) if pids is None else []
    for pid in pids or []:
        try:
            others.append(psutil.Process(pid))
        except psutil.Error:
            pass
    total = me.memory_info().rss
    for proc in others:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    return total


class PeakMemory:
    """Samples the RSS of this process and ``pids`` (:func:`tree_rss`) in a thread; ``peak``
    in bytes, ``samples`` (seconds from the start, bytes)."""

    def __init__(self, interval: float = 0.05, pids: list[int] | None = None) -> None:
        self.interval, self.peak, self.pids = interval, 0, pids
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        start = time.perf_counter()
        while not self._stop.is_set():
            rss = tree_rss(self.pids)
            self.samples.append((time.perf_counter() - start, rss))
            self.peak = max(self.peak, rss)
            time.sleep(self.interval)

    def by_tenth(self) -> list[int | None]:
        """The tree's largest RSS (MB) in each tenth of the sampled time (None: no sample in
        it, a map of under half a second): flat memory shows as flat tenths once the caches
        (GDAL's, capped per worker) have filled."""
        if not self.samples:
            return []
        end = self.samples[-1][0] or 1.0
        tenths: list[int | None] = [None] * 10
        for t, rss in self.samples:
            i = min(9, int(10 * t / end))
            tenths[i] = max(tenths[i] or 0, rss)
        return [None if r is None else round(r / 2**20) for r in tenths]

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_rss(self.pids))


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


def region(raster: Path, n_tiles: int) -> tuple[float, float, float, float]:
    """Bounds whose cells are about ``n_tiles`` tiles of the raster-wide grid."""
    import rasterio

    side = math.ceil(math.sqrt(n_tiles))
    with rasterio.open(raster) as src:
        t = src.transform
    off = (TILE - STRIDE) / 2
    x0, y0 = t * (off + 0.5, off + 0.5)
    x1, y1 = t * (off + side * STRIDE - 0.5, off + side * STRIDE - 0.5)
    return (x0, y1, x1, y0)


def one_map(
    fit,
    raster: Path,
    n_tiles: int,
    workers: int,
    seed: int,
    scheduler=None,
    block_tiles: int | None = None,
    pids: list[int] | None = None,
) -> dict:
    """One map of about ``n_tiles`` tiles: its time, tiles, and the peak memory of this
    process with ``pids`` (all its descendants where None), by tenth too."""
    from imgcate.maps import predict_map

    with warnings.catch_warnings(), PeakMemory(pids=pids) as mem:
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        ds = predict_map(
            fit,
            raster,
            region(raster, n_tiles),
            tile_size=TILE,
            stride=STRIDE,
            workers=workers,
            scheduler=scheduler,
            progress=False,
            seed=seed,
            block_tiles=block_tiles or default_block_tiles(),
        )
        seconds = time.perf_counter() - start
    tiles = int(ds["mean"].notnull().sum())
    return {"seconds": seconds, "tiles": tiles, "peak": mem.peak, "tenths": mem.by_tenth()}


def record(maps: list[dict], workers: int, dask: bool, block_tiles: int | None) -> dict:
    """The record of the same map made ``len(maps)`` times: the median time (a map of 10,000
    tiles takes about a second, and single times vary by a tenth from run to run), every time,
    the peak memory over the runs and the first run's memory by tenth."""
    seconds = float(np.median([m["seconds"] for m in maps]))
    return {
        "mode": "dask" if dask else "local",
        "tiles": maps[0]["tiles"],
        "workers": workers,
        "seconds": round(seconds, 3),
        "seconds_each": [round(m["seconds"], 3) for m in maps],
        "tiles_per_s": round(maps[0]["tiles"] / seconds, 1),
        "peak_memory_mb": round(max(m["peak"] for m in maps) / 2**20),
        "memory_by_tenth_mb": maps[0]["tenths"],
        "max_draws": 500,
        "block_tiles": block_tiles or default_block_tiles(),
    }


def local_run(
    fit, raster: Path, n_tiles: int, seed: int, block_tiles: int, repeat: int = 1
) -> dict:
    """The map of about ``n_tiles`` tiles in this process (``workers=1``), made ``repeat``
    times (:func:`record`)."""
    maps = [one_map(fit, raster, n_tiles, 1, seed, None, block_tiles) for _ in range(repeat)]
    return record(maps, 1, False, block_tiles)


def worker_cores() -> list[int]:
    """The cores a worker process may run on (the cluster pins each worker to its own)."""
    import os

    return sorted(os.sched_getaffinity(0))


def worker_pid() -> int:
    """A worker's process id (its memory is counted with its cluster's maps)."""
    import os

    return os.getpid()


#: The kernels of :func:`machine_ratio`: products of two fixed 256 x 256 float32 matrices (their
#: data in a core's own cache: arithmetic), and passes over 64 MB of float32 (more than the
#: shared cache: memory), with the repetitions that take about a second each on this machine.
KERNELS = {"compute": 2500, "memory": 60}

#: Seconds :func:`machine_ratio` waits for its processes before it gives up (returns None).
KERNEL_WAIT_S = 120


def kernel_seconds(kind: str, core: int, ready, out) -> None:
    """Put on ``out`` the seconds of the kernel ``kind`` (:data:`KERNELS`), single-threaded on
    ``core``, started when every process of ``ready`` (a barrier) is ready (run in a process
    of its own: :func:`machine_ratio`)."""
    os.sched_setaffinity(0, {core})
    rng = np.random.default_rng(0)
    if kind == "compute":
        a, b = rng.random((2, 256, 256), dtype=np.float32)
        c = np.empty_like(a)
    else:
        a = rng.random(16 * 2**20, dtype=np.float32)
    ready.wait(KERNEL_WAIT_S)
    start = time.perf_counter()
    for _ in range(KERNELS[kind]):
        if kind == "compute":
            np.matmul(a, b, out=c)
        else:
            np.multiply(a, np.float32(1.0), out=a)
    out.put(time.perf_counter() - start)


def machine_ratio(cores: list[int], kind: str) -> float | None:
    """The machine's own speed-up of two processes over one on a kernel (:data:`KERNELS`),
    a reference for the maps' ``2_over_1`` measured in the same minutes (not a ceiling: the
    machine's speed moves within a round). One process on the first of ``cores``, then one on
    each of the first two at once, then one again; 2 x the mean time of the single ones over
    the slower of the pair's. Where the machine gives both cores a whole core's speed (and,
    for ``memory``, each its share of the memory's bandwidth) this is 2. None where there are
    fewer than two cores, processes cannot be pinned (not Linux), or a process does not
    report within :data:`KERNEL_WAIT_S`."""
    import multiprocessing
    import queue
    from unittest import mock

    if len(cores) < 2 or not hasattr(os, "sched_setaffinity"):
        return None
    spawn = multiprocessing.get_context("spawn")

    def run(on: list[int]) -> list[float]:
        ready, out = spawn.Barrier(len(on)), spawn.Queue()
        procs = [spawn.Process(target=kernel_seconds, args=(kind, c, ready, out)) for c in on]
        for proc in procs:
            proc.start()
        try:
            return [out.get(timeout=KERNEL_WAIT_S) for _ in procs]
        finally:
            for proc in procs:
                proc.join(5)
                if proc.is_alive():
                    proc.terminate()
                    proc.join()

    # the children's BLAS single-threaded; this process's environment as it was afterwards
    with mock.patch.dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1"):
        try:
            one, pair = run(cores[:1]), run(cores[:2])
            one += run(cores[:1])
        except queue.Empty:
            return None
    return 2 * float(np.mean(one)) / max(pair)


def dask_runs(
    fit,
    raster: Path,
    counts: list[int],
    large: list[int],
    seed: int,
    block_tiles: int,
    rounds: int,
) -> tuple[list[dict], dict]:
    """Maps on local clusters of 1 and 2 single-threaded worker processes (one core each), in
    ``rounds`` rounds: in each, a cluster of 1 worker and one of 2 are started in turn (the
    first of the two alternating from round to round) and each makes one map of every size,
    so that the two see the same drift of the machine's speed. Then the ``large`` maps on a
    cluster of 2. Also the median of the paired ratios (1-worker time over 2-worker time in
    the same round), and the machine's own ratios on its kernels in each round
    (:func:`machine_ratio`, after the round's maps)."""
    from distributed import Client

    from imgcate.maps.runners import local_cluster

    maps: dict[tuple[int, int], list[dict]] = {}
    starts: dict[int, list[float]] = {1: [], 2: []}
    first: dict[int, list[dict]] = {1: [], 2: []}
    cores: dict[int, list] = {}
    machine: dict[str, list[float]] = {kind: [] for kind in KERNELS}
    probing = True

    def on_cluster(workers: int, sizes: list[int], in_round: bool = True) -> list[dict]:
        start = time.perf_counter()
        with local_cluster(workers) as cluster, Client(cluster) as client:
            client.wait_for_workers(workers)
            if in_round:  # the large maps' cluster is not one of the rounds'
                starts[workers].append(time.perf_counter() - start)
            cores[workers] = sorted(client.run(worker_cores).values())  # one list per worker
            pids = list(client.run(worker_pid).values())
            address = cluster.scheduler_address
            # each worker's first block rebuilds the fit and compiles (start-up, paid once
            # per worker): two blocks per worker, timed apart; then, untimed, a map of the
            # smallest size (the first map after those ran 0.1-0.15 s slower than the next ones
            # on 2 workers, 1.11-1.15 s against 0.96-1.08 s at 10,000 tiles); the maps after
            # it measure throughput
            warm = one_map(
                fit, raster, 2 * block_tiles * workers, workers, seed, address, block_tiles
            )
            if in_round:
                first[workers].append(warm)
            one_map(fit, raster, counts[0], workers, seed, address, block_tiles)
            return [
                one_map(fit, raster, n, workers, seed, address, block_tiles, pids) for n in sizes
            ]

    for k in range(rounds):
        for workers in (1, 2) if k % 2 == 0 else (2, 1):
            for n, made in zip(counts, on_cluster(workers, counts), strict=True):
                maps.setdefault((workers, n), []).append(made)
        on = sorted({w[0] for w in cores.get(2, []) if w})  # the 2-worker cluster's cores
        if len(on) < 2 and hasattr(os, "sched_getaffinity"):  # workers not pinned apart
            on = sorted(os.sched_getaffinity(0))
        for kind, ratios in machine.items():
            ratio = machine_ratio(on, kind) if probing else None
            if ratio is None:  # the probe failed (or cannot run here): not tried again
                probing = False
            else:
                ratios.append(ratio)
    records = [record(maps[w, n], w, True, block_tiles) for n in counts for w in (1, 2)]
    if large:
        made = on_cluster(2, large, in_round=False)
        records += [record([m], 2, True, block_tiles) for m in made]
    paired = {}
    for n in counts:
        ratios = [a["seconds"] / b["seconds"] for a, b in zip(maps[1, n], maps[2, n], strict=True)]
        paired[f"strong_{maps[2, n][0]['tiles']}"] = {
            "median": round(float(np.median(ratios)), 2),
            "each": [round(r, 2) for r in ratios],
            **{
                f"over_{kind}": round(float(np.median(np.divide(ratios, on_kind))), 2)
                for kind, on_kind in machine.items()
                if len(on_kind) == len(ratios)
            },
        }
    for kind, ratios in machine.items():
        if not ratios:
            continue
        paired[f"machine_{kind}"] = {
            "median": round(float(np.median(ratios)), 2),
            "each": [round(r, 2) for r in ratios],
        }
    for r in records:
        w = r["workers"]
        r.update(
            cluster_start_s=round(float(np.median(starts[w])), 2),
            first_map={
                "tiles": first[w][0]["tiles"],
                "seconds": round(float(np.median([m["seconds"] for m in first[w]])), 3),
            },
            cores=cores[w],
        )
    return records, paired


def cost_model(records: list[dict]) -> dict:
    """``seconds = start + tiles * per_tile / workers`` from the 1-worker Dask runs, and its
    prediction for every Dask run."""
    one = [r for r in records if r["mode"] == "dask" and r["workers"] == 1]
    if len({r["tiles"] for r in one}) < 2:
        return {}
    per_tile, start = np.polyfit([r["tiles"] for r in one], [r["seconds"] for r in one], 1)
    predicted = [
        {
            "tiles": r["tiles"],
            "workers": r["workers"],
            "seconds": r["seconds"],
            "predicted_s": round(float(start + r["tiles"] * per_tile / r["workers"]), 2),
        }
        for r in records
        if r["mode"] == "dask"
    ]
    return {
        "start_s": round(float(start), 3),
        "per_tile_ms": round(1e3 * per_tile, 4),
        "runs": predicted,
    }


def scaling(records: list[dict]) -> dict:
    """Strong (same tiles) and weak (tiles per worker) speed-ups of 2 workers over 1."""
    dask = {(r["workers"], r["tiles"]): r for r in records if r["mode"] == "dask"}
    out = {}
    for (w, tiles), r in dask.items():
        if w != 2:
            continue
        same = dask.get((1, tiles))
        if same:
            out[f"strong_{tiles}"] = round(r["tiles_per_s"] / same["tiles_per_s"], 2)
        half = [
            v for (w1, t1), v in dask.items() if w1 == 1 and abs(2 * t1 - tiles) <= 0.02 * tiles
        ]
        if half:
            out[f"weak_{tiles}"] = round(half[0]["seconds"] / r["seconds"], 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 and 10,000 tiles.")
    parser.add_argument("--large", action="store_true", help="also 10^6 tiles on 2 workers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--repeat",
        type=int,
        default=5,
        help="runs of each map below 10^6 tiles, their median time reported (default 5)",
    )
    parser.add_argument(
        "--block-tiles",
        type=int,
        help="tiles per block (default: predict_map's default)",
    )
    args = parser.parse_args()
    if args.block_tiles is not None and args.block_tiles < 1:
        parser.error("--block-tiles must be a positive number of tiles")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    counts = [2_000, 10_000] if args.quick else [10_000, 50_000, 100_000]
    large = [1_000_000] if args.large else []
    from imgcate.simulate import synthetic_scene

    with tempfile.TemporaryDirectory() as workdir:
        workdir = Path(workdir)
        side = math.ceil(math.sqrt(max(counts + large)))
        size = (side - 1) * STRIDE + TILE
        raster = workdir / "map_scene.tif"
        synthetic_scene(raster, seed=args.seed + 1, width=size, height=size)
        # the raster is written before the fit (tens of seconds), so that it is an existing
        # file by the first map, as a user's is: a file written in the last 2 s is hashed for
        # its provenance at every map (imgcate.provenance.SETTLED_S), an existing one once
        fit = make_fit(workdir, args.seed)
        # warm-up (JIT compilation) so that the figures measure throughput
        block = args.block_tiles or default_block_tiles()
        local_run(fit, raster, 256, args.seed, block)
        records = [local_run(fit, raster, n, args.seed, block, args.repeat) for n in counts]
        # the 10^6-tile map once (memory)
        dask, paired = dask_runs(fit, raster, counts, large, args.seed, block, args.repeat)
        records += dask
    print(
        json.dumps(
            {
                "benchmark": "map_speed",
                "tile": [6, TILE, TILE],
                "encoder": "rcf (256 features, 16 components)",
                "cpu_count": psutil.cpu_count(),
                "results": records,
                "scaling_2_over_1": scaling(records),
                "paired_2_over_1": paired,
                "cost_model": cost_model(records),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
