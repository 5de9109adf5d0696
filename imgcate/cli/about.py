"""``imgcate info FILE``: what a fit, embeddings, chips, map or GeoPackage holds, where it
came from, and its diagnostics."""

from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path

import click

from imgcate.cli.common import Command, common, in_cli_words, run, start
from imgcate.provenance import KEY, loads, summary_lines

#: The sampler's settings ``imgcate info`` shows for a NUTS fit, its MAP searches too (an SVI fit:
#: its steps and draws).
NUTS_SETTINGS = ("num_chains", "num_warmup", "num_samples", "init_restarts")


def kind_of(path: Path) -> str:
    """fit, embeddings, chips, map, geopackage or unknown (by content, not only suffix)."""
    suffix = path.suffix.lower()
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            if "meta.json" in zf.namelist():
                return "fit"
    if suffix == ".npz":
        return "chips"
    if suffix == ".parquet":
        return "embeddings"
    if suffix == ".gpkg":
        return "geopackage"
    if suffix in (".tif", ".tiff", ".vrt"):
        return "map"
    if suffix == ".csv":
        return "table"
    return "unknown"


def table_lines(path: Path) -> list[str]:
    """What a CSV table holds; tables (unit and cluster effects) carry no provenance."""
    import pandas as pd

    try:
        frame = pd.read_csv(path)
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise click.BadParameter(
            f"{str(path)!r} cannot be read as a CSV table: {exc}", param_hint="FILE"
        ) from exc
    return [
        f"{path}: a table of {len(frame)} rows, columns {list(frame.columns)}",
        "  provenance: none in the file (CSV tables carry none); the fit that wrote it has it: "
        "imgcate info FIT.imgcate",
    ]


def fit_lines(path: Path) -> list[str]:
    from imgcate.cli.modelling import fit_provenance
    from imgcate.fitfile import saved_settings
    from imgcate.results import load_fit

    with zipfile.ZipFile(path) as zf:
        meta = json.loads(zf.read("meta.json"))
    config = saved_settings(meta.get("config") or {})
    lines = [f"{path}: imgcate fit (format {meta.get('format_version')})"]
    draws = ("svi_steps", "svi_draws") if config.get("method") == "svi" else NUTS_SETTINGS
    keys = ("n_clusters", "likelihood", "deviation", "method", *draws, "seed")
    settings = [f"{k}={config[k]}" for k in keys if k in config]
    if config.get("noise_scale") == "image":
        settings.insert(2, "noise_scale=image")
    if config.get("equal_effects"):  # compare_clusters' constant-effect model
        settings.insert(1, "equal_effects=True (a constant effect)")
    memberships = config["baseline_clusters"]
    if memberships != "own" and config.get("n_clusters", 1) > 1 and not config.get("equal_effects"):
        settings.insert(1, f"baseline_clusters={memberships}")
    lines.append("  settings: " + ", ".join(settings))
    lines.append("provenance:")
    lines += summary_lines(fit_provenance(path))
    try:
        result = run(load_fit, path)
    except click.ClickException as exc:  # what could be read, then the error (exit 1)
        click.echo("\n".join(lines))
        raise click.ClickException(f"cannot load the posterior: {exc.message}") from exc
    encoder = result.encoder
    spec = getattr(encoder, "chip_spec", None) or {}
    lines.append(
        "  encoder: "
        + (
            "none (this fit cannot map new tiles; fit on embeddings from imgcate embed)"
            if encoder is None
            else f"{type(encoder).__name__}, chips {spec.get('size_px')} px, bands "
            f"{spec.get('band_names')}"
        )
    )
    lines.append(f"  units: {len(result.unit_ids)}")
    lines.append("diagnostics:")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        problems = result.check_convergence() if hasattr(result, "check_convergence") else []
    problems = [in_cli_words(p) for p in problems]
    checked = "no convergence problems (R-hat, ESS, divergences)"
    if result.config.method != "nuts":
        checked = "convergence not checked (SVI: one guide, no chains for R-hat or ESS)"
    lines += [f"  {p}" for p in problems] or [f"  {checked}"]
    lines.append("summary:")
    lines += ["  " + line for line in in_cli_words(result.summary()).splitlines()]
    return lines


def embeddings_lines(path: Path) -> list[str]:
    from imgcate.embeddings import load_embeddings

    emb = run(load_embeddings, path)
    lines = [f"{path}: imgcate embeddings", f"  {emb!r}"]
    lines.append(f"  encoder: {emb_encoder_text(emb)}")
    lines.append("provenance:")
    return lines + summary_lines(emb.provenance)


def emb_encoder_text(emb) -> str:
    if emb.encoder is None:
        return "none (a fit on these embeddings cannot map new tiles)"
    spec = getattr(emb.encoder, "chip_spec", None) or {}
    name = type(emb.encoder).__name__
    return f"{name}, chips {spec.get('size_px')} px, bands {spec.get('band_names')}"


