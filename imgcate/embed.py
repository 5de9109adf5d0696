"""Image embeddings: the (image, feature) table that links images to the effect model.

Encoders are Flax modules (:class:`RandomConvNet`, :class:`ConvNet`) wrapped by fitted encoder
objects (:class:`RandomConvFeatures`, :class:`CNNEncoder`) that add a per-band normalization
in front and a standardization + PCA head behind; the whole forward pass is the pure JAX
function ``encoder.apply_jax(x)``.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from imgcate import _native
from imgcate.errors import ExtrapolationWarning, FitError, InputError
from imgcate.validation import check_choice, rng_from_seed


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
    """

    values: np.ndarray
    image_ids: np.ndarray
    encoder: Any = None
    feature_names: tuple[str, ...] | None = None

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


# ---------------------------------------------------------------------------------------------
# Encoders: Flax modules wrapped by fitted encoder objects
# ---------------------------------------------------------------------------------------------

EncoderName = Literal["rcf", "cnn"]
ENCODERS = ("rcf", "cnn")
Combine = Literal["concat", "mean", "difference"]
COMBINES = ("concat", "mean", "difference")


class RandomConvNet(nn.Module):
    """MOSAIKS-style random convolutional features as a Flax module.

    Input: per-band normalized chips (image, band, y, x). Output: (image, 2 * n_filters),
    ``[mean_pool(relu(conv - bias)), mean_pool(relu(-conv - bias))]``. The parameters
    ``filters`` (n_filters, band, k, k) and ``bias`` (n_filters,) are fitted (not trained) by
    :class:`RandomConvFeatures`.
    """

    n_filters: int
    kernel_size: int = 3

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        filters = self.param(
            "filters", nn.initializers.normal(1.0), (self.n_filters, x.shape[1], k, k)
        )
        bias = self.param("bias", nn.initializers.zeros, (self.n_filters,))
        conv = jax.lax.conv_general_dilated(
            x, filters, (1, 1), "VALID", dimension_numbers=("NCHW", "OIHW", "NHWC")
        )
        # Both signs in one expression with one reduction: XLA:CPU then fuses the convolution,
        # the max and the pooling into a single kernel, and the (image, y, x, filter)
        # activations are never written out (two separate reductions of `conv` would
        # materialize them and run 2-4x slower). With m = mean(conv), for any b:
        #   mean relu(conv - b)  = mean max(conv, b) - b
        #   mean relu(-conv - b) = mean max(conv, -b) - m        (max(-c, b) = max(c, -b) - c + b)
        # so the kernel takes one max per activation and sign, and no sign multiply: 1.05-1.15x
        # faster than max(s * conv, b) (benchmarks/embed_speed.py). m is linear in the chip
        # and comes from its k x k window means (_mean_conv), a negligible extra pass.
        pair = jnp.maximum(conv[..., None, :], jnp.stack([bias, -bias])).mean(axis=(1, 2))
        pos = pair[:, 0] - bias
        neg = pair[:, 1] - _mean_conv(x, filters)
        return jnp.concatenate([pos, neg], axis=1)  # [pos filters, neg filters]


def _mean_conv(x: jax.Array, filters: jax.Array) -> jax.Array:
    """Mean over the valid positions of ``conv(x, filters)``, shape (image, filter).

    Linear in ``x``: the filters applied to the chip's k x k window means (``means[c, i, j]`` is
    the mean of band c over the rows i .. i + H - k and columns j .. j + W - k).
    """
    k = filters.shape[-1]

    def box(n: int) -> jax.Array:  # (k, n): row i averages input positions i .. i + n - k
        offset = jnp.arange(n)[None, :] - jnp.arange(k)[:, None]
        return ((offset >= 0) & (offset <= n - k)).astype(x.dtype) / (n - k + 1)

    means = jnp.einsum("ih,nchw,jw->ncij", box(x.shape[2]), x, box(x.shape[3]))
    return jnp.einsum("ncij,fcij->nf", means, filters)


