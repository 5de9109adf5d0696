"""Bad inputs and faults, tried as a careless or hostile user would (issue 21).

A table of bad inputs through the API and the command line (a representative subset run as
real subprocesses): each gets a documented imgcate error whose message names the fix, and no
file is created or changed. Then the faults: a full disk (a tiny tmpfs where mounting is
allowed, ``RLIMIT_FSIZE`` always), a read-only disk, SIGKILL while blocks are computed and
while the COG is written, damaged checkpoints, two concurrent writers; and a fuzz test of
``read_units``, ``as_embeddings`` and ``EffectFit.predict`` (a seeded generator).

docs/bad_inputs.md lists what each bad input gets.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
import xarray as xr
from click.testing import CliRunner
from shapely.geometry import LineString, box

from imgcate.chips import Chips, chips_from_array
from imgcate.cli import main
from imgcate.embeddings import Embeddings, as_embeddings
from imgcate.errors import (
    CheckpointWarning,
    ImgcateError,
    InputError,
    OutputExistsError,
    RasterError,
    WriteError,
)
from imgcate.maps import predict_map, write_cog
from imgcate.prediction import Prediction
from imgcate.results import load_fit
from imgcate.units import Trial, read_units

TILE = 32  # the chip size of the map fit (MAP_TILE in tests/conftest.py)
MAP_OPTS = {"max_draws": 20, "progress": False, "seed": 1}
ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ helpers and fixtures


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under ``root`` (hidden ones too): kind, size and content hash of files,
    link targets. FIFOs and devices are listed, never opened."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            info = path.lstat()
            key = str(path.relative_to(root))
            if path.is_symlink():
                out[key] = ("link", os.readlink(path))
            elif path.is_dir():
                out[key] = ("dir",)
            elif path.is_file():
                out[key] = ("file", info.st_size, hashlib.sha256(path.read_bytes()).hexdigest())
            else:
                out[key] = ("special", info.st_mode)
    return out


def units_frame(n: int = 8, **columns) -> pd.DataFrame:
    """A valid units table near Kampala; ``columns`` replace or add columns."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "id": np.arange(n),
            "lon": 32.5 + rng.uniform(0, 0.1, n),
            "lat": 0.3 + rng.uniform(0, 0.1, n),
            "treatment": np.arange(n) % 2,
            "outcome": rng.normal(size=n),
            "x0": rng.normal(size=n),
        }
    )
    for name, value in columns.items():
        if value is None:
            frame = frame.drop(columns=name)
        else:
            frame[name] = value
    return frame


def small_map(n_clusters: int = 2, size: int = 24) -> xr.Dataset:
    """A map Dataset as predict_map returns it (no fit needed), for the writers."""
    rng = np.random.default_rng(1)
    grid = rng.normal(size=(size, size)).astype(np.float32)
    dims = ("y", "x")
    data = {
        name: (dims, grid + i)
        for i, name in enumerate(("mean", "sd", "lower", "upper", "prob_positive"))
    }
    prob = rng.dirichlet(np.ones(n_clusters), size=(size, size)).astype(np.float32)
    data["cluster_prob"] = (("cluster",) + dims, np.moveaxis(prob, -1, 0))
    data["extrapolation"] = (dims, np.abs(grid))
    data["outside_support"] = (dims, (np.abs(grid) > 1.5).astype(np.float32))
    crs = rasterio.crs.CRS.from_epsg(32636).to_wkt()
    attrs = {"crs": crs, "transform": [480.0, 0, 400000, 0, -480.0, 60000], "prob": 0.9}
    attrs |= {"support_limit": 1.5, "tile_size": 32, "stride": 16, "n_draws": 20}
    return xr.Dataset(data, coords={"y": np.arange(size), "x": np.arange(size)}, attrs=attrs)


class CliFailure(Exception):
    """A command that exited non-zero with a usage or imgcate error (no traceback)."""


def cli(*args: str):
    """Run ``imgcate ARGS`` in-process; a failure becomes CliFailure(exit code, output)."""

    def call():
        res = CliRunner().invoke(main, [str(a) for a in args])
        if res.exit_code == 0:
            return res
        if not isinstance(res.exception, SystemExit):
            raise res.exception  # a traceback: the test fails on its class
        raise CliFailure(f"exit {res.exit_code}: {res.output}")

    return call


