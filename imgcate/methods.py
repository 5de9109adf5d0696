"""The fit options each inference method reads (NUTS's, SVI's), the check that a fit is
given only its own method's (ignored, the other's would be recorded in the fit as if used),
and the method's default number of MAP searches."""

from __future__ import annotations

from imgcate.errors import InputError

#: The fit options only NUTS reads.
NUTS_OPTIONS = (
    "num_warmup",
    "num_samples",
    "num_chains",
    "chain_method",
    "target_accept",
    "restart_chains",
)
#: The fit options only SVI reads.
SVI_OPTIONS = ("svi_steps", "svi_learning_rate", "svi_batch_size", "svi_guide", "svi_draws")


def check_method_options(method: str, options: dict) -> None:
    """Refuse the options of the method ``method`` does not run.

    Parameters
    ----------
    method : {"nuts", "svi", "auto"}
        The method asked for; ``"auto"`` may run either, so it takes both methods' options.
    options : dict
        The fit options given, by name.

    Raises
    ------
    InputError
        Naming the options of the other method, and what to do instead.
    """
    other = {"nuts": "SVI", "svi": "NUTS"}.get(method)
    names = sorted(set(options) & set(SVI_OPTIONS if method == "nuts" else NUTS_OPTIONS))
    if other is None or not names:
        return
    hint = (
        "choose method='svi' (or 'auto': SVI above 10,000 units)"
        if method == "nuts"
        else "SVI's draws come from its guide (svi_draws); or choose method='nuts' (or 'auto')"
    )
    one = len(names) == 1
    raise InputError(
        f"{', '.join(names)} {'sets' if one else 'set'} {other}, which method={method!r} does "
        f"not run; leave {'it' if one else 'them'} out: {hint}."
    )


def default_restarts(n_clusters: int, method: str = "nuts") -> int:
    """MAP searches before a fit whose ``init_restarts`` is None.

    Parameters
    ----------
    n_clusters : int
        Effect clusters K of the fit.
    method : {"nuts", "svi"}
        The inference method (SVI's start screens four times as many on a subsample).

    Returns
    -------
    int
        8 up to two clusters and for SVI, 32 for NUTS with three clusters or more.

    Notes
    -----
    With three clusters the chains of one of six trials settled, from the best of 8
    searches, with two clusters merged (unit coverage 0.72), and from 32 found them (0.97).
    With two clusters 32 gained nothing on five calibration scenarios. More than three
    clusters have not been measured (docs/model.md, "Modes").
    """
    if method == "svi" or n_clusters <= 2:
        return 8
    return 32