class ConvNet(nn.Module):
    """A small CNN body: two stride-2 3x3 convolutions (16, 32 channels), mean pool, dense.

    Input (image, band, y, x) normalized; output (image, n_features).
    """

    n_features: int = 32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = jnp.transpose(x, (0, 2, 3, 1))
        h = jax.nn.relu(nn.Conv(16, (3, 3), strides=(2, 2))(h))
        h = jax.nn.relu(nn.Conv(32, (3, 3), strides=(2, 2))(h))
        return nn.Dense(self.n_features)(h.mean(axis=(1, 2)))


class _Decoder(nn.Module):
    """Predicts the chip downsampled to 4 x 4 per band (the autoencoder's target)."""

    n_out: int

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        return nn.Dense(self.n_out)(jax.nn.relu(nn.Dense(64)(z)))


def _as_values(chips: Any) -> tuple[np.ndarray, bool]:
    """Chip values as float32 and whether they form a sequence (5-d)."""
    from imgcate.raster import Chips

    if isinstance(chips, Chips):
        return chips.values, chips.is_sequence
    arr = np.asarray(chips, dtype=np.float32)
    if arr.ndim not in (4, 5):
        raise InputError(
            f"chips must have shape (image, band, y, x) or (date, image, band, y, x), got "
            f"{arr.shape}."
        )
    return arr, arr.ndim == 5


def _chip_spec(chips: Any) -> dict | None:
    """The cut of :class:`~imgcate.raster.Chips` (None for plain arrays: nothing is known)."""
    from imgcate.raster import Chips

    return chips.spec() if isinstance(chips, Chips) else None


def _flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "/"))
        else:
            out[name] = np.asarray(value)
    return out


def _unflatten(arrays: dict[str, np.ndarray]) -> dict:
    tree: dict = {}
    for name, value in arrays.items():
        node = tree
        *parents, leaf = name.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = np.asarray(value)
    return tree


#: Pooled outputs (chips x filters) per jitted call of :class:`RandomConvFeatures`. XLA:CPU fuses
#: its convolution, relu and pooling into one kernel that never writes the activations out; with
#: more outputs per call that kernel runs 3-6x slower, and with far fewer the cores idle (measured
#: with benchmarks/embed_speed.py on jax 0.10). A larger ``batch_size`` is split into calls of
#: this size; the result is the same.
POOLED_PER_CALL = 16384

#: Whether :class:`RandomConvFeatures` computes its features with the native kernel
#: (``imgcate/_rcf.cpp``) where it is built and this CPU runs it (``imgcate._native.available()``;
#: the environment variable ``IMGCATE_NATIVE=0`` switches it off too). Both paths compute the
#: same features (to float32 rounding); the JAX path is :meth:`RandomConvFeatures.apply_jax`.
USE_NATIVE = True


def _batches(n: int, batch_size: int):
    for start in range(0, n, batch_size):
        yield start, min(start + batch_size, n)


