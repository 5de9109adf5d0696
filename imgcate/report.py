"""A report a user can hand to a referee: one self-contained HTML or Markdown page of a fit.

:func:`write_report` (also :meth:`EffectFit.report <imgcate.EffectFit.report>`) gathers what a
referee asks about a heterogeneity claim: the model choice, the sampler's diagnostics, the
posterior predictive checks, the out-of-sample heterogeneity tests, the cluster effects and how
strongly the clusters depend on the image, each with one sentence on what it means. Figures are
PNG images embedded as base64, so the file stands alone; it is written to a temporary name and
renamed when complete.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from imgcate.ates import given_propensity, overlap_note
from imgcate.diagnostics import (
    ate_design,
    ate_gap,
    divergent_transitions,
    restart_note,
    sampling_problems,
)
from imgcate.errors import InputError
from imgcate.optional import require
from imgcate.outcome_checks import outcome_problems
from imgcate.output import atomic_path, check_writable
from imgcate.posterior import flat
from imgcate.validation import check_positive_int, check_prob

if TYPE_CHECKING:
    from imgcate.evaluate import CrossfitResult
    from imgcate.results import EffectFit
    from imgcate.selection import ClusterComparison

#: Report formats by file suffix.
FORMATS = {".html": "html", ".htm": "html", ".md": "markdown", ".markdown": "markdown"}

#: The section headings, in order (each section starts with one sentence on what it means).
SECTIONS = (
    "Model choice",
    "Diagnostics",
    "Posterior predictive checks",
    "Out-of-sample heterogeneity tests",
    "Cluster effects",
    "Image dependence",
)


@dataclass
class Section:
    """One section of the report: a heading, what it means, then tables, figures and text."""

    title: str
    meaning: str
    blocks: list = field(default_factory=list)

    def text(self, value: str) -> None:
        self.blocks.append(("text", value))

    def table(self, frame: pd.DataFrame) -> None:
        self.blocks.append(("table", frame))

    def figure(self, png: bytes, alt: str) -> None:
        self.blocks.append(("figure", png, alt))


def write_report(
    fit: EffectFit,
    path: str | Path,
    *,
    comparison: ClusterComparison | None = None,
    crossfit: CrossfitResult | None = None,
    prob: float = 0.9,
    alpha: float = 0.05,
    ppc_draws: int = 50,
    overwrite: bool = False,
    seed: int = 0,
) -> Path:
    """Write one self-contained HTML or Markdown page describing a fit, for a referee.

    Sections: model choice (the table of :func:`imgcate.compare_clusters`), diagnostics
    (:meth:`EffectFit.diagnostics <imgcate.EffectFit.diagnostics>` and every failed check),
    posterior predictive checks (observed against replicated outcomes per arm, plot and
    :meth:`~imgcate.EffectFit.check_outcome` table), out-of-sample heterogeneity tests
    (:meth:`CrossfitResult.heterogeneity_tests
    <imgcate.evaluate.CrossfitResult.heterogeneity_tests>` and the TOC curve), cluster effects
    (with the ATE) and image dependence (:meth:`~imgcate.EffectFit.heterogeneity`); each opens
    with one sentence on what it means. A section whose input was not given says how to get it.

    Parameters
    ----------
    fit : EffectFit
        The fit to describe.
    path : str or Path
        Output file; ``.html`` (or ``.htm``) writes HTML, ``.md`` (or ``.markdown``) Markdown.
        Figures are embedded as base64 PNG either way.
    comparison : ClusterComparison, optional
        The model comparison the fit was chosen by (:func:`imgcate.compare_clusters` on the
        same trial).
    crossfit : CrossfitResult, optional
        Out-of-fold CATE of the same trial (:func:`imgcate.evaluate.crossfit_cate`).
    prob : float
        Probability of the credible intervals.
    alpha : float
        Level at which the out-of-sample tests are read.
    ppc_draws : int
        Replicated data sets drawn in the posterior predictive plot.
    overwrite : bool
        Replace an existing file.
    seed : int
        Seed of the replicated data sets shown and of the outcome check's subset.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    InputError
        For a suffix other than .html/.htm/.md/.markdown, or a comparison or crossfit of
        other units than the fit's.
    OutputExistsError
        When ``path`` exists and ``overwrite`` is False (checked before any work).
    MissingDependencyError
        Without matplotlib (``pip install "imgcate[plots]"``).

    Examples
    --------
    >>> fit.report("fit-report.html")  # doctest: +SKIP
    PosixPath('fit-report.html')
    """
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise InputError(
            f"report path {str(path)!r} must end in .html or .md (also .htm, .markdown): the "
            "suffix chooses the format."
        )
    check_writable(path, overwrite)
    prob, alpha = check_prob(prob), check_prob(alpha, "alpha")
    ppc_draws = check_positive_int("ppc_draws", ppc_draws)
    require("matplotlib", "plots", "EffectFit.report")
    if crossfit is not None:
        crossfit.check_units(fit.unit_ids)
    if comparison is not None:
        _check_comparison(comparison, fit)
    sections = [
        _model_choice(comparison),
        _diagnostics(fit, seed),
        _predictive_checks(fit, ppc_draws, seed),
        _out_of_sample(crossfit, alpha, seed),
        _cluster_effects(fit, prob),
        _image_dependence(fit, prob),
    ]
    render = _html if fmt == "html" else _markdown
    text = render(_title(fit), _settings(fit), sections)
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def _check_comparison(comparison: Any, fit: EffectFit) -> None:
    fits = getattr(comparison, "fits", None)
    if not hasattr(comparison, "table") or not fits:
        raise InputError(
            "comparison must be the ClusterComparison of imgcate.compare_clusters(...)."
        )
    other = next(iter(fits.values()))
    if set(other.unit_ids.tolist()) != set(fit.unit_ids.tolist()):
        raise InputError(
            "comparison was made on other units than the fit's; pass the compare_clusters "
            "result of the fit's own trial."
        )


# --------------------------------------------------------------------------- sections
def _title(fit: EffectFit) -> str:
    model = "a constant effect" if fit.config.equal_effects else f"K = {fit.n_clusters}"
    return f"imgcate effect report: {model}, {len(fit.unit_ids):,} units"


def _settings(fit: EffectFit) -> str:
    config, post = fit.config, fit.idata.posterior
    made = fit.provenance.get("imgcate_version")
    if config.method == "svi":
        sampling = (
            f"{post.sizes['draw']:,} draws from the guide after {config.svi_steps:,} steps"
            f"{config.minibatch_label}"
        )
    else:
        sampling = f"{post.sizes['chain']} chain(s) x {post.sizes['draw']:,} draws"
    return (
        f"Likelihood {config.likelihood}, deviation {config.deviation}, "
        f"{config.method_label}: {sampling}; "
        f"{fit.idata.constant_data.sizes['feature']} embedding components, seed {config.seed}"
        + (f"; made by imgcate {made}, {fit.provenance.get('created_utc', '')}" if made else "")
        + "."
    )


def _model_choice(comparison: ClusterComparison | None) -> Section:
    section = Section(
        SECTIONS[0],
        "Each row is a model: a constant effect (K = 0), a smooth effect without clusters "
        "(K = 1) or K effect clusters; elpd says how well it predicts a new unit's outcome "
        "(higher is better), and the rule keeps the constant effect unless a model with "
        "heterogeneity predicts clearly better; among those it prefers the fewest clusters, "
        "and the smooth model only when it predicts clearly better than every cluster model.",
    )
    if comparison is None:
        section.text(
            "No comparison was given: run imgcate.compare_clusters(trial, embeddings) and pass "
            "it as comparison= to report it."
        )
        return section
    method = getattr(comparison, "method", "psis-loo")
    name = comparison.table.loc[comparison.best_k, "model"]
    section.text(f"Selected K = {comparison.best_k}, {name} (comparison by {method}).")
    section.table(comparison.table.reset_index())
    return section


def _diagnostics(fit: EffectFit, seed: int) -> Section:
    if fit.config.method != "nuts":
        return _svi_diagnostics(fit, seed)
    section = Section(
        SECTIONS[1],
        "R-hat near 1 (at most 1.01) and a large effective sample size (ESS) say that the "
        "sampler's chains agree and the posterior summaries are precise enough to read; every "
        "check that failed is listed below the table.",
    )
    section.table(fit.diagnostics().rename_axis("variable").reset_index())
    section.text(f"Divergent transitions: {divergent_transitions(fit.idata)}.")
    restarted = restart_note(fit.idata)
    if restarted:
        section.text(restarted[0].upper() + restarted[1:] + ".")
    section.text(_failed_checks(fit, seed))
    return section


def _failed_checks(fit: EffectFit, seed: int) -> str:
    """The diagnostics section's last line: every check that failed (the chains' for NUTS,
    the replicated outcomes' where kept), or what passed."""
    problems = sampling_problems(fit.idata, fit.config)
    if "posterior_predictive" in fit.idata.groups():
        problems += outcome_problems(
            fit.check_outcome(seed=seed), fit.config.likelihood, fit.config.noise_scale
        )
    table = fit.ate()
    gap = ate_gap(table)  # the model's ATE against the design's
    problems += [gap] if gap else []
    if problems:
        return "Failed checks: " + " ".join(
            f"({i + 1}) {p.rstrip('.')}." for i, p in enumerate(problems)
        )
    passed = ["chains agree"] if fit.config.method == "nuts" else []
    if "posterior_predictive" in fit.idata.groups():
        passed.append("replicated outcomes match both arms")
    else:
        passed.append("replicated outcomes were not kept: too many units x draws")
    design = ate_design(table)
    passed += [f"the model's ATE agrees with {design}"] if design else []
    return "Failed checks: none (" + "; ".join(passed) + ")."


