"""JAX's persistent compilation cache for imgcate's compiled samplers, kept between processes.

Without a cache, a fit compiles its MAP searches and NUTS sampler anew in every process:
about 17 s of a 63 s first fit of 2,000 units on a 2-core machine
(``benchmarks/fit_speed.py``). Importing imgcate turns on JAX's persistent compilation
cache, so that a process that fits the same model on data of the same shape again (a script
run twice, ``imgcate fit`` after a change of seed or output, the fits of
:func:`imgcate.compare_clusters` in a later session) loads the compiled code instead. The
draws are the same either way: the cache holds what the compiler produced, under a key of
the program, its shapes and the compiler's version and options.

Where: ``$XDG_CACHE_HOME/imgcate/jax`` (``~/.cache/imgcate/jax``), in a folder named for the
JAX version and the machine's processor, so that a home directory shared by different machines
never hands one of them code compiled for another. ``IMGCATE_COMPILATION_CACHE=<folder>`` uses
that folder as it is (a relative path taken from the working directory at import; no
subfolder), ``off`` turns the cache off and ``on`` names the default. A folder that cannot be
written leaves the cache off. A cache folder set for JAX itself (``JAX_COMPILATION_CACHE_DIR``
or ``jax.config`` before importing imgcate) wins: imgcate then changes none of JAX's cache
settings, and ``IMGCATE_COMPILATION_CACHE`` is not read.

imgcate's folder holds at most :data:`MAX_BYTES` (the least recently used entries are removed
first) and can be moved or deleted at any time (JAX's GPU autotuning caches, which would write
the folder's path into every key, are left off). An entry damaged on disk is reported by JAX
("Error reading persistent compilation cache entry") and compiled again, but not replaced:
delete the folder. Tracing the model (a few seconds) is paid by every process; only compiling
is saved. Import imgcate before anything else starts JAX: imgcate asks JAX for one CPU device
per core on import (:mod:`imgcate.devices`), and programs compiled for other devices are kept
under other keys.
"""

from __future__ import annotations

import hashlib
import os
import platform
import tempfile
from pathlib import Path

#: The environment variable naming the cache folder (or ``off``, or ``on``).
ENV = "IMGCATE_COMPILATION_CACHE"

#: Values of :data:`ENV` that turn the cache off.
OFF = ("off", "0", "false", "no", "none")

#: Values of :data:`ENV` that name the default folder.
ON = ("on", "1", "true", "yes", "default")

#: Most bytes the cache folder holds.
MAX_BYTES = 2**30

#: Programs that compile faster than this (seconds) are not kept. A fit's log-likelihood,
#: posterior-predictive and derived-quantities programs compile in 0.2-0.4 s each, about 1 s
#: of every fit, so they are kept too.
MIN_COMPILE_S = 0.1


def machine_tag() -> str:
    """A short name for this JAX version and processor: ``jax-0.10.2-x86_64-1a2b3c4d5e6f``.

    The hash covers the processor's model and instruction-set flags (``/proc/cpuinfo`` on
    Linux, ``platform.processor()`` elsewhere) and the jaxlib version.
    """
    import jax
    import jaxlib

    text = platform.processor()
    try:
        with open("/proc/cpuinfo") as info:
            lines = [line for line in info if line.startswith(("model name", "flags"))]
        text += "".join(sorted(set(lines)))
    except OSError:
        pass
    text += getattr(jaxlib, "__version__", "")
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return f"jax-{jax.__version__}-{platform.machine() or 'cpu'}-{digest}"


def cache_dir() -> Path | None:
    """The folder imgcate keeps compiled code in (absolute), or None where :data:`ENV` turns it
    off or no home directory is found."""
    value = (os.environ.get(ENV) or "").strip()
    if value.lower() in OFF:
        return None
    try:
        if value and value.lower() not in ON:
            return Path(value).expanduser().absolute()
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    except RuntimeError:  # no home directory to be found: no cache
        return None
    return Path(base) / "imgcate" / "jax" / machine_tag()


def _writable(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
    except OSError:
        return False
    return True


def enable_compilation_cache() -> Path | None:
    """Turn on JAX's persistent compilation cache in :func:`cache_dir` (imgcate calls it on
    import); returns the folder in use, or None where the cache stays off.

    A folder already set for JAX is kept and returned as it is.
    """
    import jax

    own = jax.config.jax_compilation_cache_dir
    if own:
        return Path(own)
    path = cache_dir()
    if path is None or not _writable(path):
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    # the GPU autotuning caches would put the folder's path in every key: none (CPU has none)
    jax.config.update("jax_persistent_cache_enable_xla_caches", "none")
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_S)
    jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    return path