class _Encoder:
    """Shared machinery: per-band normalization → body (Flax) → standardization → PCA."""

    name: str = ""

    def __init__(
        self, *, n_components: int | None = 16, combine: Combine = "concat", batch_size: int = 1024
    ) -> None:
        check_choice("combine", combine, COMBINES)
        if n_components is not None and n_components < 1:
            raise InputError(f"n_components={n_components} must be >= 1 (or None: no PCA).")
        if batch_size < 1:
            raise InputError(f"batch_size={batch_size} must be >= 1.")
        self.n_components = n_components
        self.combine = combine
        self.batch_size = int(batch_size)
        self.params: dict | None = None
        self.n_bands: int | None = None
        #: How the chips it was fitted on were cut (:meth:`imgcate.raster.Chips.spec`), or None.
        self.chip_spec: dict | None = None
        self._jit_cache: dict = {}

    # -- to be provided by subclasses -------------------------------------------------------
    def _module(self) -> nn.Module:
        raise NotImplementedError

    def _config(self) -> dict:
        raise NotImplementedError

    def _fit_body(self, x: np.ndarray, rng: np.random.Generator) -> dict:
        raise NotImplementedError

    def _min_size(self) -> int:
        return 1

    def _chips_per_call(self) -> int | None:
        """The most chips one jitted call should take, where it matters for speed."""
        return None

    # -- public ------------------------------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        """Whether the encoder holds fitted parameters."""
        return self.params is not None

    def __repr__(self) -> str:
        cfg = ", ".join(f"{k}={v!r}" for k, v in self._config().items())
        return f"{type(self).__name__}({cfg}, fitted={self.is_fitted})"

    @property
    def n_outputs(self) -> int:
        """Columns of :meth:`transform` for single-date chips."""
        self._require_fitted()
        return int(self.params["head"]["components"].shape[0])

    def fit(self, chips: Any, *, seed: int | np.random.Generator) -> _Encoder:
        """Fit normalization, body and PCA on ``chips``; returns a new fitted encoder.

        Parameters
        ----------
        chips : Chips or array_like
            (image, band, y, x), or a sequence (date, image, band, y, x) whose dates are pooled.
        seed : int
            Seeds every random draw (patch sampling, initialization, minibatches).

        Returns
        -------
        encoder
            A fitted copy; ``self`` is not changed.
        """
        rng = rng_from_seed(seed)
        values, is_seq = _as_values(chips)
        x = values.reshape(-1, *values.shape[-3:]) if is_seq else values
        self._check_input(x, fitting=True)
        out = copy.copy(self)
        out._jit_cache = {}
        out.n_bands = int(x.shape[1])
        out.chip_spec = _chip_spec(chips)
        mean = x.mean(axis=(0, 2, 3), dtype=np.float64)
        std = x.std(axis=(0, 2, 3), dtype=np.float64)
        std = np.where(std > 1e-8 * max(1.0, float(np.abs(mean).max())), std, 1.0)
        norm = {"band_mean": mean.astype(np.float32), "band_std": std.astype(np.float32)}
        xn = (x - norm["band_mean"][None, :, None, None]) / norm["band_std"][None, :, None, None]
        body = out._fit_body(xn.astype(np.float32), rng)
        out.params = {"norm": norm, "body": body, "head": {}}
        feats = out._features(x)
        out.params["head"] = _fit_head(feats, out.n_components)
        return out

    def transform(self, chips: Any, *, batch_size: int | None = None) -> np.ndarray:
        """Embed chips in batches (memory stays flat in the number of chips).

        Parameters
        ----------
        chips : Chips or array_like
            (image, band, y, x); or a sequence (date, image, band, y, x), combined over dates
            with the encoder's ``combine``.
        batch_size : int, optional
            Chips per batch (default: the encoder's ``batch_size``). The native kernel takes
            float32 chips without batches (its own tasks are small) and converts other dtypes
            one batch at a time.

        Returns
        -------
        numpy.ndarray
            Shape (image, component) (for ``combine="concat"``: (image, date * component)).
        """
        self._require_fitted()
        self._check_spec(chips)
        values, is_seq = _as_values(chips)
        if not is_seq:
            return self._transform_single(values, batch_size)
        per_date = np.stack([self._transform_single(v, batch_size) for v in values])
        return np.asarray(_combine(jnp.asarray(per_date), self.combine))

    def apply_jax(self, x: jax.Array) -> jax.Array:
        """Pure JAX forward pass: (image, band, y, x) → (image, component).

        A (date, image, band, y, x) input is embedded per date and combined with the encoder's
        ``combine``. Differentiable in ``x``; composes with ``jax.jit``, ``jax.vmap`` and
        ``jax.grad``.
        """
        self._require_fitted()
        params = self._jax_params()
        if x.ndim == 5:
            per_date = jax.vmap(lambda v: _forward(self._module(), params, v))(x)
            return _combine(per_date, self.combine)
        return _forward(self._module(), params, x)

    def get_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(config, arrays): a JSON-serializable config and the fitted arrays by name.

        Rebuild with :func:`encoder_from_state`.
        """
        self._require_fitted()
        config = {
            "encoder": self.name,
            "state_version": 1,
            "n_bands": self.n_bands,
            "chip_spec": self.chip_spec,
            "n_components": self.n_components,
            "combine": self.combine,
            "batch_size": self.batch_size,
            **self._config(),
        }
        return config, _flatten(self.params)

    # -- internals ---------------------------------------------------------------------------
    def _require_fitted(self) -> None:
        if self.params is None:
            raise FitError(
                f"{type(self).__name__} is not fitted; call encoder.fit(chips, seed=...) or "
                "imgcate.embed(chips, encoder, seed=...) first."
            )

    def _check_spec(self, chips: Any) -> None:
        """New chips must be cut as the trial's were (known for Chips on both sides)."""
        new, fitted = _chip_spec(chips), self.chip_spec
        if new is None or not fitted:
            return
        size, want = new["size_px"], list(fitted["size_px"])
        if size != want:
            raise InputError(
                f"chips are {size[0]}x{size[1]} px but the encoder was fitted on "
                f"{want[0]}x{want[1]} px chips, and the embedding depends on the footprint; cut "
                f"them with extract_chips(..., size={want[0]}) as the trial's chips were."
            )
        if new["scale"] != fitted.get("scale"):
            raise InputError(
                f"chips were read with scale={new['scale']} but the trial's chips with "
                f"scale={fitted.get('scale')}; extract them with the same scale."
            )
        names, want_names = new["band_names"], list(fitted.get("band_names") or [])
        default = [f"band_{i + 1}" for i in range(len(names))]
        if names != default and want_names and want_names != default and names != want_names:
            raise InputError(
                f"chips have bands {names} but the trial's chips had {want_names}; extract "
                "them with the same bands (bands=[...])."
            )
        pixel, want_pixel = new["pixel_size"], fitted.get("pixel_size")
        if (
            pixel
            and want_pixel
            and new["crs"] == fitted.get("crs")
            and not np.allclose(pixel, want_pixel, rtol=0.01)
        ):
            warnings.warn(
                f"chips have {pixel[0]:g} x {pixel[1]:g} pixels but the trial's chips had "
                f"{want_pixel[0]:g} x {want_pixel[1]:g}, so the same pixel size covers another "
                "ground footprint; resample the raster to the trial's resolution.",
                ExtrapolationWarning,
                stacklevel=3,
            )

    def _check_input(self, x: np.ndarray, fitting: bool = False, finite: bool = True) -> None:
        if x.shape[0] == 0:
            raise InputError("no chips to embed; give at least one chip.")
        if min(x.shape[2:]) < self._min_size():
            raise InputError(
                f"chips of {x.shape[2]} x {x.shape[3]} px are smaller than the "
                f"{type(self).__name__} needs ({self._min_size()} px); extract larger chips."
            )
        if not fitting and x.shape[1] != self.n_bands:
            raise InputError(
                f"chips have {x.shape[1]} bands but the encoder was fitted on {self.n_bands}; "
                "extract the same bands it was fitted on."
            )
        if finite and not np.isfinite(x).all():
            raise _non_finite_chips(x)

    def _jax_params(self) -> dict:
        return jax.tree_util.tree_map(jnp.asarray, self.params)

    def _jitted(self, head: bool):
        if head not in self._jit_cache:
            module = self._module()
            fn = _forward if head else _body_forward
            self._jit_cache[head] = jax.jit(lambda p, v: fn(module, p, v))
        return self._jit_cache[head]

    def _uses_native(self, n_bands: int) -> bool:
        """Whether :meth:`_native_body` computes the body here (else the JAX forward pass)."""
        return False

    def _native_body(self, x: np.ndarray, head: bool) -> np.ndarray | int:
        """Features of raw chips from a native kernel: (image, feature) body features, or with
        ``head`` the standardized PCA components; or the index of a chip with a non-finite
        pixel."""
        raise NotImplementedError

    def _apply_head(self, feats: np.ndarray) -> np.ndarray:
        """The standardization + PCA head in NumPy, as :func:`_forward` applies it in JAX.

        In float64: a float32 matrix product rounds a row differently with the number of rows
        in the call (BLAS kernels by shape, ~3e-6 measured), and a chip's embedding must not
        depend on which chips it is embedded with (maps cut blocks of any size).
        """
        h = {name: np.asarray(v, np.float64) for name, v in self.params["head"].items()}
        return ((feats - h["feature_mean"]) / h["feature_std"]) @ h["components"].T

    def _run(self, x: np.ndarray, head: bool, batch_size: int | None) -> np.ndarray:
        if self._uses_native(x.shape[1]):
            return self._run_native(x, head, batch_size)
        self._check_input(x)
        size = min(batch_size or self.batch_size, x.shape[0])
        per_call = self._chips_per_call()
        if per_call:
            size = min(size, per_call)
        fn, params = self._jitted(head), self._jax_params()
        out, pending = [], None
        for start, stop in _batches(x.shape[0], size):
            batch = x[start:stop]
            if stop - start < size:  # pad so every batch has one shape (one compilation)
                batch = np.concatenate([batch, np.repeat(batch[-1:], size - len(batch), 0)])
            # JAX dispatches asynchronously: the next batch is queued before the previous
            # result is copied back, so the cores do not idle between calls (waiting on each
            # call cost 3-12 % in one measurement). may_alias: a float32 batch goes to XLA
            # without the copy jnp.asarray makes.
            device_batch = jax.device_put(np.asarray(batch, np.float32), may_alias=True)
            result = fn(params, device_batch), stop - start
            if pending is not None:
                out.append(np.asarray(pending[0])[: pending[1]])
            pending = result
        out.append(np.asarray(pending[0])[: pending[1]])
        return np.concatenate(out).astype(np.float64)

    def _run_native(self, x: np.ndarray, head: bool, batch_size: int | None) -> np.ndarray:
        """:meth:`_run` through :meth:`_native_body`; the kernel checks for non-finite pixels.

        Float32 chips go in one call (the kernel's tasks are small; only the output is
        allocated); other dtypes are converted one batch at a time, so memory stays flat.
        """
        self._check_input(x, finite=False)
        if x.dtype == np.float32 and x.flags.c_contiguous:
            size = len(x)
        else:
            size = batch_size or self.batch_size
        out = []
        for start, stop in _batches(x.shape[0], size):
            result = self._native_body(x[start:stop], head)
            if isinstance(result, int):  # name every bad chip, as the JAX path does
                raise _non_finite_chips(x[start:], offset=start)
            out.append(np.asarray(result, np.float64))
        return np.concatenate(out)

    def _features(self, x: np.ndarray) -> np.ndarray:
        return self._run(x, head=False, batch_size=None)

    def _transform_single(self, x: np.ndarray, batch_size: int | None) -> np.ndarray:
        return self._run(x, head=True, batch_size=batch_size)


