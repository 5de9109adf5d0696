"""imgcate: causal effect heterogeneity from satellite images.

The public API is what this module re-exports. Each stage of the data flow lives in its own
module or subpackage, named for what it holds (never for a function it exports):

units -> chips (raster) -> embeddings (encoders/) -> inference (config, model) -> results
(fitfile, diagnostics, selection) -> segments/, maps/; confounding/ and evaluate/ beside them;
simulate/ for trials with known truth; intervals, validation, output and optional are shared.

"""

import warnings

from imgcate.startup import interrupts_held

# Ctrl-C during these imports (seconds: JAX, NumPyro, rasterio) acts once they end
with interrupts_held():
    from imgcate.compilation import enable_compilation_cache
    from imgcate.devices import request_cpu_devices

    with warnings.catch_warnings():
        request_cpu_devices()  # before JAX starts: one CPU device per core, for parallel chains
        enable_compilation_cache()  # compiled samplers kept between processes
        # numpyro imports tqdm.auto, which warns in a notebook without ipywidgets
        warnings.filterwarnings("ignore", message="IProgress not found")  # without ipywidgets
        import numpyro.util  # noqa: F401

    from imgcate.chipfile import load_chips
    from imgcate.chips import Chips, chips_from_array, extract_chips
    from imgcate.config import FitConfig
    from imgcate.embeddingfile import embed_to_file
    from imgcate.embeddings import (
        Embeddings,
        as_embeddings,
        embed,
        encoder_from_state,
        load_embeddings,
    )
    from imgcate.encoders import CNNEncoder, RandomConvFeatures
    from imgcate.errors import (
        ApproximationWarning,
        BalanceWarning,
        BandWarning,
        CheckpointWarning,
        ConvergenceWarning,
        DurationWarning,
        ExtrapolationWarning,
        FitError,
        ImgcateError,
        InputError,
        MapInterrupted,
        MissingDependencyError,
        ModelCheckWarning,
        OutputExistsError,
        OverlapWarning,
        ParetoKWarning,
        PropensityBalanceWarning,
        RasterError,
        RegionWarning,
        SeparationError,
        WriteError,
    )
    from imgcate.inference import fit
    from imgcate.maps import (
        TileGrid,
        aggregate_by_polygon,
        fit_tile_size,
        polygon_effects,
        predict_map,
        tile_grid,
        write_cog,
        write_map,
    )
    from imgcate.raster import stack_bands
    from imgcate.results import EffectFit, Prediction, load_fit
    from imgcate.segments import (
        cluster_sensitivity,
        saliency,
        segment_chips,
        segment_sensitivity,
        sensitivity_map,
        typical_images,
    )
    from imgcate.selection import ClusterComparison, compare_clusters
    from imgcate.simulate import SimulatedTrial, simulate_trial
    from imgcate.trialcheck import RandomizationCheck, check_randomization
    from imgcate.units import Trial, read_units

__version__ = "0.1.0"

__all__ = [
    "ApproximationWarning",
    "BalanceWarning",
    "BandWarning",
    "CNNEncoder",
    "CheckpointWarning",
    "Chips",
    "ClusterComparison",
    "ConvergenceWarning",
    "DurationWarning",
    "EffectFit",
    "Embeddings",
    "ExtrapolationWarning",
    "FitConfig",
    "FitError",
    "ImgcateError",
    "InputError",
    "MapInterrupted",
    "MissingDependencyError",
    "ModelCheckWarning",
    "OutputExistsError",
    "OverlapWarning",
    "ParetoKWarning",
    "PropensityBalanceWarning",
    "Prediction",
    "RandomizationCheck",
    "RandomConvFeatures",
    "RasterError",
    "RegionWarning",
    "SeparationError",
    "SimulatedTrial",
    "Trial",
    "WriteError",
    "__version__",
    "as_embeddings",
    "check_randomization",
    "chips_from_array",
    "compare_clusters",
    "embed",
    "embed_to_file",
    "encoder_from_state",
    "extract_chips",
    "fit",
    "load_chips",
    "load_embeddings",
    "load_fit",
    "read_units",
    "predict_map",
    "fit_tile_size",
    "write_cog",
    "write_map",
    "aggregate_by_polygon",
    "polygon_effects",
    "stack_bands",
    "tile_grid",
    "TileGrid",
    "saliency",
    "segment_chips",
    "segment_sensitivity",
    "sensitivity_map",
    "typical_images",
    "cluster_sensitivity",
    "simulate_trial",
]
