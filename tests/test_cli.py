"""The command line, invoked in-process; outputs reopened and checked against the Python API."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
import pytest
import rasterio
import rasterio.errors
from click.testing import CliRunner

from imgcate import InputError
from imgcate.cli import main
from imgcate.cli.common import in_cli_words
from imgcate.output import check_writable
from imgcate.results import load_fit


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli")
    runner = CliRunner()
    res = runner.invoke(main, ["simulate", str(out), "--n-units", "200", "--seed", "3"])
    assert res.exit_code == 0, res.output
    assert "--covariate x0 --covariate x1" in res.output  # the options fit needs for them
    res = runner.invoke(
        main,
        [
            "fit",
            str(out / "units.csv"),
            str(out / "embeddings.parquet"),
            str(out / "fit.imgcate"),
            "--image-id",
            "image_id",
            "--covariate",
            "x0",
            "--covariate",
            "x1",
            "-k",
            "2",
            "--chains",
            "1",
            "--draws",
            "100",
            "-q",
        ],
    )
    assert res.exit_code == 0, res.output
    return out


def test_fit_then_effects_match_the_api(fitted):
    runner = CliRunner()
    res = runner.invoke(
        main,
        [
            "effects",
            str(fitted / "fit.imgcate"),
            str(fitted / "clusters.csv"),
            "--level",
            "cluster",
        ],
    )
    assert res.exit_code == 0, res.output
    table = pd.read_csv(fitted / "clusters.csv")
    api = load_fit(fitted / "fit.imgcate").cluster_effects().reset_index()
    pd.testing.assert_frame_equal(table, api, check_dtype=False, atol=1e-9)


def test_an_output_that_is_an_input_is_refused_even_with_overwrite(fitted):
    """``--overwrite`` must not let a command replace its own input (a typo in OUTPUT)."""
    runner = CliRunner()
    fit_file = fitted / "fit.imgcate"
    before = fit_file.read_bytes()
    res = runner.invoke(main, ["effects", str(fit_file), str(fit_file), "--overwrite"])
    assert res.exit_code == 2, res.output
    assert "also given as FIT_FILE" in res.output and "Choose another output path" in res.output
    units = fitted / "units.csv"
    res = runner.invoke(
        main,
        ["fit", str(units), str(fitted / "embeddings.parquet"), str(units), "--overwrite"],
    )
    assert res.exit_code == 2 and "also given as UNITS" in res.output, res.output
    res = runner.invoke(  # two outputs on one path
        main,
        ["fit", str(units), str(fitted / "embeddings.parquet"), str(fitted / "new.imgcate")]
        + ["--effects", str(fitted / "new.imgcate")],
    )
    assert res.exit_code == 2 and "also given as --effects" in res.output, res.output
    res = runner.invoke(main, ["effects", str(fit_file), str(units), "--overwrite"])
    assert res.exit_code == 2 and "the units table the fit records" in res.output, res.output
    assert fit_file.read_bytes() == before and not (fitted / "new.imgcate").exists()
    assert pd.read_csv(units).shape[0] == 200


def test_a_damaged_raster_or_chips_file_is_an_error_line_not_a_traceback(tmp_path):
    """A GeoTIFF whose compressed blocks were overwritten (GDAL: "Read failed") and a chips
    file cut short: one error line naming the file (exit 1), no output."""
    from rasterio.transform import from_origin

    rng = np.random.default_rng(0)
    raster = tmp_path / "damaged.tif"
    profile = {"driver": "GTiff", "width": 256, "height": 256, "count": 3, "dtype": "float32"}
    profile.update(crs="EPSG:32636", transform=from_origin(500000, 100000, 10, 10))
    profile.update(tiled=True, blockxsize=64, blockysize=64, compress="deflate")
    with rasterio.open(raster, "w", **profile) as dst:
        dst.write(rng.normal(size=(3, 256, 256)).astype("float32"))
    data = bytearray(raster.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 4000] = rng.integers(0, 256, 4000, np.uint8).tobytes()
    raster.write_bytes(bytes(data))
    x = 500000 + 10 * np.arange(8, 256, 16, dtype=float)
    units = pd.DataFrame({"id": np.arange(x.size), "x": x, "y": 100000 - 10 * 128.0})
    units.to_csv(tmp_path / "units.csv", index=False)
    runner = CliRunner()
    res = runner.invoke(
        main,
        ["chips", str(tmp_path / "units.csv"), str(raster), str(tmp_path / "c.npz")]
        + ["--lon", "x", "--lat", "y", "--crs", "EPSG:32636", "--size", "16"],
    )
    assert res.exit_code == 1 and not isinstance(res.exception, rasterio.errors.RasterioError)
    assert f"raster '{raster}' could not be read at rows" in res.output, res.output
    assert "damaged" in res.output and not (tmp_path / "c.npz").exists()
    short = tmp_path / "short.tif"  # a file cut short: GDAL cannot even open it
    short.write_bytes(raster.read_bytes()[:300])
    res = runner.invoke(main, ["info", str(short)])
    assert res.exit_code == 1 and str(short) in res.output and "damaged" in res.output
    assert not isinstance(res.exception, rasterio.errors.RasterioError), res.output
    chips = tmp_path / "short.npz"
    chips.write_bytes(b"PK\x03\x04" + bytes(100))
    res = runner.invoke(main, ["embed", str(chips), str(tmp_path / "e.parquet")])
    assert res.exit_code == 1 and "is damaged or cut short (File is not a zip" in res.output


def test_info_on_a_damaged_fit_shows_what_it_can_and_fails(fitted, tmp_path):
    data = bytearray((fitted / "fit.imgcate").read_bytes())
    middle = len(data) // 2
    data[middle : middle + 24] = bytes(24)  # the posterior's bytes no longer match their CRC
    damaged = tmp_path / "damaged.imgcate"
    damaged.write_bytes(bytes(data))
    res = CliRunner().invoke(main, ["info", str(damaged)])
    assert res.exit_code == 1 and "provenance:" in res.output, res.output
    assert "Error: cannot load the posterior" in res.output


def test_messages_name_the_option_and_give_command_line_advice(fitted, tmp_path):
    """Each refusal names the option at fault and its advice in commands, not Python."""
    from imgcate.simulate import synthetic_scene

    runner = CliRunner()
    fit_file, units = str(fitted / "fit.imgcate"), str(fitted / "units.csv")
    scene = tmp_path / "scene.tif"
    synthetic_scene(scene, seed=0, width=64, height=64, bands=3)
    res = runner.invoke(
        main, ["map", fit_file, str(scene), str(tmp_path / "m.tif"), "--stride", "0"]
    )
    assert res.exit_code == 2 and "Invalid value for --stride" in res.output, res.output
    res = runner.invoke(main, ["simulate", str(tmp_path / "s"), "--n-units", "0"])
    assert res.exit_code == 2 and "Invalid value for --n-units" in res.output, res.output
    table = pd.read_csv(units).rename(columns={"id": "village"})
    table.to_csv(tmp_path / "other.csv", index=False)
    out = tmp_path / "e.csv"
    res = runner.invoke(
        main, ["effects", fit_file, str(out), "--units", str(tmp_path / "other.csv")]
    )
    assert res.exit_code == 2 and "Invalid value for --units" in res.output, res.output
    assert "its id column: 'id'" in res.output and "--id-column" not in res.output
    assert not out.exists()
    res = runner.invoke(main, ["map", fit_file, str(scene), str(tmp_path / "m.tif")])
    assert res.exit_code == 1 and "embeddings made by imgcate embed (which" in res.output
    far = pd.DataFrame({"id": [0, 1], "lon": [0.0, 0.1], "lat": [0.0, 0.1]})
    far.to_csv(tmp_path / "far.csv", index=False)
    res = runner.invoke(
        main, ["chips", str(tmp_path / "far.csv"), str(scene), str(tmp_path / "c.npz")]
    )
    assert res.exit_code == 1 and "lie outside raster" in res.output, res.output
    assert "remove those rows from the units table" in res.output and "subset" not in res.output


def test_existing_output_needs_overwrite(fitted):
    runner = CliRunner()
    before = (fitted / "units.csv").read_bytes()
    res = runner.invoke(main, ["simulate", str(fitted), "--n-units", "50"])
    assert res.exit_code != 0 and "--overwrite" in res.output
    assert (fitted / "units.csv").read_bytes() == before
    assert not list(fitted.glob(".*.tmp"))


def test_errors_point_at_the_option(fitted, tmp_path):
    runner = CliRunner()
    res = runner.invoke(
        main, ["effects", str(fitted / "fit.imgcate"), str(tmp_path / "x.csv"), "--prob", "1.5"]
    )
    assert res.exit_code != 0 and "--prob" in res.output
    res = runner.invoke(
        main,
        [
            "fit",
            str(fitted / "units.csv"),
            str(fitted / "embeddings.parquet"),
            str(tmp_path / "f.imgcate"),
            "--treatment",
            "nope",
        ],
    )
    assert res.exit_code != 0 and "treatment column 'nope'" in res.output
    assert "pass --treatment <column name>" in res.output  # the option, not the API argument
    res = runner.invoke(
        main,
        [
            "fit",
            str(fitted / "units.csv"),
            str(fitted / "embeddings.parquet"),
            str(tmp_path / "f.imgcate"),
            "--covariate",
            "x9",
        ],
    )
    assert res.exit_code != 0 and "pass --covariate <column name>" in res.output
    assert not (tmp_path / "f.imgcate").exists()


def test_fit_finds_the_image_id_column_and_refuses_the_units_table(fitted, tmp_path):
    runner = CliRunner()
    base = [str(fitted / "units.csv"), str(fitted / "embeddings.parquet")]
    opts = ["--chains", "1", "--draws", "20", "-q"]
    res = runner.invoke(main, ["fit", *base, str(tmp_path / "a.imgcate"), *opts])
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        main, ["fit", *base, str(tmp_path / "b.imgcate"), "--image-id", "image_id", *opts]
    )
    assert res.exit_code == 0, res.output
    a, b = load_fit(tmp_path / "a.imgcate"), load_fit(tmp_path / "b.imgcate")
    assert (a.idata.posterior["tau"].values == b.idata.posterior["tau"].values).all()
    res = runner.invoke(main, ["fit", base[0], base[0], str(tmp_path / "c.imgcate"), *opts])
    assert res.exit_code == 1 and "look like the units table" in res.output
    for option in ("--n-clusters", "--chains", "--draws"):
        res = runner.invoke(main, ["fit", *base, str(tmp_path / "d.imgcate"), option, "0"])
        assert res.exit_code != 0 and option in res.output and "at least 1" in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.imgcate", "b.imgcate"]


@pytest.mark.parametrize(
    ("options", "said"),
    [
        (["noise_scale=wide"], "'arm', 'image'"),  # a value out of its choices
        (["n_basis=-1"], "must be >= 0"),
        (["n_basis=many"], "must be an integer"),
        (["init_restart=4"], "unknown fit option 'init_restart'"),  # a misspelt name
        (["svi_steps=100"], "svi_steps"),  # an option of the method not run
        (["criterion=loo"], "an option of the comparison of models (-k auto)"),
        (["-k", "auto", "criterion=waic"], "'auto', 'loo', 'kfold'"),  # compare_clusters' own
        (["-k", "auto", "se_multiple=-1"], "se_multiple=-1 must be a finite number"),
        (["-k", "auto", "n_folds=abc"], "n_folds='abc' must be an integer >= 2"),
    ],
)
def test_a_bad_option_is_refused_before_any_work(fitted, tmp_path, options, said):
    """A --option value the fit would refuse is a usage error (exit 2, docs/cli.md, "Exit
    status") given before the units are read: an unreadable units file is not reached."""
    out = tmp_path / "f.imgcate"
    missing_units = tmp_path / "units.csv"  # exists, but is no table: reading it would fail
    missing_units.write_text("not a table\x00")
    args = ["fit", str(missing_units), str(fitted / "embeddings.parquet"), str(out)]
    if options[0] == "-k":
        args, options = args + options[:2], options[2:]
    for option in options:
        args += ["--option", option]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2, res.output
    assert "--option" in res.output and said in res.output, res.output
    assert not out.exists()


def test_too_many_clusters_point_at_their_own_option(fitted, tmp_path):
    out = tmp_path / "f.imgcate"
    args = [str(fitted / "units.csv"), str(fitted / "embeddings.parquet"), str(out), "-k", "11"]
    res = CliRunner().invoke(main, ["fit", *args])
    assert res.exit_code == 2 and "-k/--n-clusters" in res.output, res.output
    assert "between 1 and 10" in res.output and "--option" not in res.output
    res = CliRunner().invoke(main, ["fit", *args[:3], "-k", "auto", "--k-max", "11"])
    assert res.exit_code == 2 and "--k-max" in res.output, res.output
    assert not out.exists()
    for scale in ("0", "-1", "nan", "inf"):  # 0 made blank chips, a map all outside support
        res = CliRunner().invoke(main, ["fit", *args[:3], "--scale", scale])
        assert res.exit_code == 2 and "Invalid value for '--scale'" in res.output, res.output


def test_svi_fit_takes_no_nuts_draws_and_info_shows_its_own(fitted, tmp_path):
    """--chains and --draws set NUTS: refused with --method svi (they were ignored, and `info`
    showed them as if used); without them `info` shows an SVI fit's steps and draws."""
    runner = CliRunner()
    base = [str(fitted / "units.csv"), str(fitted / "embeddings.parquet")]
    for option in ("--chains", "--draws"):
        out = tmp_path / "refused.imgcate"
        res = runner.invoke(main, ["fit", *base, str(out), "--method", "svi", option, "300"])
        assert res.exit_code == 2 and option in res.output, res.output
        assert "svi_draws" in res.output and not out.exists()
    svi = ["--option", "svi_steps=200", "--option", "svi_draws=50", "--option", "init_restarts=2"]
    out = tmp_path / "svi.imgcate"
    res = runner.invoke(main, ["fit", *base, str(out), "--method", "svi", *svi, "-q"])
    assert res.exit_code == 0, res.output
    svi_fit = load_fit(out)
    assert svi_fit.idata.posterior.sizes["draw"] == 50
    with warnings.catch_warnings():  # one guide, no chains: no R-hat or ESS to warn of
        warnings.simplefilter("error")
        assert svi_fit.check_convergence() == []
    res = runner.invoke(main, ["info", str(out)])
    assert res.exit_code == 0, res.output
    assert "method=svi, svi_steps=200, svi_draws=50" in res.output
    assert "num_chains" not in res.output and "num_samples" not in res.output
    assert "convergence not checked (SVI" in res.output and "ESS below" not in res.output


def test_fit_reads_projected_coordinate_columns(fitted, tmp_path):
    import geopandas as gpd

    units = pd.read_csv(fitted / "units.csv")
    points = gpd.points_from_xy(units.pop("lon"), units.pop("lat"), crs="EPSG:4326")
    metres = gpd.GeoSeries(points).to_crs("EPSG:32636")
    units.assign(x=metres.x, y=metres.y).to_csv(tmp_path / "metres.csv", index=False)
    runner = CliRunner()
    args = [
        "fit",
        str(tmp_path / "metres.csv"),
        str(fitted / "embeddings.parquet"),
        str(tmp_path / "f.imgcate"),
        "--chains",
        "1",
        "--draws",
        "20",
        "-q",
    ]
    res = runner.invoke(main, [*args, "--lon", "x", "--lat", "y"])
    assert res.exit_code == 1 and "pass their --crs 'EPSG:....'" in res.output  # option names
    res = runner.invoke(main, args)
    assert res.exit_code == 1 and "pass --lon <column name>" in res.output
    res = runner.invoke(
        main,
        [*args, "--lon", "x", "--lat", "y", "--crs", "EPSG:32636", "--option", "num_warmup=10"],
    )
    assert res.exit_code == 0, res.output
    result = load_fit(tmp_path / "f.imgcate")
    assert result.idata.posterior.sizes["draw"] == 20  # --draws
    assert result.config.num_warmup == 10  # --option num_warmup=... sets the warm-up apart


def test_unwritable_outputs_fail_before_any_work(fitted, tmp_path):
    runner = CliRunner()
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a folder")
    res = runner.invoke(
        main,
        [
            "fit",
            str(fitted / "units.csv"),
            str(fitted / "embeddings.parquet"),
            str(blocker / "f.imgcate"),
        ],
    )
    assert res.exit_code == 1 and "is a file, not a folder" in res.output
    assert "Traceback" not in res.output
    for command in ("simulate", "demo"):
        res = runner.invoke(main, [command, str(blocker)])
        assert res.exit_code != 0 and "is a file" in res.output  # click's own check
        res = runner.invoke(main, [command, str(blocker / "out")])
        assert res.exit_code == 1 and "cannot create output folder" in res.output
    res = runner.invoke(main, ["effects", str(fitted / "fit.imgcate"), str(tmp_path)])
    assert res.exit_code != 0 and "is a directory" in res.output  # click's own check
    with pytest.raises(InputError, match="is a folder; give a file name"):
        check_writable(tmp_path, overwrite=True)  # the library's check, for the Python API
    res = runner.invoke(main, ["demo", str(tmp_path / "demo"), "--n-units", "5"])
    assert res.exit_code != 0 and "--n-units" in res.output
    assert not (tmp_path / "demo").exists() or not list((tmp_path / "demo").iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) in (["file.txt"], ["demo", "file.txt"])


def test_help_ends_with_examples():
    runner = CliRunner()
    for command in ("simulate", "fit", "effects", "demo", "map"):
        res = runner.invoke(main, [command, "--help"])
        assert res.exit_code == 0 and "Example" in res.output, command


# ------------------------------------------------------------------------------ imgcate map
@pytest.fixture(scope="module")
def map_fit(map_inputs):
    """(scene.tif, fit.imgcate) shared with the map tests (tests/conftest.py)."""
    return map_inputs


def test_map_writes_the_cog_the_api_computes(map_fit, tmp_path):
    import numpy as np
    import rasterio

    from imgcate.maps import band_names, predict_map

    scene, fit_path = map_fit
    out = tmp_path / "effect.tif"
    res = CliRunner().invoke(
        main,
        [
            "map",
            str(fit_path),
            str(scene),
            str(out),
            "--stride",
            "16",
            "--max-draws",
            "100",
            "--seed",
            "1",
            "--prob",
            "0.8",
            "--co",
            "compress=zstd",
            "-q",
        ],
    )
    assert res.exit_code == 0, res.output
    api = predict_map(
        load_fit(fit_path), scene, stride=16, max_draws=100, seed=1, prob=0.8, progress=False
    )
    with rasterio.open(out) as src, rasterio.open(scene) as ref:
        assert src.crs == ref.crs
        assert list(src.transform)[:6] == api.attrs["transform"]
        assert src.descriptions[:4] == ("mean", "sd", "lower_10", "upper_90")
        assert list(src.descriptions) == band_names(api)
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert src.compression.name.lower() == "zstd"
        assert src.tags()["prob"] == "0.8"
        data = src.read()
    expected = [api[v].values for v in ("mean", "sd", "lower", "upper", "prob_positive")]
    expected += list(api["cluster_prob"].values)
    expected += [api["extrapolation"].values, api["outside_support"].values]
    np.testing.assert_array_equal(data, np.stack(expected))
    assert out.with_suffix(".png").exists()


def test_map_errors_leave_no_file(map_fit, tmp_path, write_variant):
    scene, fit_path = map_fit
    runner = CliRunner()
    out = tmp_path / "m.tif"
    res = runner.invoke(
        main, ["map", str(fit_path), str(scene), str(out), "--bounds", "0", "0", "10", "10"]
    )
    assert res.exit_code == 2  # a bad option value (docs/cli.md, "Exit status")
    assert "--bounds" in res.output and "does not overlap the tiles of raster" in res.output
    res = runner.invoke(
        main,
        [
            "map",
            str(fit_path),
            str(scene),
            str(out),
            "--bounds",
            "400000",
            "50000",
            "300000",
            "40000",
        ],
    )
    assert res.exit_code == 2 and "--bounds" in res.output and "overlap" not in res.output
    for blocksize in ("abc", "-16", "7"):  # GDAL would abort the process on some of these
        res = runner.invoke(
            main, ["map", str(fit_path), str(scene), str(out), "--co", f"BLOCKSIZE={blocksize}"]
        )  # refused before any work
        assert res.exit_code != 0 and "--co" in res.output and "multiple of 16" in res.output
    three = write_variant(scene, tmp_path / "three.tif", count=3)
    res = runner.invoke(main, ["map", str(fit_path), str(three), str(out)])
    assert res.exit_code != 0 and "3 band(s)" in res.output and "--band" in res.output
    res = runner.invoke(main, ["map", str(fit_path), str(scene), str(out), "--co", "nonsense"])
    assert res.exit_code != 0 and "--co" in res.output
    res = runner.invoke(main, ["map", str(fit_path), str(scene), str(out), "--tile-size", "64"])
    assert res.exit_code != 0 and "--tile-size" in res.output
    assert "the trial's chips were" in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["three.tif"]
    out.write_bytes(b"keep")
    res = runner.invoke(main, ["map", str(fit_path), str(scene), str(out)])
    assert res.exit_code != 0 and "--overwrite" in res.output
    assert out.read_bytes() == b"keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tif", "three.tif"]


