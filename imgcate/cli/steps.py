"""``imgcate chips``, ``imgcate embed`` and ``imgcate embed-raster``: the steps from a units
table and a raster to embeddings that keep their encoder (``embed-raster`` in one step, a chunk
of images at a time, for trials whose chips would not fit in memory)."""

from __future__ import annotations

from pathlib import Path

import click

from imgcate.cli.common import (
    POSITIVE_FINITE,
    RASTER_SOURCES,
    Command,
    band_option,
    check_minimum,
    check_output,
    common,
    load_units,
    provenance,
    raster_argument,
    run,
    start,
    unit_role_options,
)


def chip_options(fn):
    """How chips are cut: shared by ``chips`` and ``fit`` given a raster."""
    options = [
        click.option(
            "--size", type=float, default=16, show_default=True, help="Chip size (see --size-unit)."
        ),
        click.option(
            "--size-unit", type=click.Choice(["px", "m"]), default="px", show_default=True
        ),
        click.option(
            "--band",
            "bands",
            multiple=True,
            help="Band to read, number or description (repeatable; default all).",
        ),
        click.option(
            "--band-name",
            "band_names",
            multiple=True,
            help="Name of each RASTER file when several single-band files are stacked "
            "(repeatable, in order; default: the file names).",
        ),
        click.option(
            "--on-edge",
            type=click.Choice(["error", "pad", "drop"]),
            default="error",
            show_default=True,
            help="Chips crossing the raster edge or holding nodata.",
        ),
        click.option(
            "--scale",
            type=POSITIVE_FINITE,
            default=None,
            help="Multiplier of raw values (above 0).",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def chips_for(trial, raster, *, size, size_unit, bands, on_edge, scale):
    """The chips of a trial's units (options as the command line gives them)."""
    from imgcate.chips import extract_chips

    return run(
        extract_chips,
        trial,
        raster,
        size,
        size_unit=size_unit,
        bands=band_option(bands),
        on_edge=on_edge,
        scale=scale,
    )


@click.command("chips", cls=Command)
@click.argument("units", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("raster", nargs=-1, required=True, type=RASTER_SOURCES)
@click.argument("output", type=click.Path(dir_okay=False, path_type=Path))
@unit_role_options
@chip_options
@click.option(
    "--vrt",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the stack of several RASTER files as this VRT (named bands).",
)
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT (and --vrt) if they exist.")
@common
def chips_command(
    units,
    raster,
    output,
    id_column,
    lon,
    lat,
    crs,
    image_id,
    size,
    size_unit,
    bands,
    band_names,
    on_edge,
    scale,
    vrt,
    overwrite,
    verbose,
    quiet,
):
    """Cut one chip around each unit of UNITS from RASTER; write OUTPUT (.npz).

    RASTER is one file, or several single-band files stacked as bands in the order given
    (named by --band-name, else by their file names). The chips keep their geotransforms, CRS,
    band names and provenance; `imgcate embed` reads them.

    \b
    Examples:
      imgcate chips villages.csv scene.tif chips.npz --size 16
      imgcate chips villages.csv B1.tif B2.tif B3.tif chips.npz \\
          --band-name blue --band-name green --band-name red --vrt scene.vrt
    """
    from imgcate.raster import stack_bands

    start(verbose, quiet)
    if Path(output).suffix.lower() != ".npz":
        raise click.BadParameter("must end in .npz", param_hint="OUTPUT")
    check_output(output, overwrite)
    if size <= 0:
        raise click.BadParameter("must be positive", param_hint="--size")
    source = raster_argument(raster, band_names)
    if vrt is not None:
        if not isinstance(source, dict):
            raise click.BadParameter("needs several RASTER files to stack", param_hint="--vrt")
        check_output(vrt, overwrite)
    roles = {"id": id_column, "lon": lon, "lat": lat, "crs": crs}
    trial = load_units(units, roles, image_id, outcome=None)
    chips = chips_for(
        trial,
        source,
        size=size,
        size_unit=size_unit,
        bands=bands,
        on_edge=on_edge,
        scale=scale,
    )
    if vrt is not None:
        run(stack_bands, source, vrt, overwrite=overwrite)
    record = provenance(
        {"units": units, "raster": source},
        settings={"size": size, "size_unit": size_unit, "on_edge": on_edge, "scale": scale},
        roles={"id": id_column, "image_id": image_id, "lon": lon, "lat": lat, "crs": crs},
    )
    from dataclasses import replace

    run(replace(chips, provenance=record).save, output, overwrite=overwrite)
    click.echo(
        f"wrote {output}: {chips.n_images} chips of {chips.n_bands} bands "
        f"{list(chips.band_names)}, {chips.values.shape[-2]}x{chips.values.shape[-1]} px, for "
        f"{len(chips.unit_ids)} units" + (f"; and {vrt}" if vrt else "")
    )
    dropped = [str(i) for i in chips.dropped_units]
    if dropped:
        click.echo(
            f"{len(dropped)} units dropped (--on-edge drop: their chips cross the raster's edge "
            f"or hold nodata): {', '.join(dropped[:20])}{', ...' if len(dropped) > 20 else ''}; "
            "remove them from the units table before imgcate fit, or use --on-edge pad.",
            err=True,
        )


def embed_options(fn):
    """Encoder settings: shared by ``embed`` and ``fit`` given a raster."""
    options = [
        click.option(
            "--encoder", type=click.Choice(["rcf", "cnn"]), default="rcf", show_default=True
        ),
        click.option("--n-features", default=256, show_default=True, help="Random features."),
        click.option("--n-components", default=16, show_default=True, help="PCA components kept."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@click.command("embed", cls=Command)
@click.argument("chips", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("output", type=click.Path(dir_okay=False, path_type=Path))
@embed_options
@click.option("--seed", default=0, show_default=True, help="Seed of the encoder.")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@common
def embed_command(
    chips, output, encoder, n_features, n_components, seed, overwrite, verbose, quiet
):
    """Embed the chips of CHIPS (from `imgcate chips`); write OUTPUT (.parquet).

    OUTPUT is a table (image_id, e0, e1, ...) that any Parquet reader opens; its metadata hold
    the fitted encoder (so a fit on it can map new tiles) and the provenance.

    \b
    Example:
      imgcate embed chips.npz embeddings.parquet --n-components 16 --seed 0
    """
    from imgcate.chipfile import load_chips
    from imgcate.embeddings import embed

    start(verbose, quiet)
    check_minimum(("--n-features", n_features, 1), ("--n-components", n_components, 1))
    if Path(output).suffix.lower() != ".parquet":
        raise click.BadParameter("must end in .parquet", param_hint="OUTPUT")
    check_output(output, overwrite)
    cut = run(load_chips, chips)
    emb = run(embed, cut, encoder, n_features=n_features, n_components=n_components, seed=seed)
    from dataclasses import replace

    upstream = cut.provenance.get("inputs") or {}
    record = provenance(
        {"chips": chips, **{k: v for k, v in upstream.items() if k in ("units", "raster")}},
        seeds={"encoder": seed},
        encoder={"name": encoder, "n_features": n_features, "n_components": n_components},
        chip_settings=cut.provenance.get("settings"),
        roles=cut.provenance.get("roles"),
    )
    run(replace(emb, provenance=record).save, output, overwrite=overwrite)
    click.echo(f"wrote {output}: {emb.values.shape[0]} images x {emb.n_features} features")


@click.command("embed-raster", cls=Command)
@click.argument("units", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("raster", nargs=-1, required=True, type=RASTER_SOURCES)
@click.argument("output", type=click.Path(dir_okay=False, path_type=Path))
@unit_role_options
@chip_options
@embed_options
@click.option("--seed", default=0, show_default=True, help="Seed of the sample and the encoder.")
@click.option(
    "--chunk-images",
    default=16_384,
    show_default=True,
    help="Images read, embedded and written at a time (memory grows with it).",
)
@click.option(
    "--fit-images",
    default=20_000,
    show_default=True,
    help="Images drawn at random to fit the encoder on (memory grows with it).",
)
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@common
def embed_raster_command(
    units,
    raster,
    output,
    id_column,
    lon,
    lat,
    crs,
    image_id,
    size,
    size_unit,
    bands,
    band_names,
    on_edge,
    scale,
    encoder,
    n_features,
    n_components,
    seed,
    chunk_images,
    fit_images,
    overwrite,
    verbose,
    quiet,
):
    """Cut and embed the chips of UNITS from RASTER in chunks; write OUTPUT (.parquet).

    For trials whose chips would not fit in memory (`imgcate chips` holds them all): the
    encoder is fitted on the chips of --fit-images images drawn at random, then the images are
    cut, embedded and written --chunk-images at a time. OUTPUT is the file `imgcate embed`
    writes (encoder and provenance in its metadata), for `imgcate fit`. The units' columns and
    chip options are those of `imgcate chips` (without --vrt), the encoder's those of
    `imgcate embed`.

    \b
    Examples:
      imgcate embed-raster villages.csv scene.tif embeddings.parquet --size 16 --seed 0
      imgcate embed-raster units.gpkg scene.tif embeddings.parquet --size 32 \\
          --chunk-images 8192 --fit-images 5000 --on-edge drop
    """
    from imgcate.embeddingfile import embed_to_file

    _, _, progress = start(verbose, quiet)
    check_minimum(
        ("--n-features", n_features, 1),
        ("--n-components", n_components, 1),
        ("--chunk-images", chunk_images, 1),
        ("--fit-images", fit_images, 1),
    )
    if size <= 0:
        raise click.BadParameter("must be positive", param_hint="--size")
    if Path(output).suffix.lower() != ".parquet":
        raise click.BadParameter("must end in .parquet", param_hint="OUTPUT")
    check_output(output, overwrite)
    source = raster_argument(raster, band_names)
    roles = {"id": id_column, "lon": lon, "lat": lat, "crs": crs}
    trial = load_units(units, roles, image_id, outcome=None)
    settings = {"size": size, "size_unit": size_unit, "on_edge": on_edge, "scale": scale}
    record = provenance(
        {"units": units, "raster": source},
        seeds={"encoder": seed},
        encoder={"name": encoder, "n_features": n_features, "n_components": n_components},
        chip_settings={**settings, "bands": list(bands) or None},
        roles={"id": id_column, "image_id": image_id, "lon": lon, "lat": lat, "crs": crs},
    )
    run(
        embed_to_file,
        trial,
        source,
        size,
        output,
        encoder=encoder,
        n_features=n_features,
        n_components=n_components,
        chunk_images=chunk_images,
        fit_images=fit_images,
        seed=seed,
        overwrite=overwrite,
        progress=progress,
        provenance=record,
        size_unit=size_unit,
        bands=band_option(bands),
        on_edge=on_edge,
        scale=scale,
    )
    click.echo(embedded_summary(output, trial, chunk_images))


def embedded_summary(path: Path, trial, chunk_images: int) -> str:
    """One line on an embeddings file written in chunks (sizes and the encoder's sample from
    its Parquet footer: no rows are read back)."""
    import json
    import math

    import pandas as pd
    import pyarrow.parquet as pq

    from imgcate.embeddingfile import META_KEY

    footer = pq.read_metadata(path)
    streamed = json.loads(footer.metadata[META_KEY])["provenance"]["streamed"]
    n_images = len(pd.unique(trial.image_keys))
    chunks = math.ceil(n_images / chunk_images)
    dropped = n_images - footer.num_rows
    return (
        f"wrote {path}: {footer.num_rows} images x {footer.num_columns - 1} features, in "
        f"{chunks} chunk{'s' * (chunks != 1)} of up to {chunk_images} images; encoder fitted on "
        f"a sample of {streamed['fit_images']} images"
        + (f"; {dropped} images dropped (--on-edge drop)" if dropped else "")
    )
