"""Honest out-of-sample effects of imgcate's own model: cross-fitted CATE on spatial folds.

:func:`crossfit_cate` fits the effect model once per fold on the other folds' units and
predicts the held-out units with :meth:`~imgcate.EffectFit.predict`, so that no unit's CATE
comes from a fit that saw its outcome. The result carries what :func:`rate`, :func:`blp` and
:func:`test_calibration` need (out-of-fold CATE, out-of-fold baseline, the design's
propensity) and runs the three as one out-of-sample heterogeneity test.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import jax.numpy as jnp
import numpy as np
import pandas as pd
from scipy import stats

from imgcate.ates import overlap_note
from imgcate.embeddings import Embeddings, keyed_embeddings, unit_embeddings
from imgcate.errors import (
    BalanceWarning,
    ConvergenceWarning,
    ExtrapolationWarning,
    InputError,
    ModelCheckWarning,
    OverlapWarning,
)
from imgcate.evaluate.calibration import test_calibration
from imgcate.evaluate.genericml import blp
from imgcate.evaluate.ranking import RATE_TARGETS, RateResult, RateTarget, rate
from imgcate.evaluate.scores import aipw_scores
from imgcate.evaluate.splits import spatial_folds
from imgcate.intervals import interval_names, quantiles, tidy_table
from imgcate.model import ModelInputs
from imgcate.output import progress_bar
from imgcate.posterior import evaluate as posterior_quantities
from imgcate.posterior import fit_spec, site_draws
from imgcate.units import Trial
from imgcate.validation import (
    as_propensity,
    check_choice,
    check_prob,
    rng_from_seed,
    seed_int,
)

if TYPE_CHECKING:
    from imgcate.results import EffectFit

FoldScheme = Literal["spatial", "random"]
FOLD_SCHEMES = ("spatial", "random")

#: Spatial blocks per fold when ``block_size`` is not given (a grid over the units' extent).
BLOCKS_PER_FOLD = 5

#: Warnings of a fold's fit that are recorded in :attr:`CrossfitResult.problems`.
FIT_WARNINGS = (ConvergenceWarning, ModelCheckWarning, BalanceWarning)


@dataclass(frozen=True, eq=False)
class CrossfitResult:
    """Out-of-fold CATE of every unit, each from a fit that did not see the unit.

    Attributes
    ----------
    unit_ids : numpy.ndarray, shape (unit,)
        The trial's unit ids, in the trial's order.
    fold : numpy.ndarray of int, shape (unit,)
        The fold 0..n_folds − 1 that held each unit out.
    cate, cate_sd : numpy.ndarray, shape (unit,)
        Posterior mean and sd of each unit's CATE under the fit of the other folds (outcome's
        original scale; :meth:`EffectFit.predict <imgcate.EffectFit.predict>`).
    lower, upper : numpy.ndarray, shape (unit,)
        Central ``prob`` posterior interval of that CATE.
    prob : float
        Probability of ``lower``/``upper``.
    mu0, mu1 : numpy.ndarray, shape (unit,)
        Out-of-fold posterior means of the expected outcome without and with treatment.
    outcome, treatment : numpy.ndarray, shape (unit,)
        The trial's outcome (original scale) and 0/1 treatment.
    propensity : numpy.ndarray, shape (unit,)
        P(treatment = 1): by design (the share treated, per stratum when the trial has
        strata), or the scores passed as ``propensity`` for an observational study.
    clusters : numpy.ndarray or None, shape (unit,)
        Codes of units that share their assignment or their image (the fit's design
        clusters); the tests' standard errors are cluster-robust over them.
    scheme : str
        ``"spatial"``, ``"random"`` or ``"given"``.
    seed : int
        The seed of the folds and fits (also the default of the RATE bootstrap).
    problems : tuple of str
        The warnings of the fold fits (convergence, model checks, balance), each prefixed by
        its fold.
    fits : tuple of EffectFit
        The fold fits (fit k held out fold k), when ``keep_fits=True``; else empty.
    """

    unit_ids: np.ndarray
    fold: np.ndarray
    cate: np.ndarray
    cate_sd: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    prob: float
    mu0: np.ndarray
    mu1: np.ndarray
    outcome: np.ndarray
    treatment: np.ndarray
    propensity: np.ndarray
    clusters: np.ndarray | None
    scheme: str
    seed: int
    problems: tuple[str, ...] = ()
    fits: tuple = ()

    @property
    def n_folds(self) -> int:
        """Number of folds."""
        return int(self.fold.max()) + 1

    def __repr__(self) -> str:  # the arrays are the units': a line each of what they hold
        lo, hi = np.nanpercentile(self.cate, [5, 95])
        width = float(np.nanmean(self.upper - self.lower))
        return (
            f"CrossfitResult({len(self.unit_ids):,} units, {self.n_folds} {self.scheme} folds, "
            f"seed {self.seed}; .summary(), .to_frame(), .scores(), .problems):\n"
            f"  out-of-fold CATE: mean {float(np.nanmean(self.cate)):.3g}; the units' posterior "
            f"means from {lo:.3g} to {hi:.3g} (5th to 95th percentile); each unit's "
            f"{self.prob:.0%} interval {width:.3g} wide on average\n"
            f"  fold fits' warnings: {len(self.problems)}"
            + (" (.problems)" if self.problems else "")
            + (f"; fits kept: {len(self.fits)}" if self.fits else "")
        )

    @property
    def mu_hat(self) -> np.ndarray:
        """Out-of-fold E[Y | x] marginal over treatment, ``mu0 + propensity · cate`` (unit,):
        the ``mu_hat`` of :func:`test_calibration`."""
        return self.mu0 + self.propensity * (self.mu1 - self.mu0)

    def scores(self) -> np.ndarray:
        """Doubly robust scores (unit,) from the out-of-fold ``mu0``, ``mu1`` and the
        propensity (:func:`aipw_scores`): the ``scores`` of :func:`rate`."""
        return aipw_scores(self.outcome, self.treatment, self.propensity, self.mu0, self.mu1)

    def to_frame(self) -> pd.DataFrame:
        """One row per unit: ``unit``, ``fold``, ``tau_mean``, ``tau_sd``, the interval named
        by percentile (``tau_5%``, ``tau_95%`` at ``prob=0.9``), ``mu0``, ``mu1``."""
        lo_name, hi_name = interval_names(self.prob)
        return pd.DataFrame(
            {
                "unit": self.unit_ids,
                "fold": self.fold,
                "tau_mean": self.cate,
                "tau_sd": self.cate_sd,
                f"tau_{lo_name}": self.lower,
                f"tau_{hi_name}": self.upper,
                "mu0": self.mu0,
                "mu1": self.mu1,
            }
        )

    def rate(
        self, *, target: RateTarget = "AUTOC", n_bootstrap: int = 200, seed: int | None = None
    ) -> RateResult:
        """RATE of the out-of-fold CATE as a priority (:func:`rate`), on the doubly robust
        scores, half-sampling the design clusters; ``seed`` defaults to the crossfit's."""
        return rate(
            self.cate,
            self.scores(),
            target=target,
            clusters=self.clusters,
            n_bootstrap=n_bootstrap,
            seed=self.seed if seed is None else seed,
        )

    def blp(self, *, prob: float = 0.95) -> pd.DataFrame:
        """BLP of the CATE on the out-of-fold CATE (:func:`blp`), with the out-of-fold
        ``mu0`` as the baseline; rows ``ate`` and ``hte``."""
        return blp(
            self.outcome,
            self.treatment,
            self.propensity,
            self.cate,
            self.mu0,
            self.clusters,
            prob=prob,
        )

    def calibration(self, *, prob: float = 0.95) -> pd.DataFrame:
        """grf's calibration test of the out-of-fold CATE (:func:`test_calibration`)."""
        return test_calibration(
            self.outcome,
            self.treatment,
            self.propensity,
            self.mu_hat,
            self.cate,
            self.clusters,
            prob=prob,
        )

    def heterogeneity_tests(
        self,
        *,
        prob: float = 0.95,
        target: RateTarget = "AUTOC",
        n_bootstrap: int = 200,
        seed: int | None = None,
    ) -> pd.DataFrame:
        """The out-of-sample test of "no heterogeneity", three ways, in the tidy schema.

        Rows: ``rate_autoc`` (or ``rate_qini``), the RATE of the out-of-fold CATE as a
        priority; ``blp_hte``, the BLP loading on it (1 when it is the true CATE, 0 when it
        carries no heterogeneity); ``calibration_differential``, grf's differential forest
        prediction coefficient. Each p-value is one-sided (H1: estimate > 0, the out-of-fold
        CATE ranks the units' effects the right way); a small p-value rejects "no
        heterogeneity that the model can predict out of sample".

        Parameters
        ----------
        prob : float
            Probability of the intervals.
        target : {"AUTOC", "QINI"}
            The RATE's weighting.
        n_bootstrap : int
            Half-sample replicates of the RATE's standard error.
        seed : int, optional
            Seed of the bootstrap (default: the crossfit's seed).

        Returns
        -------
        pandas.DataFrame
            Columns term, estimate, std_err, the interval named by percentile, p_value
            (one-sided), vcov (how the standard error was computed).
        """
        check_choice("target", target, RATE_TARGETS)
        prob = check_prob(prob)
        res = self.rate(target=target, n_bootstrap=n_bootstrap, seed=seed)
        hte = self.blp(prob=prob).set_index("term").loc["hte"]
        cal = self.calibration(prob=prob).set_index("term").loc["differential.forest.prediction"]
        lo_name, hi_name = interval_names(prob)
        lo, hi = res.ci(prob)
        estimate = [res.estimate, hte["estimate"], cal["estimate"]]
        std_err = [res.std_err, hte["std_err"], cal["std_err"]]
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.asarray(estimate[:2]) / np.asarray(std_err[:2])
        p_value = [*stats.norm.sf(z), cal["p_value"]]
        unit = "clusters" if self.clusters is not None else "units"
        return tidy_table(
            [f"rate_{target.lower()}", "blp_hte", "calibration_differential"],
            estimate,
            std_err,
            [lo, hte[lo_name], cal[lo_name]],
            [hi, hte[hi_name], cal[hi_name]],
            prob,
            p_value=p_value,
            vcov=[f"half-sample bootstrap of {unit}", hte["vcov"], cal["vcov"]],
        )

    def check_units(self, unit_ids: Any) -> None:
        """Raise :class:`~imgcate.InputError` unless ``unit_ids`` are this crossfit's units."""
        ids = np.asarray(unit_ids)
        if len(ids) != len(self.unit_ids) or set(ids.tolist()) != set(self.unit_ids.tolist()):
            raise InputError(
                f"out_of_sample holds {len(self.unit_ids)} units that are not the fit's "
                f"{len(ids)}; run crossfit_cate on the fit's own trial."
            )

    def summary(self, *, alpha: float = 0.05, seed: int | None = None, unit_ids: Any = None) -> str:
        """A printable block: how the folds were made, the three tests and what they say at
        level ``alpha``; with ``unit_ids`` (a fit's units), first :meth:`check_units`."""
        if unit_ids is not None:
            self.check_units(unit_ids)
        tests = self.heterogeneity_tests(seed=seed)
        fmt = {"float_format": lambda v: f"{v:.3f}"}
        rejected = tests.loc[tests["p_value"] < alpha, "term"].tolist()
        if rejected:
            verdict = (
                f"At level {alpha:g}, {', '.join(rejected)} reject(s) 'no heterogeneity': the "
                "out-of-fold CATE ranks units by their effect better than chance."
            )
        else:
            verdict = (
                f"At level {alpha:g} no test rejects 'no heterogeneity': out of sample, the "
                "model's CATE does not rank units by their effect better than chance."
            )
        sizes = np.bincount(self.fold)
        lines = [
            f"Out-of-sample heterogeneity test ({self.n_folds} {self.scheme} folds of "
            f"{sizes.min()}-{sizes.max()} units; each unit's CATE from the fit of the other "
            "folds; one-sided p-values):",
            tests.drop(columns="vcov").to_string(index=False, **fmt),
            verdict,
        ]
        if self.problems:
            lines.append(f"The fold fits warned {len(self.problems)} time(s): see .problems.")
        return "\n".join(lines)