def test_map_resume_dir_and_region(map_fit, tmp_path):
    import geopandas as gpd
    import numpy as np
    import rasterio
    from shapely.geometry import box

    scene, fit_path = map_fit
    with rasterio.open(scene) as src:
        b, crs = src.bounds, src.crs
    region = tmp_path / "region.geojson"
    gpd.GeoDataFrame(
        geometry=[box(b.left, b.bottom, b.left + 5000, b.bottom + 5000)], crs=crs
    ).to_crs(4326).to_file(region)
    args = [
        "map",
        str(fit_path),
        str(scene),
        str(tmp_path / "a.tif"),
        "--region",
        str(region),
        "--max-draws",
        "50",
        "--block-tiles",
        "10",
        "--resume-dir",
        str(tmp_path / "blocks"),
        "--no-preview",
        "-q",
    ]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "blocks").glob("block-*.npz"))) >= 2
    args[3] = str(tmp_path / "b.tif")
    res = CliRunner().invoke(main, args)  # every block is read back from the resume dir
    assert res.exit_code == 0, res.output
    with rasterio.open(tmp_path / "a.tif") as a, rasterio.open(tmp_path / "b.tif") as b2:
        np.testing.assert_array_equal(a.read(), b2.read())
        assert a.width <= 7 and a.height <= 7  # only the tiles touching the region
    assert not (tmp_path / "a.png").exists()


