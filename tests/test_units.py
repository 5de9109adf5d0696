"""read_units: every validation error names the column, the rows and the fix."""

from __future__ import annotations

import warnings

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest

from imgcate import InputError, read_units


def table(n: int = 6) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "id": np.arange(n),
            "lon": rng.uniform(32, 33, n),
            "lat": rng.uniform(0, 1, n),
            "treatment": np.arange(n) % 2,
            "outcome": rng.normal(size=n),
            "x": rng.normal(size=n),
            "village": np.arange(n) // 2,
        }
    )


def test_reads_csv_geopackage_and_parquet_alike(tmp_path):
    df = table()
    df.to_csv(tmp_path / "u.csv", index=False)
    gdf = gpd.GeoDataFrame(
        df.drop(columns=["lon", "lat"]),
        geometry=gpd.points_from_xy(df.lon, df.lat),
        crs="EPSG:4326",
    )
    gdf.to_crs("EPSG:32636").to_file(tmp_path / "u.gpkg")
    gdf.to_parquet(tmp_path / "u.parquet")
    a = read_units(tmp_path / "u.csv", covariates=["x"], image_id="village")
    b = read_units(tmp_path / "u.gpkg", covariates=["x"], image_id="village")
    c = read_units(tmp_path / "u.parquet", covariates=["x"], image_id="village")
    assert b.crs.to_epsg() == 32636 and a.crs.to_epsg() == 4326
    np.testing.assert_allclose(b.xy("EPSG:4326")[0], a.xy()[0], atol=1e-9)
    np.testing.assert_allclose(c.xy()[1], df.lat)
    np.testing.assert_array_equal(a.image_keys, df.village)
    np.testing.assert_allclose(a.covariate_matrix[:, 0], df.x)
    projected = df.assign(lon=df.lon * 1e4 + 4e5, lat=df.lat * 1e4)  # metres, with their CRS
    assert read_units(projected, crs="EPSG:32636").crs.to_epsg() == 32636


@pytest.mark.parametrize(
    ("change", "kwargs", "message"),
    [
        (lambda d: d.drop(columns="outcome"), {}, "outcome column 'outcome' is not in"),
        (lambda d: d.assign(treatment=[0, 1, 2, 0, 1, 0]), {}, "must be binary 0/1"),
        (lambda d: d.assign(treatment="a"), {}, "must be binary 0/1"),
        (lambda d: d.assign(treatment=1), {}, "is constant"),
        (lambda d: d.assign(outcome=[1, np.nan, 2, 3, 4, 5]), {}, "units [1]"),
        (lambda d: d.assign(outcome=[1, np.inf, 2, 3, 4, 5]), {}, "NaN, infinite"),
        (lambda d: d.assign(id=[0, 1, 1, 2, 3, 4]), {}, "duplicated ids [1]"),
        (lambda d: d.assign(id=["a", "b", "b", 7, 7, "c"]), {}, "duplicated ids [7, 'b']"),
        (lambda d: d.assign(id=["a", None, "b", None, "c", "d"]), {}, "has missing ids"),
        (
            lambda d: d.assign(x=["a", "b", 1, 2, 3, 4]),
            {"covariates": ["x"]},
            "covariate 'x' is not numeric",
        ),
        (
            lambda d: d.assign(lat=[0.1, None, 0.2, 0.3, 0.4, 0.5]),
            {},
            "missing or non-numeric coordinates",
        ),
        (
            lambda d: d.assign(x=[1, None, 2, 3, 4, 5]),
            {"covariates": ["x"]},
            "missing='drop', 'mean' or 'indicator'",
        ),
        (lambda d: d, {"covariates": ["nope"]}, "covariate column 'nope' is not in"),
        (
            lambda d: d.drop(columns="lon"),
            {},
            "coordinate column 'lon' is not in the units table (columns: ['id'",
        ),
        (lambda d: d, {"missing": "zero"}, "missing='zero' is not allowed"),
        (
            lambda d: d.assign(lon=d.lon * 1e4 + 4e5, lat=d.lat * 1e4),
            {},
            "units [0, 1, 2, 3, 4] and 1 more have coordinates outside longitude",
        ),
        (lambda d: d.assign(lon=d.lon * 1e4 + 4e5), {}, "pass their crs='EPSG:....'"),
        (lambda d: d.assign(lon=d.lat, lat=d.lon + 100), {}, "look swapped; pass lon='lat'"),
        (lambda d: d, {"crs": "EPSG:nope"}, "crs='EPSG:nope' is not a coordinate reference"),
    ],
)
def test_validation_errors_name_the_problem(change, kwargs, message):
    with pytest.raises(InputError) as err:
        read_units(change(table()), **kwargs)
    assert message in str(err.value)