def crossfit_cate(
    trial: Trial,
    embeddings: Embeddings | np.ndarray,
    folds: FoldScheme | Any = "spatial",
    n_folds: int = 5,
    seed: int = 0,
    prob: float = 0.9,
    progress: bool = True,
    *,
    block_size: float | None = None,
    crs: Any = None,
    keep_fits: bool = False,
    **fit_options: Any,
) -> CrossfitResult:
    """Out-of-fold CATE from imgcate fits on spatially blocked folds.

    The units are split into ``n_folds`` folds of whole spatial blocks (units that share an
    image or a cluster stay in one fold). For each fold the effect model is fitted
    (:func:`imgcate.fit`) on the other folds' units alone, and the fold's units are predicted
    from their embeddings and covariates with :meth:`EffectFit.predict
    <imgcate.EffectFit.predict>`, as new units. Every unit's CATE therefore comes from a fit
    that never saw its outcome, so RATE, BLP and the calibration test of it are honest
    (:meth:`CrossfitResult.heterogeneity_tests`), unlike the same tests of the in-sample CATE.

    Parameters
    ----------
    trial : Trial
        The units (see :func:`imgcate.read_units`).
    embeddings : Embeddings or ndarray
        As for :func:`imgcate.fit`.
    folds : {"spatial", "random"} or array_like of int, shape (unit,)
        ``"spatial"``: whole square blocks (:func:`spatial_folds`); ``"random"``: units (or
        groups sharing an image or cluster) at random; an array: the fold of each unit
        (``n_folds`` is then the number of distinct values).
    n_folds : int
        Number of folds (at least 2); each costs one fit.
    seed : int
        Seed of the folds and of each fold's fit; the same seed gives the same result.
    prob : float
        Probability of the per-unit posterior intervals.
    progress : bool
        Show a progress bar over the folds (tqdm).
    block_size : float, optional
        Side of the spatial blocks in the units of ``crs`` (or of the trial's CRS); default
        the larger side of the units' extent over ``ceil(sqrt(5 n_folds))``, about five
        blocks per fold.
    crs : optional
        CRS to project the locations to before blocking (e.g. a UTM zone, to give metres).
    keep_fits : bool
        Keep each fold's :class:`~imgcate.EffectFit` in :attr:`CrossfitResult.fits`.
    **fit_options
        Passed to every fold's :func:`imgcate.fit` (``n_clusters``, ``likelihood``,
        ``num_samples``, ``propensity`` (unit,) for an observational study, ...).

    Returns
    -------
    CrossfitResult
        Out-of-fold ``cate`` (posterior mean), ``cate_sd``, ``lower``/``upper``, ``mu0``,
        ``mu1``, ``fold`` per unit, ready for :func:`rate` (``priority=cate``,
        ``scores=scores()``), :func:`blp` (``score=cate``, ``baseline=mu0``) and
        :func:`test_calibration` (``mu_hat``, ``tau_hat=cate``).

    Raises
    ------
    InputError
        For an unknown fold scheme, a bad ``n_folds`` or ``folds`` array (or one that splits
        units sharing an image), too few spatial blocks, or invalid fit options.

    Warns
    -----
    ConvergenceWarning, ModelCheckWarning, BalanceWarning
        A fold's fit's warnings, prefixed by the fold (also in ``problems``).

    Examples
    --------
    >>> from imgcate.simulate import simulate_scenario
    >>> sim = simulate_scenario(0, effect="clusters", n_units=150)
    >>> cf = crossfit_cate(sim.trial, sim.embeddings, n_folds=2, progress=False,
    ...                    num_warmup=100, num_samples=100, num_chains=1)  # doctest: +SKIP
    >>> cf.heterogeneity_tests()["term"].tolist()  # doctest: +SKIP
    ['rate_autoc', 'blp_hte', 'calibration_differential']
    """
    from imgcate.inference import fit
    from imgcate.units import design_clusters

    if not isinstance(trial, Trial):
        raise InputError("trial must be a Trial; build one with imgcate.read_units(...).")
    seed = seed_int(seed)
    prob = check_prob(prob)
    embeddings = keyed_embeddings(embeddings, trial)  # fold fits find their units' rows
    unit_embedding = unit_embeddings(embeddings, trial)
    propensity = fit_options.pop("propensity", None)
    observational = propensity is not None
    if observational:
        propensity = as_propensity(getattr(propensity, "scores", propensity), trial.n_units)
    fold, scheme = _assign_folds(trial, folds, n_folds, seed, block_size, crs)
    fit_seeds = np.random.SeedSequence(seed).generate_state(int(fold.max()) + 1) % (2**31 - 1)
    covariates = trial.covariate_matrix
    if observational:
        covariates = np.column_stack([covariates, propensity])  # as fit adds it
        if note := overlap_note(propensity):  # once, not for each fold's units
            warnings.warn(f"crossfit_cate: {note}.", OverlapWarning, stacklevel=2)
    n = trial.n_units
    out = {name: np.empty(n) for name in ("cate", "cate_sd", "lower", "upper", "mu0", "mu1")}
    fits, problems = [], []
    n_total = int(fold.max()) + 1
    for k in progress_bar(range(n_total), progress, "crossfit_cate"):
        held = fold == k
        train = np.flatnonzero(~held)
        options = dict(fit_options)
        if observational:
            options["propensity"] = propensity[train]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fold_fit = fit(
                trial.subset(train), _rows(embeddings, train), seed=int(fit_seeds[k]), **options
            )
        problems += _rewarn(caught, k, n_total)
        held_x = covariates[held] if covariates.shape[1] else None
        with warnings.catch_warnings():  # held-out blocks lie elsewhere by design: not warned
            warnings.simplefilter("ignore", ExtrapolationWarning)
            warnings.simplefilter("ignore", OverlapWarning)  # warned once, for all units
            pred = fold_fit.predict(unit_embedding[held], covariates=held_x)
        lo, hi = quantiles(pred.cate, prob)
        out["cate"][held], out["cate_sd"][held] = pred.cate.mean(0), pred.cate.std(0)
        out["lower"][held], out["upper"][held] = lo, hi
        out["mu0"][held], out["mu1"][held] = _arm_means(fold_fit, unit_embedding[held], held_x)
        if keep_fits:
            fits.append(fold_fit)
    return CrossfitResult(
        unit_ids=trial.ids,
        fold=fold,
        prob=prob,
        outcome=trial.outcome_array,
        treatment=trial.treatment_array,
        propensity=propensity if observational else _design_propensity(trial),
        clusters=design_clusters(trial),
        scheme=scheme,
        seed=seed,
        problems=tuple(problems),
        fits=tuple(fits),
        **out,
    )


