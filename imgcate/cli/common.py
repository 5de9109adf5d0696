"""What every command shares: logging and warnings, -v/-q, progress, errors in the user's
words (naming the option), provenance of the command line, and output helpers."""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import re
import signal
import sys
import threading
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pandas as pd
import rasterio.errors

from imgcate.errors import ImgcateError
from imgcate.output import check_writable, write_table
from imgcate.raster import file_stem, is_url
from imgcate.windows import gdal_errors, gdal_words

#: An existing file (rasters, fits, chips, units tables).
EXISTING_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


class RasterSource(click.ParamType):
    """A raster file that exists, or a URL (``http(s)://...``, ``/vsicurl/...``) kept as text
    and read over HTTP."""

    name = "raster"

    def convert(self, value, param, ctx):
        if isinstance(value, str) and is_url(value):
            return value.strip()
        return EXISTING_FILE.convert(value, param, ctx)


RASTER_SOURCES = RasterSource()


class PositiveFinite(click.ParamType):
    """A number above 0 and finite (``--scale``: 0 blanks every chip, nan and inf too)."""

    name = "float"

    def convert(self, value, param, ctx):
        number = click.FLOAT.convert(value, param, ctx)
        if not (math.isfinite(number) and number > 0):
            self.fail(f"{value!r} is not a finite number above 0.", param, ctx)
        return number


POSITIVE_FINITE = PositiveFinite()

log = logging.getLogger("imgcate")


class LibraryFilter(logging.Filter):
    """Other libraries' records (Dask's scheduler logs at INFO) pass only from ``floor`` up:
    their loggers set their own levels, and the root level does not filter what propagates."""

    def __init__(self, floor: int) -> None:
        super().__init__()
        self.floor = floor

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.split(".")[0] == "imgcate" or record.levelno >= self.floor


def setup_logging(verbose: int, quiet: int) -> None:
    """Log level from -v/-q (WARNING by default); warnings as one line each; -q hides them."""
    level = logging.WARNING + 10 * (quiet - verbose)
    logging.basicConfig(level=max(level, logging.DEBUG), format="imgcate: %(message)s")
    log.setLevel(max(level, logging.DEBUG))
    for handler in logging.getLogger().handlers:
        for old in [f for f in handler.filters if isinstance(f, LibraryFilter)]:
            handler.removeFilter(old)
        handler.addFilter(LibraryFilter(max(level, logging.WARNING)))
    warnings.showwarning = show_warning
    if quiet:
        warnings.simplefilter("ignore")


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings on the command line as one line each, without the source line they came from,
    in the command line's words (:func:`in_cli_words`)."""
    click.echo(f"imgcate: {category.__name__}: {in_cli_words(str(message))}", err=True)


