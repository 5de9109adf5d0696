"""Command line: ``imgcate chips | embed | embed-raster | fit | effects | map | aggregate | info |
simulate | demo``.

Manners of rasterio's ``rio``: INPUT OUTPUT positionals, ``--overwrite`` to replace files,
``-v/-q`` (on the group or on a command), errors that point at the offending option, and
examples at the end of each help. A workflow from a units table and a raster::

    imgcate chips villages.csv scene.tif chips.npz --size 16
    imgcate embed chips.npz embeddings.parquet
    imgcate fit villages.csv embeddings.parquet fit.imgcate
    imgcate map fit.imgcate scene.tif effect_map.tif
    imgcate aggregate effect_map.tif districts.gpkg district_effects.gpkg
    imgcate info effect_map.tif

For a trial whose chips would not fit in memory, ``imgcate embed-raster villages.csv scene.tif
embeddings.parquet --size 16`` replaces the first two steps (a chunk of images at a time).
"""

from __future__ import annotations

import os
import signal
import sys

from imgcate.startup import interrupts_held, keep_lost_interrupts

with interrupts_held():  # Ctrl-C while the commands' modules import acts once they end
    import click

    from imgcate.cli.about import info
    from imgcate.cli.common import ARGV
    from imgcate.cli.mapping import aggregate, map_command
    from imgcate.cli.modelling import demo, effects, fit_command, simulate
    from imgcate.cli.steps import chips_command, embed_command, embed_raster_command


class Group(click.Group):
    """The command group; it remembers the arguments it was given (``sys.argv[1:]`` from a
    shell, the list passed to ``main(args)`` or click's CliRunner in-process), so that every
    output records the command that made it."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if ctx.parent is None:
            ctx.meta[ARGV] = list(args)
        return super().parse_args(ctx, args)


@click.group(cls=Group)
@click.version_option(package_name="imgcate")
@click.option("-v", "--verbose", count=True, help="More messages (repeatable).")
@click.option("-q", "--quiet", count=True, help="Fewer messages; hides warnings and progress.")
@click.pass_context
def main(ctx: click.Context, verbose: int, quiet: int) -> None:
    """Causal effect heterogeneity from satellite images.

    \b
    From a units table (columns id, lon, lat, treatment, outcome; --id-column,
    --lon, --lat, --treatment, --outcome name others) and a raster to a map:
      imgcate chips villages.csv scene.tif chips.npz --size 16
      imgcate embed chips.npz embeddings.parquet
      imgcate fit villages.csv embeddings.parquet fit.imgcate
      imgcate map fit.imgcate scene.tif effect_map.tif
      imgcate aggregate effect_map.tif districts.gpkg district_effects.gpkg
      imgcate info fit.imgcate

    \b
    Too many units for their chips to fit in memory: chips and embed in one step, a chunk of
    images at a time:
      imgcate embed-raster villages.csv scene.tif embeddings.parquet --size 16

    \b
    The first fit of a model on a machine compiles it; later fits of the same shape load the
    compiled code from ~/.cache/imgcate/jax (IMGCATE_COMPILATION_CACHE=<folder> moves it,
    IMGCATE_COMPILATION_CACHE=off turns it off).
    """
    ctx.obj = {"verbose": verbose, "quiet": quiet, "argv": ctx.meta.get(ARGV)}


for _command in (
    chips_command,
    embed_command,
    embed_raster_command,
    fit_command,
    effects,
    map_command,
    aggregate,
    info,
    simulate,
    demo,
):
    main.add_command(_command)


def script() -> None:
    """The ``imgcate`` command (``python -m imgcate.cli``): :func:`main`, and a command stopped
    by Ctrl-C or SIGTERM leaves the process at once with 130 or 143. JAX's threads may still
    be inside a compiled computation then (a fit's sampler), and the interpreter's usual
    shutdown crashed in them (a segmentation fault, status -11); the command's own cleanup
    (partial outputs removed) has run by then."""
    keep_lost_interrupts()
    try:
        main(prog_name="imgcate")
    except SystemExit as stop:
        if stop.code in (130, 143):
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(stop.code)
        if not stop.code:  # done: a Ctrl-C now would only make a whole output look stopped
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise


__all__ = ["main", "script"]

if __name__ == "__main__":
    script()
