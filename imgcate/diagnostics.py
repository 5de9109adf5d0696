"""Diagnostics reported with every fit: R-hat, bulk and tail ESS, divergences, and chains that
settled in different modes, over everything users read (the unit CATE and the membership
weights included). The posterior predictive check of the outcome is in
:mod:`imgcate.outcome_checks`."""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from imgcate.devices import cpu_device_count

if TYPE_CHECKING:
    import arviz as az

    from imgcate.config import FitConfig

#: Posterior variables whose convergence is checked (raw non-centred weights are not read).
CHECKED = (
    "alpha",
    "hurdle_alpha",
    "beta",
    "hurdle_beta",
    "tau_cluster",
    "sigma",
    "noise_slope_scale",
    "membership_intercept",
    "membership",
    "ate",
    "cluster_share",
    "effect_share_clusters",
    "membership_dependence",
    "nu",
    "stratum_sd",
    "group_sd",
)

#: Variables of the clusters (an R-hat problem there may mean too many clusters).
CLUSTER_SITES = ("tau_cluster", "tau_unit", "membership", "cluster_share", "effect_share_clusters")

#: Least gap of mean log density, below the best chain's, at which a chain sits in another
#: mode (and at least the log density's sd and four standard errors: :func:`lagging_chains`).
MODE_GAP = 5.0

#: Fewest iterations over which chains' log densities are compared.
MIN_MODE_DRAWS = 20


def diagnostics_table(idata: az.InferenceData) -> pd.DataFrame:
    """R-hat and bulk/tail ESS, one row per scalar as ``az.summary`` names them, plus one row
    ``tau_unit[worst]`` with the worst value over the units' CATE (R-hat NaN with one chain).

    The values are ArviZ's, computed for every scalar at once
    (:func:`convergence_statistics`).
    """
    post = idata.posterior
    names = [v for v in CHECKED if v in post]
    rows = {}
    for name in names:
        stats = convergence_statistics(post[name].values)
        for column, values in stats.items():
            for label, value in _labelled(name, values):
                rows.setdefault(label, {})[column] = float(value)
    if "tau_unit" in post:
        stats = convergence_statistics(post["tau_unit"].values)
        with warnings.catch_warnings():  # all-NaN (one chain): NaN, quietly
            warnings.simplefilter("ignore", RuntimeWarning)
            rows["tau_unit[worst]"] = {  # NaN units (constant draws) are skipped, as ArviZ's
                "r_hat": float(np.nanmax(stats["r_hat"])),
                "ess_bulk": float(np.nanmin(stats["ess_bulk"])),
                "ess_tail": float(np.nanmin(stats["ess_tail"])),
            }
    table = pd.DataFrame.from_dict(rows, orient="index")
    return table[list(STATISTICS)]


# ----------------------------------------------------------------- R-hat and ESS, vectorized
# Vehtari, Gelman, Simpson, Carpenter and Buerkner (2021), "Rank-normalization, folding, and
# localization: an improved R-hat", as ArviZ computes them (arviz.rhat(method="rank"),
# arviz.ess(method="bulk" / "tail")), for draws (chain, draw, ...) of many scalars at once:
# ArviZ loops over scalars in Python, which took most of a fit's diagnostics time.


