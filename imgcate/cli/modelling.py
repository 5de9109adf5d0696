"""``imgcate simulate``, ``fit``, ``effects`` and ``demo``."""

from __future__ import annotations

import inspect
import json
import re
import zipfile
from pathlib import Path
from typing import Any

import click
import pandas as pd

from imgcate.cli.common import (
    Command,
    check_minimum,
    check_output,
    common,
    in_cli_words,
    join_units,
    load_units,
    log,
    parse_options,
    provenance,
    raster_argument,
    run,
    same_path,
    start,
    unit_role_options,
    write_csv,
)
from imgcate.cli.steps import chip_options, chips_for, embed_options

#: Suffixes read as rasters (the units' images are cut from them) rather than embeddings.
RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".img", ".jp2")


def likelihood_choices() -> tuple[str, ...]:
    """The outcome families the model has (imgcate.likelihoods, else imgcate.model)."""
    try:
        from imgcate.likelihoods import LIKELIHOODS
    except ImportError:  # an imgcate without the likelihoods module
        from imgcate.model import LIKELIHOODS  # type: ignore[attr-defined,no-redef]
    return tuple(LIKELIHOODS)


def fit_provenance(path: Path) -> dict[str, Any]:
    """The provenance a fit file holds (``meta.json``), or an empty dict."""
    try:
        with zipfile.ZipFile(path) as zf:
            meta = json.loads(zf.read("meta.json"))
    except (zipfile.BadZipFile, KeyError, OSError, ValueError):
        return {}
    record = meta.get("provenance") if isinstance(meta, dict) else None
    return record if isinstance(record, dict) else {}


@click.command(cls=Command)
@click.argument("output_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--n-units", default=1000, show_default=True, help="Units in the simulated trial.")
@click.option("--n-clusters", default=2, show_default=True, help="True effect clusters.")
@click.option("--seed", default=0, show_default=True, help="Random seed.")
@click.option("--overwrite", is_flag=True, help="Replace existing files.")
@common
def simulate(output_dir, n_units, n_clusters, seed, overwrite, verbose, quiet):
    """Simulate a trial: OUTPUT_DIR/units.csv, embeddings.parquet, truth.csv.

    \b
    Example:
      imgcate simulate sim/ --n-units 500 --n-clusters 3 --seed 1
    """
    from dataclasses import replace

    from imgcate.output import ensure_folder
    from imgcate.simulate import simulate_trial

    _, quiet, _ = start(verbose, quiet)
    check_minimum(("--n-clusters", n_clusters, 1), ("--n-units", n_units, 4))
    sim = run(simulate_trial, seed, n_units, n_clusters)
    run(ensure_folder, output_dir)
    for name in ("units.csv", "embeddings.parquet", "truth.csv"):
        check_output(output_dir / name, overwrite)
    data = pd.DataFrame(sim.trial.data.drop(columns="geometry"))
    write_csv(data, output_dir / "units.csv", overwrite)
    emb = replace(sim.embeddings, provenance=provenance({}, seeds={"simulate": seed}))
    run(emb.save, output_dir / "embeddings.parquet", overwrite=overwrite)
    truth = pd.DataFrame(
        {
            "id": sim.trial.ids,
            "cluster": sim.truth.cluster,
            "tau_unit": sim.truth.tau_unit,
            "cate": sim.truth.cate,
        }
    )
    write_csv(truth, output_dir / "truth.csv", overwrite)
    click.echo(f"wrote {output_dir}/units.csv, embeddings.parquet, truth.csv")
    if sim.trial.covariates and not quiet:  # fit uses only the columns --covariate names
        names = ", ".join(sim.trial.covariates)
        flags = " ".join(f"--covariate {name}" for name in sim.trial.covariates)
        click.echo(f"covariates {names}: imgcate fit adjusts for them with {flags}")