def _svi_diagnostics(fit: EffectFit, seed: int) -> Section:
    """The diagnostics section of an SVI fit: one guide, no chains, so no R-hat, ESS or
    divergences; its loss, and the checks that did run."""
    section = Section(
        SECTIONS[1],
        "This fit is SVI: its draws come from one variational guide, not from chains, so "
        "R-hat, ESS and divergences do not apply, and how close the guide is to the exact "
        "posterior is not checked here (compare a NUTS fit on a subsample of units); the loss "
        "below should have levelled off, and every check that failed is listed below it.",
    )
    loss = fit.idata.svi_loss["loss"].values if "svi_loss" in fit.idata.groups() else None
    if loss is None or len(loss) == 0:
        section.text("This fit kept no SVI loss (no svi_loss group).")
    elif len(loss) < 20:
        section.text(
            f"SVI loss (negative ELBO): {loss[0]:.6g} at the first step, {loss[-1]:.6g} at the "
            f"last of {len(loss)} (too few steps to judge whether it levelled off)."
        )
    else:
        n, tenth = len(loss), len(loss) // 10
        before, last = loss[-2 * tenth : -tenth].mean(), loss[-tenth:].mean()
        section.text(
            f"SVI loss (negative ELBO): {loss[0]:.6g} at the first step; averaged over steps "
            f"{n - 2 * tenth + 1:,}-{n - tenth:,}, {before:.6g}, and over steps "
            f"{n - tenth + 1:,}-{n:,}, {last:.6g}."
        )
    section.text(_failed_checks(fit, seed))
    return section


