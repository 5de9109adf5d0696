"""The command-line workflow on the shipped data, as a new user runs it: units table + raster
-> chips -> embed -> fit -> map -> aggregate -> info. The map's pixels equal fit.predict on the
same tiles, the aggregates are the joint-draw averages of those tiles, and every output says
where it came from."""

from __future__ import annotations

import json
import warnings

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
from click.testing import CliRunner
from rasterio.windows import Window

from imgcate import datasets
from imgcate.chips import chips_from_array
from imgcate.cli import main
from imgcate.embeddings import load_embeddings
from imgcate.maps import band_names
from imgcate.results import load_fit

TILE, STRIDE, DRAWS = 16, 16, 60


def invoke(*args: str) -> str:
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == 0, res.output + str(res.exception)
    return res.output


@pytest.fixture(scope="module")
def workflow(tmp_path_factory):
    """Every step of the README's command-line workflow, small settings."""
    out = tmp_path_factory.mktemp("workflow")
    units, scene = datasets.villages_path(), datasets.landsat_path()
    districts = datasets.districts_path()
    ids = ("--id-column", "village")
    invoke("chips", units, scene, out / "chips.npz", *ids, "--size", TILE)
    invoke(
        "embed",
        out / "chips.npz",
        out / "embeddings.parquet",
        "--n-features",
        64,
        "--n-components",
        6,
    )
    invoke(
        "-q",
        "fit",
        units,
        out / "embeddings.parquet",
        out / "fit.imgcate",
        *ids,
        "--covariate",
        "elevation_m",
        "-k",
        2,
        "--chains",
        1,
        "--draws",
        100,
        "--effects",
        out / "unit_effects.csv",
    )
    invoke(
        "-q",
        "map",
        out / "fit.imgcate",
        scene,
        out / "map.tif",
        "--stride",
        STRIDE,
        "--max-draws",
        DRAWS,
        "--seed",
        3,
    )
    invoke("aggregate", out / "map.tif", districts, out / "districts.gpkg")
    return out


def test_unit_effects_join_back_by_the_users_id_and_coordinates(workflow):
    table = pd.read_csv(workflow / "unit_effects.csv")
    units = pd.read_csv(datasets.villages_path())
    assert list(table.columns[:3]) == ["village", "lon", "lat"]
    joined = units.merge(table, on=["village", "lon", "lat"], validate="one_to_one")
    assert len(joined) == len(units)
    assert {"tau_mean", "tau_5%", "tau_95%", "cluster"} <= set(table.columns)


def test_embeddings_keep_their_encoder(workflow):
    emb = load_embeddings(workflow / "embeddings.parquet")
    assert emb.encoder is not None and emb.encoder.chip_spec["size_px"] == [TILE, TILE]
    assert load_fit(workflow / "fit.imgcate").encoder is not None
    assert emb.provenance["seeds"] == {"encoder": 0}


def _tiles(scene, rows, cols):
    """The tiles the map computed at grid cells (rows, cols), read directly."""
    with rasterio.open(scene) as ds:
        return np.stack(
            [
                ds.read(window=Window(c * STRIDE, r * STRIDE, TILE, TILE)).astype(np.float32)
                for r, c in zip(rows, cols, strict=True)
            ]
        )