def read_inputs(inputs: tuple[Path, ...], trial, chip_settings: dict, embed_settings: dict, seed):
    """Embeddings from INPUT...: an embeddings table, a chips file, or raster files."""
    from imgcate.embeddings import embed, load_embeddings

    suffixes = {p.suffix.lower() for p in inputs}
    if suffixes & set(RASTER_SUFFIXES):
        if not suffixes <= set(RASTER_SUFFIXES):
            raise click.UsageError("give either raster files or one embeddings file, not both.")
        source = raster_argument(inputs, chip_settings.pop("band_names"), "RASTER")
        cut = chips_for(trial, source, **chip_settings)
        if not cut.kept.all():
            raise click.UsageError(
                "--on-edge drop removed units; cut chips first (imgcate chips) and fit the kept "
                "units, or use --on-edge pad."
            )
        emb = run(embed, cut, seed=seed, **embed_settings)
        return emb, {"raster": source}
    if len(inputs) != 1:
        raise click.UsageError("give one embeddings file (or raster files to cut chips from).")
    path = inputs[0]
    if path.suffix.lower() == ".npz":
        from imgcate.chipfile import load_chips, read_chips_meta

        try:
            is_chips = read_chips_meta(path).get("kind") == "imgcate.chips"
        except (KeyError, ValueError, OSError):
            is_chips = False
        if is_chips:
            cut = run(load_chips, path)
            return run(embed, cut, seed=seed, **embed_settings), {"chips": path}
    emb = run(load_embeddings, path)
    upstream = emb.provenance.get("inputs") or {}
    return emb, {"embeddings": path, **{k: v for k, v in upstream.items() if k == "raster"}}


class ClusterCount(click.ParamType):
    """A number of clusters (a whole number), or ``auto``."""

    name = "K|auto"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        if str(value).strip().lower() == "auto":
            return "auto"
        try:
            return int(str(value))
        except ValueError:
            self.fail(f"{value!r} is not a whole number or 'auto'", param, ctx)