def _predictive_checks(fit: EffectFit, n_draws: int, seed: int) -> Section:
    section = Section(
        SECTIONS[2],
        "Outcomes replicated from the fitted model are set beside the observed outcome in "
        "each arm; a statistic marked missed (posterior predictive p < 0.01) is a feature of "
        "the data the likelihood does not reproduce.",
    )
    if "posterior_predictive" not in fit.idata.groups():
        section.text("This fit kept no posterior_predictive group (too many units x draws).")
        return section
    std = fit.standardizer
    rep = flat(fit.idata.posterior_predictive["outcome"].values)
    rows = np.random.default_rng(seed).permutation(len(rep))[:n_draws]
    replicated = rep[np.sort(rows)] * std.outcome_sd + std.outcome_mean
    observed = fit.observed_outcome()
    treatment = fit.idata.constant_data["treatment"].values
    section.figure(_ppc_png(observed, replicated, treatment), "posterior predictive check")
    section.table(fit.check_outcome(seed=seed).reset_index())
    return section


def _out_of_sample(crossfit: CrossfitResult | None, alpha: float, seed: int) -> Section:
    section = Section(
        SECTIONS[3],
        "Each unit's CATE comes from a fit on the other spatial folds, so a small one-sided "
        "p-value says that the model ranks units by their effect better than chance on units "
        "it never saw: evidence of heterogeneity that in-sample fit cannot fake.",
    )
    if crossfit is None:
        section.text(
            "No out-of-sample test was given: run imgcate.evaluate.crossfit_cate(trial, "
            "embeddings) and pass it as crossfit= to report it."
        )
        return section
    tests = crossfit.heterogeneity_tests(seed=seed)
    sizes = np.bincount(crossfit.fold)
    section.text(
        f"{crossfit.n_folds} {crossfit.scheme} folds of {sizes.min()}-{sizes.max()} units; "
        f"{int((tests['p_value'] < alpha).sum())} of {len(tests)} tests reject 'no "
        f"heterogeneity' at level {alpha:g}."
    )
    section.table(tests)
    section.figure(_toc_png(crossfit, seed), "TOC curve of the out-of-fold CATE")
    return section


