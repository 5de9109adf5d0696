"""Several single-band files as one raster, and band identity: a stack whose bands are
reversed or undescribed is warned about or refused, never passed silently."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import rasterio

from imgcate import BandWarning, RasterError, datasets, embed, extract_chips
from imgcate.bands import check_band_identity, rgb_bands
from imgcate.maps import predict_map
from imgcate.raster import stack_bands, vrt_xml
from imgcate.simulate import landsat_trial

NAMES = list(datasets.LANDSAT_BANDS)


@pytest.fixture(scope="module")
def bands(tmp_path_factory):
    """The Landsat scene as six single-band files B1..B7 (no descriptions)."""
    return datasets.landsat_band_files(tmp_path_factory.mktemp("bands"))


@pytest.fixture(scope="module")
def trial():
    return landsat_trial(datasets.landsat_path(), seed=2, n_units=60, chip_size=16).trial


def test_stack_bands_writes_a_vrt_with_the_scene_and_its_names(bands, tmp_path):
    vrt = stack_bands(bands, tmp_path / "scene.vrt", names=NAMES)
    with rasterio.open(vrt) as stack, rasterio.open(datasets.landsat_path()) as scene:
        assert stack.descriptions == tuple(NAMES)
        assert stack.crs == scene.crs and stack.transform == scene.transform
        np.testing.assert_array_equal(stack.read(), scene.read())
    with pytest.raises(Exception, match="exists"):
        stack_bands(bands, vrt, names=NAMES)


def test_a_mapping_of_band_files_is_one_raster_for_chips(bands, trial):
    stacked = extract_chips(trial, dict(zip(NAMES, bands, strict=True)), 16)
    plain = extract_chips(trial, datasets.landsat_path(), 16)
    assert stacked.band_names == tuple(NAMES)
    np.testing.assert_array_equal(stacked.values, plain.values)
    assert stacked.provenance["inputs"]["raster"]["blue"]["sha256"]


def test_files_on_another_grid_are_refused(bands, tmp_path):
    with rasterio.open(bands[0]) as src:
        profile, data = src.profile, src.read()
    shifted = tmp_path / "shifted.tif"
    with rasterio.open(
        shifted,
        "w",
        **{**profile, "transform": profile["transform"] * rasterio.Affine.translation(3, 0)},
    ) as dst:
        dst.write(data)
    with pytest.raises(RasterError, match="shifted.tif.*another grid.*resample"):
        stack_bands([bands[0], shifted], tmp_path / "bad.vrt")


@pytest.fixture(scope="module")
def named_encoder(bands, trial):
    chips = extract_chips(trial, dict(zip(NAMES, bands, strict=True)), 16)
    return embed(chips, n_features=32, n_components=4, seed=0).encoder


def test_reversed_described_stack_is_refused(bands, trial, named_encoder):
    reversed_stack = dict(zip(NAMES[::-1], bands[::-1], strict=True))
    chips = extract_chips(trial, reversed_stack, 16)
    with pytest.raises(Exception, match=r"the same bands in another order.*reorder"):
        named_encoder.transform(chips)


def test_undescribed_stack_warns_naming_the_order_assumed(bands, trial, named_encoder, tmp_path):
    bare = tmp_path / "bare.tif"  # the shipped scene's pixels, without its band descriptions
    with (
        rasterio.open(datasets.landsat_path()) as src,
        rasterio.open(bare, "w", **src.profile) as dst,
    ):
        dst.write(src.read())
    chips = extract_chips(trial, bare, 16)
    with pytest.warns(BandWarning, match=r"no band descriptions.*\['blue', 'green', 'red'"):
        named_encoder.transform(chips)


def test_reversed_undescribed_stack_is_warned_about_from_its_values(bands, trial, named_encoder):
    """No names to compare: the band means give the reversal away."""
    chips = extract_chips(trial, {f"b{i}": f for i, f in enumerate(bands[::-1])}, 16)
    spec = dict(named_encoder.chip_spec, band_names=[f"band_{i + 1}" for i in range(6)])
    with pytest.warns(BandWarning, match="look reversed"):
        check_band_identity(
            [f"band_{i + 1}" for i in range(6)],
            spec,
            source="chips",
            means=chips.spec()["band_mean"],
            sds=chips.spec()["band_sd"],
        )
    with warnings.catch_warnings():  # the right order passes quietly
        warnings.simplefilter("error", BandWarning)
        plain = extract_chips(trial, datasets.landsat_path(), 16)
        check_band_identity(
            [f"band_{i + 1}" for i in range(6)],
            spec,
            source="chips",
            means=plain.spec()["band_mean"],
            sds=plain.spec()["band_sd"],
        )


@pytest.mark.parametrize(("factor", "shown"), [(1e-4, "0.0001"), (0.1, "0.1"), (1e4, "1e+04")])
def test_bands_in_other_units_are_warned_about_naming_the_factor(bands, trial, factor, shown):
    """Every band's mean and sd the trial's times one factor (reflectance as integers x 10,000
    against fractions, or the other way): a BandWarning names the factor and its inverse;
    the trial's own values, or values a little brighter, pass quietly."""
    spec = extract_chips(trial, datasets.landsat_path(), 16).spec()
    names = list(spec["band_names"])
    means, sds = np.asarray(spec["band_mean"]), np.asarray(spec["band_sd"])
    with pytest.warns(BandWarning, match=rf"look {re.escape(shown)} times the trial's") as got:
        check_band_identity(names, spec, source="chips", means=means * factor, sds=sds * factor)
    assert f"multiply them by {1 / factor:.3g}" in str(got[0].message)
    # read with a scale (a map's scale=): the scale that brings them to the trial's is named
    read_with = np.full(len(names), 1e-4)
    with pytest.warns(BandWarning, match=rf"read them with scale={1e-4 / factor:.3g} \("):
        check_band_identity(
            names, spec, source="chips", means=means * factor, sds=sds * factor, scale=read_with
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error", BandWarning)
        for quiet in (1.0, 1.5, 0.6):
            check_band_identity(names, spec, source="chips", means=means * quiet, sds=sds * quiet)


def test_map_refuses_or_warns_on_a_wrong_stack(map_inputs, tmp_path):
    """The map fit's scene has described bands; its reversed copy is refused, an undescribed
    copy warned about, and a reversed undescribed copy warned about from its values."""
    from imgcate.results import load_fit

    scene, fit_path = map_inputs
    fit = load_fit(fit_path)
    with rasterio.open(scene) as src:
        data, profile, names = src.read(), src.profile, list(src.descriptions)
    opts = {"max_draws": 20, "progress": False, "stride": 64}
    reversed_path, bare, bare_reversed = (tmp_path / n for n in ("rev.tif", "bare.tif", "brev.tif"))
    for path, arr, described in (
        (reversed_path, data[::-1], names[::-1]),
        (bare, data, None),
        (bare_reversed, data[::-1], None),
    ):
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(arr)
            for i, name in enumerate(described or [], start=1):
                dst.set_band_description(i, name)
    with pytest.raises(RasterError, match="another order"):
        predict_map(fit, reversed_path, **opts)
    with pytest.warns(BandWarning, match="no band descriptions"):
        predict_map(fit, bare, **opts)
    with pytest.warns(BandWarning, match="look reversed|out of order"):
        predict_map(fit, bare_reversed, **opts)


def test_rgb_bands_found_by_name():
    assert rgb_bands(NAMES) == (2, 1, 0)
    assert rgb_bands(["SR_B4_red", "SR_B3_green", "SR_B2_blue", "red_edge"]) == (0, 1, 2)
    assert rgb_bands(["band_1", "band_2", "band_3"]) is None


def test_bands_named_by_file_are_refused_with_how_to_name_them(bands, trial, named_encoder):
    """Single-band files stacked without names carry their file names (B1, B2, ...): the error
    says how to name them as the trial's bands."""
    by_file = extract_chips(trial, vrt_xml(list(bands)), 16)
    with pytest.raises(Exception, match=r"other bands.*name them in order \(--band-name blue"):
        named_encoder.transform(by_file)


def test_bands_too_alike_to_order_are_named_as_a_guess():
    """Two bands whose values are alike: the order suggested for them is a guess, and the
    warning says so instead of naming one order as the answer (a user who followed such a
    suggestion got a wrong map and no further warning)."""
    spec = {"band_names": ["blue", "green", "red"], "band_mean": [10.0, 64.0, 65.0]}
    spec["band_sd"] = [2.0, 8.0, 8.0]
    given = [f"band_{i + 1}" for i in range(3)]
    with pytest.warns(BandWarning, match="look reversed") as caught:
        check_band_identity(
            given, spec, source="raster", means=[65.0, 64.0, 10.0], sds=[8.0, 8.0, 2.0]
        )
    (text,) = [str(w.message) for w in caught if "look reversed" in str(w.message)]
    assert "['band_2', 'band_1'] have values too alike" in text and "guess" in text
    clear = {**spec, "band_mean": [10.0, 40.0, 90.0]}  # far apart: no hedge
    with pytest.warns(BandWarning, match="look reversed") as caught:
        check_band_identity(
            given, clear, source="raster", means=[90.0, 40.0, 10.0], sds=[8.0, 8.0, 2.0]
        )
    assert not any("alike" in str(w.message) for w in caught)
