"""Simulated scenes and trials whose effect heterogeneity is a known function of the imagery.

- :func:`synthetic_scene` writes a multi-band GeoTIFF with land-cover-like textures (water,
  vegetation, bare soil, built-up, roads) and a sidecar land-cover GeoTIFF.
- :func:`simulate_scene_trial` places units on such a scene; each unit's cluster is a known
  function of the land cover under its chip (built-up share above thresholds).
- :func:`~imgcate.simulate.landsat.landsat_trial` does the same on the real Landsat scene
  (``imgcate.simulate.landsat``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
from rasterio.transform import from_origin
from scipy import ndimage, special

from imgcate.datasets import LANDSAT_BANDS
from imgcate.errors import InputError, RasterError
from imgcate.simulate.result import SceneTruth, SimulatedTrial
from imgcate.units import Trial, read_units
from imgcate.validation import rng_from_seed

LAND_COVER = ("water", "vegetation", "bare", "built", "road")
WATER, VEGETATION, BARE, BUILT, ROAD = range(5)

# Mean reflectance (x 10,000) per class for 6 Landsat-like bands (LANDSAT_BANDS: blue, green,
# red, NIR, SWIR1, SWIR2; a six-band scene is named so); other band counts interpolate along
# the band axis (named B1..Bn).
_SIGNATURES = np.array(
    [
        [600, 700, 500, 300, 150, 100],  # water
        [400, 700, 400, 3500, 1800, 900],  # vegetation
        [900, 1200, 1500, 2200, 2800, 2400],  # bare soil
        [1300, 1400, 1500, 1800, 2000, 1900],  # built-up
        [1600, 1650, 1700, 1750, 1900, 1800],  # road
    ],
    dtype=float,
)
_TEXTURE = np.array([30.0, 300.0, 200.0, 500.0, 80.0])  # pixel noise sd per class


def land_cover_path(scene_path: str | Path) -> Path:
    """Path of the land-cover sidecar GeoTIFF written beside a synthetic scene."""
    path = Path(scene_path)
    return path.with_name(path.stem + "_landcover.tif")


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return (field - field.mean()) / field.std()


def _roads(rng: np.random.Generator, shape: tuple[int, int], n_roads: int) -> np.ndarray:
    h, w = shape
    mask = np.zeros(shape, bool)
    for _ in range(n_roads):
        (r0, c0), (r1, c1) = rng.uniform([0, 0], [h, w], size=(2, 2))
        n = int(max(abs(r1 - r0), abs(c1 - c0))) * 2 + 2
        rr = np.clip(np.linspace(r0, r1, n).astype(int), 0, h - 1)
        cc = np.clip(np.linspace(c0, c1, n).astype(int), 0, w - 1)
        mask[rr, cc] = True
    return ndimage.binary_dilation(mask, iterations=1)


def _land_cover(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    scale = max(height, width) / 512
    moisture = _smooth_field(rng, (height, width), 20 * scale)
    town = _smooth_field(rng, (height, width), 12 * scale)
    soil = _smooth_field(rng, (height, width), 6 * scale)
    cover = np.full((height, width), VEGETATION, np.uint8)
    cover[soil > 0.8] = BARE
    cover[town > 0.6] = BUILT
    cover[moisture < -1.3] = WATER
    roads = _roads(rng, (height, width), max(2, int(6 * scale)))
    cover[roads & (cover != WATER)] = ROAD
    return cover


def _signatures(bands: int) -> np.ndarray:
    if bands == _SIGNATURES.shape[1]:
        return _SIGNATURES
    pos = np.linspace(0, _SIGNATURES.shape[1] - 1, bands)
    return np.stack([np.interp(pos, np.arange(_SIGNATURES.shape[1]), s) for s in _SIGNATURES])


def _render(rng: np.random.Generator, cover: np.ndarray, bands: int) -> np.ndarray:
    sig = _signatures(bands)
    base = sig[cover].transpose(2, 0, 1)  # (band, y, x)
    noise = rng.standard_normal(cover.shape) * _TEXTURE[cover]
    # built-up: a blocky roof pattern; vegetation: a smooth canopy texture
    blocks = np.kron(
        rng.standard_normal((cover.shape[0] // 3 + 1, cover.shape[1] // 3 + 1)), np.ones((3, 3))
    )[: cover.shape[0], : cover.shape[1]]
    noise = noise + np.where(cover == BUILT, 400 * blocks, 0.0)
    band_gain = 1.0 + 0.1 * rng.standard_normal((bands, 1, 1))
    img = base + band_gain * noise[None]
    return np.clip(img, 1, 10000).astype(np.uint16)


def _write_atomic(path: Path, data: np.ndarray, profile: dict, descriptions=None) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(data)
            for i, d in enumerate(descriptions or ()):
                dst.set_band_description(i + 1, d)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def synthetic_scene(
    path: str | Path,
    *,
    seed: int,
    width: int = 512,
    height: int = 512,
    bands: int = 6,
    crs: str = "EPSG:32636",
    pixel_size: float = 30.0,
    origin: tuple[float, float] = (400_000.0, 60_000.0),
) -> np.ndarray:
    """Write a synthetic multi-band scene with land-cover-like textures.

    Parameters
    ----------
    path : path
        GeoTIFF to write (temporary name, then renamed); land cover to ``land_cover_path(path)``.
    seed : int
    width, height : int
        Size in pixels.
    bands : int
        Number of bands. Six (default) follow Landsat's blue, green, red, nir, swir1, swir2
        and are named so (:data:`imgcate.datasets.LANDSAT_BANDS`); other counts interpolate
        those spectral signatures and are named B1..Bn.
    crs : str
        A projected CRS (default UTM 36N, as over Uganda).
    pixel_size : float
        Pixel size in CRS units (metres).
    origin : (float, float)
        Upper-left corner (x, y) in the CRS.

    Returns
    -------
    numpy.ndarray
        uint8, shape (y, x): land-cover class per pixel, indexing :data:`LAND_COVER`
        (0 water, 1 vegetation, 2 bare, 3 built, 4 road).
    """
    if width < 8 or height < 8 or bands < 1:
        raise InputError("synthetic_scene needs width, height >= 8 and bands >= 1.")
    rng = rng_from_seed(seed)
    cover = _land_cover(rng, height, width)
    _render_and_write(path, cover, rng, bands, crs, pixel_size, origin)
    return cover


def write_scene(
    path: str | Path,
    cover: np.ndarray,
    *,
    seed: int,
    bands: int = 6,
    crs: str = "EPSG:32636",
    pixel_size: float = 30.0,
    origin: tuple[float, float] = (400_000.0, 60_000.0),
) -> None:
    """Render a land-cover map made elsewhere (e.g. chips with designed spatial patterns,
    :func:`~imgcate.simulate.simulate_pattern_confounded`) as a multi-band scene, as
    :func:`synthetic_scene` renders its own, and write it with its land-cover sidecar.

    Parameters
    ----------
    path : path
        GeoTIFF to write (temporary name, then renamed); land cover to ``land_cover_path(path)``.
    cover : numpy.ndarray
        Integer classes indexing :data:`LAND_COVER`, shape (y, x).
    seed : int
        Seed of the pixel texture.
    bands, crs, pixel_size, origin
        As in :func:`synthetic_scene`.

    Raises
    ------
    InputError
        If ``cover`` is not a 2-D array of land-cover classes.
    """
    cover = np.asarray(cover)
    if cover.ndim != 2 or not np.isin(cover, np.arange(len(LAND_COVER))).all():
        raise InputError(
            f"cover must be a (y, x) array of land-cover classes 0..{len(LAND_COVER) - 1} "
            f"({', '.join(LAND_COVER)}); got shape {cover.shape}."
        )
    if bands < 1:
        raise InputError(f"bands={bands} must be >= 1.")
    _render_and_write(
        path, cover.astype(np.uint8), rng_from_seed(seed), bands, crs, pixel_size, origin
    )


def _render_and_write(path, cover, rng, bands, crs, pixel_size, origin) -> None:
    height, width = cover.shape
    image = _render(rng, cover, bands)
    transform = from_origin(origin[0], origin[1], pixel_size, pixel_size)
    profile = dict(
        driver="GTiff",
        width=width,
        height=height,
        crs=crs,
        transform=transform,
        tiled=True,
        blockxsize=256,
        blockysize=256,
        compress="deflate",
    )
    path = Path(path)
    _write_atomic(
        path,
        image,
        {**profile, "count": bands, "dtype": "uint16"},
        list(LANDSAT_BANDS) if bands == len(LANDSAT_BANDS) else [f"B{i + 1}" for i in range(bands)],
    )
    _write_atomic(
        land_cover_path(path),
        cover[None],
        {**profile, "count": 1, "dtype": "uint8"},
        ["land_cover"],
    )


def _window_share(mask: np.ndarray, rows: np.ndarray, cols: np.ndarray, size: int) -> np.ndarray:
    """Share of True pixels in the size x size window centred on each pixel (as extract_chips)."""
    integral = np.pad(mask.astype(np.float64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    r0, c0 = rows - size // 2, cols - size // 2
    r1, c1 = r0 + size, c0 + size
    total = integral[r1, c1] - integral[r0, c1] - integral[r1, c0] + integral[r0, c0]
    return total / size**2


def _default_tau(n_clusters: int, tau: Sequence[float] | None) -> np.ndarray:
    out = np.linspace(0.0, 2.0, n_clusters) if tau is None else np.asarray(tau, float)
    if out.shape != (n_clusters,):
        raise InputError(f"tau must give {n_clusters} effects (one per cluster), got {tau!r}.")
    if np.any(np.diff(out) <= 0):
        raise InputError(f"tau={tau!r} must be strictly increasing (clusters ordered by effect).")
    return out


def _place_units(
    rng: np.random.Generator,
    statistic: np.ndarray,
    thresholds: np.ndarray,
    n_units: int,
    chip_size: int,
    margin: float,
    balance: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel (row, col) of each unit, at distinct pixels, chips inside the scene, clusters
    balanced if asked."""
    h, w = statistic.shape
    half = chip_size // 2
    n_cand = max(50 * n_units, 20_000)
    rows = rng.integers(half, h - chip_size + half + 1, n_cand)
    cols = rng.integers(half, w - chip_size + half + 1, n_cand)
    # distinct locations: two units drawn on one pixel would share one chip (one image)
    _, first = np.unique(rows * w + cols, return_index=True)
    keep = np.sort(first)
    rows, cols = rows[keep], cols[keep]
    share = statistic[rows, cols]
    far = np.min(np.abs(share[:, None] - thresholds[None]), axis=1) >= margin
    rows, cols, share = rows[far], cols[far], share[far]
    cluster = np.digitize(share, thresholds)
    k = len(thresholds) + 1
    if not balance:
        idx = np.arange(min(n_units, len(rows)))
    else:
        per = [np.flatnonzero(cluster == c) for c in range(k)]
        want = np.full(k, n_units // k)
        want[: n_units % k] += 1
        if any(len(p) < q for p, q in zip(per, want, strict=True)):
            counts = [len(p) for p in per]
            raise InputError(
                f"the scene has too few chip locations per cluster ({counts}) for {n_units} "
                "balanced units; lower n_units or margin, change thresholds, or balance=False."
            )
        idx = np.concatenate([p[:q] for p, q in zip(per, want, strict=True)])
        idx = rng.permutation(idx)
    if len(idx) < n_units:
        raise InputError(f"could place only {len(idx)} of {n_units} units; lower margin.")
    return rows[idx], cols[idx]


def _make_trial(
    rng: np.random.Generator,
    transform,
    crs,
    rows: np.ndarray,
    cols: np.ndarray,
    baseline: np.ndarray,
    tau_unit: np.ndarray,
    noise_sd: float,
    point_crs: str | None,
    targeting: float = 0.0,
) -> tuple[Trial, np.ndarray, np.ndarray]:
    """The trial, each unit's propensity and its untreated mean outcome."""
    n = len(rows)
    x, y = rasterio.transform.xy(transform, rows, cols, offset="center")
    covariate = rng.standard_normal(n)
    if targeting == 0:
        treatment = rng.permutation(np.arange(n) < n // 2).astype(int)
        propensity = np.full(n, (n // 2) / n)
    else:
        spread = baseline.std()
        z = (baseline - baseline.mean()) / spread if spread > 0 else np.zeros(n)
        propensity = special.expit(targeting * z)
        treatment = (rng.random(n) < propensity).astype(int)
    mu0 = baseline + 0.5 * covariate
    outcome = mu0 + treatment * tau_unit + noise_sd * rng.standard_normal(n)
    df = pd.DataFrame(
        {
            "id": np.arange(n),
            "x": np.asarray(x),
            "y": np.asarray(y),
            "treatment": treatment,
            "outcome": outcome,
            "x1": covariate,
        }
    )
    trial = read_units(df, lon="x", lat="y", crs=crs, covariates=["x1"])
    if point_crs is not None:
        trial = replace(trial, data=trial.data.to_crs(point_crs))
    return trial, propensity, mu0


def cluster_thresholds(
    n_clusters: int, thresholds: Sequence[float] | None, hi: float
) -> np.ndarray:
    """Cut points of the cluster statistic: ``thresholds``, else evenly spaced in (0, hi)."""
    if n_clusters < 1:
        raise InputError(f"n_clusters={n_clusters} must be >= 1.")
    out = (
        np.linspace(0, hi, n_clusters + 1)[1:-1]
        if thresholds is None
        else np.asarray(thresholds, float)
    )
    if out.shape != (n_clusters - 1,) or np.any(np.diff(out) <= 0):
        raise InputError(
            f"thresholds={thresholds!r} must be {n_clusters - 1} increasing cut points "
            "(one fewer than n_clusters)."
        )
    return out


def simulate_on_map(
    rng,
    statistic,
    cover_baseline,
    transform,
    crs,
    *,
    n_units,
    n_clusters,
    chip_size,
    tau,
    noise_sd,
    thresholds,
    margin,
    balance,
    point_crs,
    targeting=0.0,
    ramp=None,
) -> tuple[Trial, SceneTruth]:
    """Place units on a map of the chip statistic that sets their cluster (e.g. the built-up
    or vegetated share), and draw their trial; the work shared by :func:`simulate_scene_trial`
    and :func:`~imgcate.simulate.landsat.landsat_trial`. With ``ramp`` (K = 2) the effect
    goes from the first cluster's to the second's along a logistic curve in the statistic,
    ``ramp`` its scale, centred on the threshold: no step, no clusters."""
    h, w = statistic.shape
    if ramp is not None and (n_clusters != 2 or not ramp > 0):
        raise InputError(f"ramp={ramp!r} needs n_clusters=2 and a scale above 0.")
    if chip_size > min(h, w):
        raise InputError(f"chip_size={chip_size} is larger than the scene ({h} x {w} px).")
    tau_cluster = _default_tau(n_clusters, tau)
    rows, cols = _place_units(rng, statistic, thresholds, n_units, chip_size, margin, balance)
    share = statistic[rows, cols]
    cluster = np.digitize(share, thresholds)
    tau_unit = tau_cluster[cluster]
    if ramp is not None:
        step = special.expit((share - thresholds[0]) / ramp)
        tau_unit = tau_cluster[0] + (tau_cluster[1] - tau_cluster[0]) * step
    trial, propensity, mu0 = _make_trial(
        rng,
        transform,
        crs,
        rows,
        cols,
        cover_baseline[rows, cols],
        tau_unit,
        noise_sd,
        point_crs,
        targeting,
    )
    truth = SceneTruth(
        tau_unit=tau_unit,
        cate=tau_unit,
        propensity=propensity,
        mu0=mu0,
        cluster=cluster,
        tau_cluster=tau_cluster,
        share=share,
        thresholds=thresholds,
        chip_size=chip_size,
    )
    return trial, truth


def share_map(mask: np.ndarray, chip_size: int) -> np.ndarray:
    """Window share at every pixel where the chip fits (NaN elsewhere is never sampled)."""
    h, w = mask.shape
    half = chip_size // 2
    rr, cc = np.mgrid[half : h - chip_size + half + 1, half : w - chip_size + half + 1]
    out = np.zeros((h, w))
    out[rr, cc] = _window_share(mask, rr, cc, chip_size)
    return out


def simulate_scene_trial(
    scene_path: str | Path,
    *,
    seed: int,
    n_units: int,
    n_clusters: int = 2,
    chip_size: int = 32,
    tau: Sequence[float] | None = None,
    noise_sd: float = 1.0,
    thresholds: Sequence[float] | None = None,
    margin: float = 0.05,
    balance: bool = True,
    point_crs: str | None = "EPSG:4326",
    targeting: float = 0.0,
) -> SimulatedTrial:
    """Simulate a trial on a synthetic scene with image-driven effect clusters.

    Units sit at pixel centres with their ``chip_size`` chip inside the scene. The cluster of a
    unit is ``digitize(built_share, thresholds)`` where ``built_share`` is the share of built-up
    and road pixels in the chip (the window :func:`~imgcate.chips.extract_chips` reads with
    ``size=chip_size``). Treatment is completely randomized (half treated) unless ``targeting``
    is set; the outcome is ``baseline + 0.5 x1 + t tau_cluster + noise`` with
    ``baseline = 2 x vegetation share`` and a covariate ``x1 ~ N(0, 1)``.

    Parameters
    ----------
    scene_path : path
        A scene written by :func:`synthetic_scene` (its land-cover sidecar must exist).
    seed : int
    n_units : int
    n_clusters : int
    chip_size : int
        Chip size in pixels.
    tau : sequence of float, optional
        Increasing effect per cluster (default ``linspace(0, 2, n_clusters)``, i.e. (0, 2)).
    noise_sd : float
        Outcome noise standard deviation.
    thresholds : sequence of float, optional
        Cut points on the built-up share (default evenly spaced in (0, 0.5)).
    margin : float
        Units are placed only where the share is at least ``margin`` from every threshold, so
        clusters are identifiable from the image (0 allows any location).
    balance : bool
        Place the same number of units in each cluster.
    point_crs : str or None
        CRS of the trial's points (default lon/lat; None keeps the scene's CRS).
    targeting : float
        0 (default): the randomized trial above. Otherwise an observational study: the program
        was targeted on the chip's vegetated share, the driver of the baseline outcome, with
        ``P(treated) = sigmoid(targeting * z)`` (z the vegetated share standardized over the
        units; negative values favour less vegetated places). The difference in means is then
        confounded; what the image shows identifies the propensity
        (:mod:`imgcate.confounding`). ``truth.propensity`` holds the true scores.

    Returns
    -------
    SimulatedTrial
        ``trial`` (columns id, treatment, outcome, x1), ``embeddings`` None (cut the chips of
        ``scene`` and embed them), ``truth`` (a :class:`~imgcate.simulate.SceneTruth`),
        ``scene`` (``scene_path``) and ``land_cover`` (y, x).

    Raises
    ------
    RasterError
        If the scene or its land-cover sidecar cannot be read.
    """
    rng = rng_from_seed(seed)
    cover_file = land_cover_path(scene_path)
    if not cover_file.exists():
        raise RasterError(
            f"land-cover map {str(cover_file)!r} of scene {str(scene_path)!r} is missing; "
            "write the scene with imgcate.simulate.synthetic_scene."
        )
    with rasterio.open(cover_file) as src:
        cover, transform, crs = src.read(1), src.transform, src.crs
    th = cluster_thresholds(n_clusters, thresholds, 0.5)
    built = share_map(np.isin(cover, (BUILT, ROAD)), chip_size)
    veg = share_map(cover == VEGETATION, chip_size)
    trial, truth = simulate_on_map(
        rng,
        built,
        2.0 * veg,
        transform,
        crs,
        n_units=n_units,
        n_clusters=n_clusters,
        chip_size=chip_size,
        tau=tau,
        noise_sd=noise_sd,
        thresholds=th,
        margin=margin,
        balance=balance,
        point_crs=point_crs,
        targeting=_check_targeting(targeting),
    )
    return SimulatedTrial(trial, None, truth, scene=Path(scene_path), land_cover=cover)


def _check_targeting(targeting: float) -> float:
    try:
        value = float(targeting)
    except (TypeError, ValueError):
        value = np.nan
    if not np.isfinite(value):
        raise InputError(f"targeting={targeting!r} must be a finite number (0 = randomized).")
    return value