def _cluster_effects(fit: EffectFit, prob: float) -> Section:
    section = Section(
        SECTIONS[4],
        f"Each cluster's average treatment effect on the outcome's mean scale, with its "
        f"central {prob:.0%} credible interval and its share of units; below, the "
        "model-implied ATE beside design-based estimates: the difference in means, which "
        "should agree with it in a randomized trial, and, for a fit given a propensity "
        "score, the doubly robust AIPW estimate, which should agree with it then.",
    )
    section.table(fit.cluster_effects(prob).reset_index())
    section.table(fit.ate(prob).reset_index())
    overlap = overlap_note(given_propensity(fit))
    if overlap:
        section.text(f"Limited overlap: {overlap}.")
        try:
            trimmed = fit.ate(prob, trim="crump")
        except InputError as exc:
            section.text(f"Where the arms overlap: no estimate ({exc})")
        else:
            info = trimmed.attrs["trim"]
            kept, n = info["n_kept"], info["n_kept"] + info["n_dropped"]
            section.text(
                f"Where the arms overlap: the same rows on the {kept:,} of {n:,} units that "
                "Crump et al.'s rule keeps (ate(trim='crump')); their average effect is the "
                "one to report."
            )
            section.table(trimmed.reset_index())
    section.figure(_cate_png(fit, prob), "unit CATE by cluster")
    return section


def _image_dependence(fit: EffectFit, prob: float) -> Section:
    section = Section(
        SECTIONS[5],
        "effect_share_clusters is the share of the effect's variation across units that the "
        "clusters explain, and membership_dependence (0 to 1) how strongly an image decides "
        "its cluster: near 0 the clusters do not sort images into groups; effect_sd is a "
        "spread, positive by construction, not a test.",
    )
    table = fit.heterogeneity(prob)
    section.table(table.rename_axis("measure").reset_index())
    if fit.n_clusters == 1:
        section.text("K = 1: there are no clusters, so only the effect's spread is shown.")
    return section