def _rows(embeddings: Embeddings | np.ndarray, rows: np.ndarray) -> Embeddings | np.ndarray:
    """The training units' embeddings: an Embeddings object is matched by image id anyway."""
    if isinstance(embeddings, Embeddings):
        return embeddings
    return np.asarray(embeddings)[rows]


def _rewarn(caught: list, fold: int, n_folds: int) -> list[str]:
    """Warn again what a fold's fit warned, prefixed by the fold; return the fit problems."""
    problems = []
    for record in caught:
        if issubclass(record.category, OverlapWarning):  # said once for all units
            continue
        message = f"crossfit_cate, fold {fold} (folds 0-{n_folds - 1}): {record.message}"
        warnings.warn(message, record.category, stacklevel=3)
        if issubclass(record.category, FIT_WARNINGS):
            problems.append(message)
    return problems


def _arm_means(
    fold_fit: EffectFit, values: np.ndarray, covariates: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Posterior means of E[Y | x, T = 0] and E[Y | x, T = 1] (original scale) of new units,
    with the inputs :meth:`EffectFit.predict` builds (random intercepts at 0)."""
    std = fold_fit.standardizer
    z = std.embedding(values)
    n_cov = len(std.covariate_mean)
    x = np.zeros((len(z), n_cov)) if covariates is None else std.covariates(covariates)
    inputs = ModelInputs(
        embedding=jnp.asarray(z, jnp.float32),
        basis=jnp.asarray(std.basis(z), jnp.float32),
        covariates=jnp.asarray(x, jnp.float32),
        treatment=jnp.zeros(len(z), jnp.int32),
    )
    q = posterior_quantities(site_draws(fold_fit), inputs, fit_spec(fold_fit))
    scale, shift = std.outcome_sd, std.outcome_mean
    return q["mu0"].mean(0) * scale + shift, q["mu1"].mean(0) * scale + shift


def _design_propensity(trial: Trial) -> np.ndarray:
    """P(treatment = 1) of a randomized trial: the share treated, per stratum when there are
    strata."""
    t = trial.treatment_array.astype(float)
    strata = trial.codes("stratum")
    if strata is None:
        return np.full(len(t), t.mean())
    share = np.bincount(strata, weights=t) / np.bincount(strata)
    return share[strata]


# --------------------------------------------------------------------------- folds
def _unit_groups(trial: Trial) -> np.ndarray:
    """Codes 0..G-1 of groups of units that must share a fold: connected by a shared image
    or a shared cluster (their outcome or assignment is not independent)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = trial.n_units
    labels = [pd.factorize(trial.image_keys)[0]]
    clusters = trial.codes("cluster")
    if clusters is not None:
        labels.append(clusters)
    rows, cols, offset = [], [], n
    for codes in labels:
        rows.append(np.arange(n))
        cols.append(offset + codes)
        offset += int(codes.max()) + 1
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(offset, offset))
    _, component = connected_components(graph, directed=False)
    return pd.factorize(component[:n])[0]


