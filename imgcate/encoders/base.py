"""The encoder machinery: per-band normalization -> body (a Flax module) -> standardization -> PCA.

:class:`Encoder` is the base class of :class:`~imgcate.encoders.RandomConvFeatures` and
:class:`~imgcate.encoders.CNNEncoder`; the whole forward pass is the pure JAX function
``encoder.apply_jax(x)``, and :meth:`Encoder.transform` runs it in batches (or a native kernel
where a subclass has one).
"""

from __future__ import annotations

import copy
import warnings
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from imgcate.bands import check_band_identity
from imgcate.chips import Chips
from imgcate.errors import ExtrapolationWarning, FitError, InputError
from imgcate.validation import check_choice, rng_from_seed

EncoderName = Literal["rcf", "cnn"]
ENCODERS = ("rcf", "cnn")
Combine = Literal["concat", "mean", "difference"]
COMBINES = ("concat", "mean", "difference")


def chip_values(chips: Any) -> tuple[np.ndarray, bool]:
    """Chip values as float32 and whether they form a sequence (5-d)."""
    if isinstance(chips, Chips):
        return chips.values, chips.is_sequence
    arr = np.asarray(chips, dtype=np.float32)
    if arr.ndim not in (4, 5):
        raise InputError(
            f"chips must have shape (image, band, y, x) or (date, image, band, y, x), got "
            f"{arr.shape}."
        )
    return arr, arr.ndim == 5


def chip_spec(chips: Any) -> dict | None:
    """The cut of :class:`~imgcate.chips.Chips` (None for plain arrays: nothing is known)."""
    return chips.spec() if isinstance(chips, Chips) else None


def flatten_params(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten_params(value, name + "/"))
        else:
            out[name] = np.asarray(value)
    return out


def unflatten_params(arrays: dict[str, np.ndarray]) -> dict:
    tree: dict = {}
    for name, value in arrays.items():
        node = tree
        *parents, leaf = name.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = np.asarray(value)
    return tree


#: Pooled outputs (chips x filters) per jitted call of :class:`RandomConvFeatures` (the
#: ``pooled_per_call`` argument of ``transform``). XLA:CPU fuses
#: its convolution, relu and pooling into one kernel that never writes the activations out; with
#: more outputs per call that kernel runs 3-6x slower, and with far fewer the cores idle (measured
#: with benchmarks/embed_speed.py on jax 0.10). A larger ``batch_size`` is split into calls of
#: this size; the result is the same.
DEFAULT_POOLED_PER_CALL = 16384


def _batches(n: int, batch_size: int):
    for start in range(0, n, batch_size):
        yield start, min(start + batch_size, n)