def chips_lines(path: Path) -> list[str]:
    from imgcate.chipfile import load_chips

    chips = run(load_chips, path)
    return [f"{path}: imgcate chips", f"  {chips!r}", "provenance:"] + summary_lines(
        chips.provenance
    )


def map_lines(path: Path) -> list[str]:
    import numpy as np
    import rasterio

    with rasterio.open(path) as ds:
        tags, names = ds.tags(), ds.descriptions
        lines = [
            f"{path}: {ds.width} x {ds.height} px, {ds.count} bands, {ds.crs}, "
            f"pixel {abs(ds.transform.a):g} x {abs(ds.transform.e):g}",
            f"  bands: {list(names)}",
        ]
        if "outside_support" in names:
            outside = ds.read(names.index("outside_support") + 1)
            mean = ds.read(names.index("mean") + 1)
            valid = np.isfinite(mean)
            lines.append(
                f"  {int(valid.sum())} tiles with a value; {float(np.nanmean(outside)):.1%} "
                f"outside the trial's support; mean CATE {float(np.nanmean(mean)):.3g}"
            )
        if "outside_overlap" in names:  # a map of a fit with a targeting slope
            overlap = ds.read(names.index("outside_overlap") + 1)
            lines.append(f"  {float(np.nanmean(overlap)):.1%} outside the overlap [0.1, 0.9]")
    shown = {k: v for k, v in tags.items() if k not in (KEY, "AREA_OR_POINT")}
    lines += [f"  {k}: {v}" for k, v in sorted(shown.items())]
    lines.append("provenance:")
    return lines + summary_lines(loads(tags.get(KEY)))


def geopackage_metadata(path: Path) -> tuple[dict, dict]:
    """What pyogrio reads of a GeoPackage, and the metadata imgcate wrote: the layer's (a
    dataset's metadata makes GDAL write a ``.aux.xml`` beside the file whenever it is read),
    else the dataset's (aggregates written by earlier versions)."""
    import pyogrio

    info = pyogrio.read_info(path)
    return info, info.get("layer_metadata") or info.get("dataset_metadata") or {}


def geopackage_lines(path: Path) -> list[str]:
    info, meta = geopackage_metadata(path)
    lines = [f"{path}: {info.get('features')} features, fields {list(info.get('fields', []))}"]
    lines += [f"  {k}: {v}" for k, v in sorted(meta.items()) if k != KEY]
    lines.append("provenance:")
    return lines + summary_lines(loads(meta.get(KEY)))


@click.command("info", cls=Command)
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the provenance record as JSON.")
@common
def info(file, as_json, verbose, quiet):
    """What FILE holds, where it came from (provenance) and its diagnostics.

    FILE: a fit (.imgcate), embeddings (.parquet), chips (.npz), a map (.tif) or polygon
    aggregates (.gpkg) written by imgcate; of a table (.csv), its rows and columns.

    \b
    Examples:
      imgcate info fit.imgcate
      imgcate info effect_map.tif --json
    """
    start(verbose, quiet)
    kind = kind_of(file)
    readers = {
        "fit": fit_lines,
        "embeddings": embeddings_lines,
        "chips": chips_lines,
        "map": map_lines,
        "geopackage": geopackage_lines,
        "table": table_lines,
    }
    if kind not in readers:
        if file.suffix.lower() == ".imgcate":  # a damaged fit: the fit reader says what is wrong
            from imgcate.errors import InputError
            from imgcate.fitfile import read_fit_file

            try:
                read_fit_file(file)
            except InputError as exc:
                raise click.BadParameter(in_cli_words(str(exc)), param_hint="FILE") from exc
        raise click.BadParameter(
            f"{str(file)!r} is not a file imgcate wrote (.imgcate, .parquet, .npz, .tif, .gpkg)",
            param_hint="FILE",
        )
    if as_json:
        if kind == "table":
            raise click.BadParameter(
                f"{str(file)!r} is a CSV table, which holds no provenance record; run "
                "imgcate info --json on the fit that wrote it.",
                param_hint="FILE",
            )
        click.echo(json.dumps(record_of(file, kind), indent=2))
        return
    click.echo("\n".join(readers[kind](file)))


def record_of(path: Path, kind: str) -> dict:
    """The provenance record of a file imgcate wrote."""
    if kind == "fit":
        from imgcate.cli.modelling import fit_provenance

        return fit_provenance(path)
    if kind == "embeddings":
        from imgcate.embeddingfile import read_meta

        return (read_meta(path)[0] or {}).get("provenance") or {}
    if kind == "chips":
        from imgcate.chipfile import read_chips_meta

        return read_chips_meta(path).get("provenance") or {}
    if kind == "map":
        import rasterio

        with rasterio.open(path) as ds:
            return loads(ds.tags().get(KEY))
    return loads(geopackage_metadata(path)[1].get(KEY))