def run_imgcate(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "imgcate.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


def sub(*args: str):
    """Run ``imgcate ARGS`` as a real process; a failure becomes CliFailure(stderr)."""

    def call():
        res = run_imgcate(*args)
        if res.returncode == 0:
            return res
        assert "Traceback" not in res.stderr, res.stderr
        raise CliFailure(f"exit {res.returncode}: {res.stderr}")

    return call


@pytest.fixture(scope="session")
def fit(map_inputs):
    return load_fit(map_inputs[1])


@pytest.fixture
def ctx(map_inputs, fit, tmp_path, write_variant):
    scene, fit_path = map_inputs
    work = tmp_path / "work"
    work.mkdir()
    return SimpleNamespace(
        tmp=work, scene=scene, fit_path=fit_path, fit=fit, write_variant=write_variant
    )


# ------------------------------------------------------------------ the table of bad inputs


@dataclass(frozen=True)
class Case:
    prepare: object  # ctx -> zero-argument callable that must fail
    error: type
    fragment: str  # a part of the message that names the fix


CASES: dict[str, Case] = {}


def case(error: type, fragment: str):
    def register(fn):
        CASES[fn.__name__.removeprefix("bad_")] = Case(fn, error, fragment)
        return fn

    return register


def csv(ctx, frame: pd.DataFrame, name: str = "units.csv", **kwargs) -> Path:
    path = ctx.tmp / name
    frame.to_csv(path, index=False, **kwargs)
    return path


# units tables


@case(InputError, "check the path")
def bad_units_missing_file(ctx):
    return lambda: read_units(ctx.tmp / "nope.csv")


@case(InputError, "use .csv, .gpkg")
def bad_units_unknown_extension(ctx):
    (ctx.tmp / "units.xlsx").write_bytes(b"PK")
    return lambda: read_units(ctx.tmp / "units.xlsx")


@case(InputError, "one row per unit")
def bad_units_header_only(ctx):
    path = csv(ctx, units_frame().iloc[:0])
    return lambda: read_units(path)


@case(InputError, "valid CSV")
def bad_units_zero_bytes(ctx):
    (ctx.tmp / "units.csv").write_bytes(b"")
    return lambda: read_units(ctx.tmp / "units.csv")


@case(InputError, "sep=';'")
def bad_units_semicolons(ctx):
    path = csv(ctx, units_frame(), sep=";")
    return lambda: read_units(path)


@case(InputError, "sep='\\t'")
def bad_units_tabs(ctx):
    path = csv(ctx, units_frame(), sep="\t")
    return lambda: read_units(path)


@case(InputError, "pass id=<column name>")
def bad_units_no_id_column(ctx):
    return lambda: read_units(units_frame(id=None))


@case(InputError, "unique id")
def bad_units_duplicate_ids(ctx):
    return lambda: read_units(units_frame(id=[1, 1, 2, 3, 4, 5, 6, 7]))


@case(InputError, "every unit needs an id")
def bad_units_missing_id(ctx):
    return lambda: read_units(units_frame(id=[1, np.nan, 2, 3, 4, 5, 6, 7]))


@case(InputError, "Recode treatment as 0")
def bad_units_treatment_not_binary(ctx):
    return lambda: read_units(units_frame(treatment=[0, 1, 2, 0, 1, 0, 1, 0]))


@case(InputError, "both treated and control")
def bad_units_constant_treatment(ctx):
    return lambda: read_units(units_frame(treatment=1))


@case(InputError, "impute the outcome")
def bad_units_nan_outcome(ctx):
    return lambda: read_units(units_frame(outcome=[np.nan] + [1.0] * 7))


@case(InputError, "impute the outcome")
def bad_units_infinite_outcome(ctx):
    return lambda: read_units(units_frame(outcome=[np.inf] + [1.0] * 7))


@case(InputError, "encode it as numbers")
def bad_units_text_covariate(ctx):
    return lambda: read_units(units_frame(x0=list("abcdefgh")), covariates=["x0"])


@case(InputError, "missing='drop'")
def bad_units_missing_covariate(ctx):
    return lambda: read_units(units_frame(x0=[np.nan] + [1.0, 2.0] * 3 + [3.0]), covariates=["x0"])


@case(InputError, "drop it from covariates")
def bad_units_constant_covariate(ctx):
    return lambda: read_units(units_frame(x0=1.0), covariates=["x0"])


@case(InputError, "look swapped")
def bad_units_swapped_coordinates(ctx):
    frame = units_frame()
    return lambda: read_units(frame.assign(lon=frame.lat + 60, lat=frame.lon + 90))


@case(InputError, "pass their crs=")
def bad_units_projected_without_crs(ctx):
    return lambda: read_units(units_frame(lon=450000.0, lat=35000.0))


@case(InputError, "pass lon=<column name>")
def bad_units_no_coordinates(ctx):
    return lambda: read_units(units_frame(lon=None))


@case(InputError, "crs='EPSG:4326'")
def bad_units_unknown_crs(ctx):
    return lambda: read_units(units_frame(), crs="EPSG:999999")


@case(InputError, "use one of 'error', 'drop'")
def bad_units_missing_policy(ctx):
    return lambda: read_units(units_frame(), missing="ignore")


@case(InputError, "polygons='centroid'")
def bad_units_polygons(ctx):
    frame = units_frame()
    shapes = [box(x, y, x + 0.01, y + 0.01) for x, y in zip(frame.lon, frame.lat, strict=True)]
    path = ctx.tmp / "units.gpkg"
    gpd.GeoDataFrame(frame, geometry=shapes, crs=4326).to_file(path)
    return lambda: read_units(path)


@case(InputError, "give each unit a point")
def bad_units_lines(ctx):
    frame = units_frame()
    lines = [LineString([(x, y), (x + 0.01, y)]) for x, y in zip(frame.lon, frame.lat, strict=True)]
    gdf = gpd.GeoDataFrame(frame, geometry=lines, crs=4326)
    return lambda: read_units(gdf, polygons="centroid")


@case(InputError, "use one of 'error', 'centroid'")
def bad_units_polygon_policy(ctx):
    return lambda: read_units(units_frame(), polygons="middle")


@case(InputError, "pass crs=")
def bad_units_geometry_without_crs(ctx):
    frame = units_frame()
    gdf = gpd.GeoDataFrame(frame, geometry=gpd.points_from_xy(frame.lon, frame.lat))
    return lambda: read_units(gdf)


# chips and embeddings


@case(InputError, "give (image, band, y, x)")
def bad_chips_three_axes(ctx):
    return lambda: chips_from_array(np.zeros((4, 8, 8)))


@case(InputError, "layout='band_last'")
def bad_chips_channels_last(ctx):
    return lambda: chips_from_array(np.zeros((5, 35, 35, 3)))


@case(InputError, "use one of 'band_first'")
def bad_chips_layout_name(ctx):
    return lambda: chips_from_array(np.zeros((5, 3, 8, 8)), layout="NHWC")


@case(InputError, "fill or drop them")
def bad_chips_nan_pixels(ctx):
    values = np.zeros((2, 3, 8, 8))
    values[1, 0, 2, 2] = np.nan
    return lambda: chips_from_array(values)


@case(InputError, "fill or drop")
def bad_chips_infinite_pixels_direct(ctx):
    values = np.zeros((2, 3, 8, 8), np.float32)
    values[0, 2, 0, 0] = np.inf
    return lambda: Chips(values=values, image_ids=[0, 1], unit_image=[0, 1])


@case(InputError, "give each chip its own id")
def bad_chips_duplicate_ids(ctx):
    return lambda: chips_from_array(np.zeros((2, 3, 8, 8)), ["a", "a"])


@case(InputError, "check the chips for nodata")
def bad_embeddings_nan(ctx):
    return lambda: as_embeddings(np.array([[0.0, np.nan], [1.0, 2.0]]))


@case(InputError, "must have shape (image, feature)")
def bad_embeddings_vector(ctx):
    return lambda: as_embeddings(np.arange(3.0))


@case(InputError, "must be numeric")
def bad_embeddings_text(ctx):
    return lambda: as_embeddings([["a", "b"], ["c", "d"]])


@case(InputError, "give one id per row")
def bad_embeddings_ids(ctx):
    return lambda: as_embeddings(np.ones((3, 2)), image_ids=[1, 2])


# predict


def features(ctx) -> int:
    return len(ctx.fit.standardizer.embedding_mean)


@case(InputError, "remove or impute them")
def bad_predict_nan(ctx):
    values = np.ones((2, features(ctx)))
    values[1, 3] = np.nan
    return lambda: ctx.fit.predict(values, max_draws=10)


@case(InputError, "remove or impute them")
def bad_predict_infinite(ctx):
    values = np.ones((2, features(ctx)))
    values[0, 0] = -np.inf
    return lambda: ctx.fit.predict(values, max_draws=10)


@case(InputError, "trial's scale")
def bad_predict_beyond_float32(ctx):
    values = np.ones((2, features(ctx)))
    values[0, 0] = 1e300
    return lambda: ctx.fit.predict(values, max_draws=10)


@case(InputError, "trial's scale")
def bad_predict_sd_overflows(ctx):
    """Finite effects whose sd overflows (embeddings 1e30 away) are not a confident answer."""
    return lambda: ctx.fit.predict(np.full((2, features(ctx)), 1e30), max_draws=10)


@case(InputError, "max_draws=0 must be a positive integer")
def bad_predict_no_draws(ctx):
    return lambda: ctx.fit.predict(np.ones((2, features(ctx))), max_draws=0)


@case(InputError, "give a seed of 0 or more")
def bad_predict_negative_seed(ctx):
    return lambda: ctx.fit.predict(np.ones((2, features(ctx))), max_draws=10, seed=-1)


@case(InputError, "a file path or a pandas/geopandas DataFrame")
def bad_units_not_a_table(ctx):
    return lambda: read_units(42)


@case(InputError, "embeddings made as the trial's were")
def bad_predict_wrong_width(ctx):
    return lambda: ctx.fit.predict(np.ones((2, features(ctx) + 1)), max_draws=10)


@case(InputError, "must be (image, feature)")
def bad_predict_vector(ctx):
    return lambda: ctx.fit.predict(np.ones(features(ctx)), max_draws=10)


@case(InputError, "must be numeric")
def bad_predict_text(ctx):
    return lambda: ctx.fit.predict([["a"] * features(ctx)], max_draws=10)


@case(InputError, "holds 1 NaN or infinite")
def bad_predict_nan_chip_values(ctx):
    tiles = np.ones((1, 6, TILE, TILE), np.float32)
    tiles[0, 0, 0, 0] = np.nan
    chips = SimpleNamespace(values=tiles, image_ids=np.array([0]))
    return lambda: ctx.fit.predict(chips, max_draws=10)


@case(InputError, "one row per image")
def bad_predict_covariates(ctx):
    return lambda: ctx.fit.predict(np.ones((2, features(ctx))), covariates=np.ones((3, 1)))


# fit files


@case(InputError, "does not exist")
def bad_fit_missing(ctx):
    return lambda: load_fit(ctx.tmp / "nope.imgcate")


@case(InputError, "write it again with EffectFit.save()")
def bad_fit_not_a_zip(ctx):
    (ctx.tmp / "fit.imgcate").write_text("hello")
    return lambda: load_fit(ctx.tmp / "fit.imgcate")


@case(InputError, "write it again with EffectFit.save()")
def bad_fit_truncated(ctx):
    (ctx.tmp / "fit.imgcate").write_bytes(ctx.fit_path.read_bytes()[:50_000])
    return lambda: load_fit(ctx.tmp / "fit.imgcate")


def rewrite_meta(ctx, version, **config) -> Path:
    path = ctx.tmp / "fit.imgcate"
    with zipfile.ZipFile(ctx.fit_path) as src, zipfile.ZipFile(path, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "meta.json":
                meta = json.loads(data)
                meta["format_version"] = version
                meta["config"].update(config)
                data = json.dumps(meta).encode()
            dst.writestr(item, data)
    return path


@case(InputError, "pip install -U imgcate")
def bad_fit_newer_format(ctx):
    path = rewrite_meta(ctx, 99)
    return lambda: load_fit(path)


@case(InputError, "refit with imgcate.fit")
def bad_fit_format_1(ctx):
    path = rewrite_meta(ctx, 1)
    return lambda: load_fit(path)


@case(InputError, "log-normal positive part (fit format 3)")
def bad_fit_format_3_hurdle(ctx):
    path = rewrite_meta(ctx, 3, likelihood="hurdle")
    return lambda: load_fit(path)


def hurdle_fit_with(outcome_change, **options):
    """imgcate.fit with the hurdle likelihood on a zero-inflated trial whose outcome was
    changed by ``outcome_change`` (the error comes before any sampling)."""
    import dataclasses

    import imgcate
    from imgcate.simulate import simulate_scenario

    sim = simulate_scenario(3, effect="constant", noise="zero_inflated", n_units=120)
    data = sim.trial.data.copy()
    data[sim.trial.outcome] = outcome_change(data[sim.trial.outcome].to_numpy().copy())
    trial = dataclasses.replace(sim.trial, data=data)
    return lambda: imgcate.fit(trial, sim.embeddings, likelihood="hurdle", **options)


@case(InputError, "n_basis='32' must be an integer or None, e.g. n_basis=32")
def bad_fit_option_of_the_wrong_type(ctx):
    return hurdle_fit_with(lambda y: y, n_basis="32")


def _one_negative(y):
    y[0] = -5.0
    return y


@case(InputError, "if 0 is the floor, check the 1 value(s) at -5.0")
def bad_hurdle_one_value_below_the_zeros(ctx):
    return hurdle_fit_with(_one_negative)


@case(InputError, "1 value of 'outcome' lies below floor=0.0")
def bad_hurdle_value_below_the_floor(ctx):
    return hurdle_fit_with(_one_negative, floor=0.0)


@case(InputError, "Use likelihood='gaussian' or 'student_t'")
def bad_hurdle_without_a_mass_at_the_floor(ctx):
    return hurdle_fit_with(lambda y: y + np.linspace(1.0, 2.0, len(y)))


@case(InputError, "write it again with EffectFit.save()")
def bad_fit_format_text(ctx):
    path = rewrite_meta(ctx, "two")
    return lambda: load_fit(path)


# outputs


@case(OutputExistsError, "overwrite=True (--overwrite)")
def bad_save_existing(ctx):
    (ctx.tmp / "fit.imgcate").write_text("keep")
    return lambda: ctx.fit.save(ctx.tmp / "fit.imgcate")


@case(InputError, "give a file name")
def bad_save_to_folder(ctx):
    (ctx.tmp / "fit.imgcate").mkdir()
    return lambda: ctx.fit.save(ctx.tmp / "fit.imgcate", overwrite=True)


@case(InputError, "give the real file path")
def bad_save_to_symlink(ctx):
    (ctx.tmp / "target.imgcate").write_text("keep")
    (ctx.tmp / "fit.imgcate").symlink_to(ctx.tmp / "target.imgcate")
    return lambda: ctx.fit.save(ctx.tmp / "fit.imgcate", overwrite=True)


@case(InputError, "give the real file path")
def bad_save_to_dangling_symlink(ctx):
    (ctx.tmp / "fit.imgcate").symlink_to(ctx.tmp / "elsewhere.imgcate")
    return lambda: ctx.fit.save(ctx.tmp / "fit.imgcate")


@case(InputError, "write to a regular file path")
def bad_save_to_fifo(ctx):
    os.mkfifo(ctx.tmp / "fit.imgcate")
    return lambda: ctx.fit.save(ctx.tmp / "fit.imgcate", overwrite=True)


@case(InputError, "write to a regular file path")
def bad_save_to_device(ctx):
    return lambda: ctx.fit.save("/dev/null", overwrite=True)


@case(WriteError, "choose a shorter name")
def bad_save_name_too_long(ctx):
    return lambda: ctx.fit.save(ctx.tmp / ("f" * 300 + ".imgcate"))


@case(InputError, "is a file, not a folder")
def bad_save_under_a_file(ctx):
    (ctx.tmp / "file").write_text("keep")
    return lambda: ctx.fit.save(ctx.tmp / "file" / "fit.imgcate")


@case(OutputExistsError, "overwrite=True")
def bad_cog_existing(ctx):
    (ctx.tmp / "m.tif").write_text("keep")
    return lambda: write_cog(small_map(), ctx.tmp / "m.tif")


@case(InputError, "give the real file path")
def bad_cog_symlink(ctx):
    (ctx.tmp / "m.tif").symlink_to("/dev/null")
    return lambda: write_cog(small_map(), ctx.tmp / "m.tif", overwrite=True)


@case(InputError, "COMPRESS is one of NONE, LZW")
def bad_cog_unknown_compression(ctx):
    return lambda: write_cog(small_map(), ctx.tmp / "m.tif", co={"COMPRESS": "BOGUS"})


@case(InputError, "does not support creation option FOO")
def bad_cog_unknown_option(ctx):
    return lambda: write_cog(small_map(), ctx.tmp / "m.tif", co={"foo": "1"})


@case(InputError, "multiple of 16")
def bad_cog_blocksize(ctx):
    return lambda: write_cog(small_map(), ctx.tmp / "m.tif", co={"BLOCKSIZE": 7})


@case(InputError, "not a resampling method")
def bad_cog_resampling(ctx):
    return lambda: write_cog(small_map(), ctx.tmp / "m.tif", co={"RESAMPLING": "fancy"})


@case(InputError, "pass the output of predict_map")
def bad_cog_not_a_map(ctx):
    return lambda: write_cog(xr.Dataset({"a": (("y", "x"), np.ones((2, 2)))}), ctx.tmp / "m.tif")


# maps


@case(RasterError, "gdalwarp -t_srs EPSG:32636 -tr")
def bad_map_other_crs(ctx):
    with rasterio.open(ctx.scene) as src:
        data, profile = src.read(), dict(src.profile)
        names = src.descriptions
    profile["crs"] = "EPSG:32637"
    other = ctx.tmp / "utm37.tif"
    with rasterio.open(other, "w", **profile) as dst:
        dst.write(data)
        dst.descriptions = names
    return lambda: predict_map(ctx.fit, other, **MAP_OPTS)


@case(RasterError, "give a region where the raster has data")
def bad_map_all_nodata_region(ctx):
    holed = ctx.write_variant(ctx.scene, ctx.tmp / "holed.tif", nodata_box=(0, 160, 0, 160))
    with rasterio.open(holed) as src:
        x0, y0 = src.xy(32, 32, offset="ul")
        x1, y1 = src.xy(96, 96, offset="ul")
    return lambda: predict_map(ctx.fit, holed, (x0, y1, x1, y0), **MAP_OPTS)


@case(InputError, "delete the folder to start over")
def bad_map_damaged_job_file(ctx):
    (ctx.tmp / "ckpt").mkdir()
    (ctx.tmp / "ckpt" / "imgcate-map-job.json").write_text('{"job": ')
    return lambda: predict_map(ctx.fit, ctx.scene, checkpoint_dir=ctx.tmp / "ckpt", **MAP_OPTS)


@case(InputError, "delete the folder to start over")
def bad_map_job_file_not_a_job(ctx):
    (ctx.tmp / "ckpt").mkdir()
    (ctx.tmp / "ckpt" / "imgcate-map-job.json").write_text("[1, 2]")
    return lambda: predict_map(ctx.fit, ctx.scene, checkpoint_dir=ctx.tmp / "ckpt", **MAP_OPTS)


@case(InputError, "give an empty directory or delete it")
def bad_map_other_job(ctx):
    (ctx.tmp / "ckpt").mkdir()
    (ctx.tmp / "ckpt" / "imgcate-map-job.json").write_text('{"job": "another"}')
    return lambda: predict_map(ctx.fit, ctx.scene, checkpoint_dir=ctx.tmp / "ckpt", **MAP_OPTS)


@case(InputError, "is a file; give a folder")
def bad_map_checkpoint_dir_is_a_file(ctx):
    (ctx.tmp / "ckpt").write_text("keep")
    return lambda: predict_map(ctx.fit, ctx.scene, checkpoint_dir=ctx.tmp / "ckpt", **MAP_OPTS)


@case(RasterError, "give a region inside the raster's extent")
def bad_map_bounds_elsewhere(ctx):
    return lambda: predict_map(ctx.fit, ctx.scene, (0, 0, 10, 10), **MAP_OPTS)


@case(InputError, "strictly between 0 and 1")
def bad_map_prob(ctx):
    return lambda: predict_map(ctx.fit, ctx.scene, prob=1.5, **MAP_OPTS)


@case(InputError, "must be a positive integer")
def bad_map_block_tiles(ctx):
    return lambda: predict_map(ctx.fit, ctx.scene, block_tiles=0, **MAP_OPTS)


@case(InputError, "give a vector file")
def bad_map_region_missing(ctx):
    return lambda: predict_map(ctx.fit, ctx.scene, ctx.tmp / "nope.gpkg", **MAP_OPTS)


@case(RasterError, "map a raster with the trial's bands")
def bad_map_three_bands(ctx):
    three = ctx.write_variant(ctx.scene, ctx.tmp / "three.tif", count=3)
    return lambda: predict_map(ctx.fit, three, **MAP_OPTS)


@case(InputError, "omit tile_size (--tile-size)")
def bad_map_tile_size(ctx):
    return lambda: predict_map(ctx.fit, ctx.scene, tile_size=64, **MAP_OPTS)


# the command line, in-process


@case(CliFailure, "give a seed of 0 or more")
def bad_cli_negative_seed(ctx):
    return cli("simulate", ctx.tmp / "sim", "--seed", "-1")


@case(CliFailure, "COMPRESS is one of")
def bad_cli_map_co_value(ctx):
    return cli("map", ctx.fit_path, ctx.scene, ctx.tmp / "m.tif", "--co", "COMPRESS=BOGUS")


@case(CliFailure, "write to a regular file path")
def bad_cli_map_to_fifo(ctx):
    os.mkfifo(ctx.tmp / "m.tif")
    return cli("map", ctx.fit_path, ctx.scene, ctx.tmp / "m.tif", "--overwrite", "-q")


@case(CliFailure, "gdalwarp")
def bad_cli_map_other_crs(ctx):
    bad_map_other_crs(ctx)
    return cli("map", ctx.fit_path, ctx.tmp / "utm37.tif", ctx.tmp / "m.tif", "-q")


@case(CliFailure, "--polygons 'centroid'")
def bad_cli_chips_polygons(ctx):
    bad_units_polygons(ctx)
    return cli("chips", ctx.tmp / "units.gpkg", ctx.scene, ctx.tmp / "chips.npz", "-q")


@case(CliFailure, "sep=';'")
def bad_cli_chips_semicolons(ctx):
    path = csv(ctx, units_frame(), sep=";")
    return cli("chips", path, ctx.scene, ctx.tmp / "chips.npz", "-q")


@case(CliFailure, "give the real file path")
def bad_cli_effects_to_symlink(ctx):
    (ctx.tmp / "effects.csv").symlink_to("/dev/stdout")
    return cli("effects", ctx.fit_path, ctx.tmp / "effects.csv", "--overwrite")


@case(CliFailure, "not a zip file); write it again with imgcate fit.")
def bad_cli_info_truncated_fit(ctx):
    (ctx.tmp / "cut.imgcate").write_bytes(ctx.fit_path.read_bytes()[:100])
    return cli("info", ctx.tmp / "cut.imgcate")


@case(CliFailure, "give --chains instead of --option num_chains")
def bad_cli_fit_option_with_a_flag(ctx):
    # refused before any input is read
    return cli("fit", ctx.fit_path, ctx.fit_path, ctx.tmp / "f.imgcate", "--option", "num_chains=3")


@case(CliFailure, "num_warmup=0 must be a positive integer")
def bad_cli_fit_option_out_of_range(ctx):
    sim = ctx.tmp / "sim"
    cli("simulate", sim, "--n-units", "60", "-q")()
    args = (sim / "units.csv", sim / "embeddings.parquet", ctx.tmp / "f.imgcate")
    return cli("fit", *args, "--option", "num_warmup=0", "--option", "n_basis=4")


# the command line, as real processes


@case(CliFailure, "give a seed of 0 or more")
def bad_process_negative_seed(ctx):
    return sub("simulate", ctx.tmp / "sim", "--seed", "-1")


@case(CliFailure, "give the real file path")
def bad_process_effects_to_stdout_link(ctx):
    (ctx.tmp / "effects.csv").symlink_to("/dev/stdout")
    return sub("effects", ctx.fit_path, ctx.tmp / "effects.csv", "--overwrite")


@case(CliFailure, "--resume-dir")
def bad_process_map_damaged_resume_dir(ctx):
    bad_map_damaged_job_file(ctx)
    out = ctx.tmp / "m.tif"
    return sub("map", ctx.fit_path, ctx.scene, out, "--resume-dir", ctx.tmp / "ckpt", "-q")


@case(CliFailure, "--co")
def bad_process_map_unknown_co(ctx):
    return sub("map", ctx.fit_path, ctx.scene, ctx.tmp / "m.tif", "--co", "FOO=1")


def test_the_table_is_large():
    assert len(CASES) >= 60


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, ctx):
    """The documented error, a message that names the fix, and no file created or changed."""
    item = CASES[name]
    call = item.prepare(ctx)
    before = snapshot(ctx.tmp)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(item.error) as raised:
            call()
    assert item.fragment in str(raised.value), str(raised.value)
    if item.error is not CliFailure:
        assert isinstance(raised.value, ImgcateError)
    assert snapshot(ctx.tmp) == before


def test_polygon_units_with_an_explicit_point(tmp_path):
    """Polygons are placed where the user says: at the centroid or at a point inside."""
    frame = units_frame()
    shapes = [box(x, y, x + 0.02, y + 0.01) for x, y in zip(frame.lon, frame.lat, strict=True)]
    gdf = gpd.GeoDataFrame(frame.drop(columns=["lon", "lat"]), geometry=shapes, crs=4326)
    centroid = read_units(gdf, polygons="centroid")
    inside = read_units(gdf, polygons="representative_point")
    assert (centroid.data.geometry.geom_type == "Point").all()
    np.testing.assert_allclose(centroid.data.geometry.x, frame.lon + 0.01, atol=1e-6)
    np.testing.assert_allclose(centroid.data.geometry.y, frame.lat + 0.005, atol=1e-6)
    assert inside.data.geometry.within(gpd.GeoSeries(shapes, crs=4326)).all()


def test_channels_last_chips_with_a_layout():
    values = np.random.default_rng(0).normal(size=(5, 35, 35, 3))
    chips = chips_from_array(values, layout="band_last")
    assert chips.values.shape == (5, 3, 35, 35)
    np.testing.assert_array_equal(chips.values[2, 1], values[2, :, :, 1].astype(np.float32))
    assert chips_from_array(values, layout="band_first").values.shape == (5, 35, 35, 3)


# ------------------------------------------------------------------ faults


CHILD_PRELUDE = """
import os, resource, signal, sys, warnings
warnings.simplefilter("ignore")
from pathlib import Path
"""


def child(script: str, *args, timeout: int = 300) -> subprocess.CompletedProcess:
    code = CHILD_PRELUDE + textwrap.dedent(script)
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


DISK_FULL = """
import click, numpy as np, pandas as pd, xarray as xr
from imgcate.cli.common import write_csv
from imgcate.errors import WriteError
from imgcate.maps import predict_map, write_cog
from imgcate.results import load_fit

fit_path, scene, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
limit, source = int(sys.argv[4]), sys.argv[5]
fit = load_fit(fit_path)
fit_map = xr.open_dataset(source).load()
fit_map.attrs["transform"] = list(fit_map.attrs["transform"])
opts = dict(max_draws=20, progress=False, seed=1, block_tiles=500)
if limit:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
writes = {
    "save": lambda: fit.save(out / "fit.imgcate"),
    "effects": lambda: write_csv(fit.unit_effects(), out / "effects.csv", False),
    "cog": lambda: write_cog(fit_map, out / "map.tif"),
    "resume": lambda: predict_map(fit, scene, checkpoint_dir=out / "blocks", **opts),
}
for name, write in writes.items():
    try:
        write()
        print(name, "wrote")
    except WriteError as exc:
        print(name, "WriteError", " ".join(str(exc).split()))
    except click.ClickException as exc:  # the command line's write_csv
        kind = type(exc.__cause__).__name__
        print(name, kind, " ".join(exc.message.split()))
    except Exception as exc:
        print(name, "OTHER", type(exc).__name__, exc)
"""


def disk_full_run(map_inputs, tmp_path, out: Path, limit: int) -> dict[str, str]:
    scene, fit_path = map_inputs
    path = tmp_path / "map.nc"
    if not path.exists():
        small_map().to_netcdf(path)
    res = child(DISK_FULL, fit_path, scene, out, limit, path)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [line.split(" ", 1) for line in res.stdout.splitlines() if line]
    return dict(lines)


def test_disk_full_by_file_size_limit(map_inputs, tmp_path):
    """RLIMIT_FSIZE (works without privileges): every write path fails with a WriteError that
    names its file and the cause, and leaves nothing behind (the checkpoint folder keeps only
    its job file, which is small)."""
    out = tmp_path / "out"
    out.mkdir()
    got = disk_full_run(map_inputs, tmp_path, out, 2000)
    assert set(got) == {"save", "effects", "cog", "resume"}
    for name, text in got.items():
        assert text.startswith("WriteError"), (name, text)
        assert "file size limit" in text and "nothing was written" in text, text
    assert "fit.imgcate" in got["save"] and "map.tif" in got["cog"]
    assert "block-0000000.npz" in got["resume"]
    assert sorted(p.name for p in out.rglob("*")) == ["blocks", "imgcate-map-job.json"]


LOAD_UNDER_LIMIT = """
import resource, signal
from imgcate.results import load_fit

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))
fit = load_fit(sys.argv[1])
print("loaded", fit.n_clusters)
"""


def test_a_good_fit_loads_when_the_disk_has_no_room(map_inputs):
    """Reading a fit writes nothing (no temporary unpacking), so a full or size-limited disk
    does not make a good fit file look damaged."""
    res = child(LOAD_UNDER_LIMIT, map_inputs[1])
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.startswith("loaded"), res.stdout


@pytest.fixture
def tiny_disk(tmp_path):
    """A 300 KiB tmpfs (needs the right to mount; skipped elsewhere)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mount)], capture_output=True
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.decode().strip()})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_and_read_only_on_a_tiny_filesystem(map_inputs, tmp_path, tiny_disk):
    out = tiny_disk / "out"
    out.mkdir()
    got = disk_full_run(map_inputs, tmp_path, out, 0)
    assert got["save"].startswith("WriteError") and "the disk is full" in got["save"]
    assert "fit.imgcate" in got["save"]
    assert not (out / "fit.imgcate").exists()
    assert not [p for p in out.rglob(".*")]  # no temporary or staging entry left
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_disk)], check=True)
    scene, fit_path = map_inputs
    fit = load_fit(fit_path)
    with pytest.raises(InputError, match="read-only file system"):
        fit.save(out / "again.imgcate")
    with pytest.raises(WriteError, match="read-only; choose an output path"):
        predict_map(fit, scene, checkpoint_dir=tiny_disk / "blocks", **MAP_OPTS)


def test_no_permission(map_inputs, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    with pytest.raises(InputError, match="permission denied"):
        write_cog(small_map(), locked / "m.tif")
    with pytest.raises(WriteError, match="permission denied"):
        predict_map(load_fit(map_inputs[1]), map_inputs[0], checkpoint_dir=locked / "b")


KILLED_MAP = """
from imgcate.maps import predict_map
from imgcate.results import load_fit

fit_path, scene, blocks = sys.argv[1:4]

def die(done, total):
    if done == 2:
        os.kill(os.getpid(), signal.SIGKILL)

predict_map(load_fit(fit_path), scene, checkpoint_dir=blocks, on_block=die, stride=32,
            block_tiles=30, max_draws=20, progress=False, seed=1)
"""

FIXED_RECORD = {"imgcate_version": "test", "inputs": {}, "created_utc": "2026-01-01T00:00:00"}


def test_sigkill_during_blocks_then_resume_gives_the_same_bytes(map_inputs, fit, tmp_path):
    """A process killed (SIGKILL) after two blocks: the rerun reuses them, recomputes a
    damaged one with a warning, and writes a COG byte-identical to an uninterrupted run."""
    scene, fit_path = map_inputs
    blocks = tmp_path / "blocks"
    res = child(KILLED_MAP, fit_path, scene, blocks)
    assert res.returncode == -signal.SIGKILL
    saved = sorted(p.name for p in blocks.glob("block-*.npz"))
    assert saved == ["block-0000000.npz", "block-0000001.npz"]
    damaged = blocks / saved[1]
    damaged.write_bytes(damaged.read_bytes()[:-40])  # a torn write
    opts = dict(stride=32, block_tiles=30, max_draws=20, progress=False, seed=1)
    calls = []
    with pytest.warns(CheckpointWarning, match="block 1 saved in checkpoint directory") as w:
        resumed = predict_map(
            fit,
            scene,
            checkpoint_dir=blocks,
            provenance=FIXED_RECORD,
            on_block=lambda done, total: calls.append(done),
            **opts,
        )
    assert {x.filename for x in w if x.category is CheckpointWarning} == {__file__}
    assert calls == [2, 3, 4, 5]  # block 0 reused; 1 recomputed, then 2..4
    whole = predict_map(fit, scene, provenance=FIXED_RECORD, **opts)
    a = write_cog(resumed, tmp_path / "resumed.tif", preview=False)
    b = write_cog(whole, tmp_path / "whole.tif", preview=False)
    assert a.read_bytes() == b.read_bytes()
    # a block altered in place (same size) is caught by its SHA-256
    block = blocks / "block-0000003.npz"
    with zipfile.ZipFile(block) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    arr = np.load(block)["mean"].copy()
    arr[0] += 1
    import io

    buf = io.BytesIO()
    np.save(buf, arr)
    members["mean.npy"] = buf.getvalue()
    with zipfile.ZipFile(block, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    with pytest.warns(CheckpointWarning, match="do not match their SHA-256"):
        again = predict_map(fit, scene, checkpoint_dir=blocks, provenance=FIXED_RECORD, **opts)
    xr.testing.assert_identical(again, whole)


KILLED_COG = """
import rasterio.shutil, xarray as xr
from imgcate.maps import write_cog

source, out = sys.argv[1:3]
real_copy = rasterio.shutil.copy

def copy_then_die(source, target, *args, **kwargs):
    real_copy(source, target, *args, **kwargs)
    if not str(target).startswith("/vsimem/"):  # not the check of the creation options
        os.kill(os.getpid(), signal.SIGKILL)  # the COG is complete under its temporary name

rasterio.shutil.copy = copy_then_die
dataset = xr.open_dataset(source).load()
dataset.attrs["transform"] = list(dataset.attrs["transform"])
write_cog(dataset, out, preview=False)
"""


def test_sigkill_during_the_cog_write_leaves_nothing_the_next_run_keeps(tmp_path):
    source = tmp_path / "map.nc"
    small_map().to_netcdf(source)
    out = tmp_path / "maps" / "m.tif"
    out.parent.mkdir()
    res = child(KILLED_COG, source, out)
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    left = sorted(p.name for p in out.parent.iterdir())
    assert not out.exists()
    assert any(name.endswith(".staging") for name in left), left
    assert any(name.endswith(".tmp") for name in left), left
    write_cog(small_map(), out, preview=False)  # the next run removes what the killed one left
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.tif"]
    with rasterio.open(out) as src:
        np.testing.assert_array_equal(src.read(1), small_map()["mean"].values)


CONCURRENT = """
import time, xarray as xr
from imgcate.maps import write_cog

source, out, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
dataset = xr.open_dataset(source).load()
dataset.attrs["transform"] = list(dataset.attrs["transform"])
time.sleep(max(0.0, start - time.time()))
for _ in range(5):
    write_cog(dataset, out, overwrite=True)
print("ok")
"""


def test_two_concurrent_writers(tmp_path):
    """Two processes writing the same map and preview at once, five times each: both succeed,
    the file is a complete valid COG, and neither removes the other's temporary files."""
    import time

    from rio_cogeo.cogeo import cog_validate

    source = tmp_path / "map.nc"
    small_map().to_netcdf(source)
    out = tmp_path / "m.tif"
    start = time.time() + 8
    code = CHILD_PRELUDE + textwrap.dedent(CONCURRENT)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(source), str(out), str(start)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    for proc, (stdout, stderr) in zip(procs, results, strict=True):
        assert proc.returncode == 0 and stdout.strip() == "ok", stderr[-2000:]
    valid, errors, _ = cog_validate(out)
    assert valid, errors
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.png", "m.tif", "map.nc"]
    with rasterio.open(out) as src:
        np.testing.assert_array_equal(src.read(1), small_map()["mean"].values)


def test_stale_files_of_live_processes_are_kept(tmp_path):
    from imgcate.output import remove_stale

    mine = tmp_path / f".m.tif.{os.getpid()}.0123abcd.tmp"
    dead = tmp_path / ".m.tif.999999999.0123abcd.staging"
    other = tmp_path / ".m.tif.notapid.tmp"
    mine.write_text("live")
    dead.mkdir()
    other.write_text("not ours")
    assert remove_stale(tmp_path, "m.tif") == [dead]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, other.name])


