"""Model choice: compare the constant-effect model and effect-cluster models with K = 1..k_max
by PSIS-LOO, or by spatially blocked K-fold cross-validation where PSIS-LOO's Pareto-k
diagnostic says it is unreliable.

PSIS-LOO (Vehtari, Gelman and Gabry 2017) approximates leave-one-out cross-validation from one
fit per model. Its Pareto-k diagnostic says, unit by unit, whether the approximation can be
trusted: ArviZ calls k good below ``min(1 - 1/log10(S), 0.7)`` for S posterior draws (Vehtari,
Simpson, Gelman, Yao and Gabry 2024). Where too many units are bad, :func:`compare_clusters`
refits every K on spatially blocked folds and compares the held-out log predictive densities
instead, as the loo package recommends when many observations are flagged.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from imgcate.config import FitConfig
from imgcate.diagnostics import divergent_transitions
from imgcate.embeddings import Embeddings, keyed_embeddings
from imgcate.errors import (
    BalanceWarning,
    ConvergenceWarning,
    InputError,
    ModelCheckWarning,
    OverlapWarning,
    ParetoKWarning,
)
from imgcate.evaluate.splits import spatial_blocks, spatial_folds
from imgcate.heldout import held_out_log_likelihood, log_mean_exp, scale_shift
from imgcate.inference import fit
from imgcate.methods import NUTS_OPTIONS, SVI_OPTIONS
from imgcate.output import progress_bar
from imgcate.results import WEAK_MEMBERSHIP, EffectFit
from imgcate.units import Trial
from imgcate.validation import check_choice, of_kind

Criterion = Literal["auto", "loo", "kfold"]
CRITERIA = ("auto", "loo", "kfold")

#: The default rule, ``elpd_diff <= max(MIN_ELPD_GAIN, SE_MULTIPLE * dse)`` in
#: :func:`preference_order`: ``benchmarks/model_choice.py`` measured heterogeneity claimed in
#: at most 1 of 20 constant-effect trials per scenario and two real clusters found in 40 of 40
#: (docs/model.md, "False heterogeneity").
MIN_ELPD_GAIN = 4.0
SE_MULTIPLE = 1.0


def preference_order(ks) -> list[int]:
    """The order in which the rule prefers models whose elpd is not clearly worse than the
    best: the constant effect (0) first, then 2, 3, ... clusters, the smooth model (1) last.

    The smooth model is nested in every cluster model (each keeps the smooth deviation), and
    choosing it claims heterogeneity as much as they do, so preferring it buys no error
    control. It does cost calibration: where its elpd tied a cluster model's, its unit
    intervals covered about 0.6-0.7 on sharp effects (two clusters, tanh) that the cluster
    models covered (docs/model.md, "False heterogeneity"). It is selected only when it
    predicts clearly better than every cluster model.
    """
    ks = sorted(int(k) for k in ks)
    return [k for k in ks if k != 1] + [k for k in ks if k == 1]


def rule_margin(table: pd.DataFrame, min_elpd_gain: float, se_multiple: float) -> pd.Series:
    """By K, how far below the best a model's elpd may lie and still count as not clearly
    worse: ``max(min_elpd_gain, se_multiple * dse)``."""
    return np.maximum(min_elpd_gain, se_multiple * table["dse"])


@dataclass(frozen=True)
class ClusterComparison:
    """Comparison of the constant-effect model (K = 0) and effect-cluster models K = 1..k_max.

    Attributes
    ----------
    table : DataFrame
        One row per model (index ``K``; ``K = 0`` is the constant-effect model):

        - ``model``: ``"constant"`` (one effect for every unit), ``"smooth"`` (K = 1: no
          clusters, the effect varies smoothly with the image) or ``"K clusters"``;
        - ``elpd``, ``se``: expected log predictive density of a new unit, summed over the
          units, by ``method``, and its standard error; ``elpd_diff``, ``dse``: difference
          to the best K and its standard error; ``p``: effective number of parameters
          (PSIS-LOO's ``p_loo``, or the in-sample lppd minus ``elpd`` for K-fold);
        - ``stacking_weight``: the weight of this K in the stacking of predictive
          distributions (``arviz.compare(method="stacking")``; the weights sum to 1);
        - ``elpd_loo``: PSIS-LOO's estimate, always shown (unreliable where Pareto-k is bad);
          ``n_bad_pareto_k``: units with k above ``pareto_k_threshold``,
          ``n_very_bad_pareto_k``: units with k above 1, ``max_pareto_k``;
        - ``n_divergent``, ``method`` and ``selected``.
    best_k : int
        The first model not clearly worse than the best, in the order constant (0), 2, 3,
        ... clusters, smooth (1) (:func:`preference_order`):
        ``elpd_diff <= max(min_elpd_gain, se_multiple * dse)`` (4 and 1 by default).
        Differences below 4 are small by the usual LOO guidance (Sivula, Magnusson, Vehtari
        2020), so the constant effect wins ties; ``best_k > 0`` is a claim of
        heterogeneity. ``benchmarks/model_choice.py`` measures how often the rule makes that
        claim when the effect is constant (docs/model.md).
    fits : dict
        The fitted models (all units) by K (``fits[0]``: the constant-effect model).
    method : {"psis-loo", "kfold-spatial"}
        What the comparison used.
    weights : Series
        Stacking weights by K (the table's ``stacking_weight``).
    pareto_k_threshold : float
        ArviZ's good-k threshold for the fits' number of draws S, ``min(1 - 1/log10(S), 0.7)``.
    folds : ndarray (unit,) or None
        Fold of each unit for ``"kfold-spatial"``; None for ``"psis-loo"``.
    min_elpd_gain, se_multiple : float
        The rule's tolerance, as given to :func:`compare_clusters`.
    """

    table: pd.DataFrame
    best_k: int
    fits: dict
    method: str
    weights: pd.Series
    pareto_k_threshold: float
    folds: np.ndarray | None = None
    min_elpd_gain: float = MIN_ELPD_GAIN
    se_multiple: float = SE_MULTIPLE

    def __repr__(self) -> str:
        columns = ["model", "elpd", "elpd_diff", "dse", "stacking_weight", "selected"]
        shown = self.table[[c for c in columns if c in self.table]]
        return (
            f"ClusterComparison({self.method}; selected K={self.best_k}, "
            f"{self.table.loc[self.best_k, 'model']}; .fits, .table, .reason()):\n"
            + shown.to_string(float_format=lambda v: f"{v:.2f}")
        )

    def reason(self) -> str:
        """Why the rule selected ``best_k``, in a sentence: the order it tried the models
        in, the best model, and by how much each model it preferred fell short; then what the
        choice does not show (the constant model selected; clusters that barely depend on the
        image, ``membership_dependence`` below 0.3)."""
        table = self.table
        order = preference_order(table.index)
        best = int(table["elpd_diff"].idxmin())
        name = table["model"].to_dict()
        words = [
            f"selected {name[self.best_k]}: the first model, in the order "
            f"{', '.join(name[k] for k in order)}, whose elpd is within "
            f"max({self.min_elpd_gain:g}, {self.se_multiple:g} x dse) of the best "
            f"({name[best]})"
        ]
        margin = rule_margin(table, self.min_elpd_gain, self.se_multiple)
        for k in order[: order.index(self.best_k)]:
            words.append(f"{name[k]} trails by {table.loc[k, 'elpd_diff']:.1f} > {margin[k]:.1f}")
        post = self.fits[self.best_k].idata.posterior if self.best_k in self.fits else {}
        weak = self.best_k > 1 and "membership_dependence" in post
        dependence = float(post["membership_dependence"].mean()) if weak else 1.0
        if self.best_k == 0:
            words[-1] += (
                ". Not evidence that the effect is constant: heterogeneity weak against the "
                "noise is missed, and the constant model's unit intervals leave it out "
                '(docs/model.md, "When to believe the clusters")'
            )
        elif dependence < WEAK_MEMBERSHIP:
            words[-1] += (
                f". Its memberships barely depend on the image ({dependence:.2f} of a clean "
                "split): the effect varies, but not in image clusters; read its unit CATE"
            )
        return "; ".join(words) + "."


def check_comparison(
    k_max: int = 4,
    criterion: str = "auto",
    min_elpd_gain: float = MIN_ELPD_GAIN,
    se_multiple: float = SE_MULTIPLE,
    max_bad_k_share: float = 0.01,
    n_folds: int = 5,
    block_size: float | None = None,
    constant: bool = True,
) -> None:
    """Refuse settings of :func:`compare_clusters` it cannot use, before any fit (the folds'
    settings too: with ``criterion="auto"`` the folds are made only after every model's fit).

    Raises
    ------
    InputError
        Naming the setting and what it must be: a ``k_max`` that is not an integer >= 1, an
        ``n_folds`` that is not an integer >= 2, an unknown ``criterion``, a negative,
        infinite or non-numeric ``min_elpd_gain`` or ``se_multiple``, a ``max_bad_k_share``
        outside [0, 1), a ``block_size`` that is neither None nor a finite number > 0, a
        ``constant`` that is not True or False.
    """
    for name, value, low, example in (("k_max", k_max, 1, 4), ("n_folds", n_folds, 2, 5)):
        if not of_kind(value, "int") or value < low:
            raise InputError(f"{name}={value!r} must be an integer >= {low}, e.g. {example}.")
    if not of_kind(constant, "bool"):
        raise InputError(f"constant={constant!r} must be True or False.")
    if block_size is not None and (
        not of_kind(block_size, "float") or not np.isfinite(block_size) or block_size <= 0
    ):
        raise InputError(
            f"block_size={block_size!r} must be a distance > 0 in the units' coordinates, "
            "or None (about four blocks per fold)."
        )
    check_choice("criterion", criterion, CRITERIA)
    for name, value, low, high, example in (
        ("min_elpd_gain", min_elpd_gain, 0.0, np.inf, "4"),
        ("se_multiple", se_multiple, 0.0, np.inf, "1"),
        ("max_bad_k_share", max_bad_k_share, 0.0, 1.0, "0.01"),
    ):
        if not of_kind(value, "float") or not np.isfinite(value) or not low <= value < high:
            must = "lie in [0, 1)" if high == 1.0 else "be a finite number >= 0"
            raise InputError(f"{name}={value!r} must {must}, e.g. {example}.")


def compare_clusters(
    trial: Trial,
    embeddings: Embeddings | np.ndarray,
    *,
    k_max: int = 4,
    constant: bool = True,
    criterion: Criterion = "auto",
    min_elpd_gain: float = MIN_ELPD_GAIN,
    se_multiple: float = SE_MULTIPLE,
    max_bad_k_share: float = 0.01,
    n_folds: int = 5,
    block_size: float | None = None,
    progress: bool = True,
    seed: int = 0,
    **fit_options: Any,
) -> ClusterComparison:
    """Fit the constant-effect model and K = 1..k_max, and compare them by PSIS-LOO, or by
    spatial K-fold cross-validation.

    The constant-effect model (``K = 0`` in the table: one effect for every unit) is the null
    of no heterogeneity. It keeps the baseline of the largest model: ``k_max`` clusters that
    shape the untreated outcome but share one effect (``equal_effects=True``,
    ``deviation="none"``), so that clusters which describe the baseline better are not read
    as heterogeneity of the effect.

    Every K >= 1 keeps the model's continuous deviation (``deviation="smooth"`` unless
    ``fit_options`` say otherwise), so the unit effect is ``tau(z) = pi(z) @ tau_k + delta(z)``.
    K = 1 is then the smooth-effect model with no clusters: the effect varies with the image
    through ``delta`` alone, shrunk towards a constant.

    Parameters
    ----------
    trial, embeddings :
        As for :func:`fit`.
    k_max : int
        Largest number of clusters to try.
    constant : bool
        Compare the constant-effect model too (default); without it the table starts at K = 1.
    criterion : {"auto", "loo", "kfold"}
        "auto" (default): PSIS-LOO, unless the Pareto-k diagnostic flags too many units, then
        spatial K-fold cross-validation; "loo": PSIS-LOO whatever the diagnostic says (it
        still warns); "kfold": spatial K-fold cross-validation.
    max_bad_k_share : float
        "Too many" for ``criterion="auto"``: in some K's fit, more than this share of the
        units has Pareto k above ArviZ's threshold, or any unit has k above 1. The loo
        package recommends exact refits for a few flagged units and K-fold cross-validation
        beyond about ten; imgcate does not refit single units, so a few in a hundred is
        already too many. The threshold rises with the number of draws (0.5 for 100 draws,
        0.6 for 320, 0.7 from 2,200), so short chains flag more units.
    min_elpd_gain, se_multiple : float
        The rule: the first model, in :func:`preference_order`, whose ``elpd_diff`` to the
        best is at most ``max(min_elpd_gain, se_multiple * dse)`` is selected. docs/model.md
        gives the rate of false heterogeneity (a model other than the constant one selected
        when the effect is constant) that ``benchmarks/model_choice.py`` measures for the
        defaults.
    n_folds : int
        Folds of the K-fold cross-validation; it costs ``n_folds`` more fits per model.
    block_size : float, optional
        Side of the square spatial blocks that folds keep whole, in the trial's coordinate
        units (:func:`imgcate.evaluate.spatial_folds`). Default: the larger side of the
        units' bounding box over ``ceil(sqrt(4 * n_folds))``, about four blocks per fold.
    progress : bool
        Show a progress bar over the fits (tqdm).
    seed : int
        Seed passed to every fit and of the fold assignment.
    **fit_options
        Passed to :func:`fit` (``num_samples``, ``likelihood``, ...).

    Returns
    -------
    ClusterComparison
        ``table`` (one row per model), ``best_k``, ``fits``, ``method``, stacking ``weights``.

    Raises
    ------
    InputError
        For a ``k_max`` that is not an integer >= 1, ``n_clusters`` or ``equal_effects``
        among the fit options, an unknown ``criterion``, a ``max_bad_k_share`` outside
        [0, 1), a ``min_elpd_gain`` or ``se_multiple`` that is negative, infinite or not a
        number, an ``n_folds``, ``block_size`` or ``constant`` of the wrong kind
        (:func:`check_comparison`), or folds that cannot be made (fewer non-empty blocks
        than ``n_folds``).

    Warns
    -----
    ParetoKWarning
        When the Pareto-k diagnostic flags too many units for PSIS-LOO (with ``criterion``
        "auto" or "loo"): the warning counts them per K and says which comparison is used.
    ConvergenceWarning, ModelCheckWarning
        For the selected K only (``check_convergence``, ``check_model``); the fits of the
        other K, and the fold fits, are used for the comparison alone and do not warn.
    BalanceWarning
        As :func:`fit` does, from the fits to all units.

    Notes
    -----
    K-fold cross-validation refits each K on the units outside one fold (standardization,
    principal components and Gaussian-process basis fitted on those units alone) and scores the
    fold's units by their log predictive density, the log of the mean over posterior draws
    of the model's likelihood of their outcomes (``numpyro.infer.log_likelihood`` of the
    effect model). Folds keep whole spatial blocks together, so a unit is never predicted
    from its neighbours. A held-out unit in a stratum or cluster the training units lack
    gets that random intercept at its mean, 0. The comparison, its standard errors and the
    stacking weights then come from ``arviz.compare`` on those pointwise values, exactly as
    for PSIS-LOO. Both are on the model scale of the fit to all units.

    Examples
    --------
    >>> from imgcate.simulate import simulate_trial
    >>> sim = simulate_trial(seed=0, n_units=150)
    >>> comparison = compare_clusters(sim.trial, sim.embeddings, k_max=2, criterion="loo",
    ...                               num_warmup=100, num_samples=100, num_chains=1)
    >>> round(float(comparison.weights.sum()), 6)
    1.0
    """
    check_comparison(
        k_max, criterion, min_elpd_gain, se_multiple, max_bad_k_share, n_folds, block_size, constant
    )
    if not isinstance(trial, Trial):
        raise InputError("trial must be a Trial; build one with imgcate.read_units(...).")
    embeddings = keyed_embeddings(embeddings, trial)  # fold fits find their units' rows
    if "equal_effects" in fit_options or "n_clusters" in fit_options:
        raise InputError(
            "compare_clusters sets n_clusters and equal_effects itself (K = 0 is the model "
            "with equal effects); leave them out of its options."
        )
    folds = fold_ids(trial, n_folds, block_size, seed) if criterion == "kfold" else None
    models = list(range(0 if constant else 1, k_max + 1))
    fits = {}
    deviation = fit_options.get("deviation", FitConfig.deviation)
    bar = progress_bar(models, progress, "compare_clusters: fits", len(models))
    for k in bar:
        if hasattr(bar, "set_postfix_str"):  # the model being fitted
            bar.set_postfix_str(model_name(k, deviation))
        fits[k] = _quiet_fit(trial, embeddings, model_options(k, k_max), seed, fit_options)
    loos = {k: _quiet_loo(f) for k, f in fits.items()}
    threshold = float(loos[models[0]].good_k)
    problem = pareto_problem(loos, threshold, max_bad_k_share)
    use_kfold = criterion == "kfold" or (criterion == "auto" and problem is not None)
    if use_kfold and folds is None:
        folds = fold_ids(trial, n_folds, block_size, seed)
    if problem is not None and criterion != "kfold":
        then = (
            f"compared by {n_folds}-fold spatially blocked cross-validation instead "
            f"({n_folds * len(models)} more fits; criterion='loo' keeps PSIS-LOO)"
            if use_kfold
            else "compared by PSIS-LOO as asked (criterion='loo'); its choice is in doubt: use "
            "criterion='kfold', or more draws (the threshold rises with them)"
        )
        warnings.warn(f"imgcate compare_clusters: {problem}; {then}.", ParetoKWarning, 2)
    if use_kfold:
        elpds = kfold_elpds(trial, embeddings, fits, folds, seed, progress, fit_options)
    else:
        elpds = loos
    table = _table(fits, loos, elpds, threshold, "kfold-spatial" if use_kfold else "psis-loo")
    ok = table["elpd_diff"] <= rule_margin(table, min_elpd_gain, se_multiple)
    best_k = next(k for k in preference_order(table.index) if ok[k])
    table["selected"] = table.index == best_k
    fits[best_k].check_convergence()  # the other K are only compared; the selected one is used
    fits[best_k].check_model()
    return ClusterComparison(
        table=table,
        best_k=best_k,
        fits=fits,
        method=str(table["method"].iloc[0]),
        weights=table["stacking_weight"].rename("stacking_weight"),
        pareto_k_threshold=threshold,
        folds=folds,
        min_elpd_gain=min_elpd_gain,
        se_multiple=se_multiple,
    )


def model_options(k: int, k_max: int) -> dict:
    """Fit options of model ``k`` of a comparison up to ``k_max``: K clusters, or for K = 0
    the constant effect with the baseline of the largest model (``k_max`` clusters that
    shape the baseline only, ``equal_effects``), so that the null of no heterogeneity is not
    worse at describing the baseline than any model it is compared with."""
    if k == 0:
        return {"n_clusters": k_max, "deviation": "none", "equal_effects": True}
    return {"n_clusters": k}


def _quiet_fit(
    trial: Trial, embeddings: Any, model: dict, seed: int, options: dict, *, fold: bool = False
) -> EffectFit:
    """A fit used for the comparison, with the options ``model`` (:func:`model_options`): its
    convergence and outcome checks do not warn (the selected model is checked afterwards); a
    fold fit does not check balance or overlap either (the fit to all units did)."""
    quiet = (ConvergenceWarning, ModelCheckWarning) + ((BalanceWarning, OverlapWarning) * fold)
    with warnings.catch_warnings():
        for category in quiet:
            warnings.simplefilter("ignore", category)
        return fit(trial, embeddings, seed=seed, **{**options, **model})


def model_name(k: int, deviation: str = "smooth") -> str:
    """The table's name of model ``k`` of a comparison: "constant" (K = 0), K = 1 by its
    ``deviation`` ("smooth", "linear", or "constant, no baseline clusters" for "none"), or
    "k clusters"."""
    if k == 1:
        return {"none": "constant, no baseline clusters"}.get(deviation, deviation)
    return "constant" if k == 0 else f"{k} clusters"


def _quiet_loo(result: EffectFit):
    """PSIS-LOO without ArviZ's own warning (compare_clusters says what it means)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Estimated shape parameter of Pareto")
        return result.loo()


def pareto_problem(loos: dict, threshold: float, max_bad_share: float) -> str | None:
    """Why PSIS-LOO cannot be trusted for a comparison, in words, or None.

    Too many: in some K's fit, more than ``max_bad_share`` of the units have Pareto k above
    ``threshold``, or any unit has k above 1 (where the importance ratios have no mean).
    """
    flagged = []
    for k, loo in loos.items():
        pareto_k = np.asarray(loo.pareto_k.values).ravel()
        n_bad, n_very = int((pareto_k > threshold).sum()), int((pareto_k > 1).sum())
        if n_bad > max_bad_share * len(pareto_k) or n_very:
            flagged.append(
                f"K={k}: {n_bad} of {len(pareto_k)} units ({100 * n_bad / len(pareto_k):.1f}%)"
                f" above {threshold:.2f}, {n_very} above 1"
            )
    if not flagged:
        return None
    n_draws = int(loos[next(iter(loos))].n_samples)
    return (
        f"PSIS-LOO is unreliable: Pareto k exceeds ArviZ's threshold for {n_draws} draws in "
        f"more than {100 * max_bad_share:g}% of the units, or exceeds 1 ({'; '.join(flagged)})"
    )


def fold_ids(trial: Trial, n_folds: int, block_size: float | None, seed: int) -> np.ndarray:
    """Spatially blocked fold of each unit (unit,), see :func:`imgcate.evaluate.spatial_folds`.

    The default ``block_size`` divides the larger side of the units' bounding box into
    ``ceil(sqrt(4 * n_folds))`` blocks.
    """
    xs, ys = trial.xy()
    if block_size is None:
        span = max(np.ptp(xs), np.ptp(ys))
        block_size = float(span / np.ceil(np.sqrt(4 * n_folds))) if span > 0 else 1.0
    n_blocks = int(spatial_blocks(xs, ys, block_size).max()) + 1
    if n_blocks < n_folds:
        raise InputError(
            f"n_folds={n_folds} exceeds the {n_blocks} non-empty spatial blocks of side "
            f"block_size={block_size:g}; give a smaller block_size or fewer folds."
        )
    return spatial_folds(xs, ys, n_folds, block_size, seed)


def kfold_elpds(
    trial: Trial,
    embeddings: Any,
    fits: dict,
    folds: np.ndarray,
    seed: int,
    progress: bool,
    options: dict,
) -> dict:
    """Pointwise held-out log predictive densities of every K, as ArviZ ``ELPDData`` (the
    layout of ``az.loo(pointwise=True)``, so ``az.compare`` takes them)."""
    import arviz as az
    import xarray as xr

    options = _fold_options(next(iter(fits.values())), options, trial.n_units)
    lpd = {k: np.empty(trial.n_units) for k in fits}
    pairs = [(f, k) for f in range(int(folds.max()) + 1) for k in fits]
    bar = progress_bar(pairs, progress, "compare_clusters: K-fold fits", len(pairs))
    for f, k in bar:
        if hasattr(bar, "set_postfix_str"):
            bar.set_postfix_str(f"fold {f + 1}, {model_name(k, fits[k].config.deviation)}")
        test = np.flatnonzero(folds == f)
        lpd[k][test] = _fold_lpd(trial, embeddings, folds != f, fits[k], seed, options)
    out = {}
    for k, values in lpd.items():
        full = fits[k].idata.log_likelihood["outcome"].values
        lppd = float(log_mean_exp(full.reshape(-1, full.shape[-1])).sum())
        elpd = float(values.sum())
        out[k] = az.ELPDData(
            data=[
                elpd,
                float(np.sqrt(len(values) * values.var())),
                lppd - elpd,
                full.shape[0] * full.shape[1],
                len(values),
                False,
                xr.DataArray(values, dims=["unit"], name="loo_i"),
                "log",
            ],
            index=["elpd_loo", "se", "p_loo", "n_samples", "n_data_points", "warning", "loo_i"]
            + ["scale"],
        )
    return out


def _fold_lpd(
    trial: Trial,
    embeddings: Any,
    in_train: np.ndarray,
    full: EffectFit,
    seed: int,
    options: dict,
) -> np.ndarray:
    """Refit ``full``'s model on the units ``in_train`` and return the held-out units' log
    predictive densities, on the model scale of ``full``."""
    train, test = np.flatnonzero(in_train), np.flatnonzero(~in_train)
    train_trial, test_trial = trial.subset(train), trial.subset(test)
    propensity = options.get("propensity")
    if propensity is not None:
        propensity = np.asarray(propensity, dtype=float)
        options = {**options, "propensity": propensity[train]}
    if isinstance(embeddings, Embeddings):  # keyed by image: the fit picks its units' rows
        train_emb, test_emb = embeddings, embeddings.for_keys(test_trial.image_keys)
    else:
        rows = np.asarray(embeddings, dtype=float)
        train_emb, test_emb = rows[train], rows[test]
    model = {"n_clusters": full.n_clusters, "deviation": full.config.deviation}
    model["equal_effects"] = full.config.equal_effects
    result = _quiet_fit(train_trial, train_emb, model, seed, options, fold=True)
    loglik = held_out_log_likelihood(
        result,
        train_trial,
        test_trial,
        test_emb,
        propensity=None if propensity is None else propensity[test],
    )
    return log_mean_exp(loglik) + scale_shift(result, full, test_trial)


def _fold_options(full: EffectFit, options: dict, n_units: int) -> dict:
    """Fit options of the fold fits: the full fit's inference method (``method="auto"`` would
    choose again on the fold's fewer units) and floor (hurdle, censored), so that a fold does
    not take its own smallest outcome as the floor; no NUTS progress bars. The other
    method's options are left out where ``"auto"`` chose one (they did not apply to the full
    fit either)."""
    method = full.config.method
    other = SVI_OPTIONS if method == "nuts" else NUTS_OPTIONS
    options = {k: v for k, v in options.items() if k not in other}
    options.update(progress=False, method=method)
    if full.config.likelihood in ("hurdle", "censored") and options.get("floor") is None:
        options["floor"] = float(full.standardizer.outcome_floor)
    propensity = getattr(options.get("propensity"), "scores", options.get("propensity"))
    if propensity is not None and len(np.asarray(propensity)) != n_units:
        raise InputError(f"propensity has {len(propensity)} values; give one per unit.")
    return options if propensity is None else {**options, "propensity": propensity}  # scores


def _table(fits: dict, loos: dict, elpds: dict, threshold: float, method: str) -> pd.DataFrame:
    import arviz as az

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compared = az.compare(
            {str(k): v for k, v in elpds.items()}, ic="loo", method="stacking", scale="log"
        )
    rows = []
    for k in fits:
        row = compared.loc[str(k)]
        pareto_k = np.asarray(loos[k].pareto_k.values).ravel()
        n_div = divergent_transitions(fits[k].idata)
        rows.append(
            {
                "K": k,
                "model": model_name(k, fits[k].config.deviation),
                "elpd": row["elpd_loo"],
                "se": row["se"],
                "elpd_diff": row["elpd_diff"],
                "dse": row["dse"],
                "p": row["p_loo"],
                "stacking_weight": row["weight"],
                "elpd_loo": float(loos[k].elpd_loo),
                "n_bad_pareto_k": int((pareto_k > threshold).sum()),
                "n_very_bad_pareto_k": int((pareto_k > 1).sum()),
                "max_pareto_k": float(pareto_k.max()),
                "n_divergent": n_div,
                "method": method,
            }
        )
    return pd.DataFrame(rows).set_index("K")
