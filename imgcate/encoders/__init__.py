"""Encoders: fitted objects that turn chips (image, band, y, x) into embeddings.

:class:`RandomConvFeatures` (the default; needs no weights) and :class:`CNNEncoder` (trained
on the chips) share :class:`Encoder`; both are Flax modules (:class:`RandomConvNet`,
:class:`ConvNet`) behind a per-band normalization and a standardization + PCA head.
"""

from imgcate.encoders.base import COMBINES, ENCODERS, Combine, Encoder, EncoderName
from imgcate.encoders.cnn import CNNEncoder, ConvNet
from imgcate.encoders.rcf import RandomConvFeatures, RandomConvNet

#: Encoder classes by the name :func:`imgcate.embed` and saved encoder states use.
ENCODER_CLASSES: dict[str, type[Encoder]] = {"rcf": RandomConvFeatures, "cnn": CNNEncoder}

__all__ = [
    "COMBINES",
    "CNNEncoder",
    "Combine",
    "ConvNet",
    "ENCODERS",
    "ENCODER_CLASSES",
    "Encoder",
    "EncoderName",
    "RandomConvFeatures",
    "RandomConvNet",
]
