"""Errors and warnings raised by imgcate.

Every error subclasses :class:`ImgcateError`; each message names the offending input and
says how to fix it.
"""

from __future__ import annotations


class ImgcateError(Exception):
    """Base class of every error imgcate raises on purpose."""


class InputError(ImgcateError, ValueError):
    """A user-supplied table, array or option is invalid."""


class SeparationError(InputError):
    """The features (nearly) separate treated from control units: the covariate-balancing
    propensity has no solution at the penalty given."""


class RasterError(ImgcateError, ValueError):
    """A raster cannot be read or does not fit the request (CRS, extent, bands, nodata)."""


class FitError(ImgcateError, RuntimeError):
    """A model cannot be fitted or a fitted object cannot be used as asked."""


class OutputExistsError(ImgcateError, FileExistsError):
    """An output file exists and overwriting was not requested."""


class MissingDependencyError(ImgcateError, ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""


class ConvergenceWarning(UserWarning):
    """MCMC or optimisation diagnostics are poor (R-hat, ESS, divergences)."""


class OverlapWarning(UserWarning):
    """Propensity scores come close to 0 or 1: weights are extreme, and a fit's effects for
    such units are extrapolated from units unlike them."""


class ExtrapolationWarning(UserWarning):
    """Predictions are requested for embeddings far from the trial's."""


class BandWarning(UserWarning):
    """Bands may not be the trial's: undescribed (an order is assumed) or seemingly reordered."""


class SensitivityWarning(UserWarning):
    """A confounding-sensitivity bound was capped (an implied partial R2 above 1), or a
    benchmark multiple (kd) is impossible for its benchmark (those rows are NaN)."""


class BalanceWarning(UserWarning):
    """A trial analysed as randomized has arms that differ in pre-treatment variables
    (covariates, embedding components) by more than randomization allows: the treatment
    column, the declared design (strata, clusters) or the randomization itself is in doubt."""


class PropensityBalanceWarning(BalanceWarning):
    """An estimated propensity's inverse-probability weights leave the arms' features apart
    (``estimate_propensity``): the scores do not remove the confounding they were meant to."""


class ModelCheckWarning(UserWarning):
    """The fitted model's replicated outcomes miss a feature of the observed outcome (a
    posterior predictive check failed): the likelihood does not describe the data."""


class WriteError(ImgcateError, OSError):
    """An output could not be written (disk full, read-only or forbidden folder, name too long):
    the message names the file and the cause; nothing partial is left."""


class MapInterrupted(KeyboardInterrupt):
    """A map stopped by Ctrl-C (or, under ``imgcate map``, SIGTERM): a ``KeyboardInterrupt``
    whose message says how many blocks were finished and how to resume. Nothing is left at
    the output's path."""


class CheckpointWarning(UserWarning):
    """A saved block of a map job (``checkpoint_dir`` / ``--resume-dir``) was damaged; it was
    discarded and is computed again."""


class ApproximationWarning(UserWarning):
    """Results come from an approximate method the user did not name: ``fit(method="auto")``
    chose stochastic variational inference for a large trial (intervals from its guide, not
    from exact MCMC)."""


class DurationWarning(UserWarning):
    """The requested work will take long for its size: ``fit(method="nuts")`` on more units
    than ``method="auto"`` gives to NUTS (:data:`imgcate.config.AUTO_NUTS_MAX_UNITS`)."""


class RegionWarning(UserWarning):
    """A map's region reaches past the raster's extent: the map covers only the part of the
    region inside the raster; or its stride is wider than its tiles, which leave gaps."""


class ParetoKWarning(UserWarning):
    """PSIS-LOO's Pareto-k diagnostic flags units whose leave-one-out estimate is unreliable
    (k above ArviZ's sample-size threshold): a comparison by PSIS-LOO is then in doubt."""
