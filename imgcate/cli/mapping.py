"""``imgcate map`` and ``imgcate aggregate``: posterior effect maps and their polygon means."""

from __future__ import annotations

from pathlib import Path

import click

from imgcate.cli.common import (
    EXISTING_FILE,
    POSITIVE_FINITE,
    RASTER_SOURCES,
    Command,
    band_option,
    check_minimum,
    check_output,
    common,
    in_cli_words,
    interrupted,
    parse_co,
    provenance,
    raster_argument,
    run,
    sigterm_as_interrupt,
    start,
)
from imgcate.errors import ImgcateError
from imgcate.raster import is_url


@click.command("map", cls=Command)
@click.argument(
    "fit_file", metavar="FIT", type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.argument("raster", nargs=-1, required=True, type=RASTER_SOURCES)
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
    "--band-name",
    "band_names",
    multiple=True,
    help="Name of each RASTER file when several single-band files are stacked (repeatable).",
)
@click.option(
    "--scale",
    type=POSITIVE_FINITE,
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
    help="Address of a running Dask scheduler, e.g. tcp://10.0.0.5:8786 (its workers must "
    "read RASTER by the same path or URL).",
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
    band_names,
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

    Bands: mean, sd, lower/upper interval bounds, prob_positive, cluster_prob_k, for a fit with
    a targeting slope image_propensity and outside_overlap (1 outside [0.1, 0.9]), then
    extrapolation (distance from the trial's images) and outside_support (1 beyond the trial's
    support); NaN outside the region. Tags record the fit file (SHA-256), the raster and the
    command (`imgcate info OUTPUT`). A PNG preview is written beside OUTPUT. RASTER is one file
    or several single-band files stacked as bands (named by --band-name, else by file name);
    each may be a URL (http:// or https://, best a Cloud-Optimized GeoTIFF), read with HTTP
    range requests. A block that cannot be read is tried again, then the map stops; with
    --resume-dir, running the same command again continues from that block.

    \b
    Examples:
      imgcate map fit.imgcate scene.tif effect_map.tif
      imgcate map fit.imgcate B1.tif B2.tif B3.tif map.tif --band-name blue \\
          --band-name green --band-name red
      imgcate map fit.imgcate scene.tif district.tif --region district.gpkg --stride 8
      imgcate map fit.imgcate scene.tif part.tif --bounds 400000 50000 405000 55000 \\
          --workers 4 --resume-dir map-blocks --co COMPRESS=ZSTD
      imgcate map fit.imgcate https://example.org/scene.tif map.tif --resume-dir blocks
      imgcate map fit.imgcate scene.tif map.tif --scheduler tcp://10.0.0.5:8786
    """
    from imgcate.maps import check_creation_options, fit_tile_size, tile_grid, write_map
    from imgcate.results import load_fit

    _, quiet, progress = start(verbose, quiet)
    if region is not None and bounds:
        raise click.UsageError("give either --region or --bounds, not both.")
    if not 0 < prob < 1:
        raise click.BadParameter("must be between 0 and 1", param_hint="--prob")
    check_minimum(
        ("--tile-size", 1 if tile_size is None else tile_size, 1),
        ("--stride", 1 if stride is None else stride, 1),
        ("--max-draws", max_draws, 1),
        ("--block-tiles", block_tiles, 1),
        ("--workers", workers, 1),
    )
    options = parse_co(creation_options)
    try:
        check_creation_options(options)
    except ImgcateError as exc:
        raise click.BadParameter(in_cli_words(str(exc)), param_hint="--co") from exc
    check_output(output, overwrite)
    if preview:
        check_output(output.with_suffix(".png"), overwrite)
    raster = raster_argument(raster, band_names)
    area = region if region is not None else (tuple(bounds) if bounds else None)
    hint = "--region" if region is not None else "--bounds"
    fit_result = run(load_fit, fit_file)
    try:
        tile_size = fit_tile_size(fit_result, tile_size)
    except ImgcateError as exc:
        raise click.BadParameter(in_cli_words(str(exc)), param_hint="--tile-size") from exc
    # checked before the map starts, the raster first (opened, a CRS, north-up, a tile's
    # size: not the region's fault), then the region; the map warns of a region past the raster
    for where in (None, area) if area is not None else (None,):
        step = tile_size if where is None else stride  # the raster's own check: a small grid
        try:
            tile_grid(raster, where, tile_size=tile_size, stride=step, stacklevel=None)
        except ImgcateError as exc:
            if where is None:
                raise click.ClickException(in_cli_words(str(exc))) from exc
            raise click.BadParameter(in_cli_words(str(exc)), param_hint=hint) from exc
    # SIGTERM and Ctrl-C stop the map as an error would: nothing at OUTPUT, no staging folder
    # beside it; the message says how many blocks were saved and how to resume
    with sigterm_as_interrupt() as received:
        try:
            written = run(
                write_map,
                fit_result,
                raster,
                output,
                area,
                tile_size=tile_size,
                stride=stride,
                prob=prob,
                max_draws=max_draws,
                block_tiles=block_tiles,
                workers=workers,
                scheduler=scheduler,
                checkpoint_dir=resume_dir,
                progress=progress,
                provenance=provenance({"fit": fit_file, "raster": raster}, seeds={"map": seed}),
                seed=seed,
                bands=band_option(bands),
                scale=scale,
                co=options,
                overwrite=overwrite,
                preview=preview,
            )
        except KeyboardInterrupt as exc:
            raise interrupted(exc, received, "map") from None
    click.echo(
        f"wrote {output}"
        + (f" and {written.preview}" if written.preview else "")
        + f": {written.tiles} tiles, {written.outside} outside the trial's support"
        + (
            f", {written.outside_overlap} outside its overlap [0.1, 0.9]"
            if written.outside_overlap is not None
            else ""
        )
    )


def map_record(path: Path) -> dict:
    """The tags and provenance of a map written by `imgcate map` / write_cog."""
    import rasterio

    from imgcate.provenance import KEY, loads

    try:
        with rasterio.open(path) as ds:
            tags = ds.tags()
    except rasterio.errors.RasterioError as exc:
        raise click.BadParameter(f"cannot be read as a GeoTIFF ({exc})", param_hint="MAP") from exc
    return {"tags": tags, "provenance": loads(tags.get(KEY))}


def recorded_path(record: dict, role: str):
    """The file (or {band: file}) a map's provenance records for ``role``, or None."""
    item = (record.get("provenance", {}).get("inputs") or {}).get(role)
    if isinstance(item, dict) and "path" in item:
        path = item["path"]  # a URL stays text: a Path would merge its '//'
        return (path if is_url(path) else Path(path)), item.get("sha256")
    if isinstance(item, dict) and item:
        return {band: v.get("path") for band, v in item.items()}, None
    return None, None


@click.command("aggregate", cls=Command)
@click.argument("map_file", metavar="MAP", type=EXISTING_FILE)
@click.argument("polygons", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("output", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--fit",
    "fit_file",
    type=EXISTING_FILE,
    default=None,
    help="The fit the map was made from [default: the one its tags record].",
)
@click.option(
    "--raster",
    "rasters",
    multiple=True,
    type=RASTER_SOURCES,
    help="The raster the map was made from (repeatable for stacked bands) [default: the "
    "one its tags record].",
)
@click.option("--band-name", "band_names", multiple=True, help="Names of stacked --raster files.")
@click.option("--prob", type=float, default=None, help="Interval probability [default: the map's].")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@common
def aggregate(
    map_file, polygons, output, fit_file, rasters, band_names, prob, overwrite, verbose, quiet
):
    """Average the effect over each polygon of POLYGONS; write OUTPUT (GeoPackage).

    For each polygon: posterior mean, sd and credible interval of its area-weighted average
    effect, computed from joint posterior draws over the polygon's tiles on MAP's tile grid
    (the same tile size, stride, draws and seed as MAP; the whole polygon, also where MAP
    covers less), P(average effect > 0), the number of tiles and the share of the polygon
    covered. The fit and the raster are those MAP's tags record (or --fit / --raster).

    \b
    Examples:
      imgcate aggregate effect_map.tif districts.gpkg district_effects.gpkg
      imgcate aggregate map.tif districts.gpkg out.gpkg --fit fit.imgcate --raster scene.tif
    """
    from imgcate.maps.aggregate import read_polygons
    from imgcate.maps.polygons import polygon_effects
    from imgcate.provenance import file_sha256
    from imgcate.results import load_fit

    start(verbose, quiet)
    if prob is not None and not 0 < prob < 1:
        raise click.BadParameter("must be between 0 and 1", param_hint="--prob")
    if Path(output).suffix.lower() != ".gpkg":
        raise click.BadParameter("must end in .gpkg", param_hint="OUTPUT")
    check_output(output, overwrite)
    record = map_record(map_file)
    tags = record["tags"]
    if "tile_size" not in tags:
        raise click.BadParameter(
            f"{str(map_file)!r} is not a map written by imgcate map (it has no tile_size "
            "tag); give the GeoTIFF that imgcate map wrote",
            param_hint="MAP",
        )
    try:  # before the fit is read: a wrong polygons file is a usage error, named
        read_polygons(polygons)
    except ImgcateError as exc:
        raise click.BadParameter(in_cli_words(str(exc)), param_hint="POLYGONS") from exc
    if fit_file is None:
        fit_file, digest = recorded_path(record, "fit")
        if fit_file is None or not Path(fit_file).is_file():
            raise click.UsageError(
                f"the fit MAP was made from ({fit_file}) is not there; give it with --fit."
            )
        if digest and file_sha256(fit_file) != digest:
            raise click.UsageError(
                f"{fit_file} changed since MAP was made from it (SHA-256 differs); give the "
                "map's fit with --fit, or map again."
            )
    if rasters:
        raster = raster_argument(rasters, band_names, "--raster")
    else:
        raster, _ = recorded_path(record, "raster")
        if raster is None:
            raise click.UsageError("MAP does not record its raster; give it with --raster.")
    fit = run(load_fit, fit_file)
    max_draws = int(tags.get("max_draws", 500))
    table = run(
        polygon_effects,
        fit,
        raster,
        polygons,
        output,
        tile_size=int(tags["tile_size"]),
        stride=int(tags["stride"]),
        prob=prob if prob is not None else float(tags.get("prob", 0.9)),
        max_draws=None if max_draws < 0 else max_draws,
        seed=int(tags.get("seed", 0)),
        overwrite=overwrite,
        provenance=provenance(
            {"map": map_file, "fit": fit_file, "raster": raster, "polygons": polygons},
            seeds={"draws": int(tags.get("seed", 0))},
        ),
    )
    click.echo(
        f"wrote {output}: {len(table)} polygons, {int((table['n_tiles'] > 0).sum())} with tiles"
    )