def test_sigterm_is_an_interrupt_once_and_the_handler_comes_back():
    """SIGTERM raises KeyboardInterrupt inside the context; a second one while the cleanup runs
    is ignored; the previous handler is back afterwards."""
    import os
    import signal

    from imgcate.cli.common import interrupted, sigterm_as_interrupt

    before = signal.getsignal(signal.SIGTERM)
    cleaned = []
    with pytest.raises(SystemExit) as stop:
        with sigterm_as_interrupt() as received:
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                signal.pause()  # not reached: the handler raises first
            except KeyboardInterrupt as exc:
                os.kill(os.getpid(), signal.SIGTERM)  # during the cleanup: ignored
                cleaned.append(True)
                raise interrupted(exc, received, "map") from None
    assert stop.value.code == 143 and cleaned == [True]
    assert signal.getsignal(signal.SIGTERM) == before


@pytest.mark.slow
def test_fit_stopped_by_ctrl_c_exits_130_and_writes_nothing(fitted, tmp_path):
    """Ctrl-C in the middle of NUTS (4 chains: two groups in threads): status 130 and one
    line within seconds, no output; the process used to crash on its way out (status -11)
    with JAX's threads still sampling, and to wait for the other thread's whole phase."""
    import os
    import signal
    import subprocess
    import sys
    import threading
    import time

    out = tmp_path / "fit.imgcate"
    args = [sys.executable, "-m", "imgcate.cli", "-v", "fit", str(fitted / "units.csv")]
    args += [str(fitted / "embeddings.parquet"), str(out), "--chains", "4", "--draws", "3000"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    # SIGINT's default action in the child: a shell starts background jobs with it ignored
    restore = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=env, preexec_fn=restore)
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.extend(iter(lambda: proc.stderr.read(1), "")))
    reader.start()
    deadline = time.monotonic() + 300
    while "NUTS, 4 chain(s)" not in "".join(err) and proc.poll() is None:
        assert time.monotonic() < deadline, "NUTS did not start in 300 s"
        time.sleep(0.1)
    time.sleep(1.0)
    assert proc.poll() is None, "".join(err)
    proc.send_signal(signal.SIGINT)
    stopped = time.monotonic()
    proc.wait(timeout=120)
    assert time.monotonic() - stopped < 30  # a block of draws, not the whole warm-up
    reader.join(timeout=10)
    said = "".join(err)
    assert proc.returncode == 130, said
    assert "imgcate fit: interrupted." in said and "Traceback" not in said, said
    assert list(tmp_path.iterdir()) == []


