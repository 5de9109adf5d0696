"""Maps of a fit given a propensity: where each tile stands against the trial's overlap (the
layers image_propensity and outside_overlap), checked against EffectFit.predict on the tiles
read directly, in memory and written block by block, and in the polygon aggregates."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window
from shapely.geometry import Polygon, box

from imgcate.chips import chips_from_array
from imgcate.errors import ConvergenceWarning, OverlapWarning
from imgcate.maps import aggregate_by_polygon, band_names, predict_map, write_cog, write_map
from imgcate.provenance import collect

TILE = 32  # the chip size of the map fits (MAP_TILE in tests/conftest.py)
OPTS = {"tile_size": TILE, "stride": 32, "max_draws": 50, "progress": False, "seed": 1}


@pytest.fixture(scope="module")
def observational(inputs):
    """(scene, fit): the map scene's trial targeted on its vegetated share, fitted with the
    true propensity (one chain of 100 + 100 draws)."""
    from imgcate.chips import extract_chips
    from imgcate.embeddings import embed
    from imgcate.inference import fit
    from imgcate.simulate import simulate_scene_trial

    scene, _ = inputs
    sim = simulate_scene_trial(scene, seed=5, n_units=300, chip_size=TILE, targeting=2.0)
    chips = extract_chips(sim.trial, scene, TILE)
    emb = embed(chips, "rcf", n_features=128, n_components=8, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", OverlapWarning)
        result = fit(
            sim.trial,
            emb,
            n_clusters=2,
            seed=0,
            num_warmup=100,
            num_samples=100,
            num_chains=1,
            progress=False,
            propensity=sim.truth.propensity,
        )
    return scene, result


def test_a_map_of_an_observational_fit_has_the_overlap_layers(observational, tmp_path):
    """Each tile's image_propensity is predict()'s on the tile read directly, outside_overlap
    flags it outside [0.1, 0.9] (a warning where more than a tenth are), and the GeoTIFF and
    the polygon aggregates carry them."""
    scene, fit = observational
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = predict_map(fit, scene, **OPTS)
    propensity, flags = ds["image_propensity"].values, ds["outside_overlap"].values
    scored = np.isfinite(propensity)
    assert scored.sum() > 50 and (np.isfinite(flags) == scored).all()
    np.testing.assert_array_equal(flags[scored], ((propensity < 0.1) | (propensity > 0.9))[scored])
    share = flags[scored].mean()
    assert 0 < propensity[scored].min() < propensity[scored].max() < 1
    overlap_warned = [str(w.message) for w in caught if issubclass(w.category, OverlapWarning)]
    assert share > 0.1 and len(overlap_warned) == 1, (share, overlap_warned)
    assert overlap_warned[0].startswith(f"{share:.0%} of the map's tiles have an image-predicted")
    # the slow, obvious way: predict on tiles read from the raster
    picks = [(0, 0), (3, 7), (10, 10), (5, 2)]
    with rasterio.open(scene) as src:
        tiles = np.stack([src.read(window=Window(j * 32, i * 32, TILE, TILE)) for i, j in picks])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = fit.predict(chips_from_array(tiles.astype(np.float32)), max_draws=50).to_frame()
    rows, cols = np.array(picks).T
    np.testing.assert_allclose(propensity[rows, cols], table["image_propensity"], rtol=1e-5)
    np.testing.assert_array_equal(flags[rows, cols], table["outside_overlap"])
    # the GeoTIFF: in memory and block by block, the same bands, and the same warning
    record = collect({"raster": scene}, seeds={"map": 1})
    names = band_names(ds)
    assert names[-4:] == ["image_propensity", "outside_overlap", "extrapolation", "outside_support"]
    write_cog(ds, tmp_path / "memory.tif")
    with pytest.warns(OverlapWarning, match=f"^{share:.0%} of the map's tiles have"):
        opts = dict(OPTS, block_tiles=17, provenance=record, preview=False)
        written = write_map(fit, scene, tmp_path / "blocks.tif", **opts)
    assert written.outside_overlap == int((flags == 1).sum())
    with rasterio.open(tmp_path / "memory.tif") as a, rasterio.open(tmp_path / "blocks.tif") as b:
        assert list(a.descriptions) == list(b.descriptions) == names
        band = names.index("image_propensity") + 1
        np.testing.assert_array_equal(a.read(band), propensity)
        np.testing.assert_array_equal(b.read(band), propensity)
        np.testing.assert_array_equal(b.read(band + 1), flags)
    # a district's share of tiles outside the overlap
    x0, y0, x1, y1 = float(ds.x.min()), float(ds.y.min()), float(ds.x.max()), float(ds.y.max())
    import geopandas as gpd

    districts = gpd.GeoDataFrame(geometry=[box(x0, y0, x1, y1)], crs=ds.attrs["crs"])
    table = aggregate_by_polygon(ds, districts)
    assert table["outside_overlap_share"].iloc[0] == pytest.approx(share, abs=0.02)


def test_overlap_layers_outside_the_region_and_resumed(observational, tmp_path):
    """Outside the region both layers are NaN, as the effect is; blocks saved in a checkpoint
    folder hold the layer and a rerun that reuses them gives the same map."""
    scene, fit = observational
    with rasterio.open(scene) as src:
        left, bottom, right, top = src.bounds
    region = Polygon([(left, bottom), (right, bottom), (left, top)])  # half the grid's tiles
    folder = tmp_path / "blocks"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = predict_map(fit, scene, region, checkpoint_dir=folder, block_tiles=16, **OPTS)
        again = predict_map(fit, scene, region, checkpoint_dir=folder, block_tiles=16, **OPTS)
    mean = first["mean"].values
    assert 0.3 * mean.size < np.isfinite(mean).sum() < 0.7 * mean.size
    for name in ("image_propensity", "outside_overlap"):
        np.testing.assert_array_equal(np.isnan(first[name].values), np.isnan(mean))
        np.testing.assert_array_equal(again[name].values, first[name].values)
    saved = sorted(folder.glob("block-*.npz"))
    assert saved and all("image_propensity" in np.load(path).files for path in saved)


def test_a_randomized_fits_map_has_no_overlap_layers(inputs):
    scene, fit = inputs
    ds = predict_map(fit, scene, **OPTS)
    assert "image_propensity" not in ds and "outside_overlap" not in ds
    assert band_names(ds)[-2:] == ["extrapolation", "outside_support"]


def test_the_command_line_counts_tiles_outside_the_overlap(observational, tmp_path):
    """`imgcate map` of such a fit says how many tiles lie outside the overlap, and
    `imgcate info` gives their share, as the map's own layer has them."""
    from click.testing import CliRunner

    from imgcate.cli import main

    scene, fit = observational
    fit_path = fit.save(tmp_path / "observational.imgcate")
    out = tmp_path / "map.tif"
    args = ["map", str(fit_path), str(scene), str(out), "--stride", "32", "--max-draws", "50"]
    res = CliRunner().invoke(main, [*args, "--no-preview"])
    assert res.exit_code == 0, res.output
    with rasterio.open(out) as src:
        flags = src.read(list(src.descriptions).index("outside_overlap") + 1)
    outside = int((flags == 1).sum())
    assert f"{outside} outside its overlap [0.1, 0.9]" in res.output
    info = CliRunner().invoke(main, ["info", str(out)])
    assert info.exit_code == 0, info.output
    assert f"{np.nanmean(flags):.1%} outside the overlap [0.1, 0.9]" in info.output
    # `imgcate aggregate`: a polygon's share of tiles outside the overlap, from the same tiles
    import geopandas as gpd

    with rasterio.open(out) as src:
        left, bottom, right, top = src.bounds
        crs = src.crs
    districts = tmp_path / "districts.gpkg"
    gpd.GeoDataFrame({"name": ["all"]}, geometry=[box(left, bottom, right, top)], crs=crs).to_file(
        districts
    )
    res = CliRunner().invoke(
        main, ["aggregate", str(out), str(districts), str(tmp_path / "d.gpkg")]
    )
    assert res.exit_code == 0, res.output
    table = gpd.read_file(tmp_path / "d.gpkg")
    assert table["outside_overlap_share"].iloc[0] == pytest.approx(np.nanmean(flags), abs=1e-6)
