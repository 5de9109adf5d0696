"""An observational study confounded by the spatial pattern of each image, not its brightness.

Every chip has the same land-cover composition (so the same expected band means); only how the
land cover is *arranged* varies with a latent confounder ``u``. An embedding adjusts for the
confounder only if it captures that structure:

- ``"clustering"``: a quarter of each chip is built up, scattered in small patches when ``u``
  is low and gathered in a compact settlement when it is high (the built pixels are the top
  quarter of a Gaussian random field whose smoothing length grows with ``u``); the confounder
  is the chip's realized fragmentation, the share of neighbouring pixel pairs whose land cover
  differs (what a program officer looking at the image would see);
- ``"orientation"``: stripes of crops and bare soil (half each), at an angle from 0 (rows
  along x) to 90 degrees that grows with ``u``;
- ``"position"``: one compact settlement (12 % of the chip), whose distance from the chip's
  centre (the unit's location) grows with ``u``; a mean-pooled encoder sees the same settlement
  wherever it sits, so this confounder is out of its reach by construction.

The chips are laid out as a mosaic GeoTIFF, one tile per unit, so the usual path applies:
``extract_chips(sim.trial, sim.scene, chip_size)`` returns exactly each unit's tile.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import rasterio
from scipy import ndimage, special

from imgcate.errors import InputError
from imgcate.simulate.result import ConfoundedTruth, SimulatedTrial
from imgcate.simulate.scenes import BARE, BUILT, VEGETATION, write_scene
from imgcate.units import read_units
from imgcate.validation import check_choice, rng_from_seed

Pattern = Literal["clustering", "orientation", "position"]

#: The spatial patterns :func:`simulate_pattern_confounded` can confound on.
PATTERNS = ("clustering", "orientation", "position")

_BUILT_SHARE = 0.25  # clustering: share of built-up pixels in every chip
_SETTLEMENT_SHARE = 0.12  # position: area of the settlement disc
_STRIPE_PERIOD = 8.0  # orientation: stripe period in pixels
_SIGMA_RANGE = (0.6, 5.0)  # clustering: smoothing length in pixels at u = 0 and u = 1


def fragmentation(cover: np.ndarray) -> float:
    """Share of horizontally or vertically neighbouring pixel pairs whose classes differ."""
    across = cover[:, 1:] != cover[:, :-1]
    down = cover[1:, :] != cover[:-1, :]
    return float((across.sum() + down.sum()) / (across.size + down.size))


def _clustering(rng: np.random.Generator, u: float, size: int) -> np.ndarray:
    sigma = _SIGMA_RANGE[0] * (_SIGMA_RANGE[1] / _SIGMA_RANGE[0]) ** u
    field = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma, mode="wrap")
    n_built = int(round(_BUILT_SHARE * size * size))
    cover = np.full(size * size, VEGETATION, np.uint8)
    cover[np.argsort(field, axis=None)[-n_built:]] = BUILT
    return cover.reshape(size, size)


def _orientation(rng: np.random.Generator, u: float, size: int) -> np.ndarray:
    angle = u * np.pi / 2
    yy, xx = np.mgrid[0:size, 0:size]
    phase = rng.uniform(0, 2 * np.pi)
    wave = np.sin(2 * np.pi * (xx * np.sin(angle) + yy * np.cos(angle)) / _STRIPE_PERIOD + phase)
    return np.where(wave > 0, VEGETATION, BARE).astype(np.uint8)


def _position(rng: np.random.Generator, u: float, size: int) -> np.ndarray:
    radius = np.sqrt(_SETTLEMENT_SHARE * size * size / np.pi)
    reach = size / 2 - radius - 1.0  # the settlement stays whole inside the chip
    direction = rng.uniform(0, 2 * np.pi)
    centre = (size - 1) / 2 + u * reach * np.array([np.sin(direction), np.cos(direction)])
    yy, xx = np.mgrid[0:size, 0:size]
    distance = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2
    n_built = int(round(_SETTLEMENT_SHARE * size * size))  # the same area in every chip
    cover = np.full(size * size, VEGETATION, np.uint8)
    cover[np.argsort(distance, axis=None, kind="stable")[:n_built]] = BUILT
    return cover.reshape(size, size)


_DRAW = {"clustering": _clustering, "orientation": _orientation, "position": _position}


def simulate_pattern_confounded(
    path: str | Path,
    *,
    seed: int,
    n_units: int = 1000,
    pattern: Pattern = "clustering",
    chip_size: int = 32,
    ate: float = 2.0,
    strength: float = 1.0,
    noise_sd: float = 1.0,
    bands: int = 6,
) -> SimulatedTrial:
    """Simulate an observational study targeted on a spatial pattern in each unit's image.

    Each unit has a latent ``u ~ Uniform(0, 1)`` that sets how its chip's land cover is
    arranged (``pattern``, see :mod:`imgcate.simulate.patterns`) while the composition, and so
    the expected brightness of every band, is the same for all units. The confounder ``c`` is
    ``u`` itself for ``"orientation"`` (the angle) and ``"position"`` (the distance), and the
    chip's realized :func:`fragmentation` for ``"clustering"``. With ``z`` the standardized
    ``c``: ``P(treated) = sigmoid(strength * z)`` and
    ``outcome = 1 + 2 z + 0.5 x1 + ate * t + Normal(0, noise_sd)``, ``x1 ~ Normal(0, 1)`` an
    observed covariate that is no confounder. The difference in means is biased by about
    ``2 (E[z | t = 1] - E[z | t = 0])``; an adjustment removes that bias only if the
    embedding captures the pattern.

    Parameters
    ----------
    path : path
        Mosaic GeoTIFF to write (one ``chip_size`` tile per unit, in rows; a land-cover
        sidecar beside it, as :func:`~imgcate.simulate.write_scene` writes).
    seed : int
        Random seed.
    n_units : int
        Number of units (at least 20).
    pattern : {"clustering", "orientation", "position"}
        What the confounder changes in the image.
    chip_size : int
        Tile size in pixels (at least 16).
    ate : float
        The true (constant) treatment effect.
    strength : float
        Slope of the treatment logit in ``z``.
    noise_sd : float
        Outcome noise standard deviation.
    bands : int
        Number of bands of the scene.

    Returns
    -------
    SimulatedTrial
        ``trial`` (id, x, y in the scene's CRS, treatment, outcome, covariate x1),
        ``embeddings`` None (cut ``extract_chips(sim.trial, sim.scene, chip_size)`` and embed
        them), ``truth`` (a :class:`~imgcate.simulate.ConfoundedTruth`: ``latent`` = the
        confounder ``c``, true ``propensity``, ``mu0``, ``mu1``), ``scene`` and ``land_cover``
        (y, x).

    Raises
    ------
    InputError
        On an unknown pattern or too few units or pixels.

    Examples
    --------
    >>> sim = simulate_pattern_confounded(tmp_path / "mosaic.tif", seed=0,
    ...                                   n_units=100)  # doctest: +SKIP
    >>> chips = extract_chips(sim.trial, sim.scene, 32)  # doctest: +SKIP
    """
    check_choice("pattern", pattern, PATTERNS)
    if n_units < 20:
        raise InputError(f"n_units={n_units} must be at least 20.")
    if chip_size < 16:
        raise InputError(f"chip_size={chip_size} must be at least 16 pixels.")
    rng = rng_from_seed(seed)
    u = rng.uniform(size=n_units)
    n_cols = int(np.ceil(np.sqrt(n_units)))
    n_rows = int(np.ceil(n_units / n_cols))
    cover = np.full((n_rows * chip_size, n_cols * chip_size), VEGETATION, np.uint8)
    tile_row, tile_col = np.divmod(np.arange(n_units), n_cols)
    confounder = u.copy()
    for i in range(n_units):
        r0, c0 = tile_row[i] * chip_size, tile_col[i] * chip_size
        tile = _DRAW[pattern](rng, u[i], chip_size)
        cover[r0 : r0 + chip_size, c0 : c0 + chip_size] = tile
        if pattern == "clustering":
            confounder[i] = fragmentation(tile)
    path = Path(path)
    write_scene(path, cover, seed=int(rng.integers(2**31 - 1)), bands=bands)
    z = (confounder - confounder.mean()) / confounder.std()
    x1 = rng.standard_normal(n_units)
    propensity = special.expit(strength * z)
    t = (rng.random(n_units) < propensity).astype(int)
    mu0 = 1.0 + 2.0 * z + 0.5 * x1
    y = mu0 + ate * t + noise_sd * rng.standard_normal(n_units)
    with rasterio.open(path) as src:
        transform, crs = src.transform, src.crs
    rows = tile_row * chip_size + chip_size // 2
    cols = tile_col * chip_size + chip_size // 2
    xs, ys = rasterio.transform.xy(transform, rows, cols, offset="center")
    table = pd.DataFrame(
        {"id": np.arange(n_units), "x": xs, "y": ys, "treatment": t, "outcome": y, "x1": x1}
    )
    trial = read_units(table, lon="x", lat="y", crs=crs, covariates=["x1"])
    truth = ConfoundedTruth.constant_effect(ate, propensity, mu0, confounder)
    return SimulatedTrial(trial, None, truth, scene=path, land_cover=cover)