def test_map_stopped_by_sigterm_leaves_nothing_and_says_how_to_resume(map_fit, tmp_path):
    """SIGTERM (a batch system's time limit) stops `imgcate map` as Ctrl-C does: exit status
    143, the blocks finished so far saved, nothing at the output nor a staging folder beside
    it, and a message saying how to resume."""
    import os
    import signal
    import subprocess
    import sys
    import time

    scene, fit_path = map_fit
    out, blocks = tmp_path / "map.tif", tmp_path / "blocks"
    args = [sys.executable, "-m", "imgcate.cli", "map", str(fit_path), str(scene), str(out)]
    args += ["--stride", "1", "--block-tiles", "1000", "--max-draws", "20", "--no-preview"]
    args += ["--resume-dir", str(blocks), "-q"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 300
    while not list(blocks.glob("block-*.npz")) and proc.poll() is None:
        assert time.monotonic() < deadline, "no block saved in 300 s"
        time.sleep(0.05)
    assert proc.poll() is None, f"the map ended before it could be stopped: {proc.stderr.read()}"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "imgcate map: map interrupted." in err and f"--resume-dir {blocks}" in err, err
    assert "Traceback" not in err, err
    import re

    said = int(re.search(r"(\d+) of \d+ blocks are finished and saved", err).group(1))
    saved = len(list(blocks.glob("block-*.npz")))  # one more if stopped between save and count
    assert 1 <= saved and said in (saved, saved - 1), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocks"]  # no map, no staging


@pytest.mark.slow
def test_demo_writes_the_whole_pipeline(tmp_path):
    import rasterio

    res = CliRunner().invoke(
        main, ["demo", str(tmp_path), "--n-units", "300", "--draws", "150", "-q"]
    )
    assert res.exit_code == 0, res.output
    for name in (
        "fit.imgcate",
        "cluster_effects.csv",
        "unit_effects.csv",
        "ate.csv",
        "k_comparison.csv",
        "summary.txt",
        "segment_sensitivity.png",
        "effect_map.tif",
        "effect_map.png",
        "scene.tif",
    ):
        assert (tmp_path / name).stat().st_size > 0, name
    with rasterio.open(tmp_path / "effect_map.tif") as src:
        assert src.descriptions[0] == "mean" and src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
    res = CliRunner().invoke(main, ["demo", str(tmp_path)])
    assert res.exit_code != 0 and "--overwrite" in res.output


def test_quiet_logging_silences_other_libraries():
    """Dask's scheduler logs at INFO on its own loggers; -q and the default keep them out."""
    from imgcate.cli.common import setup_logging

    def shown(name: str, level: int) -> bool:
        record = logging.LogRecord(name, level, __file__, 1, "message", None, None)
        return all(h.filter(record) for h in logging.getLogger().handlers)

    for verbose, quiet in [(0, 0), (0, 1), (2, 0)]:
        setup_logging(verbose, quiet)
        assert not shown("distributed.scheduler", logging.INFO)
        assert shown("distributed.scheduler", logging.ERROR)
        assert shown("imgcate", logging.INFO)  # the imgcate logger's own level decides


def test_convergence_warning_is_one_clean_line(fitted, tmp_path):
    """Too few draws: the fit warns on stderr, one line, without the source line it came from."""
    with warnings.catch_warnings():  # the fixture's `imgcate fit -q` ignored warnings
        warnings.simplefilter("always")
        res = _fit_with_too_few_draws(fitted, tmp_path)
    assert res.exit_code == 0, res.output
    lines = [line for line in res.stderr.splitlines() if "ConvergenceWarning" in line]
    assert lines and all(
        line.startswith("imgcate: ConvergenceWarning: imgcate fit:") for line in lines
    )
    assert "return fn(" not in res.stderr
    # the advice names the command's option, not the library's argument (warnings and the
    # printed summary alike)
    assert "(raise --draws)" in res.stderr and "num_samples" not in res.output


def test_advice_is_given_in_options():
    """Library advice (Python arguments) reads as the command line's options."""
    assert in_cli_words("x.tif exists; pass overwrite=True (--overwrite) to replace it.") == (
        "x.tif exists; pass --overwrite to replace it."
    )
    assert in_cli_words("reorder them (bands=['red', 'nir'] / --band red --band nir).") == (
        "reorder them (--band red --band nir)."
    )
    assert in_cli_words("no column 'z'; pass covariate=<column name>") == (
        "no column 'z'; pass --covariate <column name>"
    )
    assert in_cli_words("no column 'z'; pass covariates=[<column name>, ...].") == (
        "no column 'z'; pass --covariate <column name> (once for each)."
    )
    assert in_cli_words("check the declared design (stratum=, cluster=); if") == (
        "check the declared design (--stratum, --cluster); if"
    )
    assert in_cli_words("bulk ESS below 200 for ['a'] (raise num_samples / --draws)") == (
        "bulk ESS below 200 for ['a'] (raise --draws)"
    )
    message = "chains [1] settled ... Compare fewer clusters (imgcate.compare_clusters), raise"
    assert "Compare clusters (-k auto) or fit fewer (-k), raise" in in_cli_words(message + " x")


def test_method_advice_of_fit_warnings_reads_as_options(monkeypatch):
    """fit's advice on the method (NUTS past the limit method='auto' keeps) reads as --method
    on the command line: the warning's own text, taken from fit before it reads anything."""
    import imgcate.config
    from imgcate import DurationWarning, InputError, fit
    from imgcate.simulate import simulate_trial

    monkeypatch.setattr(imgcate.config, "AUTO_NUTS_MAX_UNITS", 50)
    sim = simulate_trial(0, 60, 2)
    with pytest.warns(DurationWarning) as caught, pytest.raises(InputError):
        fit(sim.trial, "not embeddings")
    words = in_cli_words(str(caught[0].message))
    assert "--method auto gives to NUTS" in words and "pass --method svi (or auto)" in words
    assert "method='" not in words
    approximation = (
        "imgcate fit: method='auto' chose SVI for 20,000 units (NUTS up to 10,000): ...; "
        "pass method='nuts' for exact inference (slower)."
    )
    assert "method='" not in in_cli_words(approximation)


@pytest.mark.parametrize("name", sorted(main.commands))
def test_help_ends_with_examples_that_use_real_options(name):
    """rio's manners: the examples come last, after the options, and name only options the
    command has."""
    import shlex

    res = CliRunner().invoke(main, [name, "--help"])
    assert res.exit_code == 0, res.output
    text = res.output
    assert text.index("Options:") < text.rindex("Example")
    examples = text[text.rindex("Example") :].split("\n", 1)[1].replace("\\\n", " ")
    lines = [line.strip() for line in examples.splitlines() if line.strip()]
    assert lines and all(line.startswith(f"imgcate {name} ") for line in lines), lines
    options = {opt for param in main.commands[name].params for opt in param.opts}
    for line in lines:
        used = {word for word in shlex.split(line) if word.startswith("-")}
        assert used <= options, f"{line}: {sorted(used - options)} are not options of {name}"


@pytest.mark.parametrize(
    ("tty", "verbose", "quiet", "shown"),
    [
        (True, 0, 0, True),  # on a terminal, by default
        (True, 0, 1, False),  # -q
        (False, 0, 0, False),  # not a terminal (a log file, a pipe)
        (False, 1, 0, True),  # -v asks for it anyway
    ],
)
def test_progress_by_default_on_a_terminal_only(monkeypatch, tty, verbose, quiet, shown):
    import sys

    from imgcate.cli.common import start

    monkeypatch.setattr(sys.stderr, "isatty", lambda: tty, raising=False)
    try:
        assert start(verbose, quiet)[2] is shown
    finally:
        start(0, 0)  # logging back to its default level


def test_k_auto_compares_and_keeps_the_selected_model(fitted, tmp_path):
    """-k auto: the constant effect, the smooth effect and K = 2 are compared (PSIS-LOO here,
    to keep the test short), the table is printed, and the model it selects is the one saved."""
    out = tmp_path / "auto.imgcate"
    common = [str(fitted / "units.csv"), str(fitted / "embeddings.parquet"), str(out)]
    common += ["--image-id", "image_id", "--chains", "1", "--draws", "60"]
    res = CliRunner().invoke(
        main, ["fit", *common, "-k", "auto", "--k-max", "2", "--option", "criterion=loo"]
    )
    assert res.exit_code == 0, res.output
    assert "constant" in res.output and "smooth" in res.output and "2 clusters" in res.output
    selected = res.output.split("selected ", 1)[1].split(":", 1)[0]
    assert "in the order constant, 2 clusters, smooth, whose elpd is within max(4, 1 x dse)" in (
        res.output
    )
    table = pd.read_csv(tmp_path / "auto.comparison.csv")  # the comparison is kept beside it
    assert list(table["K"]) == [0, 1, 2] and table["selected"].sum() == 1
    assert table.loc[table["selected"], "model"].item() == selected
    assert "auto.comparison.csv" in res.output
    config = load_fit(out).config
    if selected == "constant":
        assert config.equal_effects
    else:
        assert not config.equal_effects
        assert config.n_clusters == (1 if selected == "smooth" else int(selected.split()[0]))
    res = CliRunner().invoke(main, ["fit", *common, "-k", "many", "--overwrite"])
    assert res.exit_code == 2 and "'many' is not a whole number or 'auto'" in res.output


def _fit_with_too_few_draws(fitted, tmp_path):
    return CliRunner().invoke(
        main,
        [
            "fit",
            str(fitted / "units.csv"),
            str(fitted / "embeddings.parquet"),
            str(tmp_path / "fit.imgcate"),
            "--image-id",
            "image_id",
            "-k",
            "1",
            "--chains",
            "1",
            "--draws",
            "30",
        ],
    )


# --------------------------------------------------------------------- imgcate embed-raster
EMBED = ["--n-features", "64", "--n-components", "6", "--seed", "1"]


def _shipped_units_and_scene() -> list[str]:
    from imgcate import datasets

    return [str(datasets.villages_path()), str(datasets.landsat_path())]


def test_embed_raster_equals_chips_then_embed(tmp_path):
    """The same file `imgcate chips` + `imgcate embed` write, in 5 chunks of 64 images.

    --fit-images 300 (all 300 villages, each its own image) samples every image, in the
    table's order: the encoder is fitted on the very chips `embed` fits it on, with the same
    seed, so its arrays are equal. The values are the same transform of the same chips; the
    native kernel embeds each chip alone (bit-identical, as measured here), while the JAX path
    (where the kernel cannot run) rounds a float32 row differently with the batch's shape
    (~3e-6 relative, encoders/base.py): rtol 1e-5 and atol 1e-4 (the components are of order
    1-20) cover that and nothing else.
    """
    import numpy as np
    import pyarrow.parquet as pq

    from imgcate import load_embeddings

    runner = CliRunner()
    units, scene = _shipped_units_and_scene()
    ids = ["--id-column", "village", "--size", "16"]
    res = runner.invoke(main, ["chips", units, scene, str(tmp_path / "chips.npz"), *ids])
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        main, ["embed", str(tmp_path / "chips.npz"), str(tmp_path / "two.parquet"), *EMBED]
    )
    assert res.exit_code == 0, res.output
    out = tmp_path / "one.parquet"
    chunks = ["--chunk-images", "64", "--fit-images", "300", "-q"]
    res = runner.invoke(main, ["embed-raster", units, scene, str(out), *ids, *EMBED, *chunks])
    assert res.exit_code == 0, res.output
    assert res.output == (
        f"wrote {out}: 300 images x 6 features, in 5 chunks of up to 64 images; "
        "encoder fitted on a sample of 300 images\n"
    )
    assert pq.ParquetFile(out).metadata.num_row_groups == 5  # one row group a chunk
    one, two = load_embeddings(out), load_embeddings(tmp_path / "two.parquet")
    np.testing.assert_array_equal(one.image_ids, two.image_ids)
    np.testing.assert_allclose(one.values, two.values, rtol=1e-5, atol=1e-4)
    (config, arrays), (config2, arrays2) = one.encoder.get_state(), two.encoder.get_state()
    assert config == config2 and arrays.keys() == arrays2.keys()  # chip_spec too: maps alike
    for name in arrays:
        np.testing.assert_array_equal(np.asarray(arrays[name]), np.asarray(arrays2[name]))
    assert one.provenance["streamed"] == {"chunk_images": 64, "fit_images": 300}
    assert one.provenance["seeds"] == {"encoder": 1}
    # the command's own record, as `imgcate embed` keeps: both inputs, roles, settings
    assert set(one.provenance["inputs"]) == {"units", "raster"}
    assert one.provenance["roles"] == two.provenance["roles"]
    assert one.provenance["chip_settings"]["scale"] is None


