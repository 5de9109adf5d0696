"""Encoder speed and memory: chips/s, achieved conv GFLOP/s beside matmul GFLOP/s, flat memory.

Each configuration is timed in rounds, each round right after a matmul measurement, and the
median share of the matmul rate over rounds is reported (target: >= 0.5). Both of the
encoder's paths are timed in the same rounds: the native kernel (imgcate/encoders/_rcf.cpp, what
``transform`` uses where it is built and the CPU has AVX-512) and the JAX forward pass (the
fallback, and the peer). The target is judged on the path ``transform`` takes here. Prints one
JSON object. Usage::

    python benchmarks/embed_speed.py            # 10,000 vs 100,000 chips for the memory check
    python benchmarks/embed_speed.py --quick    # 1,000 vs 10,000
    python benchmarks/embed_speed.py --to-file 1000000   # only: units -> chunked Parquet

``--to-file N`` places N units at random pixels of a synthetic 6-band 4,096 x 4,096 scene and
runs :func:`imgcate.embed_to_file` (32-pixel chips, the encoder fitted on 20,000 of them,
16,384 images a chunk) in a fresh process: its time, units per second, resident memory before
the call (the scene's units table) and the peak during it, which should not grow with N.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np

from imgcate.encoders import RandomConvFeatures, native


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def _chips(rng: np.random.Generator, n: int, bands: int, size: int) -> np.ndarray:
    return rng.gamma(2.0, 50.0, size=(n, bands, size, size)).astype(np.float32)


def conv_flops(n_features: int, bands: int, size: int, k: int = 3) -> float:
    """Multiply-adds x 2 of the filter bank on one chip (pooling and PCA are negligible)."""
    out = (size - k + 1) ** 2
    return 2.0 * (n_features // 2) * bands * k * k * out


def matmul_gflops(n: int = 2048, reps: int = 5) -> float:
    a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    t = time.perf_counter()
    for _ in range(reps):
        f(a).block_until_ready()
    return 2.0 * n**3 * reps / (time.perf_counter() - t) / 1e9


def speed(
    bands: int, size: int, n_features: int, n: int, batch: int, rounds: int, paths: tuple[str, ...]
) -> dict:
    """Encoder rate for one configuration and each path, each round timed right after a matmul.

    The machine's speed drifts by +-10 % between runs, so the share of the matmul rate is taken
    within each round (encoder and matmul seconds apart) and the median over rounds is reported.
    """
    rng = np.random.default_rng(0)
    x = _chips(rng, max(n, 256), bands, size)
    enc = RandomConvFeatures(n_features, batch_size=batch).fit(x[:256], seed=0)
    flops = conv_flops(n_features, bands, size)
    mm, rates = [], {p: [] for p in paths}
    shares = {p: [] for p in paths}
    for path in paths:  # compile / warm up
        enc.transform(x[:batch], native=path == "native")
    for _ in range(rounds):
        mm.append(matmul_gflops())
        for path in paths:
            t = time.perf_counter()
            enc.transform(x[:n], native=path == "native")
            rates[path].append(n / (time.perf_counter() - t))
            shares[path].append(flops * rates[path][-1] / 1e9 / mm[-1])
    out = {
        "chip": f"{size}x{size}x{bands}",
        "n_features": n_features,
        "chips": n,
        "rounds": rounds,
        "matmul_gflop_per_s": round(float(np.median(mm)), 2),
    }
    for path in paths:
        rate = float(np.median(rates[path]))
        out[path] = {
            "chips_per_s": round(rate, 1),
            "conv_gflop_per_s": round(flops * rate / 1e9, 2),
            "share_of_matmul": round(float(np.median(shares[path])), 3),
            "share_of_matmul_per_round": [round(v, 3) for v in shares[path]],
        }
    return out


def memory(n_total: int, batch: int, enc: RandomConvFeatures) -> dict:
    """Transform n_total chips generated batch by batch; report peak RSS (absolute and above start).

    The allocator may return memory between runs, so compare ``peak_rss_mb`` across counts: it
    stays flat (one batch of conv activations) however many chips are transformed.
    """
    rng = np.random.default_rng(1)
    start, peak = _rss_mb(), _rss_mb()
    out = []
    t = time.perf_counter()
    for lo in range(0, n_total, batch):
        x = _chips(rng, min(batch, n_total - lo), 6, 32)
        out.append(enc.transform(x, batch_size=batch).astype(np.float32))
        peak = max(peak, _rss_mb())
    dt = time.perf_counter() - t
    return {
        "chips": n_total,
        "seconds": round(dt, 1),
        "rss_start_mb": round(start, 1),
        "peak_rss_mb": round(peak, 1),
        "peak_rss_increase_mb": round(peak - start, 1),
        "output_mb": round(sum(o.nbytes for o in out) / 2**20, 2),
    }


def to_file(n_units: int) -> dict:
    """Embed ``n_units`` units of a synthetic scene into a chunked Parquet file."""
    import tempfile
    from pathlib import Path

    import pandas as pd
    import pyarrow.parquet as pq
    import rasterio

    from imgcate import embed_to_file, read_units
    from imgcate.simulate import synthetic_scene

    with tempfile.TemporaryDirectory() as tmp:
        scene = Path(tmp) / "scene.tif"
        synthetic_scene(scene, seed=0, width=4096, height=4096)
        rng = np.random.default_rng(0)
        pixel = rng.choice(4064 * 4064, n_units, replace=False)  # distinct locations
        rows, cols = 16 + pixel // 4064, 16 + pixel % 4064
        with rasterio.open(scene) as ds:
            xs, ys = rasterio.transform.xy(ds.transform, rows, cols, offset="center")
            crs = ds.crs
        frame = pd.DataFrame({"id": np.arange(n_units), "x": xs, "y": ys})
        frame["treatment"], frame["outcome"] = np.arange(n_units) % 2, 0.0
        trial = read_units(frame, lon="x", lat="y", crs=crs)
        before = _rss_mb()
        with open("/proc/self/clear_refs", "w") as refs:  # peak from here on (Linux)
            refs.write("5")
        start = time.perf_counter()
        out = embed_to_file(trial, scene, 32, Path(tmp) / "e.parquet", seed=0)
        seconds = time.perf_counter() - start
        meta = pq.ParquetFile(out)
        with open("/proc/self/status") as status:
            peak = next(int(x.split()[1]) // 1024 for x in status if x.startswith("VmHWM"))
        return {
            "units": n_units,
            "seconds": round(seconds, 1),
            "units_per_s": round(n_units / seconds),
            "row_groups": meta.num_row_groups,
            "rows": meta.metadata.num_rows,
            "file_mb": round(out.stat().st_size / 2**20, 1),
            "rss_before_mb": round(before),
            "peak_rss_mb": peak,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller chip counts")
    parser.add_argument("--to-file", type=int, nargs="+", metavar="N", help="only embed_to_file")
    args = parser.parse_args()
    if args.to_file:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        runs = []
        for n in args.to_file:
            with context.Pool(1) as pool:
                runs.append(pool.apply(to_file, (n,)))
        print(json.dumps({"benchmark": "embed_to_file", "runs": runs}, indent=2))
        return
    n_speed = 256 if args.quick else 2048
    rounds = 3 if args.quick else 5
    counts = (1_000, 10_000) if args.quick else (10_000, 100_000)
    batch = 512
    default = "native" if native.supports(6) and native.supports(4) else "jax"
    paths = ("native", "jax") if default == "native" else ("jax",)
    result = {
        "device": str(jax.devices()[0]),
        "machine": platform.processor() or platform.machine(),
        "jax": jax.__version__,
        "matmul_gflop_per_s": round(matmul_gflops(), 2),
        "transform_path": default,
        "speed": [
            speed(b, s, f, n_speed, batch, rounds, paths)
            for (b, s) in ((6, 32), (4, 64))
            for f in (256, 1024)
        ],
    }
    result["target_share_of_matmul"] = 0.5
    result["target_met"] = all(r[default]["share_of_matmul"] >= 0.5 for r in result["speed"])
    if default == "native":
        result["native_over_jax"] = [
            round(r["native"]["chips_per_s"] / r["jax"]["chips_per_s"], 2) for r in result["speed"]
        ]
    enc = RandomConvFeatures(256, batch_size=batch).fit(
        _chips(np.random.default_rng(2), 256, 6, 32), seed=0
    )
    enc.transform(_chips(np.random.default_rng(3), batch, 6, 32))  # compile before measuring
    result["memory_32x32x6_256_features"] = [memory(n, batch, enc) for n in counts]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