def test_a_table_is_written_whole_or_not_at_all(tmp_path):
    """The CLI and the demo write their CSV tables through one function: an existing file is
    kept unless overwrite is asked for, and a table that fails half-way leaves the old file and
    no temporary file behind."""
    from imgcate.output import write_table

    path = tmp_path / "effects.csv"
    table = pd.DataFrame({"id": [1, 2], "tau_mean": [0.5, 1.5]})
    assert write_table(table, path) == path
    pd.testing.assert_frame_equal(pd.read_csv(path), table)
    with pytest.raises(OutputExistsError, match="effects.csv"):
        write_table(table.assign(tau_mean=0.0), path)
    pd.testing.assert_frame_equal(pd.read_csv(path), table)

    class Broken(pd.DataFrame):
        def to_csv(self, target, **options):
            Path(target).write_text("id,tau_mean\n1,")
            raise OSError(28, "No space left on device")

    with pytest.raises(WriteError, match="effects.csv"):
        write_table(Broken(table), path, overwrite=True)
    pd.testing.assert_frame_equal(pd.read_csv(path), table)
    assert [p.name for p in tmp_path.iterdir()] == ["effects.csv"]


def test_absurd_tiles_are_flagged_or_nan(fit):
    """Pixels near float32's limit: the tile is NaN in every layer (a non-finite embedding or
    effect) or lies far outside the trial's support, never an unflagged confident number."""
    from imgcate.maps.tiles import TileJob, TileModel

    job = TileJob("x", (1,), None, TILE, TILE, 0, 0, 1, 0.9, 20, 1, 4)
    model = TileModel(fit, job)
    tiles = np.ones((3, 6, TILE, TILE), np.float32)
    tiles[1] = 3e38
    out = model(tiles)
    for name, value in out.items():
        assert np.isfinite(value[[0, 2]]).all(), name
    nan = all(np.isnan(value[1]).all() for value in out.values())
    assert nan or out["extrapolation"][1] > 1e3 * model.support_limit