def test_embed_raster_needs_overwrite_before_any_work(tmp_path):
    runner = CliRunner()
    units, scene = _shipped_units_and_scene()
    out = tmp_path / "embeddings.parquet"
    out.write_bytes(b"keep")
    # a wrong --id-column would fail on reading the units: the output is refused first
    res = runner.invoke(main, ["embed-raster", units, scene, str(out), "--id-column", "nope"])
    assert res.exit_code == 1 and "exists; pass --overwrite to replace it" in res.output
    assert "Traceback" not in res.output and "nope" not in res.output
    assert out.read_bytes() == b"keep"
    args = ["--id-column", "village", *EMBED, "--chunk-images", "100", "--fit-images", "50"]
    res = runner.invoke(main, ["embed-raster", units, scene, str(out), *args, "-q"])
    assert res.exit_code == 1 and "--overwrite" in res.output and out.read_bytes() == b"keep"
    res = runner.invoke(main, ["embed-raster", units, scene, str(out), *args, "--overwrite"])
    assert res.exit_code == 0, res.output
    assert "in 3 chunks of up to 100 images; encoder fitted on a sample of 50 images" in res.output
    from imgcate import load_embeddings

    assert load_embeddings(out).provenance["streamed"] == {"chunk_images": 100, "fit_images": 50}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["embeddings.parquet"]