def test_a_file_without_coordinates_is_named(tmp_path):
    """Missing coordinate columns: the error names the file, its columns and the argument."""
    path = tmp_path / "villages.csv"
    table().rename(columns={"lon": "x", "lat": "y"}).to_csv(path, index=False)
    with pytest.raises(InputError, match=r"'lon' and 'lat' are not in '.*villages.csv' \(columns"):
        read_units(path)
    with pytest.raises(InputError, match=r"column 'lat' is not in .*; pass lat=<column name>,"):
        read_units(path, lon="x")
    assert read_units(path, lon="x", lat="y").n_units == 6


@pytest.mark.parametrize("policy", ["drop", "mean", "indicator"])
def test_missing_covariate_policies(policy):
    df = table().assign(x=[1.0, None, 3.0, 4.0, 5.0, 6.0])
    trial = read_units(df, covariates=["x"], missing=policy)
    x = trial.covariate_matrix
    assert np.isfinite(x).all()
    if policy == "drop":
        assert trial.n_units == 5
    else:
        assert trial.n_units == 6 and x[1, 0] == pytest.approx(np.mean([1, 3, 4, 5, 6]))
    if policy == "indicator":
        assert trial.covariates == ("x", "x_missing")
        np.testing.assert_array_equal(x[:, 1], [0, 1, 0, 0, 0, 0])


def test_an_unused_image_id_column_is_flagged():
    df = table().assign(image_id=[5, 5, 6, 6, 7, 7])
    with pytest.warns(UserWarning, match="has an 'image_id' column but image_id=None"):
        trial = read_units(df)
    np.testing.assert_array_equal(trial.image_keys, trial.ids)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_units(df, image_id="image_id").image_keys.tolist() == [5, 5, 6, 6, 7, 7]


def test_corrupt_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "units.gpkg"
    bad.write_bytes(b"not a geopackage at all")
    with pytest.raises(InputError, match="could not be read"):
        read_units(bad)
    with pytest.raises(InputError, match="does not exist"):
        read_units(tmp_path / "absent.csv")
    other = tmp_path / "units.txt"
    other.write_text("id,lon\n")
    with pytest.raises(InputError, match="unknown extension"):
        read_units(other)


def test_strata_and_cluster_codes_and_subset():
    trial = read_units(table(), stratum="village", cluster="village")
    np.testing.assert_array_equal(trial.codes("stratum"), [0, 0, 1, 1, 2, 2])
    assert trial.codes("cluster").max() == 2
    sub = trial.subset(trial.treatment_array == 1)
    assert sub.n_units == 3 and (sub.treatment_array == 1).all()


def test_unknown_crs_for_a_geometry_without_one_is_named():
    df = table()
    gdf = gpd.GeoDataFrame(
        df.drop(columns=["lon", "lat"]), geometry=gpd.points_from_xy(df.lon, df.lat)
    )
    with pytest.raises(InputError, match="crs='EPSG:nope' is not a coordinate reference"):
        read_units(gdf, crs="EPSG:nope")
    assert read_units(gdf, crs="EPSG:4326").crs.to_epsg() == 4326
    own = gdf.set_crs("EPSG:4326")  # a geometry with its own CRS: crs= may only agree with it
    assert read_units(own, crs="EPSG:4326").crs.to_epsg() == 4326
    with pytest.raises(InputError, match=r"its own CRS \(EPSG:4326\), not crs='EPSG:32636'"):
        read_units(own, crs="EPSG:32636")
    crs84 = gdf.set_crs("OGC:CRS84")  # the same CRS but for its axis order: no contradiction
    assert read_units(crs84, crs="EPSG:4326").crs == crs84.crs


def test_a_crs_spelled_another_way_agrees_with_a_geometry_of_that_crs():
    """An EPSG code and its +proj string read the same coordinates as the same places: no
    contradiction; another datum (NAD27 against WGS 84: tens of metres) still is one."""
    df = table()
    utm = gpd.GeoDataFrame(
        df.drop(columns=["lon", "lat"]),
        geometry=gpd.points_from_xy(500000 + 1000 * df.lon, 9000000 + 1000 * df.lat),
        crs="EPSG:31985",  # SIRGAS 2000 / UTM zone 25S
    )
    spelled = "+proj=utm +zone=25 +south +ellps=GRS80 +units=m +no_defs"
    assert read_units(utm, crs=spelled).crs.to_epsg() == 31985  # the file's own CRS kept
    with pytest.raises(InputError, match="its own CRS"):
        read_units(utm, crs="EPSG:32724")  # zone 24: other places
    lonlat = gpd.GeoDataFrame(
        df.drop(columns=["lon", "lat"]),
        geometry=gpd.points_from_xy(-100 + df.lon, 40 + df.lat),
        crs="EPSG:4326",
    )
    with pytest.raises(InputError, match="its own CRS"):
        read_units(lonlat, crs="EPSG:4267")


def test_one_covariate_by_its_name_is_one_column_and_a_missing_one_names_the_argument():
    df = table()
    trial = read_units(df, covariates="village")  # not 'v', 'i', 'l', ...
    assert trial.covariates == ("village",) and trial.covariate_matrix.shape == (6, 1)
    with pytest.raises(InputError, match=r"covariate column 'market' .*pass covariates=\["):
        read_units(df, covariates="market")
