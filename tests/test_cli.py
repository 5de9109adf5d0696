"""The command line, invoked in-process; outputs reopened and checked against the Python API."""

from __future__ import annotations

import pandas as pd
import pytest
from click.testing import CliRunner

from imgcate.cli import main
from imgcate.effects import load_fit


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli")
    runner = CliRunner()
    res = runner.invoke(main, ["simulate", str(out), "--n-units", "200", "--seed", "3"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, [
        "fit", str(out / "units.csv"), str(out / "embeddings.parquet"), str(out / "fit.imgcate"),
        "--image-id", "image_id", "--covariate", "x0", "--covariate", "x1", "-k", "2",
        "--chains", "1", "--draws", "100", "-q",
    ])
    assert res.exit_code == 0, res.output
    return out


def test_fit_then_effects_match_the_api(fitted):
    runner = CliRunner()
    res = runner.invoke(main, ["effects", str(fitted / "fit.imgcate"),
                               str(fitted / "clusters.csv"), "--level", "cluster"])
    assert res.exit_code == 0, res.output
    table = pd.read_csv(fitted / "clusters.csv")
    api = load_fit(fitted / "fit.imgcate").cluster_effects().reset_index()
    pd.testing.assert_frame_equal(table, api, check_dtype=False, atol=1e-9)


def test_existing_output_needs_overwrite(fitted):
    runner = CliRunner()
    before = (fitted / "units.csv").read_bytes()
    res = runner.invoke(main, ["simulate", str(fitted), "--n-units", "50"])
    assert res.exit_code != 0 and "--overwrite" in res.output
    assert (fitted / "units.csv").read_bytes() == before
    assert not list(fitted.glob(".*.tmp"))


def test_errors_point_at_the_option(fitted, tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["effects", str(fitted / "fit.imgcate"), str(tmp_path / "x.csv"),
                               "--prob", "1.5"])
    assert res.exit_code != 0 and "--prob" in res.output
    res = runner.invoke(main, ["fit", str(fitted / "units.csv"), str(fitted / "embeddings.parquet"),
                               str(tmp_path / "f.imgcate"), "--treatment", "nope"])
    assert res.exit_code != 0 and "treatment column 'nope'" in res.output
    assert not (tmp_path / "f.imgcate").exists()


def test_help_ends_with_examples():
    runner = CliRunner()
    for command in ("simulate", "fit", "effects", "demo"):
        res = runner.invoke(main, [command, "--help"])
        assert res.exit_code == 0 and "Example" in res.output, command