def test_embed_raster_errors_name_the_output_or_the_option(tmp_path):
    runner = CliRunner()
    base = ["embed-raster", *_shipped_units_and_scene()]
    out = str(tmp_path / "embeddings.parquet")
    cases = {
        "Invalid value for OUTPUT: must end in .parquet": [str(tmp_path / "embeddings.csv")],
        "Invalid value for --chunk-images: must be at least 1": [out, "--chunk-images", "0"],
        "Invalid value for --fit-images: must be at least 1": [out, "--fit-images", "0"],
    }
    for message, args in cases.items():
        res = runner.invoke(main, [*base, *args, "--id-column", "village"])
        assert res.exit_code == 2 and message in res.output, res.output
        assert "Traceback" not in res.output and isinstance(res.exception, SystemExit)
    assert not list(tmp_path.iterdir())


def test_embed_raster_drop_says_what_to_do_on_the_command_line(tmp_path):
    """With --on-edge drop, 64-px chips of the shipped villages cross the scene's edge for
    some units: the warning says what to do in the command line's words (no Python), the
    summary counts the dropped images, and the encoder's sample is the images it was fitted
    on (those left), as `chips --on-edge drop` then `embed` fit it."""
    import pyarrow.parquet as pq

    from imgcate import load_embeddings

    runner = CliRunner()
    out = tmp_path / "embeddings.parquet"
    args = ["embed-raster", *_shipped_units_and_scene(), str(out), "--id-column", "village"]
    res = runner.invoke(main, [*args, "--size", "64", "--on-edge", "drop", *EMBED])
    assert res.exit_code == 0, res.output
    kept = pq.read_metadata(out).num_rows
    assert 0 < kept < 300
    assert f"{300 - kept} units dropped" in res.output
    assert "remove them from the units table before `imgcate fit`" in res.output
    assert "trial.subset" not in res.output
    assert f"{300 - kept} images dropped (--on-edge drop)" in res.output
    assert f"encoder fitted on a sample of {kept} images" in res.output
    assert load_embeddings(out).provenance["streamed"]["fit_images"] == kept