def test_map_pixels_equal_fit_predict_on_the_same_tiles(workflow):
    scene = datasets.landsat_path()
    with rasterio.open(workflow / "map.tif") as ds, rasterio.open(scene) as src:
        assert ds.crs == src.crs
        assert ds.transform.a == pytest.approx(STRIDE * src.transform.a)
        # cell (0, 0) is centred on the first tile's centre
        assert ds.transform.c == pytest.approx(src.transform.c + (TILE - STRIDE) / 2 * src.res[0])
        names = list(ds.descriptions)
        layers = {name: ds.read(i + 1) for i, name in enumerate(names)}
        tags = ds.tags()
    fit = load_fit(workflow / "fit.imgcate")
    assert names == band_names_for(fit)
    rng = np.random.default_rng(0)
    valid = np.argwhere(np.isfinite(layers["mean"]))
    rows, cols = valid[rng.choice(len(valid), 12, replace=False)].T
    tiles = _tiles(scene, rows, cols)
    prediction = fit.predict(chips_from_array(tiles), max_draws=DRAWS, seed=3)
    cate = np.asarray(prediction.cate)
    np.testing.assert_allclose(layers["mean"][rows, cols], cate.mean(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layers["sd"][rows, cols], cate.std(0), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(
        layers["prob_positive"][rows, cols], (cate > 0).mean(0), atol=1.5 / DRAWS
    )
    outside = layers["outside_support"][rows, cols]
    assert set(np.unique(outside)) <= {0.0, 1.0}
    assert int(tags["n_draws"]) == DRAWS and tags["seed"] == "3"


def band_names_for(fit) -> list[str]:
    return (
        ["mean", "sd", "lower_5", "upper_95", "prob_positive"]
        + [f"cluster_prob_{k}" for k in range(fit.n_clusters)]
        + ["extrapolation", "outside_support"]
    )


def test_map_band_names_match_write_cog(workflow):
    with rasterio.open(workflow / "map.tif") as ds:
        n_clusters = sum(name.startswith("cluster_prob") for name in ds.descriptions)
        import xarray as xr

        fake = xr.Dataset(attrs={"prob": 0.9}, coords={"cluster": np.arange(n_clusters)})
        assert list(ds.descriptions) == band_names(fake)


def test_aggregates_are_joint_draw_averages_of_the_map(workflow):
    table = gpd.read_file(workflow / "districts.gpkg")
    # reading it leaves nothing beside it (GDAL writes a .aux.xml for dataset-level metadata)
    assert not (workflow / "districts.gpkg.aux.xml").exists()
    assert list(table["district"]) == ["south-west", "south-east", "north-west", "north-east"]
    assert (table["n_tiles"] > 0).all()
    assert (table["lower_5"] <= table["mean"]).all() and (table["mean"] <= table["upper_95"]).all()
    # the polygon mean is the area-weighted mean of the map's tile means (same tiles, draws)
    from imgcate.maps import aggregate_by_polygon

    with rasterio.open(workflow / "map.tif") as ds:
        mean = ds.read(1)
        outside = ds.read(list(ds.descriptions).index("outside_support") + 1)
        transform, crs = ds.transform, ds.crs
    import xarray as xr

    h, w = mean.shape
    fake = xr.Dataset(
        {
            "mean": (("y", "x"), mean),
            "lower": (("y", "x"), mean),
            "upper": (("y", "x"), mean),
            "prob_positive": (("y", "x"), mean),
            "extrapolation": (("y", "x"), mean),
            "outside_support": (("y", "x"), outside),
        },
        coords={"cluster": [0, 1]},
        attrs={"crs": crs.to_wkt(), "transform": list(transform)[:6], "prob": 0.9},
    )
    assert fake.sizes["y"] == h and fake.sizes["x"] == w
    expected = aggregate_by_polygon(fake, datasets.districts_path())
    np.testing.assert_allclose(table["mean"], expected["mean"], rtol=1e-4, atol=1e-5)
    # and its share of tiles outside the trial's support is the map layer's
    np.testing.assert_allclose(
        table["outside_support_share"], expected["outside_support_share"], atol=1e-9
    )
    assert "outside_overlap_share" not in table  # a randomized trial's fit


def test_info_reports_what_each_file_holds_and_where_it_came_from(workflow):
    out = invoke("info", workflow / "map.tif")
    assert "outside_support" in out and "fit_sha256" in out
    # the command as typed (run in-process here, so not this process's sys.argv)
    typed = ["imgcate", "-q", "map", workflow / "fit.imgcate", datasets.landsat_path()]
    typed += [workflow / "map.tif", "--stride", STRIDE, "--max-draws", DRAWS, "--seed", 3]
    typed = [str(word) for word in typed]
    assert f"command: {' '.join(typed)}\n" in out and str(datasets.landsat_path()) in out
    record = json.loads(invoke("info", workflow / "map.tif", "--json"))
    assert record["command"] == typed
    assert record["inputs"]["fit"]["path"] == str((workflow / "fit.imgcate").resolve())
    assert record["inputs"]["raster"]["sha256"]
    assert record["seeds"] == {"map": 3}
    out = invoke("info", workflow / "embeddings.parquet")
    assert "RandomConvFeatures" in out and "villages.csv" in out and "encoder=0" in out
    assert f"command: imgcate embed {workflow / 'chips.npz'} " in out
    out = invoke("info", workflow / "chips.npz")
    assert "300 images" in out and "L7_ETMs.tif" in out  # 300 villages at 300 places
    assert f"command: imgcate chips {datasets.villages_path()} " in out
    out = invoke("info", workflow / "districts.gpkg")
    assert "4 features" in out and f"command: imgcate aggregate {workflow / 'map.tif'} " in out
    out = invoke("info", workflow / "fit.imgcate")
    assert "imgcate fit" in out and "encoder: RandomConvFeatures" in out and "diagnostics" in out
    assert f"command: imgcate -q fit {datasets.villages_path()} " in out  # meta.json's record
    assert "raise num_samples" not in out and "(imgcate.compare_clusters)" not in out
    assert "num_warmup=" in out and "init_restarts=" in out  # the MAP searches it ran
    out = invoke("info", workflow / "unit_effects.csv")  # a table: what it holds, no provenance
    assert "a table of 300 rows" in out and "'village'" in out and "imgcate info FIT" in out
    res = CliRunner().invoke(main, ["info", str(workflow / "unit_effects.csv"), "--json"])
    assert res.exit_code != 0 and "holds no provenance record" in res.output


def test_a_reversed_or_undescribed_copy_of_the_scene_is_refused_or_warned_about(workflow, tmp_path):
    """The shipped scene names its bands, so the fit does too: `imgcate map` refuses the same
    scene with its bands reversed, and warns about a copy without descriptions (naming the
    order it assumes)."""
    with rasterio.open(datasets.landsat_path()) as src:
        data, profile, names = src.read(), src.profile, list(src.descriptions)
    assert names == list(datasets.LANDSAT_BANDS)
    reversed_scene, bare = tmp_path / "reversed.tif", tmp_path / "bare.tif"
    for path, arr, described in ((reversed_scene, data[::-1], names[::-1]), (bare, data, [])):
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(arr)
            for band, name in enumerate(described, start=1):
                dst.set_band_description(band, name)
    fit = workflow / "fit.imgcate"
    opts = ("--stride", 64, "--max-draws", 10)
    args = ["map", fit, reversed_scene, tmp_path / "r.tif", *opts]
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code != 0 and not (tmp_path / "r.tif").exists()
    assert "another order" in res.output and "swir2" in res.output, res.output
    with warnings.catch_warnings():  # an earlier `imgcate -q` in this process ignored them
        warnings.simplefilter("always")
        out = invoke("map", fit, bare, tmp_path / "b.tif", *opts)
    assert "BandWarning" in out and "no band descriptions" in out and "'blue', 'green'" in out


def test_a_fresh_clone_has_the_data_the_workflow_reads():
    """Every file the workflow and the README's command-line block read is committed as
    itself (not ignored, not a Git LFS pointer): a clone alone runs them."""
    import shutil
    import subprocess

    root = datasets.landsat_path().parents[2]
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    files = [
        datasets.villages_path(),
        datasets.landsat_path(),
        datasets.districts_path(),
        datasets.elevation_path(),
        datasets.landsat_path().parent / "README.md",
        datasets.landsat_path().parent / "LICENSE-Apache-2.0.txt",
    ]
    for path in files:
        rel = str(path.relative_to(root))
        staged = subprocess.run(
            ["git", "-C", str(root), "ls-tree", "HEAD", "--", rel],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert staged, f"{rel} is not committed"
        blob = subprocess.run(
            ["git", "-C", str(root), "hash-object", "--", rel],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert staged[2] == blob, f"{rel} differs from its committed version"
        assert not path.read_bytes().startswith(b"version https://git-lfs"), rel
