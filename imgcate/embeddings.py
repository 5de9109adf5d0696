"""Image embeddings: the (image, feature) table that links images to the effect model.

:func:`embed` fits an encoder (:mod:`imgcate.encoders`) on chips and applies it;
:func:`load_embeddings` reads precomputed ones (e.g. from a foundation model).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from imgcate.chips import Chips
from imgcate.encoders import COMBINES, ENCODER_CLASSES, ENCODERS, Combine, Encoder, EncoderName
from imgcate.encoders.base import unflatten_params
from imgcate.errors import InputError
from imgcate.moments import GatheredRows, is_large
from imgcate.provenance import collect
from imgcate.validation import as_float_array, check_choice


def _kinds_differ(missing: np.ndarray, image_ids: np.ndarray) -> str:
    """A hint when the missing keys are numbers and the image ids text or the other way
    round (ids read as integers from one file and as text from another), else "."."""

    def textual(values) -> bool:
        return all(isinstance(v, str) for v in values[:20])

    if textual(list(missing)) == textual(list(image_ids)):
        return "."
    if textual(list(image_ids)):
        return (
            ". The embeddings' image ids are text and these are numbers: read the units' id "
            "(or image id) column as text (e.g. units[col] = units[col].astype(str))."
        )
    return (
        ". The embeddings' image ids are numbers and these are text: read the units' id (or "
        "image id) column as numbers (e.g. units[col] = units[col].astype(int))."
    )


@dataclass(frozen=True)
class Embeddings:
    """Embeddings of images, one row per image.

    Attributes
    ----------
    values : numpy.ndarray
        Shape (image, feature).
    image_ids : numpy.ndarray
        Shape (image,): the key each unit refers to through ``Trial.image_keys``.
    encoder : object, optional
        The fitted encoder that produced ``values`` (kept so new chips are embedded the same way).
    feature_names : tuple of str, optional
        Names of the features (the columns of a table read by :func:`load_embeddings`), e.g.
        for ``EffectFit.membership_weights(names=...)``.
    provenance : dict
        Where the embeddings came from (:func:`imgcate.provenance.collect`: the chips' raster
        files and hashes, the encoder's settings and seed); saved with them.
    """

    values: np.ndarray
    image_ids: np.ndarray
    encoder: Any = None
    feature_names: tuple[str, ...] | None = None
    provenance: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        values = np.asarray(self.values, dtype=float)
        ids = np.asarray(self.image_ids)
        if values.ndim != 2:
            raise InputError(f"embeddings must have shape (image, feature), got {values.shape}.")
        if len(ids) != len(values):
            raise InputError(
                f"embeddings have {len(values)} rows but {len(ids)} image ids; give one id per row."
            )
        if not np.isfinite(values).all():
            rows = np.flatnonzero(~np.isfinite(values).all(axis=1))[:5]
            raise InputError(
                f"embeddings of images {ids[rows].tolist()} hold NaN or infinite values; "
                "check the chips for nodata."
            )
        if pd.Index(ids).has_duplicates:
            raise InputError("embeddings have duplicated image ids; give each image one row.")
        if self.feature_names is not None:
            names = tuple(str(n) for n in self.feature_names)
            if len(names) != values.shape[1]:
                raise InputError(
                    f"feature_names has {len(names)} names for {values.shape[1]} features; give "
                    "one name per column."
                )
            object.__setattr__(self, "feature_names", names)
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "image_ids", ids)

    def __repr__(self) -> str:
        encoder = "no encoder" if self.encoder is None else type(self.encoder).__name__
        ids = self.image_ids[:3].tolist()
        more = ", ..." if len(self.image_ids) > 3 else ""
        return (
            f"Embeddings({self.values.shape[0]} images x {self.n_features} features, "
            f"image_ids [{', '.join(map(repr, ids))}{more}], {encoder})"
        )

    def _repr_html_(self) -> str:
        from html import escape

        rows = [
            ("images", f"{self.values.shape[0]:,}"),
            ("features", str(self.n_features)),
            (
                "image ids",
                escape(", ".join(map(str, self.image_ids[:5].tolist())))
                + (", ..." if len(self.image_ids) > 5 else ""),
            ),
            ("encoder", escape(self._encoder_text())),
            ("values", f"mean {self.values.mean():.3g}, sd {self.values.std():.3g}"),
        ]
        source = (self.provenance.get("inputs") or {}).get("raster")
        if source:
            rows.append(("raster", escape(str(source)[:200])))
        body = "".join(
            f"<tr><th style='text-align:left'>{k}</th><td>{v}</td></tr>" for k, v in rows
        )
        return f"<table><caption>imgcate.Embeddings</caption>{body}</table>"

    def _encoder_text(self) -> str:
        if self.encoder is None:
            return "none (cannot embed new chips)"
        spec = getattr(self.encoder, "chip_spec", None) or {}
        cut = (
            f"; chips {spec['size_px'][0]}x{spec['size_px'][1]} px, bands {spec['band_names']}"
            if spec.get("size_px")
            else ""
        )
        return f"{type(self.encoder).__name__}{cut}"

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the embeddings, with their encoder and provenance, to one Parquet file.

        The table (``image_id`` then one column per feature) reads with any Parquet reader;
        the encoder (so that new chips and map tiles are embedded the same way) and the
        provenance travel in the file's metadata. Written to a temporary name and renamed.
        Read it back with :func:`load_embeddings`.
        """
        from imgcate.embeddingfile import write_embeddings

        return write_embeddings(self, path, overwrite=overwrite)

    @property
    def n_features(self) -> int:
        """Number of features."""
        return self.values.shape[1]

    def for_keys(self, keys: np.ndarray) -> np.ndarray:
        """Rows for each key in ``keys`` (e.g. ``trial.image_keys``), shape (len(keys), feature):
        a read-only view of :attr:`values` where the keys are the image ids in order, else a copy.

        Raises
        ------
        InputError
            If some keys have no embedding.
        """
        return self._rows_at(self._positions(keys))

    def _positions(self, keys: np.ndarray) -> np.ndarray:
        """Each key's row of :attr:`values`; an error naming the keys with none."""
        pos = pd.Index(self.image_ids).get_indexer(np.asarray(keys))
        if (pos < 0).any():
            missing = pd.unique(np.asarray(keys)[pos < 0])
            raise InputError(
                f"no embedding for {len(missing)} of {len(pd.unique(np.asarray(keys)))} image "
                f"ids (first {missing[:5].tolist()}); embed every image the units refer to "
                f"(or check the trial's image_id column){_kinds_differ(missing, self.image_ids)}"
            )
        return pos

    def unit_rows(self, keys: np.ndarray) -> np.ndarray | GatheredRows:
        """:meth:`for_keys` as the fit reads it: where the rows would be a large copy (more
        than :data:`imgcate.moments.CHUNKED_VALUES` values, the keys not the image ids in
        order, at least as many keys as features), a :class:`~imgcate.moments.GatheredRows`
        whose chunks are gathered as they are read instead.

        Raises
        ------
        InputError
            If some keys have no embedding.
        """
        pos = self._positions(keys)
        rows = GatheredRows(self.values, pos)
        if is_large(rows) and len(pos) >= self.n_features and not _in_order(pos, len(self.values)):
            return rows
        return self._rows_at(pos)

    def _rows_at(self, pos: np.ndarray) -> np.ndarray:
        """Rows ``pos`` of :attr:`values`: a read-only view where they are every row in order
        (no copy: it may be GBs), else a copy."""
        if _in_order(pos, len(self.values)):
            rows = self.values.view()
            rows.flags.writeable = False
            return rows
        return self.values[pos]


def _in_order(pos: np.ndarray, n_rows: int) -> bool:
    """Whether row positions ``pos`` are every row once, in order."""
    return len(pos) == n_rows and bool((pos == np.arange(len(pos))).all())


def unit_embeddings(
    embeddings: Embeddings | GatheredRows | np.ndarray, trial: Any
) -> np.ndarray | GatheredRows:
    """Each unit's embedding row (unit, feature) of a trial, as :func:`imgcate.fit` matches
    them: by image id for :class:`Embeddings` (:meth:`Embeddings.unit_rows`: rows read a chunk
    at a time where their copy would be large), else one row per unit in the trial's order (a
    :class:`~imgcate.moments.GatheredRows` as it is)."""
    if isinstance(embeddings, Embeddings):
        return embeddings.unit_rows(trial.image_keys)
    if isinstance(embeddings, GatheredRows):
        if len(embeddings) != trial.n_units:
            raise InputError(
                f"embeddings have {len(embeddings)} rows but the trial has {trial.n_units} "
                "units; give one row per unit."
            )
        return embeddings
    values = as_float_array("embeddings", embeddings, ndim=2)
    if len(values) != trial.n_units:
        raise InputError(
            f"embeddings array has {len(values)} rows but the trial has {trial.n_units} units; "
            "pass an Embeddings object keyed by image id, or one row per unit."
        )
    keys = trial.image_keys
    if trial.image_id is not None and not np.array_equal(keys, np.arange(len(keys))):
        raise InputError(  # the rows would go to the units in order, whatever their images
            f"the trial names each unit's image (column {trial.image_id!r}), but a plain array "
            "of embeddings has no image ids to match them with (its rows would be taken in "
            "unit order); pass embeddings keyed by image id (imgcate.as_embeddings(values, "
            "image_ids), or the Embeddings that embed() gives), or read the units without "
            "image_id if the rows are the units'."
        )
    return values


def keyed_embeddings(
    embeddings: Embeddings | GatheredRows | np.ndarray, trial: Any
) -> Embeddings | GatheredRows:
    """A plain array (checked as :func:`unit_embeddings` checks it) keyed by its units'
    images, so that fits on subsets of the trial (fold fits) find their units' rows;
    :class:`Embeddings` and :class:`~imgcate.moments.GatheredRows` as they are."""
    if isinstance(embeddings, Embeddings | GatheredRows):
        return embeddings
    return as_embeddings(unit_embeddings(embeddings, trial), trial.image_keys)


def as_embeddings(values: Any, image_ids: Any = None) -> Embeddings:
    """Wrap an array (or return an :class:`Embeddings` unchanged); ids default to 0..n-1."""
    if isinstance(values, Embeddings):
        return values
    try:
        values = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as exc:
        raise InputError(f"embeddings must be numeric (image, feature) values: {exc}") from exc
    if values.ndim != 2:
        raise InputError(f"embeddings must have shape (image, feature), got {values.shape}.")
    if image_ids is None:
        image_ids = np.arange(len(values))
    return Embeddings(values=values, image_ids=np.asarray(image_ids))


def encoder_from_state(config: dict, arrays: dict[str, np.ndarray]) -> Encoder:
    """Rebuild a fitted encoder from :meth:`get_state` output.

    Parameters
    ----------
    config : dict
        The JSON-serializable config (``config["encoder"]`` names the class).
    arrays : dict of str to numpy.ndarray
        The fitted arrays (e.g. loaded from an ``.npz`` file).

    Returns
    -------
    encoder
        A fitted encoder whose :meth:`transform` equals the original's.

    Raises
    ------
    InputError
        If the config names an unknown encoder or arrays are missing.
    """
    name = config.get("encoder")
    check_choice("config['encoder']", name, tuple(ENCODER_CLASSES))
    cls = ENCODER_CLASSES[name]
    kwargs = {
        k: v
        for k, v in config.items()
        if k not in ("encoder", "state_version", "n_bands", "chip_spec")
    }
    enc = cls(**kwargs)
    params = unflatten_params(dict(arrays))
    for part in ("norm", "body", "head"):
        if part not in params:
            raise InputError(f"encoder arrays lack the {part!r} group; pass every saved array.")
    enc.params = params
    enc.n_bands = int(config["n_bands"])
    enc.chip_spec = config.get("chip_spec")  # absent in fits saved before it was recorded
    return enc


def _embedding_rows(chips: Any, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows keyed by every unit key (units at one location share a chip but keep their keys)."""
    if not isinstance(chips, Chips):
        return values, np.arange(len(values))
    ids = chips.image_ids
    keys = pd.unique(pd.Series(chips.unit_keys))
    extra = keys[~pd.Index(keys).isin(ids)]
    if len(extra) == 0:
        return values, ids
    key_row = pd.Series(chips.unit_image, index=chips.unit_keys)
    key_row = key_row[~key_row.index.duplicated()]
    rows = key_row.loc[extra].to_numpy()
    return np.concatenate([values, values[rows]]), np.concatenate([ids, extra])


def embed(
    chips: Any,
    encoder: EncoderName | Encoder = "rcf",
    *,
    n_features: int = 256,
    n_components: int | None = 16,
    combine: Combine = "concat",
    batch_size: int = 1024,
    seed: int | None = None,
    native: bool | None = None,
) -> Embeddings:
    """Embed chips: fit the encoder on them (unless it is already fitted) and transform.

    Parameters
    ----------
    chips : Chips or array_like
        From :func:`~imgcate.chips.extract_chips` or
        :func:`~imgcate.chips.chips_from_array`; arrays (image, band, y, x) get ids 0..n-1.
    encoder : {"rcf", "cnn"} or encoder object
        ``"rcf"``: :class:`RandomConvFeatures`; ``"cnn"``: :class:`CNNEncoder`. An unfitted
        encoder object is fitted with its own settings (``n_features``, ``n_components``,
        ``combine`` here are then ignored); a fitted one is only applied (e.g. to new tiles).
    n_features : int
        Random features (rcf) or latent size (cnn) for a named encoder.
    n_components : int or None
        PCA components for a named encoder.
    combine : {"concat", "mean", "difference"}
        Combination of per-date embeddings of a sequence, for a named encoder.
    batch_size : int
        Chips per batch.
    seed : int
        Required when the encoder is fitted.
    native : bool, optional
        Use the encoder's native CPU kernel: None (default) where it runs here, unless
        ``IMGCATE_NATIVE=0``; False never; True always (an error where it cannot run). See
        :meth:`~imgcate.encoders.Encoder.transform`.

    Returns
    -------
    Embeddings
        Shape (image, component), keyed by image id (one row per distinct unit image key), with
        ``.encoder`` the fitted encoder.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(40, 3, 16, 16))
    >>> embed(x, n_features=32, n_components=4, seed=0).values.shape
    (40, 4)
    """
    if isinstance(encoder, str):
        check_choice("encoder", encoder, ENCODERS)
        check_choice("combine", combine, COMBINES)
        encoder = ENCODER_CLASSES[encoder](
            n_features, n_components=n_components, combine=combine, batch_size=batch_size
        )
    elif not isinstance(encoder, Encoder):
        raise InputError(
            f"encoder must be 'rcf', 'cnn' or an imgcate encoder object, got "
            f"{type(encoder).__name__}."
        )
    if not encoder.is_fitted:
        if seed is None:
            raise InputError("seed is required to fit the encoder; pass seed=<int>.")
        encoder = encoder.fit(chips, seed=seed, native=native)
    values = encoder.transform(chips, batch_size=batch_size, native=native)
    values, ids = _embedding_rows(chips, values)
    chips_record = getattr(chips, "provenance", None) or {}
    record = collect(
        chips_record.get("inputs"),
        seeds={**chips_record.get("seeds", {}), "encoder": seed},
        encoder=type(encoder).__name__,
        chip_settings=chips_record.get("settings"),
    )
    return Embeddings(values=values, image_ids=ids, encoder=encoder, provenance=record)


def load_embeddings(path: str | Path, id_column: str = "image_id") -> Embeddings:
    """Read precomputed embeddings (e.g. from a foundation model) keyed by image id.

    Parameters
    ----------
    path : path
        ``.parquet`` or ``.csv``: one row per image, the ``id_column`` and numeric feature
        columns (or one list-valued column of vectors). ``.npz``: arrays ``id_column`` (image,)
        and ``values`` (image, feature). ``.npy``: a structured array with an ``id_column``
        field and numeric fields, or a plain 2-d array (ids 0..n-1).
    id_column : str
        Column (or array) holding the image ids.

    Returns
    -------
    Embeddings
        A Parquet file written by :meth:`Embeddings.save` (or ``imgcate embed``) comes back
        with its encoder and provenance; other tables with ``encoder=None`` (a fit on them
        cannot embed new tiles). ``feature_names`` from the columns of a table (``.parquet``,
        ``.csv``, structured ``.npy``).

    Raises
    ------
    InputError
        If the file is missing, unreadable, lacks ``id_column`` or holds non-numeric features.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"embeddings file {str(path)!r} does not exist; check the path.")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            from imgcate.embeddingfile import read_embeddings

            saved = read_embeddings(path, id_column)
            if saved is not None:
                return saved
        if suffix in (".parquet", ".csv"):
            df = pd.read_parquet(path) if suffix == ".parquet" else pd.read_csv(path)
            return _from_table(df, id_column, path)
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                if id_column not in data or "values" not in data:
                    raise InputError(
                        f"{str(path)!r} holds arrays {list(data)}; it needs {id_column!r} "
                        "(image ids) and 'values' (image, feature)."
                    )
                return Embeddings(values=data["values"], image_ids=data[id_column])
        if suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
            if arr.dtype.names:
                return _from_table(pd.DataFrame(arr), id_column, path)
            return Embeddings(values=arr, image_ids=np.arange(len(arr)))
    except (OSError, ValueError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(
            f"embeddings file {str(path)!r} could not be read ({type(exc).__name__}: {exc})."
        ) from exc
    raise InputError(
        f"embeddings file {str(path)!r} has unknown extension {suffix!r}; use .parquet, .csv, "
        ".npz or .npy."
    )


def _from_table(df: pd.DataFrame, id_column: str, path: Path) -> Embeddings:
    if id_column not in df.columns:
        raise InputError(
            f"{str(path)!r} has no id column {id_column!r} (columns: {list(df.columns)[:10]}); "
            "pass id_column=<name>."
        )
    ids = df[id_column].to_numpy()
    rest = df.drop(columns=[id_column])
    if rest.shape[1] == 1 and rest.iloc[:, 0].dtype == object:
        values = np.stack([np.asarray(v, float) for v in rest.iloc[:, 0]])
    else:
        bad = [c for c in rest.columns if not pd.api.types.is_numeric_dtype(rest[c])]
        if bad:
            raise InputError(
                f"{str(path)!r} has non-numeric feature columns {bad[:5]}; drop them first."
            )
        values = rest.to_numpy(dtype=float)
        return Embeddings(
            values=values, image_ids=ids, feature_names=tuple(str(c) for c in rest.columns)
        )
    return Embeddings(values=values, image_ids=ids)
