"""The embeddings file: a Parquet table (``image_id`` and one column per feature) whose
metadata hold the encoder (configuration and fitted arrays) and the provenance.

Any Parquet reader sees the table; :func:`imgcate.load_embeddings` also restores the encoder,
so that a fit made from the file can map new tiles (``imgcate fit`` then ``imgcate map``).
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from imgcate.errors import InputError
from imgcate.output import atomic_path, check_writable

#: Parquet metadata keys.
META_KEY = b"imgcate"
ARRAYS_KEY = b"imgcate_encoder_npz"
FORMAT_VERSION = 1


def write_embeddings(embeddings: Any, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write :class:`~imgcate.embeddings.Embeddings` as Parquet with encoder and provenance."""
    import pyarrow.parquet as pq

    path = _parquet_path(path)
    table = _table(embeddings, embeddings.encoder, embeddings.provenance)
    with atomic_path(path, overwrite=overwrite) as tmp:
        pq.write_table(table, tmp)
    return path


def embed_to_file(
    trial: Any,
    raster: Any,
    size: float | tuple[float, float],
    path: str | Path,
    *,
    encoder: str = "rcf",
    n_features: int = 256,
    n_components: int = 16,
    chunk_images: int = 16_384,
    fit_images: int = 20_000,
    seed: int,
    overwrite: bool = False,
    progress: bool = False,
    provenance: dict | None = None,
    **chip_options: Any,
) -> Path:
    """Embed every image of a large trial into one Parquet file, a chunk of images at a time.

    For trials whose chips would not fit in memory at once (a million 6-band 32-pixel chips are
    24 GB): the encoder is fitted on the chips of ``fit_images`` images drawn at random, then
    the images are read, embedded and written ``chunk_images`` at a time, each chunk a row
    group of the file, so memory does not grow with the trial's size (most of it goes to the
    encoder's sample: lower ``fit_images`` to lower it). The file is
    the one :meth:`Embeddings.save` writes (encoder and provenance in its metadata; read it
    with :func:`imgcate.load_embeddings`), under a temporary name until complete.

    Parameters
    ----------
    trial : Trial
        Units with locations (and image ids where units share images).
    raster : path, URL or mapping of band files
        As in :func:`imgcate.extract_chips`.
    size : float or (height, width)
        Chip size (pixels unless ``size_unit="m"`` is passed in ``chip_options``).
    path : str or Path
        Output ``.parquet`` file.
    encoder : {"rcf", "cnn"}
        Encoder fitted on the sample (see :func:`imgcate.embed`).
    n_features, n_components : int
        Its random features and PCA components.
    chunk_images, fit_images : int
        Images embedded per chunk; images the encoder is fitted on.
    seed : int
        Seed of the sample and of the encoder.
    overwrite : bool
        Replace ``path`` if it exists.
    progress : bool
        Show a progress bar over the encoder's fit and the chunks.
    provenance : dict, optional
        Where the inputs came from (:func:`imgcate.provenance.collect`; the command line passes
        its own record). By default one naming the raster, the seed, the encoder and the chip
        settings; the chunking (``streamed``) is added to either.
    **chip_options
        :func:`imgcate.extract_chips` options (``bands``, ``on_edge``, ``scale``, ...).

    Returns
    -------
    Path
        The file written.
    """
    import pyarrow.parquet as pq

    from imgcate.chips import (
        SHARED_LOCATIONS,
        NothingLeftError,
        extract_chips,
        warn_shared_locations,
    )
    from imgcate.embeddings import embed
    from imgcate.output import progress_bar
    from imgcate.provenance import collect

    if chunk_images < 1 or fit_images < 1:
        raise InputError("chunk_images and fit_images must be >= 1.")
    path = check_writable(_parquet_path(path), overwrite)  # before any chip is read
    keys = trial.image_keys
    images = pd.unique(keys)
    rng = np.random.default_rng([seed, 20261203])
    sample = images[np.sort(rng.permutation(len(images))[:fit_images])]
    if provenance is None:
        provenance = collect(
            {"raster": raster} if isinstance(raster, str | Path) else None,
            seeds={"encoder": seed},
            encoder={"name": encoder, "n_features": n_features, "n_components": n_components},
            chip_settings=json.loads(json.dumps({"size": size, **chip_options}, default=str)),
        )
    record = {**provenance, "streamed": {"chunk_images": chunk_images}}  # + the fit's images
    starts = range(0, len(images), chunk_images)
    steps = progress_bar(["fit", *starts], progress, "embed_to_file", len(starts) + 1)
    dropped, padded = [], 0
    warn_shared_locations(trial, stacklevel=3)  # once, for the whole trial, not by chunk
    with atomic_path(path, overwrite=overwrite) as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=f".*{SHARED_LOCATIONS}")
        writer = None
        try:
            for step in steps:
                if step == "fit":  # the encoder, on the sample's chips
                    cut = extract_chips(
                        trial.subset(np.isin(keys, sample)), raster, size, **chip_options
                    )
                    fitted = embed(
                        cut, encoder, n_features=n_features, n_components=n_components, seed=seed
                    ).encoder
                    record["streamed"]["fit_images"] = cut.n_images  # after on_edge="drop"
                    continue
                rows = np.isin(keys, images[step : step + chunk_images])
                try:
                    cut = extract_chips(trial.subset(rows), raster, size, **chip_options)
                except NothingLeftError:  # on_edge="drop" dropped the whole chunk
                    dropped.extend(trial.ids[rows].tolist())
                    continue
                dropped.extend(np.asarray(cut.dropped_units).tolist())
                padded += 0 if cut.padded is None else int(np.sum(cut.padded))
                table = _table(embed(cut, fitted), fitted, record)
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table)
        finally:
            if writer is not None:
                writer.close()
    if dropped:
        warnings.warn(
            f"embed_to_file: {len(dropped):,} units dropped (their chips cross the raster's edge "
            f"or hold nodata; first ids {dropped[:8]}); fit the units whose images have "
            "embeddings: trial.subset(np.isin(trial.image_keys, "
            "load_embeddings(path).image_ids)).",
            UserWarning,
            stacklevel=2,
        )
    if padded:
        warnings.warn(
            f"embed_to_file: {padded:,} chips padded (they cross the raster's edge or hold "
            "nodata; missing pixels hold the chip's band means).",
            UserWarning,
            stacklevel=2,
        )
    return path