def test_chips_drop_names_the_dropped_units(tmp_path):
    """`chips --on-edge drop` says how many units it dropped, which, and what to do."""
    from imgcate import load_chips

    out = tmp_path / "chips.npz"
    args = ["chips", *_shipped_units_and_scene(), str(out), "--id-column", "village"]
    res = CliRunner().invoke(main, [*args, "--size", "64", "--on-edge", "drop"])
    assert res.exit_code == 0, res.output
    chips = load_chips(out)
    dropped = len(chips.dropped_units)
    assert 0 < dropped == 300 - len(chips.unit_ids)
    assert f"{dropped} units dropped (--on-edge drop" in res.output
    assert str(chips.dropped_units[0]) in res.output
    assert "remove them from the units table before imgcate fit" in res.output


def test_a_raster_cut_short_is_blamed_on_the_raster_not_on_bounds(map_fit, tmp_path):
    """A scene cut short with a --bounds inside it: an error line (exit 1) naming the raster,
    not `Invalid value for --bounds` (usage, exit 2) as when the region was checked with it."""
    scene, fit_path = map_fit
    with rasterio.open(scene) as ds:
        west, south, east, north = ds.bounds
    inside = [west + 0.25 * (east - west), south + 0.25 * (north - south)]
    inside += [west + 0.75 * (east - west), south + 0.75 * (north - south)]
    for keep in (400, scene.stat().st_size // 2):  # the header cut; the pixels cut
        short = tmp_path / f"short{keep}.tif"
        short.write_bytes(scene.read_bytes()[:keep])
        out = tmp_path / f"map{keep}.tif"
        args = ["map", str(fit_path), str(short), str(out), "--bounds", *map(str, inside)]
        res = CliRunner().invoke(main, args + ["--stride", "16", "--max-draws", "20", "-q"])
        assert res.exit_code == 1, (keep, res.output)
        assert str(short) in res.output and "--bounds" not in res.output, res.output
        assert not out.exists() and list(tmp_path.glob(f"map{keep}*")) == []


def test_simulate_with_q_says_only_what_it_wrote(tmp_path):
    res = CliRunner().invoke(main, ["-q", "simulate", str(tmp_path / "t"), "--n-units", "40"])
    assert res.exit_code == 0, res.output
    assert res.output == f"wrote {tmp_path / 't'}/units.csv, embeddings.parquet, truth.csv\n"


def test_aggregate_names_a_file_that_is_not_a_map_or_not_polygons(tmp_path):
    """Usage errors (exit 2) naming the file: a GeoTIFF imgcate map did not write; points, or
    polygons without a CRS, as POLYGONS (checked before the fit is read)."""
    import geopandas as gpd
    from rasterio.transform import from_origin
    from shapely.geometry import Point, box

    profile = {"driver": "GTiff", "width": 4, "height": 4, "count": 1, "dtype": "float32"}
    profile.update(crs="EPSG:32636", transform=from_origin(500000, 100000, 30, 30))
    plain, tagged = tmp_path / "plain.tif", tmp_path / "tagged.tif"
    for path in (plain, tagged):
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(np.zeros((1, 4, 4), "float32"))
            if path == tagged:
                dst.update_tags(tile_size="32", stride="32")
    points = tmp_path / "villages.gpkg"
    gpd.GeoDataFrame(geometry=[Point(500030, 99970)], crs="EPSG:32636").to_file(points)
    bare = tmp_path / "bare.shp"  # no .prj: no CRS (a GeoJSON would read as EPSG:4326)
    gpd.GeoDataFrame(geometry=[box(500000, 99900, 500100, 100000)]).to_file(bare)
    out = tmp_path / "out.gpkg"
    runner = CliRunner()
    res = runner.invoke(main, ["aggregate", str(plain), str(points), str(out)])
    assert res.exit_code == 2 and f"'{plain}' is not a map written by imgcate map" in res.output
    res = runner.invoke(main, ["aggregate", str(tagged), str(points), str(out)])
    assert res.exit_code == 2 and "Invalid value for POLYGONS" in res.output, res.output
    assert f"polygons file '{points}' holds ['Point'] geometries" in res.output
    res = runner.invoke(main, ["aggregate", str(tagged), str(bare), str(out)])
    assert res.exit_code == 2 and f"polygons file '{bare}' has no CRS" in res.output, res.output
    assert not out.exists()


def test_unit_tables_name_coordinates_apart_from_an_outcome_named_y():
    """An outcome column named y is not taken for a coordinate; coordinates from a geometry
    are lon/lat where its CRS is geographic (they were x/y, and a y beside the user's own y
    meant two things)."""
    import geopandas as gpd

    from imgcate.cli.common import join_units
    from imgcate.units import read_units

    table = pd.DataFrame({"unit": ["a", "b"], "tau_mean": [0.5, 1.5]})
    base = {"vid": ["a", "b"], "treat": [0, 1], "y": [3.0, 4.0]}
    points = gpd.points_from_xy([32.1, 32.2], [0.5, 0.6])
    own = gpd.GeoDataFrame(base, geometry=points, crs="EPSG:4326")
    roles = {"id": "vid", "treatment": "treat", "outcome": "y"}
    out = join_units(table, read_units(own, **roles))
    assert list(out.columns) == ["vid", "lon", "lat", "tau_mean"]
    np.testing.assert_allclose(out["lat"], [0.5, 0.6])
    columns = pd.DataFrame({**base, "longitude": [32.1, 32.2], "latitude": [0.5, 0.6]})
    out = join_units(table, read_units(columns, lon="longitude", lat="latitude", **roles))
    assert list(out.columns) == ["vid", "longitude", "latitude", "tau_mean"]
    utm = own.to_crs("EPSG:32636")
    out = join_units(table, read_units(utm, **roles))
    assert list(out.columns) == ["vid", "unit_x", "unit_y", "tau_mean"]
