"""Command line: ``imgcate demo | simulate | fit | effects | map``.

Manners of rasterio's ``rio``: INPUT OUTPUT positionals, ``--overwrite`` to replace files,
``-v/-q``, errors that point at the offending option, and examples at the end of each help.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import replace
from pathlib import Path

import click
import pandas as pd

from imgcate.errors import ImgcateError
from imgcate.output import atomic_path, check_writable, ensure_folder

log = logging.getLogger("imgcate")


class _LibraryFilter(logging.Filter):
    """Other libraries' records (Dask's scheduler logs at INFO) pass only from ``floor`` up:
    their loggers set their own levels, and the root level does not filter what propagates."""

    def __init__(self, floor: int) -> None:
        super().__init__()
        self.floor = floor

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.split(".")[0] == "imgcate" or record.levelno >= self.floor


def _setup_logging(verbose: int, quiet: int) -> None:
    level = logging.WARNING + 10 * (quiet - verbose)
    logging.basicConfig(level=max(level, logging.DEBUG), format="imgcate: %(message)s")
    log.setLevel(max(level, logging.DEBUG))
    for handler in logging.getLogger().handlers:
        for old in [f for f in handler.filters if isinstance(f, _LibraryFilter)]:
            handler.removeFilter(old)
        handler.addFilter(_LibraryFilter(max(level, logging.WARNING)))
    warnings.showwarning = _show_warning
    if quiet:
        warnings.simplefilter("ignore")


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings on the command line as one line each, without the source line they came from."""
    click.echo(f"imgcate: {category.__name__}: {message}", err=True)


#: Library arguments named in error messages ("pass covariate=<column name>", "pass their
#: crs='EPSG:....'") and the options that set them here.
_OPTION_OF_ARGUMENT = {
    "id": "--id-column",
    "treatment": "--treatment",
    "outcome": "--outcome",
    "covariate": "--covariate",
    "image_id": "--image-id",
    "lon": "--lon",
    "lat": "--lat",
    "crs": "--crs",
    "missing": "--missing",
}
_ARGUMENT = re.compile(r"\b(" + "|".join(_OPTION_OF_ARGUMENT) + r")=")


def _run(fn, *args, **kwargs):
    """Call library code, turning its errors into click errors the user reads."""
    try:
        return fn(*args, **kwargs)
    except ImgcateError as exc:
        message = _ARGUMENT.sub(lambda m: f"{_OPTION_OF_ARGUMENT[m.group(1)]} ", str(exc))
        raise click.ClickException(message) from exc


def _check_minimum(*checks: tuple[str, int, int]) -> None:
    """Each (option, value, minimum): a click error naming the option if value < minimum."""
    for option, value, minimum in checks:
        if value < minimum:
            raise click.BadParameter(f"must be at least {minimum}", param_hint=option)


verbosity = [
    click.option("-v", "--verbose", count=True, help="More messages (repeatable)."),
    click.option("-q", "--quiet", count=True, help="Fewer messages; hides warnings."),
]


def common(fn):
    """Add -v/-q to a command."""
    for option in reversed(verbosity):
        fn = option(fn)
    return fn


@click.group()
@click.version_option(package_name="imgcate")
def main() -> None:
    """Causal effect heterogeneity from satellite images."""


def _write_csv(frame: pd.DataFrame, path: Path, overwrite: bool) -> None:
    with atomic_path(path, overwrite=overwrite) as tmp:
        frame.to_csv(tmp, index=False)


def _write_embeddings(embeddings, path: Path, overwrite: bool) -> None:
    frame = pd.DataFrame(
        embeddings.values, columns=[f"e{j}" for j in range(embeddings.values.shape[1])]
    )
    frame.insert(0, "image_id", embeddings.image_ids)
    with atomic_path(path, overwrite=overwrite) as tmp:
        frame.to_parquet(tmp, index=False)


