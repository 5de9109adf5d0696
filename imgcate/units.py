"""Trial data: read a units table and validate the roles of its columns.

A :class:`Trial` is a GeoDataFrame of point locations plus the names of the columns that play
each role (id, treatment, outcome, covariates, optional image id, stratum and cluster id).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import geopandas as gpd
import numpy as np
import pandas as pd
import pyproj

from imgcate.errors import InputError
from imgcate.validation import check_choice, check_covariate_columns

MissingPolicy = Literal["error", "drop", "mean", "indicator"]
MISSING_POLICIES = ("error", "drop", "mean", "indicator")
PolygonPolicy = Literal["error", "centroid", "representative_point"]
POLYGON_POLICIES = ("error", "centroid", "representative_point")


@dataclass(frozen=True)
class Trial:
    """A validated table of units (villages, households) with point locations.

    Attributes
    ----------
    data : geopandas.GeoDataFrame
        One row per unit, point geometry with a CRS.
    id, treatment, outcome : str
        Column names of the unit id, the binary treatment (0/1) and the outcome.
    covariates : tuple of str
        Numeric covariate columns (after the missing-value policy was applied).
    image_id, stratum, cluster : str or None
        Optional columns: the image shared by several units, the randomization block, and the
        cluster id of a cluster-randomized design.
    """

    data: gpd.GeoDataFrame
    id: str = "id"
    treatment: str = "treatment"
    outcome: str = "outcome"
    covariates: tuple[str, ...] = field(default_factory=tuple)
    image_id: str | None = None
    stratum: str | None = None
    cluster: str | None = None

    @property
    def n_units(self) -> int:
        """Number of units."""
        return len(self.data)

    @property
    def crs(self):
        """CRS of the unit locations."""
        return self.data.crs

    @property
    def ids(self) -> np.ndarray:
        """Unit ids, in table order."""
        return self.data[self.id].to_numpy()

    @property
    def treatment_array(self) -> np.ndarray:
        """Treatment as an int array of 0/1, shape (unit,)."""
        return self.data[self.treatment].to_numpy().astype(np.int32)

    @property
    def outcome_array(self) -> np.ndarray:
        """Outcome as a float array, shape (unit,)."""
        return self.data[self.outcome].to_numpy().astype(float)

    @property
    def covariate_matrix(self) -> np.ndarray:
        """Covariates as a float array, shape (unit, covariate); (unit, 0) when there are none."""
        if not self.covariates:
            return np.zeros((self.n_units, 0))
        return self.data[list(self.covariates)].to_numpy().astype(float)

    @property
    def image_keys(self) -> np.ndarray:
        """The image each unit looks at: the image_id column, or the unit id itself."""
        col = self.image_id or self.id
        return self.data[col].to_numpy()

    def codes(self, role: Literal["stratum", "cluster"]) -> np.ndarray | None:
        """Integer codes 0..G-1 of the stratum or cluster column, or None if it is not set."""
        col = getattr(self, role)
        if col is None:
            return None
        return pd.factorize(self.data[col], sort=True)[0].astype(np.int32)

    def subset(self, rows: np.ndarray) -> Trial:
        """A new Trial holding only ``rows`` (boolean mask or positions)."""
        rows = np.asarray(rows)
        data = self.data.iloc[np.flatnonzero(rows) if rows.dtype == bool else rows]
        return replace(self, data=data.reset_index(drop=True))

    def xy(self, crs=None) -> tuple[np.ndarray, np.ndarray]:
        """Point coordinates, optionally reprojected to ``crs``."""
        geom = self.data.geometry if crs is None else self.data.geometry.to_crs(crs)
        return geom.x.to_numpy(), geom.y.to_numpy()


def _read_table(source: str | Path | pd.DataFrame) -> pd.DataFrame:
    if isinstance(source, pd.DataFrame):
        return source.copy()
    if not isinstance(source, str | Path):
        raise InputError(
            f"units must be a file path or a pandas/geopandas DataFrame, got "
            f"{type(source).__name__}; e.g. read_units('villages.csv')."
        )
    path = Path(source)
    if not path.exists():
        raise InputError(f"units table {str(path)!r} does not exist; check the path.")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path)
        if suffix in (".parquet", ".geoparquet"):
            try:
                return gpd.read_parquet(path)
            except (ValueError, KeyError):
                return pd.read_parquet(path)
        if suffix in (".gpkg", ".geojson", ".shp", ".fgb"):
            return gpd.read_file(path)
    except Exception as exc:  # noqa: BLE001 - any reader failure is a corrupt input
        raise InputError(
            f"units table {str(path)!r} could not be read ({type(exc).__name__}: {exc}); "
            "check that the file is a valid CSV, GeoPackage or (Geo)Parquet file."
        ) from exc
    raise InputError(
        f"units table {str(path)!r} has an unknown extension {suffix!r}; "
        "use .csv, .gpkg, .geojson or .parquet."
    )


def _check_shape(df: pd.DataFrame, name: str) -> None:
    """A table with rows, read with the right separator."""
    if len(df.columns) == 1:
        header = str(df.columns[0])
        for sep, label in ((";", "semicolons"), ("\t", "tabs"), ("|", "bars")):
            if sep in header:
                raise InputError(
                    f"{name} has one column {header[:60]!r}: its fields are separated by "
                    f"{label}, not commas; save it as a comma-separated CSV, or read it with "
                    f"pandas.read_csv(path, sep={sep!r}) and pass the DataFrame to read_units."
                )
    if len(df) == 0:
        raise InputError(
            f"{name} has no rows (columns: {list(df.columns)}); give a table with one row per unit."
        )


def _rows(mask: np.ndarray, ids: np.ndarray | None = None, limit: int = 5) -> str:
    pos = np.flatnonzero(mask)
    shown = (ids[pos] if ids is not None else pos)[:limit].tolist()
    more = f" and {len(pos) - limit} more" if len(pos) > limit else ""
    return f"{shown}{more}"


def _require_columns(df: pd.DataFrame, roles: dict[str, str | None], source: str) -> None:
    for role, col in roles.items():
        if col is not None and col not in df.columns:
            raise InputError(
                f"{role} column {col!r} is not in {source} (columns: {list(df.columns)}); "
                f"pass {role}=<column name>."
            )


def _parse_crs(crs) -> pyproj.CRS:
    try:
        return pyproj.CRS.from_user_input(crs)
    except pyproj.exceptions.CRSError as exc:
        raise InputError(
            f"crs={crs!r} is not a coordinate reference system pyproj knows; "
            "pass e.g. crs='EPSG:4326' or crs='EPSG:32636'."
        ) from exc


def same_coordinates(given: pyproj.CRS, own: pyproj.CRS, bounds: Sequence[float]) -> bool:
    """Whether ``given`` reads the coordinates of a file in CRS ``own`` as the same places.

    Parameters
    ----------
    given, own : pyproj.CRS
        The CRS a user named and the file's own.
    bounds : sequence of float
        (xmin, ymin, xmax, ymax) of the file's coordinates, in ``own``.

    Returns
    -------
    bool
        True for equal CRSs (axis order aside), or two spellings of one (an EPSG code and its
        ``+proj`` string) under which the corners and centre of ``bounds`` move by less than
        a millimetre (1e-8 degrees).
    """
    if given.equals(own, ignore_axis_order=True):
        return True
    xmin, ymin, xmax, ymax = (float(v) for v in bounds)
    x = np.array([xmin, xmin, xmax, xmax, (xmin + xmax) / 2])
    y = np.array([ymin, ymax, ymin, ymax, (ymin + ymax) / 2])
    try:
        tx, ty = pyproj.Transformer.from_crs(own, given, always_xy=True).transform(x, y)
    except pyproj.exceptions.ProjError:
        return False
    tolerance = 1e-8 if given.is_geographic else 1e-3
    moved = np.hypot(np.asarray(tx) - x, np.asarray(ty) - y)
    return bool(np.all(np.isfinite(moved)) and moved.max() < tolerance)


def _points(gdf: gpd.GeoDataFrame, polygons: str, id_col: str) -> gpd.GeoDataFrame:
    """Point locations: points as they are; polygons only where ``polygons`` says which point
    of each stands for the unit."""
    kinds = gdf.geometry.geom_type
    if (kinds == "Point").all():
        return gdf
    areas = kinds.isin(["Polygon", "MultiPolygon"]).to_numpy()
    other = ~areas & (kinds != "Point").to_numpy()
    if other.any():
        raise InputError(
            f"units {_rows(other, gdf[id_col].to_numpy())} have {sorted(set(kinds[other]))} "
            "geometries; give each unit a point (or a polygon) location."
        )
    if polygons == "error":
        raise InputError(
            f"units {_rows(areas, gdf[id_col].to_numpy())} have polygon geometries, but a unit "
            "is placed at a point; pass polygons='centroid' or polygons='representative_point' "
            "(a point inside each polygon) to say which, or give point locations."
        )
    geometry = gdf.geometry
    if polygons == "representative_point":
        points = geometry.representative_point()
    elif geometry.crs is not None and geometry.crs.is_geographic:  # centroids in metres
        metric = geometry.estimate_utm_crs()
        points = geometry.to_crs(metric).centroid.to_crs(geometry.crs)
    else:
        points = geometry.centroid
    return gdf.set_geometry(points.where(areas, geometry))


def _to_geodataframe(
    df: pd.DataFrame,
    lon: str | None,
    lat: str | None,
    crs,
    id_col: str,
    polygons: str = "error",
    source: str = "the units table",
) -> gpd.GeoDataFrame:
    if isinstance(df, gpd.GeoDataFrame) and lon is None and df.geometry.name in df.columns:
        gdf = df
        if gdf.crs is None:
            if crs is None:
                raise InputError("the units geometry has no CRS; pass crs='EPSG:....'.")
            gdf = gdf.set_crs(_parse_crs(crs))
        elif crs is not None and not same_coordinates(_parse_crs(crs), gdf.crs, gdf.total_bounds):
            raise InputError(
                f"the units geometry has its own CRS ({gdf.crs.to_string()}), not crs={crs!r}; "
                "leave crs out (it is for coordinate columns or a geometry without a CRS)."
            )
        missing = gdf.geometry.isna() | gdf.geometry.is_empty
        if missing.any():
            raise InputError(
                f"units {_rows(missing.to_numpy(), gdf[id_col].to_numpy())} have no geometry; "
                "drop them or add their locations."
            )
        return _points(gdf, polygons, id_col)
    lon = lon or "lon"
    lat = lat or "lat"
    absent = [(name, col) for name, col in (("lon", lon), ("lat", lat)) if col not in df.columns]
    if absent:
        what = " and ".join(repr(col) for _, col in absent)
        fix = ", ".join(f"{name}=<column name>" for name, _ in absent)
        plural = "s" if len(absent) > 1 else ""
        raise InputError(
            f"coordinate column{plural} {what} {'are' if plural else 'is'} not in {source} "
            f"(columns: {list(df.columns)}); pass {fix}, or give a table with point geometry."
        )
    coords = df[[lon, lat]].apply(pd.to_numeric, errors="coerce")
    missing = coords.isna().any(axis=1).to_numpy()
    if missing.any():
        raise InputError(
            f"units {_rows(missing, df[id_col].to_numpy())} have missing or non-numeric "
            f"coordinates in {lon!r}/{lat!r}; drop them or fill in their locations."
        )
    crs = crs or "EPSG:4326"
    parsed = _parse_crs(crs)
    if parsed.is_geographic:
        x, y = coords[lon].to_numpy(), coords[lat].to_numpy()
        bad = (np.abs(x) > 180) | (np.abs(y) > 90)
        if bad.any():
            swapped = (np.abs(y) <= 180).all() and (np.abs(x) <= 90).all()
            hint = (
                f"{lon!r} and {lat!r} look swapped; pass lon={lat!r}, lat={lon!r}"
                if swapped
                else "for projected coordinates (metres) pass their crs='EPSG:....'"
            )
            raise InputError(
                f"units {_rows(bad, df[id_col].to_numpy())} have coordinates outside longitude "
                f"+-180 / latitude +-90 (e.g. {x[bad][0]:g}, {y[bad][0]:g}) but the CRS is "
                f"geographic ({crs}); {hint}."
            )
    geometry = gpd.points_from_xy(coords[lon], coords[lat])
    return gpd.GeoDataFrame(df, geometry=geometry, crs=parsed)


def _check_treatment(df: pd.DataFrame, col: str, ids: np.ndarray) -> None:
    values = pd.to_numeric(df[col], errors="coerce")
    bad = values.isna().to_numpy() | ~values.isin([0, 1]).to_numpy()
    if bad.any():
        raise InputError(
            f"treatment column {col!r} must be binary 0/1; units {_rows(bad, ids)} have "
            f"values {df[col][bad].head(5).tolist()}. Recode treatment as 0 (control) / "
            "1 (treated)."
        )
    if values.nunique() < 2:
        raise InputError(
            f"treatment column {col!r} is constant ({int(values.iloc[0])} for every unit); "
            "effects need both treated and control units. For places to predict at, read "
            "them with treatment=None, outcome=None."
        )
    df[col] = values.astype(np.int32)


def _check_outcome(df: pd.DataFrame, col: str, ids: np.ndarray) -> None:
    values = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(values)
    if bad.any():
        raise InputError(
            f"outcome column {col!r} has NaN, infinite or non-numeric values for units "
            f"{_rows(bad, ids)}; drop those units or impute the outcome before fitting."
        )
    df[col] = values


def _apply_missing(
    df: pd.DataFrame, covariates: Sequence[str], missing: str, ids: np.ndarray
) -> tuple[pd.DataFrame, tuple[str, ...]]:
    for col in covariates:
        converted = pd.to_numeric(df[col], errors="coerce")
        non_numeric = converted.isna() & df[col].notna()
        if non_numeric.any():
            raise InputError(
                f"covariate {col!r} is not numeric (units {_rows(non_numeric.to_numpy(), ids)}: "
                f"{df[col][non_numeric].head(3).tolist()}); encode it as numbers "
                "(e.g. pandas.get_dummies) first."
            )
        df[col] = converted.astype(float)
    cols = list(covariates)
    na = df[cols].isna() if cols else pd.DataFrame(index=df.index)
    if not cols or not na.to_numpy().any():
        return df, tuple(cols)
    if missing == "error":
        first = na.any(axis=0)
        which = first[first].index.tolist()
        rows = na.any(axis=1).to_numpy()
        raise InputError(
            f"covariates {which} have missing values for units {_rows(rows, ids)}; pass "
            "missing='drop', 'mean' or 'indicator' to handle them explicitly."
        )
    if missing == "drop":
        return df.loc[~na.any(axis=1)].reset_index(drop=True), tuple(cols)
    out_cols = list(cols)
    for col in cols:
        if not na[col].any():
            continue
        if missing == "indicator":
            df[f"{col}_missing"] = na[col].astype(float)
            out_cols.append(f"{col}_missing")
        df[col] = df[col].fillna(df[col].mean())
    return df, tuple(out_cols)


def read_units(
    source: str | Path | pd.DataFrame,
    *,
    id: str = "id",
    treatment: str = "treatment",
    outcome: str | None = "outcome",
    covariates: str | Sequence[str] = (),
    lon: str | None = None,
    lat: str | None = None,
    crs=None,
    image_id: str | None = None,
    stratum: str | None = None,
    cluster: str | None = None,
    missing: MissingPolicy = "error",
    polygons: PolygonPolicy = "error",
) -> Trial:
    """Read and validate a units table.

    Parameters
    ----------
    source : path or DataFrame
        CSV with coordinate columns, or GeoPackage / GeoParquet with point geometry (any CRS),
        or an in-memory (Geo)DataFrame.
    id, treatment, outcome : str
        Column names. ``outcome=None`` reads a table without outcomes (prediction only); the
        treatment column is then optional too.
    covariates : str or sequence of str
        Numeric covariate columns used in the baseline (and propensity) models (one name
        alone is one column).
    lon, lat : str, optional
        Coordinate columns (default ``"lon"``/``"lat"`` when the table has no geometry).
    crs : optional
        CRS of the coordinate columns (default EPSG:4326), or of a geometry that lacks one.
    image_id, stratum, cluster : str, optional
        Image shared by several units, randomization block, and cluster of a cluster-randomized
        design. Here ``image_id`` is taken only when named (with a warning when the table has
        an ``image_id`` column); the command line's ``--image-id`` takes that column by
        default.
    missing : {"error", "drop", "mean", "indicator"}
        What to do with missing covariate values. ``"error"`` (default) refuses; ``"drop"``
        drops those units; ``"mean"`` imputes the column mean; ``"indicator"`` imputes the mean
        and adds a ``<col>_missing`` 0/1 covariate.
    polygons : {"error", "centroid", "representative_point"}
        Units whose geometry is a polygon (a village boundary): refused by default, since a
        unit's image is centred on a point; ``"centroid"`` places each at its polygon's
        centroid, ``"representative_point"`` at a point guaranteed inside it.

    Returns
    -------
    Trial

    Raises
    ------
    InputError
        For a missing column, non-binary or constant treatment, NaN or infinite outcome,
        duplicate unit ids, non-numeric, constant or treatment-copy covariates (|correlation|
        with the treatment above 0.99), missing coordinates or covariates (with
        ``missing="error"``), or an unreadable file.

    Examples
    --------
    >>> import pandas as pd
    >>> df = pd.DataFrame({"id": [1, 2], "lon": [32.5, 32.6], "lat": [0.3, 0.4],
    ...                    "treatment": [0, 1], "outcome": [1.0, 2.5]})
    >>> read_units(df).n_units
    2
    """
    check_choice("missing", missing, MISSING_POLICIES)
    check_choice("polygons", polygons, POLYGON_POLICIES)
    name = "the units table" if isinstance(source, pd.DataFrame) else repr(str(source))
    df = _read_table(source)
    _check_shape(df, name if isinstance(source, pd.DataFrame) else f"units table {name}")
    roles = {
        "id": id,
        "covariate": None,
        "image_id": image_id,
        "stratum": stratum,
        "cluster": cluster,
    }
    if outcome is not None:
        roles.update(treatment=treatment, outcome=outcome)
    _require_columns(df, roles, name)
    if isinstance(covariates, str):  # one column by its name, not its letters
        covariates = (covariates,)
    for col in covariates:
        if col not in df.columns:
            raise InputError(
                f"covariate column {col!r} is not in {name} (columns: {list(df.columns)}); "
                "pass covariates=[<column name>, ...]."
            )
    ids = df[id].to_numpy()
    if df[id].isna().any():
        raise InputError(f"id column {id!r} has missing ids; every unit needs an id.")
    dup = df[id].duplicated(keep=False).to_numpy()
    if dup.any():
        raise InputError(
            f"id column {id!r} has duplicated ids {sorted(set(ids[dup].tolist()), key=str)[:5]}; "
            "each unit needs a unique id (use image_id for units that share an image)."
        )
    if image_id is None and "image_id" in df.columns and id != "image_id":
        warnings.warn(
            f"{name} has an 'image_id' column but image_id=None, so each unit is matched to "
            "the image keyed by its own id; pass image_id='image_id' if that column names "
            "each unit's image (or rename the column).",
            UserWarning,
            stacklevel=2,
        )
    if outcome is not None:
        _check_treatment(df, treatment, ids)
        _check_outcome(df, outcome, ids)
    df, covs = _apply_missing(df, covariates, missing, ids)
    if outcome is not None and covs:
        matrix = df[list(covs)].to_numpy(dtype=float)
        check_covariate_columns(matrix, covs, df[treatment].to_numpy(), treatment)
    gdf = _to_geodataframe(df, lon, lat, crs, id, polygons, name)
    return Trial(
        data=gdf.reset_index(drop=True),
        id=id,
        treatment=treatment,
        outcome=outcome or "outcome",
        covariates=covs,
        image_id=image_id,
        stratum=stratum,
        cluster=cluster,
    )


def design_clusters(trial: Trial) -> np.ndarray | None:
    """Codes of the units that share their assignment or their image (unit,): the trial's
    cluster column, else its image id when images are shared; None when every unit is its own
    cluster. Design-based standard errors are cluster-robust over them."""
    codes = trial.codes("cluster")
    if codes is None and trial.image_id is not None:
        codes = pd.factorize(trial.data[trial.image_id], sort=True)[0].astype(np.int32)
    if codes is None or len(np.unique(codes)) == len(codes):
        return None
    return codes