class Encoder:
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
        #: How the chips it was fitted on were cut (:meth:`imgcate.chips.Chips.spec`), or None.
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

    def _chips_per_call(self, pooled_per_call: int | None) -> int | None:
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

    def fit(
        self,
        chips: Any,
        *,
        seed: int | np.random.Generator,
        native: bool | None = None,
        pooled_per_call: int | None = None,
    ) -> Encoder:
        """Fit normalization, body and PCA on ``chips``; returns a new fitted encoder.

        Parameters
        ----------
        chips : Chips or array_like
            (image, band, y, x), or a sequence (date, image, band, y, x) whose dates are pooled.
        seed : int
            Seeds every random draw (patch sampling, initialization, minibatches).
        native, pooled_per_call
            How the features the head is fitted on are computed (see :meth:`transform`).

        Returns
        -------
        encoder
            A fitted copy; ``self`` is not changed.
        """
        rng = rng_from_seed(seed)
        values, is_seq = chip_values(chips)
        x = values.reshape(-1, *values.shape[-3:]) if is_seq else values
        self._check_input(x, fitting=True)
        out = copy.copy(self)
        out._jit_cache = {}
        out.n_bands = int(x.shape[1])
        out.chip_spec = chip_spec(chips)
        mean = x.mean(axis=(0, 2, 3), dtype=np.float64)
        std = x.std(axis=(0, 2, 3), dtype=np.float64)
        std = np.where(std > 1e-8 * max(1.0, float(np.abs(mean).max())), std, 1.0)
        norm = {"band_mean": mean.astype(np.float32), "band_std": std.astype(np.float32)}
        xn = (x - norm["band_mean"][None, :, None, None]) / norm["band_std"][None, :, None, None]
        body = out._fit_body(xn.astype(np.float32), rng)
        out.params = {"norm": norm, "body": body, "head": {}}
        feats = out._features(x, native=native, pooled_per_call=pooled_per_call)
        out.params["head"] = _fit_head(feats, out.n_components)
        return out

    def transform(
        self,
        chips: Any,
        *,
        batch_size: int | None = None,
        native: bool | None = None,
        pooled_per_call: int | None = None,
    ) -> np.ndarray:
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
        native : bool, optional
            Compute the features with the encoder's native CPU kernel (only
            :class:`~imgcate.encoders.RandomConvFeatures` has one; see
            :func:`imgcate.encoders.native.use_kernel`): None (default) where it runs here,
            unless the environment variable ``IMGCATE_NATIVE=0`` (read at each call) switches
            it off; False never (the JAX forward pass); True always, with an error saying why
            where it cannot run. Both paths give the same embeddings to float32 rounding.
        pooled_per_call : int, optional
            JAX path only: the most pooled outputs (chips x filters) per jitted call (default
            :data:`DEFAULT_POOLED_PER_CALL` for random features); larger batches are split into
            calls of this size, with the same result.

        Returns
        -------
        numpy.ndarray
            Shape (image, component) (for ``combine="concat"``: (image, date * component)).
        """
        self._require_fitted()
        self._check_spec(chips)
        values, is_seq = chip_values(chips)
        options = {"batch_size": batch_size, "native": native, "pooled_per_call": pooled_per_call}
        if not is_seq:
            return self._run(values, head=True, **options)
        per_date = np.stack([self._run(v, head=True, **options) for v in values])
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
        return config, flatten_params(self.params)

    # -- internals ---------------------------------------------------------------------------
    def _require_fitted(self) -> None:
        if self.params is None:
            raise FitError(
                f"{type(self).__name__} is not fitted; call encoder.fit(chips, seed=...) or "
                "imgcate.embed(chips, encoder, seed=...) first."
            )

    def _check_spec(self, chips: Any) -> None:
        """New chips must be cut as the trial's were (known for Chips on both sides)."""
        new, fitted = chip_spec(chips), self.chip_spec
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
        check_band_identity(
            new["band_names"],
            fitted,
            source="the chips",
            means=new.get("band_mean"),
            sds=new.get("band_sd"),
            hint="extract them with the same bands (bands=[...])",
            error=InputError,
            stacklevel=5,
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

    def _uses_native(self, n_bands: int, native: bool | None) -> bool:
        """Whether :meth:`_native_body` computes the body here (else the JAX forward pass)."""
        if native:
            raise InputError(
                f"native=True, but {type(self).__name__} has no native kernel (only "
                "RandomConvFeatures has one); pass native=None."
            )
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

    def _run(
        self,
        x: np.ndarray,
        head: bool,
        batch_size: int | None,
        native: bool | None = None,
        pooled_per_call: int | None = None,
    ) -> np.ndarray:
        if self._uses_native(x.shape[1], native):
            return self._run_native(x, head, batch_size)
        self._check_input(x)
        size = min(batch_size or self.batch_size, x.shape[0])
        per_call = self._chips_per_call(pooled_per_call)
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

    def _features(
        self, x: np.ndarray, native: bool | None = None, pooled_per_call: int | None = None
    ) -> np.ndarray:
        """Body features (image, feature) of raw chips, before the head."""
        return self._run(
            x, head=False, batch_size=None, native=native, pooled_per_call=pooled_per_call
        )


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