@click.command("fit", cls=Command)
@click.argument("units", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument(
    "inputs",
    metavar="EMBEDDINGS|CHIPS|RASTER...",
    nargs=-1,
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
)
@click.argument("output", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--n-clusters",
    "-k",
    type=ClusterCount(),
    default="2",
    show_default=True,
    help="Effect clusters K, or 'auto': compare a constant effect, the smooth effect (K = 1) "
    "and K = 2..--k-max clusters (imgcate.compare_clusters) and keep the one selected.",
)
@click.option("--k-max", default=3, show_default=True, help="Largest K compared by -k auto.")
@click.option("--covariate", "covariates", multiple=True, help="Covariate column (repeatable).")
@click.option("--treatment", default="treatment", show_default=True)
@click.option("--outcome", default="outcome", show_default=True)
@click.option("--stratum", default=None, help="Randomization block column (random intercepts).")
@click.option("--cluster", default=None, help="Cluster id column of a cluster-randomized design.")
@unit_role_options
@click.option(
    "--missing",
    type=click.Choice(["error", "drop", "mean", "indicator"]),
    default="error",
    show_default=True,
    help="Missing covariate values.",
)
@click.option(
    "--likelihood",
    type=click.Choice(likelihood_choices()),
    default="gaussian",
    show_default=True,
    help="Outcome family.",
)
@click.option(
    "--method",
    type=click.Choice(["nuts", "svi", "auto"]),
    default="nuts",
    show_default=True,
    help="NUTS (exact), SVI (approximate, for large trials), or auto: NUTS up to 10,000 units.",
)
@click.option("--chains", default=4, show_default=True, help="NUTS chains (not with --method svi).")
@click.option(
    "--draws",
    default=500,
    show_default=True,
    help="NUTS's warm-up and kept draws per chain (--option num_warmup=N or num_samples=N sets "
    "one of them apart; SVI: --option svi_steps=N, svi_draws=N).",
)
@click.option(
    "--option",
    "extra",
    multiple=True,
    metavar="NAME=VALUE",
    help="Any other fit option (repeatable), e.g. --option deviation=linear "
    "--option n_basis=32 --option floor=0.",
)
@chip_options
@embed_options
@click.option(
    "--effects",
    "effects_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the unit effects (csv) keyed by the units' id, image id and coordinates.",
)
@click.option("--seed", default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@common
def fit_command(
    units,
    inputs,
    output,
    n_clusters,
    k_max,
    covariates,
    treatment,
    outcome,
    stratum,
    cluster,
    id_column,
    lon,
    lat,
    crs,
    image_id,
    missing,
    likelihood,
    method,
    chains,
    draws,
    extra,
    size,
    size_unit,
    bands,
    band_names,
    on_edge,
    scale,
    encoder,
    n_features,
    n_components,
    effects_path,
    seed,
    overwrite,
    verbose,
    quiet,
):
    """Fit the effect-cluster model to UNITS and their images; write OUTPUT (.imgcate).

    UNITS: csv/gpkg/parquet. The images: EMBEDDINGS (from `imgcate embed`, which keeps the
    encoder so the fit can be mapped; or any table keyed by image id), a chips file (from
    `imgcate chips`), or RASTER file(s) to cut chips from and embed here (--size, --band,
    --encoder, ...; several single-band files are stacked as bands). With -k auto the
    command compares a constant effect, the smooth effect and 2..--k-max clusters, prints
    the comparison, writes it beside OUTPUT (NAME.comparison.csv, one row per model) and
    keeps the model selected (several fits: minutes).

    \b
    Examples:
      imgcate fit villages.csv embeddings.parquet fit.imgcate --covariate elevation -k 2
      imgcate fit villages.csv embeddings.parquet fit.imgcate -k auto --k-max 3
      imgcate fit villages.csv scene.tif fit.imgcate --size 16 --stratum block \\
          --likelihood student_t --option deviation=linear --effects unit_effects.csv
    """
    from imgcate.inference import fit

    verbose, quiet, progress = start(verbose, quiet)
    auto = n_clusters == "auto"
    check_minimum(
        ("--n-clusters", 1 if auto else n_clusters, 1),
        ("--k-max", k_max, 1),
        ("--chains", chains, 1),
        ("--draws", draws, 1),
    )
    check_output(output, overwrite)
    if effects_path is not None:
        check_output(effects_path, overwrite)
    comparison_path = output.with_name(output.stem + ".comparison.csv") if auto else None
    if comparison_path is not None:
        check_output(comparison_path, overwrite)
    given = [
        name
        for name in ("chains", "draws")
        if click.get_current_context().get_parameter_source(name)
        is not click.core.ParameterSource.DEFAULT
    ]
    if method == "svi" and given:
        raise click.BadParameter(
            f"--{given[0]} sets NUTS's {given[0]}, which "
            "--method svi does not run (its draws come from its guide: --option "
            "svi_draws=N); leave it out, or use --method nuts or auto.",
            param_hint=f"--{given[0]}",
        )
    options = parse_options(extra)
    flagged = sorted(set(options) & set(FLAGGED_OPTIONS))
    if flagged:
        raise click.BadParameter(
            f"{flagged[0]} has an option of its own: give {FLAGGED_OPTIONS[flagged[0]]} "
            f"instead of --option {flagged[0]}=...",
            param_hint="--option",
        )
    check_fit_options(  # with -k auto the largest fit has --k-max clusters
        options, method, auto, n_clusters=k_max if auto else n_clusters, likelihood=likelihood
    )
    roles = {
        "id": id_column,
        "treatment": treatment,
        "outcome": outcome,
        "covariates": list(covariates),
        "lon": lon,
        "lat": lat,
        "crs": crs,
        "missing": missing,
        "stratum": stratum,
        "cluster": cluster,
    }
    trial = load_units(units, roles, image_id)
    chip_settings = {
        "size": size,
        "size_unit": size_unit,
        "bands": bands,
        "band_names": band_names,
        "on_edge": on_edge,
        "scale": scale,
    }
    embed_settings = {
        "encoder": encoder,
        "n_features": n_features,
        "n_components": n_components,
    }
    emb, sources = read_inputs(inputs, trial, chip_settings, embed_settings, seed)
    record = provenance(
        {"units": units, **sources},
        seeds={"fit": seed},
        roles={**roles, "image_id": trial.image_id, "covariates": list(trial.covariates)},
    )
    nuts = {"num_chains": chains, "num_warmup": draws, "num_samples": draws}
    settings = {
        "likelihood": likelihood,
        "method": method,
        "seed": seed,
        **(nuts if method != "svi" else {}),  # SVI's draws come from its guide
        "progress": progress,
        **options,  # num_warmup or num_samples given apart replace --draws
    }
    if accepts_provenance(fit):
        settings["provenance"] = record
    if auto:
        from imgcate.selection import compare_clusters

        comparison = run(compare_clusters, trial, emb, k_max=k_max, **settings)
        result = comparison.fits[comparison.best_k]
        if not quiet:
            columns = ["model", "method", "elpd", "elpd_diff", "dse", "selected"]
            click.echo(comparison.table[columns].to_string(float_format=lambda v: f"{v:.2f}"))
            click.echo(comparison.reason() + "\n")
    else:
        result = run(fit, trial, emb, n_clusters=n_clusters, **settings)
    run(result.save, output, overwrite=overwrite)
    written = [output]
    if comparison_path is not None:
        write_csv(comparison.table.reset_index(), comparison_path, overwrite)
        written.append(comparison_path)
    if effects_path is not None:
        write_csv(join_units(result.unit_effects(), trial), effects_path, overwrite)
        written.append(effects_path)
    if not quiet:
        click.echo(in_cli_words(result.summary()))
    click.echo("wrote " + ", ".join(map(str, written)))


#: Fit options with a command-line option of their own, which ``--option`` may not set.
FLAGGED_OPTIONS = {
    "n_clusters": "-k/--n-clusters",
    "k_max": "--k-max",
    "likelihood": "--likelihood",
    "method": "--method",
    "seed": "--seed",
    "num_chains": "--chains",
    "progress": "-v (bars also into a log file) or -q (none)",
}


def check_fit_options(options: dict[str, Any], method: str, auto: bool, **given: Any) -> None:
    """Refuse ``--option`` values the fit would refuse, before any work and as a usage error
    (exit 2, docs/cli.md): unknown names (with ``-k auto``, :func:`imgcate.compare_clusters`'
    keywords are known too), values of the wrong type or out of range, and options of the
    method not run."""
    from imgcate.config import FitConfig
    from imgcate.errors import InputError
    from imgcate.methods import check_method_options
    from imgcate.selection import check_comparison, compare_clusters

    settings = set(FitConfig.__dataclass_fields__)
    keywords = inspect.signature(compare_clusters).parameters.values()
    comparing = {p.name for p in keywords if p.kind is inspect.Parameter.KEYWORD_ONLY}
    known = settings | comparing if auto else set(settings)
    unknown = sorted(set(options) - known)
    if unknown and unknown[0] in comparing:
        raise click.BadParameter(
            f"{unknown[0]} is an option of the comparison of models (-k auto); give -k auto, "
            "or leave it out.",
            param_hint="--option",
        )
    if unknown:
        allowed = ", ".join(sorted(known - set(FLAGGED_OPTIONS)))
        raise click.BadParameter(
            f"unknown fit option {unknown[0]!r}; the options are: {allowed}.",
            param_hint="--option",
        )
    chosen = {name: value for name, value in options.items() if name in settings}
    try:
        FitConfig(**given).validate()
    except InputError as error:  # -k (or --k-max): their own options, not --option
        hint = "--k-max" if auto else "-k/--n-clusters"
        raise click.BadParameter(in_cli_words(str(error)), param_hint=hint) from None
    try:
        if auto:
            checked = inspect.signature(check_comparison).parameters
            check_comparison(**{name: options[name] for name in checked if name in options})
        check_method_options(method, chosen)
        FitConfig(method="svi" if method == "svi" else "nuts", **given, **chosen).validate()
    except InputError as error:
        raise click.BadParameter(in_cli_words(str(error)), param_hint="--option") from None


def accepts_provenance(function) -> bool:
    """Whether :func:`imgcate.fit` stores a ``provenance`` record (newer fit files do)."""
    return "provenance" in inspect.signature(function).parameters


@click.command(cls=Command)
@click.argument("fit_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("output", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--prob", default=0.9, show_default=True, help="Interval probability.")
@click.option(
    "--level",
    type=click.Choice(["unit", "cluster", "ate"]),
    default="unit",
    show_default=True,
    help="Which table to write.",
)
@click.option(
    "--units",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Units table to key unit effects by (default: the one the fit records, if any).",
)
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@common
def effects(fit_file, output, prob, level, units, overwrite, verbose, quiet):
    """Write the effects table of FIT_FILE to OUTPUT (csv).

    Unit effects are keyed by the units table's own id column, with its image id and
    coordinates, when the fit records its units table (fits made by `imgcate fit`) or
    --units names it.

    \b
    Examples:
      imgcate effects sim/fit.imgcate sim/unit_effects.csv
      imgcate effects sim/fit.imgcate sim/clusters.csv --level cluster --prob 0.95
    """
    from imgcate.results import load_fit

    start(verbose, quiet)
    if not 0 < prob < 1:
        raise click.BadParameter("must be between 0 and 1", param_hint="--prob")
    check_output(output, overwrite)
    read = recorded_units(fit_file) if units is None and level == "unit" else None
    if read is not None and same_path(output, read):
        raise click.UsageError(
            f"output {str(output)!r} is the units table the fit records, which the unit effects "
            "are keyed by: writing it would replace that file. Choose another output path."
        )
    result = run(load_fit, fit_file)
    table = {"unit": result.unit_effects, "cluster": result.cluster_effects, "ate": result.ate}[
        level
    ](prob)
    if level != "unit":
        table = table.reset_index()
    else:
        trial = units_of(fit_file, units)
        if trial is not None:
            table = join_units(table, trial)
    write_csv(table, output, overwrite)
    click.echo(f"wrote {output}")


def recorded_units(fit_file: Path) -> Path | None:
    """The units table a fit's provenance records, where it is still a file."""
    recorded = (fit_provenance(fit_file).get("inputs") or {}).get("units") or {}
    path = recorded.get("path") if isinstance(recorded, dict) else None
    return Path(path) if path and Path(path).is_file() else None


def units_of(fit_file: Path, units: Path | None):
    """The trial a fit was made from, as its provenance records it (None if unknown)."""
    record = fit_provenance(fit_file)
    roles = dict(record.get("roles") or {})
    given = units is not None
    if units is None:
        units = recorded_units(fit_file)
        if units is None:
            return None
    image_id = roles.pop("image_id", None)
    keep = {k: roles[k] for k in ("id", "lon", "lat", "crs") if roles.get(k) is not None}
    try:
        return load_units(units, keep, image_id, outcome=None)
    except click.ClickException as exc:
        if given:  # effects has no role options: the table must be the fit's own
            why = re.sub(r"; pass --[^;]*$", "", exc.message).rstrip(".")  # no such options
            raise click.BadParameter(
                f"cannot key this fit's unit effects ({why}); give the units table the fit "
                f"was made from (its id column: {keep.get('id', 'id')!r}).",
                param_hint="--units",
            ) from exc
        log.warning("unit effects not keyed by the units table (%s)", exc.message)
        return None


@click.command(cls=Command)
@click.argument("output_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--n-units", default=600, show_default=True, help="Units in the simulated trial.")
@click.option("--seed", default=0, show_default=True)
@click.option(
    "--draws",
    default=1000,
    show_default=True,
    help="Warm-up and kept draws per chain (fewer warn about mixing).",
)
@click.option("--scene-size", default=384, show_default=True, help="Scene side in pixels.")
@click.option("--overwrite", is_flag=True, help="Replace existing files in OUTPUT_DIR.")
@common
def demo(output_dir, n_units, seed, draws, scene_size, overwrite, verbose, quiet):
    """Run the whole pipeline on built-in demo data and write its outputs to OUTPUT_DIR.

    Writes a synthetic scene (scene.tif), simulates a trial on it whose effect depends on the
    built-up share around each unit (two clusters), extracts 32 px chips, embeds them (random
    convolutional features), compares a constant effect with K = 1..3 (PSIS-LOO, or spatial
    K-fold), keeps the model selected and writes the fit, cluster and unit effects, the ATE
    check, a summary, the segment sensitivity of the most typical images of each cluster, and
    the posterior effect map of the whole scene (Cloud-Optimized GeoTIFF and PNG preview).

    \b
    Example:
      imgcate demo demo-output --overwrite
    """
    from imgcate.demo import run_demo

    _, quiet, progress = start(verbose, quiet)
    # K = 1..3 clusters and 8 embedding components need a few dozen units
    check_minimum(
        ("--scene-size", scene_size, 128), ("--n-units", n_units, 60), ("--draws", draws, 1)
    )
    run(
        run_demo,
        output_dir,
        n_units=n_units,
        seed=seed,
        draws=draws,
        scene_size=scene_size,
        overwrite=overwrite,
        progress=progress,
        say=click.echo if not quiet else (lambda _: None),
    )
