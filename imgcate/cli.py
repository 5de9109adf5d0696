"""Command line: ``imgcate demo | simulate | fit | effects``.

Manners of rasterio's ``rio``: INPUT OUTPUT positionals, ``--overwrite`` to replace files,
``-v/-q``, errors that point at the offending option, and examples at the end of each help.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import click
import pandas as pd

from imgcate._io import atomic_path, check_writable
from imgcate.errors import ImgcateError

log = logging.getLogger("imgcate")


def _setup_logging(verbose: int, quiet: int) -> None:
    level = logging.WARNING + 10 * (quiet - verbose)
    logging.basicConfig(level=max(level, logging.DEBUG), format="imgcate: %(message)s")
    log.setLevel(max(level, logging.DEBUG))
    if quiet:
        warnings.simplefilter("ignore")


def _run(fn, *args, **kwargs):
    """Call library code, turning its errors into click errors the user reads."""
    try:
        return fn(*args, **kwargs)
    except ImgcateError as exc:
        raise click.ClickException(str(exc)) from exc


verbosity = [
    click.option("-v", "--verbose", count=True, help="More messages (repeatable)."),
    click.option("-q", "--quiet", count=True, help="Fewer messages; hides warnings."),
]


def common(fn):
    """Add -v/-q to a command."""
    for option in reversed(verbosity):
        fn = option(fn)
    return fn


@click.group()
@click.version_option(package_name="imgcate")
def main() -> None:
    """Causal effect heterogeneity from satellite images."""


def _write_csv(frame: pd.DataFrame, path: Path, overwrite: bool) -> None:
    with atomic_path(path, overwrite=overwrite) as tmp:
        frame.to_csv(tmp, index=False)


def _write_embeddings(embeddings, path: Path, overwrite: bool) -> None:
    frame = pd.DataFrame(embeddings.values, columns=[f"e{j}" for j in range(
        embeddings.values.shape[1])])
    frame.insert(0, "image_id", embeddings.image_ids)
    with atomic_path(path, overwrite=overwrite) as tmp:
        frame.to_parquet(tmp, index=False)


@main.command()
@click.argument("output_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--n-units", default=1000, show_default=True, help="Units in the simulated trial.")
@click.option("--n-clusters", default=2, show_default=True, help="True effect clusters.")
@click.option("--seed", default=0, show_default=True, help="Random seed.")
@click.option("--overwrite", is_flag=True, help="Replace existing files.")
@common
def simulate(output_dir, n_units, n_clusters, seed, overwrite, verbose, quiet):
    """Simulate a trial: OUTPUT_DIR/units.csv, embeddings.parquet, truth.csv.

    \b
    Example:
      imgcate simulate sim/ --n-units 500 --n-clusters 3 --seed 1
    """
    from imgcate.simulate import simulate_trial

    _setup_logging(verbose, quiet)
    if n_clusters < 1:
        raise click.BadParameter("must be at least 1", param_hint="--n-clusters")
    sim = _run(simulate_trial, seed, n_units, n_clusters)
    output_dir.mkdir(parents=True, exist_ok=True)
    for name in ("units.csv", "embeddings.parquet", "truth.csv"):
        _run(check_writable, output_dir / name, overwrite)
    data = pd.DataFrame(sim.trial.data.drop(columns="geometry"))
    _run(_write_csv, data, output_dir / "units.csv", overwrite)
    _run(_write_embeddings, sim.embeddings, output_dir / "embeddings.parquet", overwrite)
    truth = pd.DataFrame({"id": sim.trial.ids, "cluster": sim.truth.cluster,
                          "tau_unit": sim.truth.tau_unit, "cate": sim.truth.cate})
    _run(_write_csv, truth, output_dir / "truth.csv", overwrite)
    click.echo(f"wrote {output_dir}/units.csv, embeddings.parquet, truth.csv")


@main.command("fit")
@click.argument("units", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("embeddings", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("output", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--n-clusters", "-k", default=2, show_default=True, help="Effect clusters K.")
@click.option("--covariate", "covariates", multiple=True, help="Covariate column (repeatable).")
@click.option("--id-column", default="id", show_default=True)
@click.option("--treatment", default="treatment", show_default=True)
@click.option("--outcome", default="outcome", show_default=True)
@click.option("--image-id", default=None, help="Column of the image each unit looks at.")
@click.option("--likelihood", type=click.Choice(["gaussian", "student_t", "bernoulli"]),
              default="gaussian", show_default=True)
@click.option("--method", type=click.Choice(["nuts", "svi"]), default="nuts", show_default=True)
@click.option("--chains", default=4, show_default=True)
@click.option("--draws", default=500, show_default=True, help="Warm-up and kept draws per chain.")
@click.option("--seed", default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@common
def fit_command(units, embeddings, output, n_clusters, covariates, id_column, treatment,
                outcome, image_id, likelihood, method, chains, draws, seed, overwrite,
                verbose, quiet):
    """Fit the effect-cluster model to UNITS (csv/gpkg/parquet) and EMBEDDINGS; write OUTPUT.

    \b
    Example:
      imgcate simulate sim/
      imgcate fit sim/units.csv sim/embeddings.parquet sim/fit.imgcate \\
          --image-id image_id --covariate x0 --covariate x1 -k 2
    """
    from imgcate.embed import load_embeddings
    from imgcate.fit import fit
    from imgcate.units import read_units

    _setup_logging(verbose, quiet)
    _run(check_writable, output, overwrite)
    trial = _run(read_units, units, id=id_column, treatment=treatment, outcome=outcome,
                 covariates=list(covariates), image_id=image_id)
    emb = _run(load_embeddings, embeddings)
    result = _run(fit, trial, emb, n_clusters=n_clusters, likelihood=likelihood, method=method,
                  seed=seed, num_chains=chains, num_warmup=draws, num_samples=draws,
                  progress=verbose > 0)
    _run(result.save, output, overwrite=overwrite)
    if not quiet:
        click.echo(result.summary())
    click.echo(f"wrote {output}")


@main.command()
@click.argument("fit_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("output", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--prob", default=0.9, show_default=True, help="Interval probability.")
@click.option("--level", type=click.Choice(["unit", "cluster", "ate"]), default="unit",
              show_default=True, help="Which table to write.")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@common
def effects(fit_file, output, prob, level, overwrite, verbose, quiet):
    """Write the effects table of FIT_FILE to OUTPUT (csv).

    \b
    Examples:
      imgcate effects sim/fit.imgcate sim/unit_effects.csv
      imgcate effects sim/fit.imgcate sim/clusters.csv --level cluster --prob 0.95
    """
    from imgcate.effects import load_fit

    _setup_logging(verbose, quiet)
    if not 0 < prob < 1:
        raise click.BadParameter("must be between 0 and 1", param_hint="--prob")
    result = _run(load_fit, fit_file)
    table = {"unit": result.unit_effects, "cluster": result.cluster_effects,
             "ate": result.ate}[level](prob)
    if level != "unit":
        table = table.reset_index()
    _run(_write_csv, table, output, overwrite)
    click.echo(f"wrote {output}")


@main.command()
@click.argument("output_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--n-units", default=800, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--draws", default=500, show_default=True, help="Warm-up and kept draws per chain.")
@click.option("--overwrite", is_flag=True, help="Replace existing files in OUTPUT_DIR.")
@common
def demo(output_dir, n_units, seed, draws, overwrite, verbose, quiet):
    """Run the whole pipeline on built-in demo data and write its outputs to OUTPUT_DIR.

    Simulates a two-cluster trial, compares K = 1..3 by PSIS-LOO, fits the chosen model and
    writes the fit, cluster and unit effects, the ATE check and a summary.

    \b
    Example:
      imgcate demo demo-output --overwrite
    """
    from imgcate.fit import compare_clusters
    from imgcate.simulate import simulate_trial

    _setup_logging(verbose, quiet)
    names = ["fit.imgcate", "cluster_effects.csv", "unit_effects.csv", "ate.csv",
             "k_comparison.csv", "summary.txt"]
    output_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        _run(check_writable, output_dir / name, overwrite)
    click.echo(f"simulating a trial of {n_units} units (seed {seed})")
    sim = _run(simulate_trial, seed, n_units, 2)
    click.echo("comparing K = 1, 2, 3 by PSIS-LOO")
    comparison = _run(compare_clusters, sim.trial, sim.embeddings, k_max=3, seed=seed,
                      num_chains=2, num_warmup=draws, num_samples=draws)
    result = comparison.fits[comparison.best_k]
    click.echo(comparison.table.to_string(float_format=lambda v: f"{v:.2f}"))
    _run(result.save, output_dir / "fit.imgcate", overwrite=overwrite)
    _run(_write_csv, result.cluster_effects().reset_index(), output_dir / "cluster_effects.csv",
         overwrite)
    units = result.unit_effects()
    units["true_cate"] = sim.truth.cate
    _run(_write_csv, units, output_dir / "unit_effects.csv", overwrite)
    _run(_write_csv, result.ate().reset_index(), output_dir / "ate.csv", overwrite)
    _run(_write_csv, comparison.table.reset_index(), output_dir / "k_comparison.csv", overwrite)
    summary = result.summary() + f"\n\nTrue cluster effects: {sim.truth.tau_cluster.tolist()}\n"
    with atomic_path(output_dir / "summary.txt", overwrite=overwrite) as tmp:
        tmp.write_text(summary)
    click.echo(summary)
    click.echo(f"wrote {', '.join(names)} to {output_dir}")


if __name__ == "__main__":
    main()