# ------------------------------------------------------------------ the progress bar and Dask


@pytest.mark.slow
def test_map_with_workers_prints_one_bar_and_no_shutdown_noise(map_inputs, tmp_path):
    """Issue 19, item 6: `imgcate -v map --workers 2` shows one progress bar and nothing of
    Dask's shutdown (nanny warnings, tracebacks) on stderr."""
    scene, fit_path = map_inputs
    res = run_imgcate(
        "-v",
        "map",
        fit_path,
        scene,
        tmp_path / "m.tif",
        "--workers",
        "2",
        "--max-draws",
        "20",
        "--block-tiles",
        "40",
        "--no-preview",
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    err = res.stderr
    assert "Traceback" not in err and "Worker process still alive" not in err
    assert "distributed" not in err.lower(), err[-3000:]
    finished = [part for part in err.replace("\r", "\n").splitlines() if "144/144" in part]
    assert len(finished) == 1, err[-3000:]


# ------------------------------------------------------------------ fuzz


NAMES = ["id", "lon", "lat", "treatment", "outcome", "x0", "image_id", "id;lon"]
ODD_CELLS = [None, True, -3, 0, 1, 2, np.nan, np.inf, -np.inf, 1e300, "", "a", "0", "1", ";", "1,5"]


def random_cell(rng):
    pick = rng.integers(4)
    if pick == 0:
        return ODD_CELLS[rng.integers(len(ODD_CELLS))]
    if pick == 1:
        return float(rng.normal(0, 100))
    if pick == 2:
        return int(rng.integers(-2, 3))
    return float(rng.uniform(-200, 200))


def random_table(rng) -> tuple[pd.DataFrame, dict]:
    """A units table with random columns, each sensible (to get deep into the checks) or
    malformed (odd cells: NaN, inf, text, booleans, huge numbers), and random options."""
    n = int(rng.integers(0, 7))
    columns = [c for c in NAMES if rng.random() < 0.6]
    sensible = {
        "id": list(range(n)),
        "lon": [32.5 + i / 100 for i in range(n)],
        "lat": [0.3 + i / 100 for i in range(n)],
        "treatment": [i % 2 for i in range(n)],
        "outcome": [float(i) for i in range(n)],
    }
    data = {}
    for name in columns:
        if rng.random() < 0.6:
            data[name] = sensible.get(name, [float(i * i) for i in range(n)])
        else:
            data[name] = [random_cell(rng) for _ in range(n)]
    kwargs = {}
    if rng.random() < 0.4:
        kwargs["covariates"] = list(rng.choice(NAMES, size=int(rng.integers(1, 3))))
    if rng.random() < 0.3:
        kwargs["missing"] = str(rng.choice(["error", "drop", "mean", "indicator", "x"]))
    if rng.random() < 0.3:
        kwargs["crs"] = str(rng.choice(["EPSG:4326", "EPSG:32636", "nonsense"]))
    if rng.random() < 0.2:
        kwargs["outcome"] = None
    return pd.DataFrame(data), kwargs


def random_array(rng, width: int | None = None):
    """A float array of random shape (or (n, width +- 1) when ``width`` is given) with some
    NaN, inf and huge values, or a nested list with text and None."""
    if width is None:
        shape = tuple(int(v) for v in rng.integers(0, 5, size=rng.integers(0, 4)))
    else:
        shape = (int(rng.integers(1, 3)), width + int(rng.integers(-1, 2)))
        if rng.random() < 0.1:
            shape = (width,)
    if rng.random() < 0.15:
        return [[random_cell(rng) for _ in range(2)] for _ in range(int(rng.integers(0, 3)))]
    values = rng.normal(size=shape)
    if values.size and rng.random() < 0.5:
        flat = values.reshape(-1)
        for _ in range(int(rng.integers(1, 3))):
            flat[rng.integers(flat.size)] = rng.choice([np.nan, np.inf, -np.inf, 1e39, 1e300])
    if rng.random() < 0.1:
        values = values.astype(np.int64)
    return values


def check_read_units(table, kwargs):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trial = read_units(table, **kwargs)
    except ImgcateError:
        return False
    assert isinstance(trial, Trial) and trial.n_units > 0
    x, y = trial.xy()
    assert np.isfinite(x).all() and np.isfinite(y).all()
    if kwargs.get("outcome", "outcome") is not None:
        assert np.isfinite(trial.outcome_array).all()
        assert set(np.unique(trial.treatment_array)) == {0, 1}
    return True


def check_as_embeddings(values):
    try:
        emb = as_embeddings(values)
    except ImgcateError:
        return False
    assert isinstance(emb, Embeddings)
    assert emb.values.ndim == 2 and np.isfinite(emb.values).all()
    return True


def check_predict(fit, values):
    try:
        pred = fit.predict(values, max_draws=10)
    except ImgcateError:
        return False
    assert isinstance(pred, Prediction)
    assert np.isfinite(pred.cate).all()
    assert ((pred.cluster_prob >= 0) & (pred.cluster_prob <= 1)).all()
    table = pred.to_frame()
    assert np.isfinite(table.drop(columns=["image", "outside_support"]).to_numpy(float)).all()
    return True


def run_fuzz(fit, examples: int, seed: int) -> None:
    """``examples`` malformed inputs each for read_units and as_embeddings, a fifth as many for
    predict (each valid prediction compiles the effect function)."""
    rng = np.random.default_rng(seed)
    width = len(fit.standardizer.embedding_mean)
    valid = {"read_units": 0, "as_embeddings": 0, "predict": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # casts of NaN in the generator
        for _ in range(examples):
            valid["read_units"] += check_read_units(*random_table(rng))
            valid["as_embeddings"] += check_as_embeddings(random_array(rng))
        for _ in range(max(10, examples // 5)):
            valid["predict"] += check_predict(fit, random_array(rng, width))
    assert all(valid.values()), valid  # the fuzz reaches valid results too, not only errors


def test_fuzz_fast(fit):
    """Random malformed tables and arrays: only imgcate errors or valid results (a seeded
    generator: hypothesis is not among the project's dependencies)."""
    run_fuzz(fit, 60, seed=0)


@pytest.mark.slow
def test_fuzz_slow(fit):
    """As test_fuzz_fast: 600 examples each for read_units and as_embeddings, 120 for predict
    (1,320 in all), from another seed."""
    run_fuzz(fit, 600, seed=1)
