"""CPU devices for NUTS chains: JAX sees one device per core, so chains run side by side.

JAX gives a machine's CPUs to one device unless told otherwise (``XLA_FLAGS``), and one NUTS
chain keeps one core busy. Importing imgcate asks for one CPU device per core (at most
:data:`MAX_CPU_DEVICES`), before JAX starts; arrays still live on the first device unless
moved, so other JAX code is unaffected. A user's own
``--xla_force_host_platform_device_count`` in ``XLA_FLAGS`` is left as it is (set it to 1
to keep chains one after another), and where JAX had already started, nothing changes.
"""

from __future__ import annotations

import os

#: Most CPU devices imgcate asks JAX for.
MAX_CPU_DEVICES = 8

#: The XLA flag that sets the number of CPU devices.
DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def cpu_device_count() -> int:
    """Cores this process may run on (its CPU affinity), at most :data:`MAX_CPU_DEVICES`."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_CPU_DEVICES))


def request_cpu_devices() -> None:
    """Ask JAX for :func:`cpu_device_count` CPU devices, unless ``XLA_FLAGS`` names a count.

    Takes effect only before JAX starts its backend (imgcate calls it on import).
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if DEVICE_COUNT_FLAG not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {DEVICE_COUNT_FLAG}={cpu_device_count()}".strip()