def _non_finite_chips(x: np.ndarray, offset: int = 0) -> InputError:
    """The error naming the chips of x (numbered from ``offset``) with a non-finite pixel."""
    rows = offset + np.flatnonzero(~np.isfinite(x).reshape(len(x), -1).all(axis=1))
    where = f"chip {rows[0]}" if len(rows) == 1 else f"{len(rows)} chips (first: {rows[0]})"
    return InputError(
        f"chips hold NaN or infinite pixels ({where}); extract them with on_edge='pad' or 'drop'."
    )


def _normalize(params: dict, x: jax.Array) -> jax.Array:
    norm = params["norm"]
    return (x - norm["band_mean"][None, :, None, None]) / norm["band_std"][None, :, None, None]


def _body_forward(module: nn.Module, params: dict, x: jax.Array) -> jax.Array:
    return module.apply({"params": params["body"]}, _normalize(params, x))


def _forward(module: nn.Module, params: dict, x: jax.Array) -> jax.Array:
    feats = _body_forward(module, params, x)
    head = params["head"]
    z = (feats - head["feature_mean"]) / head["feature_std"]
    return z @ head["components"].T


def _fit_head(feats: np.ndarray, n_components: int | None) -> dict[str, np.ndarray]:
    """Standardization and PCA of the body features (components with a fixed sign)."""
    mean = feats.mean(axis=0)
    std = feats.std(axis=0)
    std = np.where(std > 1e-8, std, 1.0)
    z = (feats - mean) / std
    if n_components is None:
        comps = np.eye(feats.shape[1])
    else:
        if n_components > min(z.shape):
            raise InputError(
                f"n_components={n_components} exceeds min(images, features) = {min(z.shape)}; "
                "lower n_components or embed more chips."
            )
        _, _, vt = np.linalg.svd(z, full_matrices=False)
        comps = vt[:n_components]
        signs = np.sign(comps[np.arange(len(comps)), np.abs(comps).argmax(axis=1)])
        comps = comps * signs[:, None]
    return {
        "feature_mean": mean.astype(np.float32),
        "feature_std": std.astype(np.float32),
        "components": comps.astype(np.float32),
    }