def _check_n_folds(n_folds: Any, n_groups: int) -> int:
    if (
        isinstance(n_folds, bool)
        or not isinstance(n_folds, int | np.integer)
        or not 2 <= n_folds <= n_groups
    ):
        raise InputError(
            f"n_folds={n_folds!r} must be an int between 2 and the number of units (or of "
            f"groups of units sharing an image or cluster: {n_groups}); 5 is usual."
        )
    return int(n_folds)


def _assign_folds(
    trial: Trial,
    folds: Any,
    n_folds: Any,
    seed: int,
    block_size: float | None,
    crs: Any,
) -> tuple[np.ndarray, str]:
    """The fold of each unit (unit,) and the scheme's name."""
    groups = _unit_groups(trial)
    n_groups = int(groups.max()) + 1
    if not isinstance(folds, str):
        return _given_folds(folds, groups, trial), "given"
    if folds not in FOLD_SCHEMES:
        raise InputError(
            f"folds={folds!r} must be 'spatial', 'random' or an array of one integer fold per "
            f"unit ({trial.n_units},)."
        )
    n_folds = _check_n_folds(n_folds, n_groups)
    if folds == "random":
        order = rng_from_seed(seed).permutation(n_groups)
        fold_of_group = np.empty(n_groups, dtype=np.int64)
        fold_of_group[order] = np.arange(n_groups) % n_folds
        return fold_of_group[groups], "random"
    xs, ys = trial.xy(crs)
    size = np.bincount(groups)
    gx, gy = np.bincount(groups, weights=xs) / size, np.bincount(groups, weights=ys) / size
    if block_size is None:
        side = max(np.ptp(gx), np.ptp(gy))
        if side <= 0:
            raise InputError(
                "all units lie at one location, so there are no spatial blocks; use folds='random'."
            )
        block_size = side / math.ceil(math.sqrt(BLOCKS_PER_FOLD * n_folds))
    return spatial_folds(gx, gy, n_folds, block_size, seed)[groups], "spatial"


def _given_folds(folds: Any, groups: np.ndarray, trial: Trial) -> np.ndarray:
    values = np.asarray(folds)
    if values.shape != (trial.n_units,) or not np.issubdtype(values.dtype, np.integer):
        raise InputError(
            f"folds must be 'spatial', 'random' or one integer fold per unit "
            f"({trial.n_units},), got {values.dtype} of shape {values.shape}."
        )
    fold = pd.factorize(values, sort=True)[0]
    if fold.max() < 1:
        raise InputError("folds holds a single fold; give at least 2 distinct values.")
    split = pd.Series(fold).groupby(groups).nunique() > 1
    if split.any():
        first = int(np.flatnonzero(groups == split.index[split.to_numpy()][0])[0])
        raise InputError(
            f"folds splits units that share an image or a cluster (e.g. unit "
            f"{trial.ids[first]!r}) across folds, so a fit would see the held-out image; put "
            "them in one fold."
        )
    return fold
