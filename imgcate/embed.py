"""Image embeddings: the (image, feature) table that links images to the effect model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from imgcate.errors import InputError


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
    """

    values: np.ndarray
    image_ids: np.ndarray
    encoder: Any = None

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
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "image_ids", ids)

    @property
    def n_features(self) -> int:
        """Number of features."""
        return self.values.shape[1]

    def for_keys(self, keys: np.ndarray) -> np.ndarray:
        """Rows for each key in ``keys`` (e.g. ``trial.image_keys``), shape (len(keys), feature).

        Raises
        ------
        InputError
            If some keys have no embedding.
        """
        index = pd.Index(self.image_ids)
        pos = index.get_indexer(np.asarray(keys))
        if (pos < 0).any():
            missing = pd.unique(np.asarray(keys)[pos < 0])[:5].tolist()
            raise InputError(
                f"no embedding for image ids {missing}; embed every image the units refer to "
                "(or check the trial's image_id column)."
            )
        return self.values[pos]


def as_embeddings(values: Any, image_ids: Any = None) -> Embeddings:
    """Wrap an array (or return an :class:`Embeddings` unchanged); ids default to 0..n-1."""
    if isinstance(values, Embeddings):
        return values
    values = np.asarray(values, dtype=float)
    if image_ids is None:
        image_ids = np.arange(len(values))
    return Embeddings(values=values, image_ids=np.asarray(image_ids))