# --------------------------------------------------------------------------- figures
def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def _ppc_png(observed: np.ndarray, replicated: np.ndarray, treatment: np.ndarray) -> bytes:
    """Empirical CDFs of the outcome per arm: observed (black) over replicated (blue)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.2), layout="constrained")
    axes = fig.subplots(1, 2, sharex=True, sharey=True)
    for arm, (ax, name) in enumerate(zip(axes, ("control", "treated"), strict=True)):
        units = treatment == arm
        ranks = np.arange(1, units.sum() + 1) / units.sum()
        for draw in replicated[:, units]:
            ax.step(np.sort(draw), ranks, where="post", color="C0", alpha=0.15, lw=0.8)
        ax.step(np.sort(observed[units]), ranks, where="post", color="k", lw=2)
        ax.set_title(name)
        ax.set_xlabel("outcome")
    axes[0].set_ylabel("share of units at or below")
    fig.suptitle("observed outcome (black) and outcomes replicated from the fit (blue)")
    return _png(fig)


def _toc_png(crossfit: CrossfitResult, seed: int) -> bytes:
    from matplotlib.figure import Figure

    from imgcate.evaluate import plot_toc

    fig = Figure(figsize=(5, 3.5))
    plot_toc(crossfit.rate(seed=seed), fig.subplots())
    return _png(fig)


def _cate_png(fit: EffectFit, prob: float) -> bytes:
    from matplotlib.figure import Figure

    units = fit.unit_effects(prob)
    fig = Figure(figsize=(5, 3))
    ax = fig.subplots()
    bins = np.histogram_bin_edges(units["tau_mean"], bins=30)
    for k, row in fit.cluster_effects(prob).iterrows():
        ax.hist(units.loc[units["cluster"] == k, "tau_mean"], bins=bins, alpha=0.6, label=f"{k}")
        ax.axvline(row["tau_mean"], color=f"C{k}", lw=1.5)
    ax.set_xlabel("unit CATE (posterior mean)")
    ax.set_ylabel("units")
    ax.legend(title="cluster", frameon=False)
    return _png(fig)


# --------------------------------------------------------------------------- rendering
def _cell(value: Any) -> str:
    if isinstance(value, float | np.floating):
        return f"{value:.4g}"
    return str(value)


def _markdown_table(frame: pd.DataFrame) -> str:
    def row(values):
        return "| " + " | ".join(_cell(v).replace("|", "\\|") for v in values) + " |"

    lines = [row(frame.columns), "|" + "---|" * len(frame.columns)]
    lines += [row(values) for values in frame.itertuples(index=False)]
    return "\n".join(lines)


def _png_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _markdown(title: str, settings: str, sections: list[Section]) -> str:
    parts = [f"# {title}", settings]
    for section in sections:
        parts += [f"## {section.title}", f"*{section.meaning}*"]
        for kind, *content in section.blocks:
            if kind == "text":
                parts.append(content[0])
            elif kind == "table":
                parts.append(_markdown_table(content[0]))
            else:
                parts.append(f"![{content[1]}]({_png_uri(content[0])})")
    return "\n\n".join(parts) + "\n"


STYLE = (
    "body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:0.8em 0;font-size:0.9em}"
    "th,td{border:1px solid #ccc;padding:0.2em 0.6em;text-align:right}"
    "p.meaning{font-style:italic;color:#444}img{max-width:100%}"
)


def _html(title: str, settings: str, sections: list[Section]) -> str:
    body = [f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(settings)}</p>"]
    for section in sections:
        body += [
            f"<h2>{html.escape(section.title)}</h2>",
            f"<p class='meaning'>{html.escape(section.meaning)}</p>",
        ]
        for kind, *content in section.blocks:
            if kind == "text":
                body.append(f"<p>{html.escape(content[0])}</p>")
            elif kind == "table":
                body.append(content[0].to_html(index=False, border=0, float_format=_cell))
            else:
                alt = html.escape(content[1])
                body.append(f"<img alt='{alt}' src='{_png_uri(content[0])}'>")
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