@main.command()
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
    from imgcate.simulate import simulate_trial

    _setup_logging(verbose, quiet)
    _check_minimum(("--n-clusters", n_clusters, 1))
    sim = _run(simulate_trial, seed, n_units, n_clusters)
    _run(ensure_folder, output_dir)
    for name in ("units.csv", "embeddings.parquet", "truth.csv"):
        _run(check_writable, output_dir / name, overwrite)
    data = pd.DataFrame(sim.trial.data.drop(columns="geometry"))
    _run(_write_csv, data, output_dir / "units.csv", overwrite)
    _run(_write_embeddings, sim.embeddings, output_dir / "embeddings.parquet", overwrite)
    truth = pd.DataFrame(
        {
            "id": sim.trial.ids,
            "cluster": sim.truth.cluster,
            "tau_unit": sim.truth.tau_unit,
            "cate": sim.truth.cate,
        }
    )
    _run(_write_csv, truth, output_dir / "truth.csv", overwrite)
    click.echo(f"wrote {output_dir}/units.csv, embeddings.parquet, truth.csv")


@main.command("fit")
@click.argument("units", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("embeddings", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("output", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--n-clusters", "-k", default=2, show_default=True, help="Effect clusters K.")
@click.option("--covariate", "covariates", multiple=True, help="Covariate column (repeatable).")
@click.option("--id-column", default="id", show_default=True)
@click.option("--treatment", default="treatment", show_default=True)
@click.option("--outcome", default="outcome", show_default=True)
@click.option("--lon", default=None, help="Longitude / x column [default: lon].")
@click.option("--lat", default=None, help="Latitude / y column [default: lat].")
@click.option(
    "--crs",
    default=None,
    help="CRS of the coordinate columns, e.g. EPSG:32636 [default: EPSG:4326].",
)
@click.option(
    "--missing",
    type=click.Choice(["error", "drop", "mean", "indicator"]),
    default="error",
    show_default=True,
    help="Missing covariate values.",
)
@click.option(
    "--image-id",
    default=None,
    help="Column of the image each unit looks at [default: image_id if the table has "
    "it, else each unit its own image].",
)
@click.option(
    "--likelihood",
    type=click.Choice(["gaussian", "student_t", "bernoulli"]),
    default="gaussian",
    show_default=True,
)
@click.option("--method", type=click.Choice(["nuts", "svi"]), default="nuts", show_default=True)
@click.option("--chains", default=4, show_default=True)
@click.option("--draws", default=500, show_default=True, help="Warm-up and kept draws per chain.")
@click.option("--seed", default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@common
def fit_command(
    units,
    embeddings,
    output,
    n_clusters,
    covariates,
    id_column,
    treatment,
    outcome,
    lon,
    lat,
    crs,
    missing,
    image_id,
    likelihood,
    method,
    chains,
    draws,
    seed,
    overwrite,
    verbose,
    quiet,
):
    """Fit the effect-cluster model to UNITS (csv/gpkg/parquet) and EMBEDDINGS; write OUTPUT.

    \b
    Example:
      imgcate simulate sim/
      imgcate fit sim/units.csv sim/embeddings.parquet sim/fit.imgcate \\
          --image-id image_id --covariate x0 --covariate x1 -k 2
    """
    from imgcate.embeddings import load_embeddings
    from imgcate.inference import fit
    from imgcate.units import read_units

    _setup_logging(verbose, quiet)
    _check_minimum(("--n-clusters", n_clusters, 1), ("--chains", chains, 1), ("--draws", draws, 1))
    _run(check_writable, output, overwrite)
    roles = {
        "id": id_column,
        "treatment": treatment,
        "outcome": outcome,
        "covariates": list(covariates),
        "lon": lon,
        "lat": lat,
        "crs": crs,
        "missing": missing,
    }
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*has an 'image_id' column")
        trial = _run(read_units, units, image_id=image_id, **roles)
    if image_id is None and "image_id" in trial.data.columns:  # the default column, if present
        # read_units only requires an image_id column to exist, which it does
        log.info("matching units to images by their 'image_id' column")
        trial = replace(trial, image_id="image_id")
    emb = _run(load_embeddings, embeddings)
    result = _run(
        fit,
        trial,
        emb,
        n_clusters=n_clusters,
        likelihood=likelihood,
        method=method,
        seed=seed,
        num_chains=chains,
        num_warmup=draws,
        num_samples=draws,
        progress=verbose > 0,
    )
    _run(result.save, output, overwrite=overwrite)
    if not quiet:
        click.echo(result.summary())
    click.echo(f"wrote {output}")


@main.command()
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
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@common
def effects(fit_file, output, prob, level, overwrite, verbose, quiet):
    """Write the effects table of FIT_FILE to OUTPUT (csv).

    \b
    Examples:
      imgcate effects sim/fit.imgcate sim/unit_effects.csv
      imgcate effects sim/fit.imgcate sim/clusters.csv --level cluster --prob 0.95
    """
    from imgcate.results import load_fit

    _setup_logging(verbose, quiet)
    if not 0 < prob < 1:
        raise click.BadParameter("must be between 0 and 1", param_hint="--prob")
    result = _run(load_fit, fit_file)
    table = {"unit": result.unit_effects, "cluster": result.cluster_effects, "ate": result.ate}[
        level
    ](prob)
    if level != "unit":
        table = table.reset_index()
    _run(_write_csv, table, output, overwrite)
    click.echo(f"wrote {output}")


def _parse_co(values: tuple[str, ...]) -> dict[str, str]:
    """``--co NAME=VALUE`` options as a dict."""
    out = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise click.BadParameter(
                f"{item!r} must be NAME=VALUE, e.g. --co COMPRESS=ZSTD", param_hint="--co"
            )
        out[name.strip().upper()] = value.strip()
    return out


def _band_option(values: tuple[str, ...]) -> list[int | str] | None:
    if not values:
        return None
    return [int(v) if v.isdigit() else v for v in values]


@main.command("map")
@click.argument(
    "fit_file", metavar="FIT", type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.argument("raster", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("output", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--region",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Vector file of polygons to map (any CRS).",
)
@click.option(
    "--bounds",
    type=float,
    nargs=4,
    default=None,
    metavar="W S E N",
    help="Bounds to map, in the raster's CRS.",
)
@click.option(
    "--tile-size",
    type=int,
    default=None,
    help="Tile side in pixels (default: the trial's chip size, which the fit records).",
)
@click.option(
    "--stride", type=int, default=None, help="Pixels between tiles (default: the tile size)."
)
@click.option("--prob", default=0.9, show_default=True, help="Interval probability.")
@click.option("--max-draws", default=500, show_default=True, help="Posterior draws used.")
@click.option(
    "--band",
    "bands",
    multiple=True,
    help="Raster band to read, number or description (repeatable; default all).",
)
@click.option(
    "--scale",
    type=float,
    default=None,
    help="Multiplier of raw values, as used when the trial's chips were extracted.",
)
@click.option("--block-tiles", default=2048, show_default=True, help="Tiles per block.")
@click.option(
    "--workers",
    default=1,
    show_default=True,
    help="Local Dask worker processes (1: run in this process).",
)
@click.option(
    "--scheduler",
    default=None,
    metavar="ADDRESS",
    help="Address of a running Dask scheduler (its workers must read RASTER).",
)
@click.option(
    "--co",
    "creation_options",
    multiple=True,
    metavar="NAME=VALUE",
    help="GDAL COG creation option (repeatable), e.g. --co COMPRESS=ZSTD.",
)
@click.option(
    "--resume-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Save finished blocks here; rerun with it to resume an interrupted job.",
)
@click.option(
    "--preview/--no-preview",
    default=True,
    show_default=True,
    help="Also write OUTPUT with suffix .png.",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the posterior draw subset.")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT (and its preview) if they exist.")
@common
def map_command(
    fit_file,
    raster,
    output,
    region,
    bounds,
    tile_size,
    stride,
    prob,
    max_draws,
    bands,
    scale,
    block_tiles,
    workers,
    scheduler,
    creation_options,
    resume_dir,
    preview,
    seed,
    overwrite,
    verbose,
    quiet,
):
    """Map the posterior effect of FIT over RASTER; write OUTPUT as a Cloud-Optimized GeoTIFF.

    Bands: mean, sd, lower/upper interval bounds, prob_positive, cluster_prob_k and
    extrapolation (distance from the trial's images); NaN outside the region. A PNG preview is
    written beside OUTPUT.

    \b
    Examples:
      imgcate map fit.imgcate scene.tif effect_map.tif
      imgcate map fit.imgcate scene.tif district.tif --region district.gpkg --stride 8
      imgcate map fit.imgcate scene.tif part.tif --bounds 400000 50000 405000 55000 \\
          --workers 4 --resume-dir map-blocks --co COMPRESS=ZSTD
    """
    from imgcate.maps import (
        check_creation_options,
        fit_tile_size,
        predict_map,
        tile_grid,
        write_cog,
    )
    from imgcate.results import load_fit

    _setup_logging(verbose, quiet)
    if region is not None and bounds:
        raise click.UsageError("give either --region or --bounds, not both.")
    if not 0 < prob < 1:
        raise click.BadParameter("must be between 0 and 1", param_hint="--prob")
    _check_minimum(
        ("--tile-size", tile_size or 1, 1),
        ("--stride", stride or 1, 1),
        ("--max-draws", max_draws, 1),
        ("--block-tiles", block_tiles, 1),
        ("--workers", workers, 1),
    )
    options = _parse_co(creation_options)
    try:
        check_creation_options(options)
    except ImgcateError as exc:
        raise click.BadParameter(str(exc), param_hint="--co") from exc
    _run(check_writable, output, overwrite)
    if preview:
        _run(check_writable, output.with_suffix(".png"), overwrite)
    area = region if region is not None else (tuple(bounds) if bounds else None)
    hint = "--region" if region is not None else "--bounds"
    fit_result = _run(load_fit, fit_file)
    try:
        tile_size = fit_tile_size(fit_result, tile_size)
    except ImgcateError as exc:
        raise click.BadParameter(str(exc), param_hint="--tile-size") from exc
    try:
        tile_grid(raster, area, tile_size=tile_size, stride=stride)
    except ImgcateError as exc:
        if area is None:
            raise click.ClickException(str(exc)) from exc
        raise click.BadParameter(str(exc), param_hint=hint) from exc
    dataset = _run(
        predict_map,
        fit_result,
        raster,
        area,
        tile_size=tile_size,
        stride=stride,
        prob=prob,
        max_draws=max_draws,
        block_tiles=block_tiles,
        workers=workers,
        scheduler=scheduler,
        checkpoint_dir=resume_dir,
        progress=not quiet,
        seed=seed,
        bands=_band_option(bands),
        scale=scale,
    )
    _run(write_cog, dataset, output, overwrite=overwrite, preview=preview, co=options)
    valid = int(dataset["mean"].notnull().sum())
    outside = int((dataset["outside_support"] == 1).sum())
    click.echo(
        f"wrote {output}"
        + (f" and {output.with_suffix('.png')}" if preview else "")
        + f": {valid} tiles, {outside} outside the trial's support"
    )


@main.command()
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
    convolutional features), compares K = 1..3 by PSIS-LOO, fits the chosen model and writes
    the fit, cluster and unit effects, the ATE check, a summary, the segment sensitivity of the
    most typical images of each cluster, and the posterior effect map of the whole scene
    (Cloud-Optimized GeoTIFF and PNG preview).

    \b
    Example:
      imgcate demo demo-output --overwrite
    """
    from imgcate.demo import run_demo

    _setup_logging(verbose, quiet)
    # K = 1..3 clusters and 8 embedding components need a few dozen units
    _check_minimum(
        ("--scene-size", scene_size, 128), ("--n-units", n_units, 60), ("--draws", draws, 1)
    )
    _run(
        run_demo,
        output_dir,
        n_units=n_units,
        seed=seed,
        draws=draws,
        scene_size=scene_size,
        overwrite=overwrite,
        progress=not quiet,
        say=click.echo,
    )


if __name__ == "__main__":
    main()
