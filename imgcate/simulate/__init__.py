"""Simulated trials with known truth, for checking what imgcate recovers.

Every simulator returns a :class:`SimulatedTrial` (``trial``, ``embeddings``, ``truth``):

- :func:`simulate_trial`: embeddings from a Gaussian mixture whose components are the effect
  clusters (the model's membership is well specified; :class:`MixtureTruth`);
- :func:`synthetic_scene` writes a multi-band GeoTIFF with land-cover textures, and
  :func:`simulate_scene_trial` places a trial on it whose clusters are a known function of the
  land cover under each chip; :func:`landsat_trial` does the same on the real Landsat scene
  (:class:`SceneTruth`);
- :func:`simulate_confounded`: an observational study targeted on a latent image property
  (:class:`ConfoundedTruth`); :func:`simulate_scene_confounded` targets the built-up share of
  chips of a synthetic scene, and :func:`simulate_pattern_confounded` a spatial pattern (how
  the land cover is arranged, not what it is) in a mosaic of chips;
- :func:`simulate_scenario`: randomized trials the effect model was not built from (smooth
  or constant effects, nonlinear baselines, skewed, heavy-tailed or zero-inflated outcomes;
  :class:`ScenarioTruth`).
"""

from imgcate.simulate.confounded import simulate_confounded, simulate_scene_confounded
from imgcate.simulate.landsat import landsat_trial, ndvi
from imgcate.simulate.mixture import simulate_trial
from imgcate.simulate.patterns import PATTERNS, simulate_pattern_confounded
from imgcate.simulate.result import (
    ConfoundedTruth,
    MixtureTruth,
    SceneTruth,
    SimulatedTrial,
    Truth,
)
from imgcate.simulate.scenarios import ScenarioTruth, simulate_scenario
from imgcate.simulate.scenes import (
    BARE,
    BUILT,
    LAND_COVER,
    ROAD,
    VEGETATION,
    WATER,
    land_cover_path,
    simulate_scene_trial,
    synthetic_scene,
    write_scene,
)

__all__ = [
    "BARE",
    "BUILT",
    "LAND_COVER",
    "PATTERNS",
    "ROAD",
    "VEGETATION",
    "WATER",
    "ConfoundedTruth",
    "MixtureTruth",
    "ScenarioTruth",
    "SceneTruth",
    "SimulatedTrial",
    "Truth",
    "land_cover_path",
    "landsat_trial",
    "ndvi",
    "simulate_confounded",
    "simulate_pattern_confounded",
    "simulate_scene_confounded",
    "simulate_scenario",
    "simulate_scene_trial",
    "simulate_trial",
    "synthetic_scene",
    "write_scene",
]