#: Library arguments named in error messages ("pass covariate=<column name>", "pass their
#: crs='EPSG:....'") and the options that set them here.
OPTION_OF_ARGUMENT = {
    "id": "--id-column",
    "treatment": "--treatment",
    "outcome": "--outcome",
    "covariate": "--covariate",
    "covariates": "--covariate",
    "image_id": "--image-id",
    "lon": "--lon",
    "lat": "--lat",
    "crs": "--crs",
    "missing": "--missing",
    "stratum": "--stratum",
    "cluster": "--cluster",
    "bands": "--band",
    "size": "--size",
    "on_edge": "--on-edge",
    "scale": "--scale",
    "polygons": "--polygons",
}
_ARGUMENT = re.compile(r"\b(" + "|".join(OPTION_OF_ARGUMENT) + r")=([,)]?)")
#: Advice in the library's words (Python arguments) and the same advice on the command line.
CLI_PHRASES = (
    ("pass overwrite=True (--overwrite)", "pass --overwrite"),
    ("pass covariates=[<column name>, ...]", "pass --covariate <column name> (once for each)"),
    ("(raise num_samples / --draws)", "(raise --draws)"),
    ("(raise target_accept)", "(raise --option target_accept=0.95)"),
    ("raise init_restarts", "raise --option init_restarts=64"),
    (
        "Compare fewer clusters (imgcate.compare_clusters)",
        "Compare clusters (-k auto) or fit fewer (-k)",
    ),
    (
        "describe them (imgcate.raster.stack_bands(..., names=...))",
        "name them (stacked files: --band-name, once per file, in order; one multi-band file: "
        "write its band descriptions, e.g. with rasterio's set_band_description)",
    ),
    ("; names= or a mapping in Python)", ")"),
    ("imgcate.fit(n_clusters=1)", "-k 1"),
    ("with EffectFit.save() (or imgcate fit)", "with imgcate fit"),
    ("try noise_scale='image'", "try --option noise_scale=image"),
    ("or map on this machine, without a scheduler", "or leave out --scheduler"),
    ("or leave scheduler out.", "or leave out --scheduler."),
    ("which method='nuts' does not run", "which --method nuts does not run"),
    ("which method='svi' does not run", "which --method svi does not run"),
    ("choose method='svi' (or 'auto'", "choose --method svi (or auto"),
    ("or choose method='nuts' (or 'auto')", "or choose --method nuts (or auto)"),
    ("pass method='svi' (or 'auto')", "pass --method svi (or auto)"),
    ("method='auto' gives to NUTS", "--method auto gives to NUTS"),
    ("method='auto' chose SVI", "--method auto chose SVI"),
    ("pass method='nuts' for exact inference", "pass --method nuts for exact inference"),
    ("or drop those units with trial.subset(...).", "or remove those rows from the units table."),
    (
        "leave crs out (it is for coordinate columns or a geometry without a CRS)",
        "leave out --crs (it is for --lon/--lat columns or a geometry without a CRS)",
    ),
    ("(e.g. gdf.set_crs('EPSG:4326')).", "(e.g. ogr2ogr -a_srs EPSG:4326 out.gpkg in.gpkg)."),
    ("embeddings made by imgcate.embed (which", "embeddings made by imgcate embed (which"),
    (
        "fit the units whose images have embeddings: trial.subset(np.isin(trial.image_keys, "
        "load_embeddings(path).image_ids)).",
        "remove them from the units table before `imgcate fit` (OUTPUT's image_id column "
        "lists the images kept), or pass --on-edge pad.",
    ),
)
#: Python spellings dropped where the message gives the option beside them
#: ("bands=['red', 'nir'] / --band red --band nir").
_PYTHON_BESIDE_OPTION = re.compile(r"\bbands=\[[^\]]*\] / ")
#: A map's resume advice: "checkpoint_dir='blocks' (imgcate map ... --resume-dir blocks)"
#: reads "--resume-dir blocks" on the command line.
_CHECKPOINT_ADVICE = re.compile(
    r"checkpoint_dir=(?:'[^']*')? \(imgcate map (?:\.\.\. )?(--resume-dir[^)]*)\)"
)


def in_cli_words(message: str) -> str:
    """A library message with its advice in options: ``covariate=`` becomes ``--covariate``,
    ``raise num_samples`` becomes ``raise --draws`` (:data:`CLI_PHRASES`)."""
    for library, cli in CLI_PHRASES:
        message = message.replace(library, cli)
    message = _PYTHON_BESIDE_OPTION.sub("", message)
    message = _CHECKPOINT_ADVICE.sub(r"\1", message)
    message = message.replace("(checkpoint_dir / --resume-dir)", "(--resume-dir)")
    # "pass covariate=<name>" -> "pass --covariate <name>"; "(stratum=, cluster=)" ->
    # "(--stratum, --cluster)"
    return _ARGUMENT.sub(lambda m: OPTION_OF_ARGUMENT[m.group(1)] + (m.group(2) or " "), message)


def run(fn, *args, **kwargs):
    """Call library code, turning its errors into click errors the user reads."""
    try:
        return fn(*args, **kwargs)
    except ImgcateError as exc:
        raise click.ClickException(in_cli_words(str(exc))) from exc


def same_path(a: Path, b: Path) -> bool:
    """Whether two paths name one file (the same file by any spelling or link, where both
    exist)."""
    if a.exists() and b.exists():
        return a.samefile(b)
    return a.resolve() == b.resolve()