def _combine(per_date: jax.Array, combine: str) -> jax.Array:
    """(date, image, component) → (image, ...)."""
    if combine == "concat":
        return jnp.concatenate(list(per_date), axis=1)
    if combine == "mean":
        return per_date.mean(axis=0)
    return per_date[-1] - per_date[0]


def _sample_patches(x: np.ndarray, n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """n random k x k patches, flattened: shape (n, band * k * k)."""
    n_img, n_band, h, w = x.shape
    img = rng.integers(n_img, size=n)
    r = rng.integers(h - k + 1, size=n)
    c = rng.integers(w - k + 1, size=n)
    dr, dc = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
    rows = r[:, None, None] + dr[None]
    cols = c[:, None, None] + dc[None]
    patches = x[
        img[:, None, None, None],
        np.arange(n_band)[None, :, None, None],
        rows[:, None],
        cols[:, None],
    ]
    return patches.reshape(n, -1).astype(np.float64)


class RandomConvFeatures(_Encoder):
    """Random convolutional features (MOSAIKS), seeded, for any band count.

    Fitting (:meth:`fit`) on the trial's own chips: per-band normalization; ``n_features / 2``
    k x k patches sampled at random from the chips and ZCA-whitened (whitening fitted on a
    larger random sample of patches) become unit-norm conv filters; each filter's bias is the
    median absolute response over the sampled patches. Features are
    ``mean_pool(relu(conv - bias))`` and ``mean_pool(relu(-conv - bias))``
    (:class:`RandomConvNet`), then standardized and reduced by PCA to ``n_components``.

    :meth:`transform` computes the features with the native kernel (``imgcate/_rcf.cpp``; see
    :data:`USE_NATIVE`) where it runs, else with the JAX forward pass; :meth:`apply_jax` is
    always JAX (differentiable). Both give the same features to float32 rounding.

    Parameters
    ----------
    n_features : int
        Number of random features (even: two per filter).
    kernel_size : int
        Filter size k in pixels.
    n_components : int or None
        PCA components kept (None keeps all standardized features).
    combine : {"concat", "mean", "difference"}
        How per-date embeddings of a sequence are combined (difference = last - first).
    batch_size : int
        Chips per batch in :meth:`transform`.
    zca_eps : float
        Whitening regularization, relative to the mean eigenvalue of the patch covariance.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(40, 3, 16, 16)).astype("float32")
    >>> enc = RandomConvFeatures(n_features=32, n_components=4).fit(x, seed=0)
    >>> enc.transform(x).shape
    (40, 4)
    """

    name = "rcf"

    def __init__(
        self,
        n_features: int = 256,
        *,
        kernel_size: int = 3,
        n_components: int | None = 16,
        combine: Combine = "concat",
        batch_size: int = 1024,
        zca_eps: float = 0.01,
    ) -> None:
        super().__init__(n_components=n_components, combine=combine, batch_size=batch_size)
        if n_features < 2 or n_features % 2:
            raise InputError(f"n_features={n_features} must be an even number >= 2.")
        if kernel_size < 1:
            raise InputError(f"kernel_size={kernel_size} must be >= 1.")
        self.n_features = int(n_features)
        self.kernel_size = int(kernel_size)
        self.zca_eps = float(zca_eps)

    def _module(self) -> nn.Module:
        return RandomConvNet(n_filters=self.n_features // 2, kernel_size=self.kernel_size)

    def _chips_per_call(self) -> int | None:
        return max(1, POOLED_PER_CALL // (self.n_features // 2))

    def _uses_native(self, n_bands: int) -> bool:
        # The kernel computes in float32; an encoder cast to float64 (under jax.enable_x64)
        # keeps its precision on the JAX path.
        return (
            USE_NATIVE
            and _native.supports(n_bands)
            and self.params["body"]["filters"].dtype == np.float32
        )

    def _native_body(self, x: np.ndarray, head: bool) -> np.ndarray | int:
        norm, body = self.params["norm"], self.params["body"]
        return _native.rcf_features(
            x,
            norm["band_mean"],
            norm["band_std"],
            body["filters"],
            body["bias"],
            head=self._apply_head if head else None,
            n_outputs=self.params["head"]["components"].shape[0] if head else None,
        )

    def _config(self) -> dict:
        return {
            "n_features": self.n_features,
            "kernel_size": self.kernel_size,
            "zca_eps": self.zca_eps,
        }

    def _min_size(self) -> int:
        return self.kernel_size

    def _fit_body(self, x: np.ndarray, rng: np.random.Generator) -> dict:
        n_filters, k = self.n_features // 2, self.kernel_size
        sample = _sample_patches(x, max(10_000, 4 * n_filters), k, rng)
        mu = sample.mean(axis=0)
        cov = np.cov(sample - mu, rowvar=False).reshape(sample.shape[1], sample.shape[1])
        eigval, eigvec = np.linalg.eigh(cov)
        eigval = np.clip(eigval, 0, None)
        eps = self.zca_eps * max(eigval.mean(), 1e-12)
        zca = eigvec @ np.diag(1.0 / np.sqrt(eigval + eps)) @ eigvec.T
        chosen = _sample_patches(x, n_filters, k, rng)
        filters = (chosen - mu) @ zca
        norms = np.linalg.norm(filters, axis=1, keepdims=True)
        filters = filters / np.where(norms > 0, norms, 1.0)
        bias = np.median(np.abs(sample @ filters.T), axis=0)
        return {
            "filters": filters.reshape(n_filters, x.shape[1], k, k).astype(np.float32),
            "bias": bias.astype(np.float32),
        }


class CNNEncoder(_Encoder):
    """A small trainable CNN (:class:`ConvNet`) fitted as an autoencoder with optax (Adam).

    The network maps a normalized chip to ``n_features`` latent values; a small decoder is
    trained jointly to reconstruct the chip downsampled to 4 x 4 pixels per band (mean squared
    error), so the latent summarizes the chip's coarse spectral layout. The decoder is dropped
    after training; the latent is standardized and reduced by PCA to ``n_components``.

    Parameters
    ----------
    n_features : int
        Latent size.
    n_steps : int
        Adam steps (minibatches of ``train_batch`` chips).
    learning_rate : float
    train_batch : int
    n_components, combine, batch_size
        As in :class:`RandomConvFeatures`.
    """

    name = "cnn"

    def __init__(
        self,
        n_features: int = 32,
        *,
        n_steps: int = 300,
        learning_rate: float = 3e-3,
        train_batch: int = 64,
        n_components: int | None = 16,
        combine: Combine = "concat",
        batch_size: int = 1024,
    ) -> None:
        super().__init__(n_components=n_components, combine=combine, batch_size=batch_size)
        if n_features < 1 or n_steps < 0 or train_batch < 1:
            raise InputError("n_features and train_batch must be >= 1 and n_steps >= 0.")
        self.n_features = int(n_features)
        self.n_steps = int(n_steps)
        self.learning_rate = float(learning_rate)
        self.train_batch = int(train_batch)

    def _module(self) -> nn.Module:
        return ConvNet(n_features=self.n_features)

    def _config(self) -> dict:
        return {
            "n_features": self.n_features,
            "n_steps": self.n_steps,
            "learning_rate": self.learning_rate,
            "train_batch": self.train_batch,
        }

    def _min_size(self) -> int:
        return 4

    def _fit_body(self, x: np.ndarray, rng: np.random.Generator) -> dict:
        import optax

        n_img, n_band = x.shape[:2]
        net, dec = ConvNet(self.n_features), _Decoder(n_band * 16)
        key = jax.random.PRNGKey(int(rng.integers(2**31 - 1)))
        k1, k2 = jax.random.split(key)
        sample = jnp.asarray(x[:1])
        params = {
            "enc": net.init(k1, sample)["params"],
            "dec": dec.init(k2, jnp.zeros((1, self.n_features)))["params"],
        }
        opt = optax.adam(self.learning_rate)
        state = opt.init(params)

        def loss(p, batch):
            target = jax.image.resize(batch, (*batch.shape[:2], 4, 4), "linear")
            recon = dec.apply({"params": p["dec"]}, net.apply({"params": p["enc"]}, batch))
            return jnp.mean((recon - target.reshape(batch.shape[0], -1)) ** 2)

        @jax.jit
        def step(p, s, batch):
            value, grads = jax.value_and_grad(loss)(p, batch)
            updates, s = opt.update(grads, s, p)
            return optax.apply_updates(p, updates), s, value

        size = min(self.train_batch, n_img)
        for _ in range(self.n_steps):
            idx = rng.choice(n_img, size=size, replace=False)
            params, state, _ = step(params, state, jnp.asarray(x[idx]))
        return jax.tree_util.tree_map(np.asarray, params["enc"])


_ENCODER_CLASSES: dict[str, type[_Encoder]] = {"rcf": RandomConvFeatures, "cnn": CNNEncoder}


def encoder_from_state(config: dict, arrays: dict[str, np.ndarray]) -> _Encoder:
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
    check_choice("config['encoder']", name, tuple(_ENCODER_CLASSES))
    cls = _ENCODER_CLASSES[name]
    kwargs = {
        k: v
        for k, v in config.items()
        if k not in ("encoder", "state_version", "n_bands", "chip_spec")
    }
    enc = cls(**kwargs)
    params = _unflatten(dict(arrays))
    for part in ("norm", "body", "head"):
        if part not in params:
            raise InputError(f"encoder arrays lack the {part!r} group; pass every saved array.")
    enc.params = params
    enc.n_bands = int(config["n_bands"])
    enc.chip_spec = config.get("chip_spec")  # absent in fits saved before it was recorded
    return enc


def _embedding_rows(chips: Any, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows keyed by every unit key (units at one location share a chip but keep their keys)."""
    from imgcate.raster import Chips

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
    encoder: EncoderName | _Encoder = "rcf",
    *,
    n_features: int = 256,
    n_components: int | None = 16,
    combine: Combine = "concat",
    batch_size: int = 1024,
    seed: int | None = None,
) -> Embeddings:
    """Embed chips: fit the encoder on them (unless it is already fitted) and transform.

    Parameters
    ----------
    chips : Chips or array_like
        From :func:`~imgcate.raster.extract_chips` or
        :func:`~imgcate.raster.chips_from_array`; arrays (image, band, y, x) get ids 0..n-1.
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
        encoder = _ENCODER_CLASSES[encoder](
            n_features, n_components=n_components, combine=combine, batch_size=batch_size
        )
    elif not isinstance(encoder, _Encoder):
        raise InputError(
            f"encoder must be 'rcf', 'cnn' or an imgcate encoder object, got "
            f"{type(encoder).__name__}."
        )
    if not encoder.is_fitted:
        if seed is None:
            raise InputError("seed is required to fit the encoder; pass seed=<int>.")
        encoder = encoder.fit(chips, seed=seed)
    values = encoder.transform(chips, batch_size=batch_size)
    values, ids = _embedding_rows(chips, values)
    return Embeddings(values=values, image_ids=ids, encoder=encoder)


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
        With ``encoder=None``; ``feature_names`` from the columns of a table (``.parquet``,
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