def _columns(draws: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    draws = np.asarray(draws, dtype=float)
    return draws.reshape(draws.shape[:2] + (-1,)), draws.shape[2:]


def _split_chains(x: np.ndarray) -> np.ndarray:
    """(chain, draw, v) -> (2 chain, draw // 2, v): first and last halves (odd: middle left)."""
    half = x.shape[1] // 2
    return np.concatenate([x[:, :half], x[:, x.shape[1] - half :]], axis=0)


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks (1-based, ties get their average) along the last axis of a 2-D array; what
    ``scipy.stats.rankdata(x, method="average", axis=-1)`` gives, in one sort."""
    order = np.argsort(x, axis=-1)
    ordered = np.take_along_axis(x, order, axis=-1)
    n = x.shape[-1]
    position = np.broadcast_to(np.arange(n), x.shape)
    new_value = np.ones(x.shape, dtype=bool)
    new_value[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    first = np.maximum.accumulate(np.where(new_value, position, 0), axis=-1)
    last_value = np.ones(x.shape, dtype=bool)
    last_value[:, :-1] = new_value[:, 1:]
    last = np.minimum.accumulate(np.where(last_value, position, n - 1)[:, ::-1], axis=-1)
    ranks = np.empty(x.shape)
    np.put_along_axis(ranks, order, (first + last[:, ::-1]) / 2.0 + 1.0, axis=-1)
    return ranks


def _z_scale(x: np.ndarray) -> np.ndarray:
    """Normal scores of the ranks over all chains and draws (Blom's offset 3/8)."""
    from scipy.special import ndtri

    n_chain, n_draw, n_var = x.shape
    size = n_chain * n_draw
    rank = _average_ranks(np.ascontiguousarray(x.reshape(size, n_var).T))
    return ndtri((rank.T - 3 / 8) / (size - 2 * 3 / 8 + 1)).reshape(x.shape)


def _rhat_of(x: np.ndarray) -> np.ndarray:
    n_draw = x.shape[1]
    between = n_draw * np.var(x.mean(axis=1), axis=0, ddof=1)
    within = np.var(x, axis=1, ddof=1).mean(axis=0)
    return np.sqrt((between / within + n_draw - 1) / n_draw)


def _ess_of(x: np.ndarray) -> np.ndarray:
    """ESS of each column of (chain, draw, v) by Geyer's initial monotone sequence."""
    from scipy.fft import next_fast_len

    n_chain, n_draw, _ = x.shape
    m = next_fast_len(2 * n_draw)
    centred = x - x.mean(axis=1, keepdims=True)
    spectrum = np.fft.rfft(centred, n=m, axis=1)
    spectrum *= np.conjugate(spectrum)
    acov = np.fft.irfft(spectrum, n=m, axis=1)[:, :n_draw] / n_draw
    mean_var = acov[:, 0].mean(axis=0) * n_draw / (n_draw - 1.0)
    var_plus = mean_var * (n_draw - 1.0) / n_draw
    if n_chain > 1:
        var_plus = var_plus + np.var(x.mean(axis=1), axis=0, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = 1.0 - (mean_var - acov.mean(axis=0)) / var_plus  # (lag, v)
    rho[0] = 1.0
    # pairs (rho[2k], rho[2k + 1]) are summed while their sums stay positive, k < n_pairs
    n_pairs = 1 + max(0, (n_draw - 3) // 2)
    pairs = rho[0 : 2 * n_pairs : 2] + rho[1 : 2 * n_pairs : 2]
    stop = pairs <= 0
    end = np.where(stop.any(axis=0), stop.argmax(axis=0), n_pairs - 1)
    monotone = np.minimum.accumulate(pairs, axis=0)
    kept = (np.arange(n_pairs)[:, None] < end) * monotone
    last = np.take_along_axis(rho, 2 * end[None], axis=0)[0]
    last_pair = np.take_along_axis(pairs, end[None], axis=0)[0]
    last = np.where((last > 0) | (last_pair >= 0), last, 0.0)
    size = n_chain * n_draw
    tau = np.maximum(-1.0 + 2.0 * kept.sum(axis=0) + last, 1 / np.log10(size))
    ess = size / tau
    constant = x.max(axis=(0, 1)) - x.min(axis=(0, 1)) < np.finfo(float).resolution
    return np.where(constant, float(size), ess)


def _valid(x: np.ndarray) -> np.ndarray:
    """Columns ArviZ computes ESS for (no NaN draw, at least 4 draws); R-hat also needs two
    chains."""
    return ~np.isnan(x).any(axis=(0, 1)) & (x.shape[1] >= 4)


#: Scalars whose statistics are computed together (the work arrays take about 13 times the
#: draws' float64 size: 100 MB for 256 scalars of 4 x 1,000 draws; one chunk per core at once,
#: so up to that times the number of cores).
COLUMN_CHUNK = 256

#: What :func:`convergence_statistics` returns, and the diagnostics table's columns.
STATISTICS = ("r_hat", "ess_bulk", "ess_tail")


def convergence_statistics(draws: np.ndarray) -> dict[str, np.ndarray]:
    """R-hat and bulk and tail ESS of each scalar in draws (chain, draw, ...), as ArviZ
    computes them (``arviz.rhat``, ``arviz.ess(method="bulk" / "tail")``).

    Returns
    -------
    dict
        ``r_hat``: rank-normalized split R-hat, the larger of the bulk (normal scores of
        ranks) and tail (of the draws folded at their median) values; NaN with one chain.
        ``ess_bulk``: ESS of the normal scores of ranks, chains split. ``ess_tail``: the
        smaller ESS of the indicators of the 5 % and 95 % quantiles (R's type 7). Each of
        shape ``draws.shape[2:]``; NaN with fewer than 4 draws or a NaN draw.
    """
    x, shape = _columns(draws)
    if x.shape[2] == 0:
        return {name: np.empty(shape) for name in STATISTICS}
    chunks = [x[:, :, i : i + COLUMN_CHUNK] for i in range(0, x.shape[2], COLUMN_CHUNK)]
    if len(chunks) == 1:
        parts = [_column_statistics(chunks[0])]
    else:  # NumPy's sorts and FFTs release the GIL: chunks run side by side, one per core
        with ThreadPoolExecutor(min(len(chunks), cpu_device_count())) as pool:
            parts = list(pool.map(_column_statistics, chunks))
    return {name: np.concatenate([p[name] for p in parts]).reshape(shape) for name in parts[0]}


def _column_statistics(x: np.ndarray) -> dict[str, np.ndarray]:
    """:func:`convergence_statistics` of (chain, draw, v) columns, as (v,) arrays."""
    shape = x.shape[2:]
    valid = _valid(x)
    if not valid.any():
        return {name: np.full(shape, np.nan) for name in STATISTICS}
    x = np.where(valid, x, 0.0)
    split = _split_chains(x)
    z = _z_scale(split)
    out = {"ess_bulk": _ess_of(z)}
    ordered = np.sort(x.reshape(-1, x.shape[2]), axis=0)
    size = ordered.shape[0]
    tails = []
    for prob in (0.05, 0.95):
        at = size * prob + (1.0 - prob)  # scipy's mquantiles (alphap = betap = 1), its order
        k = int(np.floor(np.clip(at, 1, size - 1)))
        gamma = float(np.clip(at - k, 0.0, 1.0))
        quantile = (1.0 - gamma) * ordered[k - 1] + gamma * ordered[k]
        tails.append(_ess_of(_split_chains((x <= quantile).astype(float))))
    out["ess_tail"] = np.minimum(*tails)
    if x.shape[0] > 1:
        with np.errstate(divide="ignore", invalid="ignore"):
            folded = np.abs(split - np.median(split.reshape(-1, split.shape[2]), axis=0))
            bulk, tail = _rhat_of(z), _rhat_of(_z_scale(folded))
            out["r_hat"] = np.where(tail > bulk, tail, bulk)  # ArviZ's max(bulk, tail)
    else:
        out["r_hat"] = np.full(x.shape[2], np.nan)
    return {name: np.where(valid, v, np.nan) for name, v in out.items()}


def lagging_chains(
    log_density: np.ndarray, gap: float = MODE_GAP, agreeing: int = 0, settled: bool = True
) -> dict[int, dict]:
    """Chains whose log density lies clearly below the best chain's: in another mode.

    Used at the end of warm-up (:func:`imgcate.chains.run_nuts` moves such chains) and over
    the draws (:func:`chain_modes`).

    Parameters
    ----------
    log_density : ndarray (chain, iteration)
        Each chain's log density over the iterations compared.
    gap : float
        Least difference of mean log density that counts.
    agreeing : int
        How many other chains that may be references must share the best chain's level (not
        lie clearly below it) for any chain to count as lagging: with 1, a chain alone above
        the others moves nobody.
    settled : bool
        Whether a reference must have settled (see below): at the end of warm-up, where
        chains may still be coming down from their starts; not over the draws, where a chain
        that jumps to a better mode midway is a reference too.

    Returns
    -------
    dict
        ``{chain: {"source": best chain, "gap": difference of means, "sd": the chains'
        median sd of log density}}`` for each chain whose mean lies below the best chain's
        by more than ``gap``, more than that sd (their typical spread), and more than
        four standard errors of the difference. A chain's standard error is its sd over the
        square root of its ESS, the ESS counted at most one per ten iterations (estimated
        from a short window it comes out too high). The best chain is the one with the
        highest mean among those that may be a reference: chains that move (log density sd
        at least a quarter of the median, and not zero) and, with ``settled``, have settled
        (the means of the window's two halves differ by less than the chain's sd around its
        linear trend: a chain still coming down from its start, a MAP point far above the
        posterior's typical log density, is no reference). Empty with fewer than
        two chains, fewer than :data:`MIN_MODE_DRAWS` iterations, a log density that is not
        finite, or no chain that may be a reference.
    """
    n_chains, n_draws = log_density.shape
    if n_chains < 2 or n_draws < MIN_MODE_DRAWS or not np.all(np.isfinite(log_density)):
        return {}
    means, sd = log_density.mean(axis=1), log_density.std(axis=1, ddof=1)
    ess = np.array(
        [convergence_statistics(row[None, :, None])["ess_bulk"][0] for row in log_density]
    )
    se = sd / np.sqrt(np.clip(np.nan_to_num(ess, nan=1.0), 1.0, n_draws / 10))
    spread = float(np.median(sd))
    half = n_draws // 2
    drift = np.abs(log_density[:, :half].mean(axis=1) - log_density[:, half:].mean(axis=1))
    steps = np.arange(n_draws) - (n_draws - 1) / 2
    slope = log_density @ steps / (steps @ steps)
    around = (log_density - means[:, None] - slope[:, None] * steps).std(axis=1, ddof=2)
    # a chain that hardly moves (its log density nearly constant: a collapsed step size, stuck
    # at a peak) or is still on its way down may sit above the others without being in a
    # better mode: it is no reference
    reference = (sd > 0) & (sd >= 0.25 * spread) & ((drift <= around) | (not settled))
    if not reference.any():
        return {}
    best = int(np.flatnonzero(reference)[np.argmax(means[reference])])
    out = {}
    for c, mean in enumerate(means):
        difference = float(means[best] - mean)
        noise = 4.0 * float(np.hypot(se[best], se[c]))
        if difference > max(gap, spread, noise):
            out[c] = {"source": best, "gap": round(difference, 1), "sd": round(spread, 1)}
    sharing = int(reference.sum()) - 1 - sum(bool(reference[c]) for c in out)
    return out if sharing >= agreeing else {}


def chain_modes(idata: az.InferenceData) -> list[int]:
    """Chains whose log density over the draws lies clearly below the best chain's
    (:func:`lagging_chains`, with no need for the best chain to have settled or for another
    to share its level); empty when the chains agree, when no chain moves, or when the log
    density was not recorded."""
    stats = idata.get("sample_stats")
    if stats is None or "lp" not in stats or stats.sizes.get("chain", 1) < 2:
        return []
    return sorted(lagging_chains(stats["lp"].values, settled=False))


def chain_restarts(idata: az.InferenceData) -> dict[str, list]:
    """The chains a NUTS fit restarted at the end of warm-up (:func:`lagging_chains`):
    ``restarted_chains``, their ``restart_sources``, ``restart_gaps`` (mean log density over
    the end of warm-up below the source's) and ``restart_sd`` (the chains' median sd of log
    density there), as lists; empty for none, and for SVI. Read from ``sample_stats.attrs``,
    whatever shape a saved fit gives them back in (a scalar for one chain, an array)."""
    stats = idata.get("sample_stats")
    attrs = {} if stats is None else stats.attrs
    return {
        key: np.atleast_1d(attrs.get(key, [])).tolist()
        for key in ("restarted_chains", "restart_sources", "restart_gaps", "restart_sd")
    }


def restart_note(idata: az.InferenceData) -> str:
    """What the chain restarts at the end of warm-up were (:func:`chain_restarts`), in words;
    "" when none."""
    restarts = chain_restarts(idata)
    if not restarts["restarted_chains"]:
        return ""
    moves = "; ".join(
        f"chain {int(c)}, {gap:.0f} below chain {int(source)}"
        for c, source, gap in zip(
            restarts["restarted_chains"],
            restarts["restart_sources"],
            restarts["restart_gaps"],
            strict=False,
        )
    )
    scale = f" (log density sd {restarts['restart_sd'][0]:.0f})" if restarts["restart_sd"] else ""
    return (
        f"at the end of warm-up a chain's mean log density lay clearly below the best "
        f"chain's{scale}, so it was restarted from that chain's state ({moves}); the chains "
        "then share a starting point, so R-hat and ESS are somewhat optimistic. If it is "
        "not another mode but a short warm-up, raise num_warmup; restart_chains=False turns "
        "this off"
    )


def divergent_transitions(idata: az.InferenceData) -> int:
    """NUTS's divergent transitions over every chain (0 without sampler statistics: SVI)."""
    stats = idata.get("sample_stats")
    has = stats is not None and "diverging" in stats
    return int(stats["diverging"].values.sum()) if has else 0


def sampling_problems(idata: az.InferenceData, config: FitConfig) -> list[str]:
    """:func:`convergence_problems` of a fit with options ``config``: none for SVI (one guide,
    no chains), and advice about fewer clusters only where its effect has clusters."""
    if config.method != "nuts":
        return []
    return convergence_problems(idata, config.effect_clusters)


def convergence_problems(idata: az.InferenceData, effect_clusters: bool = True) -> list[str]:
    """What is wrong with the sampling, in words: chains in different modes, divergences,
    R-hat > 1.01, bulk ESS below 100 per chain (empty when nothing is). ``effect_clusters``
    (:attr:`imgcate.config.FitConfig.effect_clusters`): whether fewer clusters is advice
    worth giving (not for a model whose effect has none)."""
    problems = []
    stuck = chain_modes(idata)
    if stuck:
        fewer = ". Compare fewer clusters (imgcate.compare_clusters), " if effect_clusters else "; "
        problems.append(
            f"chains {stuck} settled in a mode with a clearly lower log density than the best "
            f"chain: the posterior has several modes and the results mix them{fewer}raise "
            "init_restarts, or drop those chains (idata.sel(chain=...))"
        )
    n_div = divergent_transitions(idata)
    if n_div:
        problems.append(f"{n_div} divergent transitions (raise target_accept)")
    n_chains = idata.posterior.sizes["chain"]
    table = diagnostics_table(idata)
    if n_chains > 1:
        bad = table[table["r_hat"] > 1.01]
        if len(bad):
            clusters = effect_clusters and any(n.startswith(CLUSTER_SITES) for n in bad.index)
            advice = "; weakly identified clusters if it persists: compare fewer" * clusters
            problems.append(
                f"R-hat > 1.01 for {list(bad.index[:5])} (run longer or more chains{advice})"
            )
    low = table[table["ess_bulk"] < 100 * n_chains]
    if len(low):
        problems.append(
            f"bulk ESS below {100 * n_chains} for {list(low.index[:5])} "
            "(raise num_samples / --draws)"
        )
    return problems


def _labelled(name: str, values: np.ndarray):
    """(label, value) pairs named as az.summary names them: ``tau[0]``, ``beta[1, 0]``."""
    values = np.asarray(values)
    if values.ndim == 0:
        yield name, values
        return
    for index in np.ndindex(values.shape):
        yield f"{name}[{', '.join(map(str, index))}]", values[index]


def ate_gap(table: pd.DataFrame) -> str | None:
    """A sentence when the model-implied ATE of ``EffectFit.ate()``'s ``table`` and the
    design-based estimate beside it disagree beyond chance (|difference| > 2.58 combined sds),
    else None: the AIPW estimate where the fit was given a propensity score (an observational
    study), else the difference in means (a randomized trial)."""
    model = table.loc["model_implied"]
    other = "aipw" if "aipw" in table.index else "difference_in_means"
    design = table.loc[other]
    spread = np.hypot(model["std_err"], design["std_err"])
    if not np.isfinite(spread) or abs(model["estimate"] - design["estimate"]) <= 2.58 * spread:
        return None
    if other == "aipw":
        return (
            f"the model-implied ATE ({model['estimate']:.3g}) and the doubly robust AIPW "
            f"estimate ({design['estimate']:.3g}, se {design['std_err']:.2g}) disagree beyond "
            "chance: with the propensity score given, both estimate the ATE, so the model's "
            "outcome model (where the treated and control units differ) or the propensity is "
            "off (check overlap and balance; report the AIPW estimate if the propensity holds)."
        )
    return (
        f"the model-implied ATE ({model['estimate']:.3g}) and the difference in means "
        f"({design['estimate']:.3g}, se {design['std_err']:.2g}) disagree beyond chance: in a "
        "randomized trial they estimate the same thing, so the model is misspecified for "
        "this outcome (check_outcome(); another likelihood)."
    )


def checks_passed(fit, ate: pd.DataFrame | None = None) -> str:
    """The checks a fit passed, in words (for ``EffectFit.summary``; ``ate``: its ATE table
    where the caller has it)."""
    done = ["the chains agree"] if fit.config.method == "nuts" else []
    if "posterior_predictive" in fit.idata.groups():
        done.append("replicated outcomes match the data in both arms")
    design = ate_design(fit.ate() if ate is None else ate)
    if design:
        done.append(f"the model-implied ATE agrees with {design}")
    return ", ".join(done) or "none ran"


def ate_design(table: pd.DataFrame) -> str | None:
    """The design-based estimate :func:`ate_gap` compares the model's ATE with, in words, or
    None where it has no standard error (a cluster holds a whole arm; too few clusters to
    cross-fit AIPW): then no comparison ran."""
    aipw = "aipw" in table.index
    row = table.loc["aipw" if aipw else "difference_in_means"]
    if not np.isfinite(row["std_err"]):
        return None
    return "the doubly robust (AIPW) estimate" if aipw else "the difference in means"


def checks_skipped(fit) -> list[str]:
    """The checks a fit could not run, and why (for ``EffectFit.summary``)."""
    out = []
    if fit.config.method != "nuts":
        out.append("convergence (SVI has one guide, no chains; fit NUTS on a subsample)")
    if "posterior_predictive" not in fit.idata.groups():
        out.append(
            "replicated outcomes (too many units x draws to keep; fewer draws: svi_draws, or "
            "num_samples x num_chains)"
        )
    return out