def check_output(path: Path, overwrite: bool) -> None:
    """:func:`imgcate.output.check_writable` for an output of the running command, which must
    also not be one of the command's other paths (an input that ``--overwrite`` would destroy,
    or another output): a usage error naming both, before any work."""
    ctx = click.get_current_context(silent=True)
    for param, value in _path_values(ctx) if ctx is not None else ():
        if value is not path and same_path(Path(value), Path(path)):
            what = (param.metavar or param.name.upper()).rstrip(".")
            what = param.opts[0] if isinstance(param, click.Option) else what
            raise click.UsageError(
                f"output {str(path)!r} is also given as {what}: writing it would replace "
                "that file. Choose another output path."
            )
    run(check_writable, path, overwrite)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[dict]:
    """SIGTERM (a batch system's time limit, ``docker stop``, ``kill``) stops the command as
    Ctrl-C does: a ``KeyboardInterrupt`` that runs every cleanup on its way out (no partial
    output, no staging folder left). Yields a dict whose ``"signal"`` is the signal received,
    if any. Outside the main thread (where Python cannot handle signals) nothing changes."""
    received: dict = {"signal": None}
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def stop(signum, frame):
        received["signal"] = signum
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the cleanup
        raise KeyboardInterrupt("terminated")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield received
    finally:  # a handler set outside Python reads as None: the default then
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def interrupted(exc: KeyboardInterrupt, received: dict, command: str) -> SystemExit:
    """Say on stderr that ``command`` was interrupted, with the library's advice (how to resume)
    in options, and the exit status a shell expects (128 + the signal: 130 for Ctrl-C, 143 for
    SIGTERM)."""
    signum = received.get("signal") or signal.SIGINT
    text = str(exc) if str(exc) not in ("", "terminated") else "interrupted."
    click.echo(f"imgcate {command}: {in_cli_words(text)}", err=True)
    return SystemExit(128 + int(signum))


def check_minimum(*checks: tuple[str, int, int]) -> None:
    """Each (option, value, minimum): a click error naming the option if value < minimum."""
    for option, value, minimum in checks:
        if value < minimum:
            raise click.BadParameter(f"must be at least {minimum}", param_hint=option)


def verbosity(ctx: click.Context, verbose: int, quiet: int) -> tuple[int, int]:
    """-v/-q of the command added to those given to the group (``imgcate -q fit ...``)."""
    group = (ctx.find_root().obj or {}) if ctx is not None else {}
    return verbose + group.get("verbose", 0), quiet + group.get("quiet", 0)


class Command(click.Command):
    """A command whose help ends with its examples (rio's manners): the docstring's
    ``Example:`` / ``Examples:`` section is printed after the options, as the epilog."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.help and self.epilog is None:
            text = inspect.cleandoc(self.help)
            found = re.search(r"^\x08\n(?=Examples?:)", text, flags=re.MULTILINE)
            if found:
                self.help = text[: found.start()].rstrip()
                self.epilog = text[found.start() :]

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; a file that GDAL or NumPy could not read, where no check of the
        library's caught it first, is an error line (exit 1), not a traceback; Ctrl-C or
        SIGTERM stops it with 130 or 143 (:func:`interrupted`; outputs are written whole or
        not at all)."""
        try:
            with sigterm_as_interrupt() as received:
                return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            raise interrupted(exc, received, self.name or "") from None
        except READ_ERRORS as exc:
            log.debug("the read that failed", exc_info=True)  # -v: where, for a bug report
            files = [str(v) for param, v in _path_values(ctx, urls=True) if _is_input(param)]
            which = f"{files[0]!r}" if len(files) == 1 else f"one of {', '.join(files)}"
            raise click.ClickException(
                f"{which} could not be read ({type(exc).__name__}: {gdal_words(exc)}); it may be "
                "damaged or cut short: check it, then write, download or export it again."
            ) from exc


