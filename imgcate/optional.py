"""Optional dependencies, imported where they are used, with an error naming the extra.

Paths that only some users take (figures, SLIC superpixels, the trainable CNN encoder, maps on
a Dask cluster) need packages that ``pip install imgcate`` does not install; the extras do:

========  ==================================  ===================================================
extra     installs                            for
========  ==================================  ===================================================
plots     matplotlib, scikit-image            figures (``imgcate.plots``, ``plot_*`` methods)
segments  scikit-image                        SLIC superpixels (``segment_chips(method="slic")``)
cnn       optax                               :class:`~imgcate.encoders.CNNEncoder`
maps      matplotlib, dask[distributed]       map previews (PNG) and ``predict_map(workers > 1)``
dask      dask[distributed]                   ``predict_map(workers > 1)`` or a ``scheduler``
all       all of the above
========  ==================================  ===================================================
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from imgcate.errors import MissingDependencyError


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module``, or raise :class:`MissingDependencyError` naming the extra to install.

    Parameters
    ----------
    module : str
        Dotted module name, e.g. ``"matplotlib.pyplot"``.
    extra : str
        The imgcate extra that installs it, e.g. ``"plots"``.
    purpose : str
        What needs it, in the user's words (the start of the message).
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        package = module.split(".")[0]
        raise MissingDependencyError(
            f"{purpose} needs {package}, which is not installed; install it with "
            f'pip install "imgcate[{extra}]".'
        ) from exc


def pyplot(purpose: str = "plotting") -> ModuleType:
    """``matplotlib.pyplot`` (extra ``plots``)."""
    return require("matplotlib.pyplot", "plots", purpose)


def axes(ax: Any = None, purpose: str = "plotting") -> Any:
    """``ax``, or the axes of a new figure when it is None."""
    if ax is not None:
        return ax
    _, ax = pyplot(purpose).subplots()
    return ax