def _parquet_path(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".parquet":
        raise InputError(f"embeddings file {str(path)!r} must end in .parquet; rename it.")
    return path


def _table(embeddings: Any, encoder: Any, provenance: dict | None):
    """The Parquet table of ``embeddings`` with the imgcate record in its schema metadata."""
    import pyarrow as pa

    names = list(embeddings.feature_names or [f"e{j}" for j in range(embeddings.n_features)])
    if "image_id" in names:
        raise InputError("a feature is named 'image_id'; rename it (that column holds the ids).")
    frame = pd.DataFrame(embeddings.values, columns=names)
    frame.insert(0, "image_id", embeddings.image_ids)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    meta = {
        "format_version": FORMAT_VERSION,
        "kind": "imgcate.embeddings",
        "provenance": provenance or {},
        "feature_names": embeddings.feature_names and list(embeddings.feature_names),
        "encoder": None,
    }
    extra = {}
    if encoder is not None:
        config, arrays = encoder.get_state()
        meta["encoder"] = config
        buf = io.BytesIO()
        np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
        extra[ARRAYS_KEY] = buf.getvalue()
    schema_meta = dict(table.schema.metadata or {})
    schema_meta[META_KEY] = json.dumps(meta).encode()
    schema_meta.update(extra)
    return table.replace_schema_metadata(schema_meta)


def read_meta(path: str | Path) -> tuple[dict[str, Any] | None, bytes | None]:
    """The imgcate record and encoder arrays of a Parquet file (None, None for a plain table)."""
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    if META_KEY not in meta:
        return None, None
    return json.loads(meta[META_KEY]), meta.get(ARRAYS_KEY)


def read_embeddings(path: str | Path, id_column: str = "image_id"):
    """Embeddings from a file written by :func:`write_embeddings` (encoder restored), or None
    when the Parquet file holds no imgcate record."""
    from imgcate.embeddings import Embeddings, encoder_from_state

    record, arrays = read_meta(path)
    if record is None:
        return None
    frame = pd.read_parquet(path)
    if id_column not in frame.columns:
        raise InputError(f"{str(path)!r} has no id column {id_column!r}; pass id_column=<name>.")
    values = frame.drop(columns=[id_column]).to_numpy(dtype=float)
    encoder = None
    if record.get("encoder") is not None:
        if arrays is None:
            raise InputError(f"{str(path)!r} names an encoder but lacks its arrays; embed again.")
        encoder = encoder_from_state(record["encoder"], dict(np.load(io.BytesIO(arrays))))
    names = record.get("feature_names")
    return Embeddings(
        values=values,
        image_ids=frame[id_column].to_numpy(),
        encoder=encoder,
        feature_names=None if names is None else tuple(names),
        provenance=record.get("provenance") or {},
    )