def _path_values(ctx: click.Context, urls: bool = False) -> Iterator[tuple[click.Parameter, Any]]:
    """The command's path arguments and options (files, rasters; URLs too if ``urls``), value
    by value."""
    for param in ctx.command.params:
        if isinstance(param.type, click.Path | RasterSource):
            values = ctx.params.get(param.name)
            for value in values if isinstance(values, tuple | list) else (values,):
                if value is not None and (urls or not is_url(str(value))):
                    yield param, value


def _is_input(param: click.Parameter) -> bool:
    """Whether a path parameter is read (a raster, or a file that must exist), not written."""
    return isinstance(param.type, RasterSource) or bool(getattr(param.type, "exists", False))


#: A file that could not be read: GDAL's I/O errors through rasterio (or a CPLE_* error
#: itself), a zip archive (.npz, .imgcate) cut short or damaged. Not rasterio's other errors,
#: which are ours to fix.
READ_ERRORS = (rasterio.errors.RasterioIOError, *gdal_errors(), zipfile.BadZipFile)


def common(fn):
    """Add -v/-q to a command (they add to the group's: ``imgcate -v map ...``)."""
    fn = click.option("-q", "--quiet", count=True, help="Fewer messages; hides warnings.")(fn)
    fn = click.option("-v", "--verbose", count=True, help="More messages (repeatable).")(fn)
    return fn


def start(verbose: int, quiet: int) -> tuple[int, int, bool]:
    """Set up logging for a command; returns (verbose, quiet, progress).

    Progress bars show by default on a terminal, never with -q, and with -v also when stderr
    is not a terminal (a log file). A negative ``--seed`` of the command is refused here.
    """
    ctx = click.get_current_context(silent=True)
    verbose, quiet = verbosity(ctx, verbose, quiet)
    setup_logging(verbose, quiet)
    seed = (ctx.params if ctx is not None else {}).get("seed")
    if isinstance(seed, int) and seed < 0:  # numpy and JAX take seeds >= 0
        raise click.BadParameter(
            f"{seed} is negative; give a seed of 0 or more (e.g. --seed 0)", param_hint="--seed"
        )
    progress = not quiet and (verbose > 0 or sys.stderr.isatty())
    return verbose, quiet, progress


#: Key of ``click.Context.meta`` under which the group keeps the arguments it was given.
ARGV = "imgcate_argv"


def command_line() -> list[str]:
    """The command as the user typed it (``imgcate`` and the arguments)."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.find_root().obj and ctx.find_root().obj.get("argv") is not None:
        return ["imgcate", *ctx.find_root().obj["argv"]]
    return ["imgcate", *sys.argv[1:]]


def provenance(inputs: dict[str, Any], seeds: dict[str, Any] | None = None, **extra: Any) -> dict:
    """A provenance record of this command (:func:`imgcate.provenance.collect`)."""
    from imgcate.provenance import collect

    return run(collect, inputs, command=command_line(), seeds=seeds or {}, **extra)


def write_csv(frame: pd.DataFrame, path: Path, overwrite: bool) -> None:
    """Write a table (temporary name, then renamed); errors as the user reads them."""
    run(write_table, frame, path, overwrite=overwrite)


def parse_co(values: tuple[str, ...]) -> dict[str, str]:
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


#: ``--option`` values read as Python's constants.
PYTHON_CONSTANTS = {"True": True, "False": False, "None": None}


def parse_options(values: tuple[str, ...]) -> dict[str, Any]:
    """``--option NAME=VALUE`` (repeatable) as fit options: VALUE read as JSON when it is
    (numbers, true/false, null), Python's True/False/None too, else as text."""
    out: dict[str, Any] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise click.BadParameter(
                f"{item!r} must be NAME=VALUE, e.g. --option n_basis=32", param_hint="--option"
            )
        if value.strip() in PYTHON_CONSTANTS:  # as the fit's messages and docs write them
            out[name.strip()] = PYTHON_CONSTANTS[value.strip()]
            continue
        try:
            out[name.strip()] = json.loads(value)
        except ValueError:
            out[name.strip()] = value.strip()
    return out


def band_option(values: tuple[str, ...]) -> list[int | str] | None:
    """``--band`` values: numbers as 1-based band numbers, anything else as a description."""
    if not values:
        return None
    return [int(v) if v.isdigit() else v for v in values]


