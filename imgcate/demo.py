"""The demo: the whole pipeline on built-in synthetic data, written to one folder.

``imgcate demo OUTPUT_DIR`` runs :func:`run_demo`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from imgcate.chips import chips_from_array, extract_chips
from imgcate.embeddings import embed
from imgcate.maps import predict_map, write_cog
from imgcate.optional import pyplot
from imgcate.output import atomic_path, check_writable, ensure_folder, write_table
from imgcate.plots import plot_cluster_gallery
from imgcate.segments import segment_chips, segment_sensitivity, typical_images
from imgcate.selection import compare_clusters
from imgcate.simulate import land_cover_path, simulate_scene_trial, synthetic_scene

#: Files :func:`run_demo` writes into its folder (besides the scene's land-cover sidecar).
DEMO_FILES = (
    "scene.tif",
    "fit.imgcate",
    "cluster_effects.csv",
    "unit_effects.csv",
    "ate.csv",
    "k_comparison.csv",
    "summary.txt",
    "segment_sensitivity.png",
    "effect_map.tif",
    "effect_map.png",
)


def run_demo(
    output_dir: str | Path,
    *,
    n_units: int = 600,
    seed: int = 0,
    draws: int = 1000,
    scene_size: int = 384,
    overwrite: bool = False,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> Path:
    """Run the whole pipeline on a synthetic scene and write :data:`DEMO_FILES` to a folder.

    Writes a synthetic scene, simulates a trial on it whose effect depends on the built-up share
    around each unit (two clusters), extracts 32 px chips, embeds them (random convolutional
    features), compares a constant effect with K = 1..3 (PSIS-LOO, or spatial K-fold), keeps the
    chosen model and writes the fit, cluster and unit effects, the ATE check, a summary, the
    segment sensitivity of the most typical images of each cluster and the posterior effect map
    of the whole scene. Every output path is checked before any work.

    Parameters
    ----------
    output_dir : path
        Folder to write to (created if missing).
    n_units : int
        Units in the simulated trial (at least 60: K = 1..3 and 8 components need them).
    seed : int
        Seed of the scene (the trial uses ``seed + 1``), the encoder, the fits and the map.
    draws : int
        Warm-up and kept NUTS draws per chain (fewer warn about mixing).
    scene_size : int
        Scene side in pixels (at least 128).
    overwrite : bool
        Replace existing files.
    progress : bool
        Show progress bars (the fits of the comparison and the map).
    say : callable
        Where progress messages go (``print``; the CLI passes ``click.echo``).

    Returns
    -------
    pathlib.Path
        ``output_dir``.
    """
    output_dir = Path(output_dir)
    ensure_folder(output_dir)
    scene = output_dir / "scene.tif"
    for name in DEMO_FILES:
        check_writable(output_dir / name, overwrite)
    check_writable(land_cover_path(scene), overwrite)
    chip = 32
    say(f"writing a {scene_size} x {scene_size} px synthetic scene (seed {seed})")
    synthetic_scene(scene, seed=seed, width=scene_size, height=scene_size)
    say(f"simulating a trial of {n_units} units on it")
    sim = simulate_scene_trial(scene, seed=seed + 1, n_units=n_units, chip_size=chip)
    chips = extract_chips(sim.trial, scene, chip)
    emb = embed(chips, "rcf", n_features=256, n_components=8, seed=seed)
    say("comparing a constant effect, 2 and 3 clusters, and the smooth effect (K = 1)")
    comparison = compare_clusters(
        sim.trial,
        emb,
        k_max=3,
        seed=seed,
        num_chains=2,
        num_warmup=draws,
        num_samples=draws,
        progress=progress,
    )
    result = comparison.fits[comparison.best_k]
    say(comparison.table.to_string(float_format=lambda v: f"{v:.2f}"))
    say(comparison.reason())
    result.save(output_dir / "fit.imgcate", overwrite=overwrite)
    write_table(
        result.cluster_effects().reset_index(),
        output_dir / "cluster_effects.csv",
        overwrite=overwrite,
    )
    units = result.unit_effects()
    units["true_cate"] = sim.truth.tau_unit[chips.kept]
    units["true_cluster"] = sim.truth.cluster[chips.kept]
    write_table(units, output_dir / "unit_effects.csv", overwrite=overwrite)
    write_table(result.ate().reset_index(), output_dir / "ate.csv", overwrite=overwrite)
    write_table(
        comparison.table.reset_index(), output_dir / "k_comparison.csv", overwrite=overwrite
    )

    say("segment sensitivity of the most typical images of each cluster")
    typical = typical_images(result, chips, 4, max_draws=200, seed=seed)
    rows = typical["index"].to_numpy()
    picked = chips_from_array(
        chips.values[rows], image_ids=chips.image_ids[rows], band_names=chips.band_names
    )
    labels = segment_chips(picked, "grid", n_segments=16)
    sensitivity = segment_sensitivity(result, picked, labels, max_draws=200, seed=seed)
    figure = plot_cluster_gallery(
        result,
        picked,
        sensitivity,
        n=4,
        path=output_dir / "segment_sensitivity.png",
        overwrite=overwrite,
        max_draws=200,
        seed=seed,
    )
    pyplot("imgcate demo").close(figure)

    say("mapping the posterior effect over the whole scene")
    dataset = predict_map(
        result,
        scene,
        tile_size=chip,
        stride=8,
        max_draws=300,
        progress=progress,
        seed=seed,
    )
    write_cog(dataset, output_dir / "effect_map.tif", overwrite=overwrite)
    truth = sim.truth.tau_cluster.tolist()
    share = float((dataset["outside_support"] == 1).mean())
    summary = (
        result.summary() + f"\n\nTrue cluster effects: {truth}\n"
        f"Effect map: {dataset.sizes['y']} x {dataset.sizes['x']} tiles of {chip} px "
        f"every 8 px; mean CATE {float(dataset['mean'].mean()):.3f}; "
        f"{share:.1%} of tiles outside the trial's support.\n"
    )
    with atomic_path(output_dir / "summary.txt", overwrite=overwrite) as tmp:
        tmp.write_text(summary)
    say(summary)
    say(f"wrote {', '.join(DEMO_FILES)} to {output_dir}")
