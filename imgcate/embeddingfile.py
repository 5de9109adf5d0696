"""The embeddings file: a Parquet table (``image_id`` and one column per feature) whose
metadata hold the encoder (configuration and fitted arrays) and the provenance.

Any Parquet reader sees the table; :func:`imgcate.load_embeddings` also restores the encoder,
so that a fit made from the file can map new tiles (``imgcate fit`` then ``imgcate map``).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from imgcate.errors import InputError
from imgcate.output import atomic_path

#: Parquet metadata keys.
META_KEY = b"imgcate"
ARRAYS_KEY = b"imgcate_encoder_npz"
FORMAT_VERSION = 1


def write_embeddings(embeddings: Any, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write :class:`~imgcate.embeddings.Embeddings` as Parquet with encoder and provenance."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if path.suffix.lower() != ".parquet":
        raise InputError(f"embeddings file {str(path)!r} must end in .parquet; rename it.")
    names = list(embeddings.feature_names or [f"e{j}" for j in range(embeddings.n_features)])
    if "image_id" in names:
        raise InputError("a feature is named 'image_id'; rename it (that column holds the ids).")
    frame = pd.DataFrame(embeddings.values, columns=names)
    frame.insert(0, "image_id", embeddings.image_ids)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    meta = {
        "format_version": FORMAT_VERSION,
        "kind": "imgcate.embeddings",
        "provenance": embeddings.provenance or {},
        "feature_names": embeddings.feature_names and list(embeddings.feature_names),
        "encoder": None,
    }
    extra = {}
    if embeddings.encoder is not None:
        config, arrays = embeddings.encoder.get_state()
        meta["encoder"] = config
        buf = io.BytesIO()
        np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
        extra[ARRAYS_KEY] = buf.getvalue()
    schema_meta = dict(table.schema.metadata or {})
    schema_meta[META_KEY] = json.dumps(meta).encode()
    schema_meta.update(extra)
    table = table.replace_schema_metadata(schema_meta)
    with atomic_path(path, overwrite=overwrite) as tmp:
        pq.write_table(table, tmp)
    return path


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
