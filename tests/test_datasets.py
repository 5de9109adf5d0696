"""The shipped data: found through the accessor from any working directory, and as documented."""

from __future__ import annotations

import subprocess
import sys

import rasterio

from imgcate.datasets import elevation_path, landsat_path


def test_landsat_scene_and_elevation_model_are_as_documented():
    with rasterio.open(landsat_path()) as src:
        assert (src.count, src.height, src.width) == (6, 352, 349)
        assert src.crs.to_epsg() == 31985 and src.dtypes[0] == "uint8"
    with rasterio.open(elevation_path()) as src:
        assert (src.count, src.height, src.width) == (1, 111, 111)
        assert src.dtypes[0] == "float32"
    folder = landsat_path().parent
    assert (folder / "README.md").is_file() and (folder / "LICENSE-Apache-2.0.txt").is_file()


def test_accessor_works_from_any_directory(tmp_path):
    code = "from imgcate.datasets import landsat_path; print(landsat_path())"
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert run.stdout.strip() == str(landsat_path())
