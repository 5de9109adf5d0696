"""imgcate: causal effect heterogeneity from satellite images."""

from imgcate.embed import Embeddings, as_embeddings
from imgcate.errors import (
    ConvergenceWarning,
    ExtrapolationWarning,
    FitError,
    ImgcateError,
    InputError,
    OutputExistsError,
    OverlapWarning,
    RasterError,
)
from imgcate.units import Trial, read_units

__version__ = "0.1.0"

__all__ = [
    "ConvergenceWarning",
    "Embeddings",
    "ExtrapolationWarning",
    "FitError",
    "ImgcateError",
    "InputError",
    "OutputExistsError",
    "OverlapWarning",
    "RasterError",
    "Trial",
    "as_embeddings",
    "read_units",
    "__version__",
]