def raster_argument(
    files: tuple[Path | str, ...], names: tuple[str, ...], option: str = "RASTER"
) -> Path | str | dict[str, str]:
    """One raster, or several files (or URLs) stacked as bands (named by --band-name, else by
    file name)."""
    if not files:
        raise click.UsageError(f"give at least one {option} file.")
    if len(files) == 1 and not names:
        return files[0]
    if names and len(names) != len(files):
        raise click.BadParameter(
            f"{len(names)} names for {len(files)} files; give one --band-name per file",
            param_hint="--band-name",
        )
    labels = list(names) if names else [file_stem(f) for f in files]
    if len(set(labels)) != len(labels):
        raise click.BadParameter(
            f"band names {labels} repeat a name; name each file with --band-name",
            param_hint="--band-name",
        )
    return {label: str(f) for label, f in zip(labels, files, strict=True)}


#: Key of ``click.Context.meta`` under which ``--polygons`` is kept for :func:`load_units`.
POLYGONS = "imgcate_polygons"


def _keep_polygons(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.meta[POLYGONS] = value


def load_units(units: Path, roles: dict[str, Any], image_id: str | None, **extra: Any):
    """read_units with the CLI's default: a column named ``image_id`` keys the images; units
    with polygon geometries as ``--polygons`` says."""
    from imgcate.units import read_units

    ctx = click.get_current_context(silent=True)
    if ctx is not None and POLYGONS in ctx.meta and "polygons" not in extra:
        extra["polygons"] = ctx.meta[POLYGONS]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*has an 'image_id' column")
        trial = run(read_units, units, image_id=image_id, **roles, **extra)
    if image_id is None and "image_id" in trial.data.columns and trial.id != "image_id":
        from dataclasses import replace

        log.info("matching units to images by their 'image_id' column")
        trial = replace(trial, image_id="image_id")
    return trial


def unit_role_options(fn, *, outcomes: bool = True):
    """Options that name the columns of a units table (as imgcate.read_units)."""
    options = [
        click.option("--id-column", default="id", show_default=True, help="Unit id column."),
        click.option("--lon", default=None, help="Longitude / x column [default: lon]."),
        click.option("--lat", default=None, help="Latitude / y column [default: lat]."),
        click.option(
            "--crs",
            default=None,
            help="CRS of the coordinate columns, e.g. EPSG:32636 [default: EPSG:4326].",
        ),
        click.option(
            "--image-id",
            default=None,
            help="Column of the image each unit looks at [default: image_id if the table has "
            "it, else each unit its own image].",
        ),
        click.option(
            "--polygons",
            type=click.Choice(["centroid", "representative_point"]),
            default=None,
            expose_value=False,
            callback=_keep_polygons,
            help="Place units given as polygons at their centroid or at a point inside each "
            "[default: polygons are refused].",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def join_units(table: pd.DataFrame, trial) -> pd.DataFrame:
    """A unit table keyed by the user's id column, with image id and coordinates beside it."""
    keys = pd.DataFrame({trial.id: trial.ids})
    if trial.image_id and trial.image_id != trial.id:
        keys[trial.image_id] = trial.data[trial.image_id].to_numpy()
    data, taken = trial.data, {trial.outcome, trial.treatment, *trial.covariates}
    coords = [c for c in ("lon", "lat", "x", "y", "longitude", "latitude") if c in data.columns]
    coords = [c for c in coords if c not in taken]  # an outcome named y is not a coordinate
    if len(coords) >= 2:
        for col in coords:
            keys[col] = data[col].to_numpy()
    else:  # from the geometry, named for what they are, never as one of the table's columns
        geographic = trial.crs is not None and trial.crs.is_geographic
        names = ["lon", "lat"] if geographic else ["x", "y"]
        names = [f"unit_{n}" for n in names] if set(names) & set(data.columns) else names
        keys[names[0]], keys[names[1]] = trial.xy()
    out = table.rename(columns={"unit": trial.id})
    return keys.merge(out, on=trial.id, how="right")
