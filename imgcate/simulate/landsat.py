"""A semi-synthetic trial on the real Landsat scene: units placed on it, effects set by the
vegetated share (NDVI) of each unit's chip, as :func:`~imgcate.simulate.simulate_scene_trial`
does on a synthetic scene."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio

from imgcate.errors import RasterError
from imgcate.simulate.result import SimulatedTrial
from imgcate.simulate.scenes import cluster_thresholds, share_map, simulate_on_map
from imgcate.validation import rng_from_seed


def ndvi(red: np.ndarray, nir: np.ndarray) -> np.ndarray:
    """Normalized difference vegetation index ``(nir - red) / (nir + red)`` (0 where both are 0)."""
    red, nir = np.asarray(red, float), np.asarray(nir, float)
    total = nir + red
    return np.divide(nir - red, total, out=np.zeros_like(total), where=total != 0)


def landsat_trial(
    landsat_path: str | Path,
    *,
    seed: int,
    n_units: int,
    n_clusters: int = 2,
    chip_size: int = 16,
    tau: Sequence[float] | None = None,
    noise_sd: float = 1.0,
    ndvi_threshold: float = 0.2,
    thresholds: Sequence[float] | None = None,
    margin: float = 0.1,
    balance: bool = True,
    point_crs: str | None = "EPSG:4326",
    ramp: float | None = None,
) -> SimulatedTrial:
    """Semi-synthetic trial on the real Landsat 7 scene, effects driven by real land cover.

    The pixel land cover is "vegetated" where NDVI (from band 3 = red and band 4 = NIR, i.e.
    indexes 2 and 3 of the six bands 1, 2, 3, 4, 5, 7) exceeds ``ndvi_threshold``. A unit's
    cluster is ``digitize(vegetated share of its chip, thresholds)``: with the default, chips
    more than 30 % vegetated form the high-effect cluster. Treatment is randomized (half treated);
    outcome = ``baseline + 0.5 x1 + t tau_cluster + noise`` with baseline 1.

    Parameters
    ----------
    landsat_path : path
        The 6-band Landsat GeoTIFF.
    seed, n_units, n_clusters, chip_size, tau, noise_sd, margin, balance, point_crs
        As in :func:`simulate_scene_trial`.
    ndvi_threshold : float
        NDVI above which a pixel counts as vegetated.
    thresholds : sequence of float, optional
        Cut points on the vegetated share (default evenly spaced in (0, 0.6): 0.3 for K = 2).
    ramp : float, optional
        K = 2 only: the effect rises smoothly with the vegetated share, ``tau[0] + (tau[1] -
        tau[0]) / (1 + exp(-(share - threshold) / ramp))``, instead of stepping at the
        threshold (``cluster`` still says which side of it a unit is; pass ``margin=0`` to
        place units at every share).

    Returns
    -------
    SimulatedTrial
        As :func:`simulate_scene_trial`, with ``land_cover`` 1 = vegetated, 0 = other,
        shape (y, x).
    """
    rng = rng_from_seed(seed)
    try:
        with rasterio.open(landsat_path) as src:
            if src.count < 4:
                raise RasterError(
                    f"raster {str(landsat_path)!r} has {src.count} bands; landsat_trial needs "
                    "the red (3rd) and NIR (4th) bands."
                )
            red, nir = src.read(3), src.read(4)
            transform, crs = src.transform, src.crs
    except rasterio.errors.RasterioError as exc:
        raise RasterError(f"raster {str(landsat_path)!r} could not be opened ({exc}).") from exc
    vegetated = ndvi(red, nir) > ndvi_threshold
    th = cluster_thresholds(n_clusters, thresholds, 0.6)
    share = share_map(vegetated, chip_size)
    trial, truth = simulate_on_map(
        rng,
        share,
        np.ones(share.shape),
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
        ramp=ramp,
    )
    return SimulatedTrial(
        trial, None, truth, scene=Path(landsat_path), land_cover=vegetated.astype(np.uint8)
    )
