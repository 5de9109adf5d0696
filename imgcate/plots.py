"""Pictures and files for segment sensitivity: chips, sensitivity overlays, cluster galleries,
GeoTIFF maps.

matplotlib (and scikit-image, for segment boundaries) are imported inside each function: they
come with the ``plots`` extra (``pip install "imgcate[plots]"``). Use a non-interactive backend
(``MPLBACKEND=Agg``) on servers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from imgcate.bands import rgb_bands
from imgcate.chips import Chips, as_chips
from imgcate.errors import InputError, RasterError
from imgcate.optional import pyplot, require
from imgcate.output import atomic_path, check_writable
from imgcate.results import EffectFit
from imgcate.segments import composite, sensitivity_map, typical_images

#: Colour-bar label of the per-segment CATE change (single overlay and gallery alike).
CATE_CHANGE_LABEL = "CATE change when the segment is hidden (outcome units)"
#: Colour-bar label of the change in the log-odds of the image's own cluster.
LOGODDS_CHANGE_LABEL = "change in log-odds of the image's cluster when the segment is hidden"
LABELS = {"cate_change_mean": CATE_CHANGE_LABEL, "logodds_change_mean": LOGODDS_CHANGE_LABEL}
#: Bands written by :func:`write_sensitivity_geotiff`, in order.
GEOTIFF_BANDS = ("cate_change_mean", "cate_change_lower", "cate_change_upper")


def _check_index(chips: Chips, i: int) -> int:
    if int(i) != i or not -chips.n_images <= i < chips.n_images:
        raise InputError(
            f"i={i!r} is not a chip position; chips hold {chips.n_images} images (0.."
            f"{chips.n_images - 1}); find one by id with list(chips.image_ids).index(id)."
        )
    return int(i) % chips.n_images


def _check_result(result: xr.Dataset, chips: Chips) -> None:
    if "segments" not in result or "image" not in result.dims:
        raise InputError("result must be the Dataset returned by segment_sensitivity().")
    ids = np.asarray(result.image.values)
    if len(ids) != chips.n_images or not np.array_equal(ids, chips.image_ids):
        raise InputError(
            "result and chips hold different images; pass the chips segment_sensitivity() "
            "was run on."
        )


def display_bands(chips: Chips, bands: tuple[int, ...] | None) -> tuple[tuple[int, ...], str]:
    """The bands a figure composes, and how: ``bands`` if given; else red, green and blue
    found by the chips' band names ("true colour"); else the mean of every band ("grey":
    the bands carry no colour names, and no band order is assumed)."""
    if bands is not None:
        return tuple(int(b) for b in bands), "bands " + ", ".join(str(b) for b in bands)
    found = rgb_bands(chips.band_names)
    if found is not None:
        return found, "true colour"
    return tuple(range(chips.n_bands)), "grey"


def plot_chip(
    chips: Chips | np.ndarray,
    i: int,
    bands: tuple[int, ...] | None = None,
    *,
    ax: Any = None,
    percentiles: tuple[float, float] = (2.0, 98.0),
    grey: bool = False,
) -> Any:
    """Show one chip as a true- or false-colour composite with a percentile stretch.

    Parameters
    ----------
    chips : Chips or array_like
        (image, band, y, x).
    i : int
        Position of the chip.
    bands : tuple of int, optional
        0-based bands shown as red, green, blue, e.g. (3, 2, 1) for a false-colour composite
        of Landsat 7 (vegetation red); one band gives a grey image. Default: true colour from
        the bands named red, green and blue (``Chips.band_names``), else grey (the mean of
        every band), since band order differs between sensors.
    ax : matplotlib.axes.Axes, optional
        Axes to draw on (default: a new figure).
    percentiles : (float, float)
        Per-channel stretch from these percentiles to [0, 1].
    grey : bool
        Show the composite's brightness only (a quiet background for overlays).

    Returns
    -------
    matplotlib.axes.Axes

    Raises
    ------
    InputError
        For a chip position or band the chips do not have.

    Examples
    --------
    >>> ax = plot_chip(chips, 0, bands=(3, 2, 1))  # doctest: +SKIP
    """
    plt = pyplot("imgcate.plots")
    chips = as_chips(chips)
    i = _check_index(chips, i)
    bands, how = display_bands(chips, bands)
    rgb = composite(chips.values[i], tuple(bands), percentiles)
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 4))
    if grey or how == "grey" or rgb.shape[-1] == 1:
        ax.imshow(rgb.mean(-1), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(rgb[..., :3], interpolation="nearest")
    ax.set_title(str(chips.image_ids[i]), fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    return ax


def plot_segment_sensitivity(
    chips: Chips | np.ndarray,
    result: xr.Dataset,
    i: int,
    bands: tuple[int, ...] | None = None,
    *,
    ax: Any = None,
    var: str = "cate_change_mean",
    alpha: float = 0.55,
    vmax: float | None = None,
    colorbar: bool = True,
    grey: bool = False,
) -> Any:
    """One chip with its segment sensitivity overlaid, segment boundaries and a colour bar.

    Parameters
    ----------
    chips : Chips or array_like
        The chips ``result`` was computed on.
    result : xarray.Dataset
        From :func:`~imgcate.segments.segment_sensitivity`.
    i : int
        Position of the chip.
    bands : tuple of int
        Composite bands (see :func:`plot_chip`).
    ax : matplotlib.axes.Axes, optional
    var : str
        Per-segment variable shown: ``"cate_change_mean"`` (default; outcome units) or
        ``"logodds_change_mean"`` (change in the log-odds of the image's own cluster, which
        moves even where P(cluster) sits at 1.00).
    alpha : float
        Opacity of the overlay.
    vmax : float, optional
        Colour scale limit (symmetric around 0); default the largest absolute value in this chip.
    colorbar : bool
        Add a colour bar.
    grey : bool
        Draw the chip in grey under the overlay, or (default) in true colour when the band
        names say which bands are red, green and blue.

    Returns
    -------
    matplotlib.axes.Axes

    Raises
    ------
    InputError
        If ``result`` was computed on other chips, or for a bad position, band or variable.

    Examples
    --------
    >>> ax = plot_segment_sensitivity(chips, result, 0)  # doctest: +SKIP
    """
    find_boundaries = require(
        "skimage.segmentation", "plots", "plot_segment_sensitivity"
    ).find_boundaries
    plt = pyplot("imgcate.plots")
    chips = as_chips(chips)
    _check_result(result, chips)
    i = _check_index(chips, i)
    ax = plot_chip(chips, i, bands, ax=ax, grey=grey)
    values = sensitivity_map(result, var).values[i]
    limit = _symmetric_limit(values, vmax)
    image = ax.imshow(
        values, cmap="RdBu_r", vmin=-limit, vmax=limit, alpha=alpha, interpolation="nearest"
    )
    labels = result["segments"].values[i]
    edges = find_boundaries(labels, mode="subpixel")  # (2y - 1, 2x - 1): between pixels
    height, width = labels.shape
    ax.imshow(
        np.ma.masked_where(~edges, edges),
        cmap="gray_r",
        vmin=0,
        vmax=1,
        interpolation="nearest",
        extent=(-0.5, width - 0.5, height - 0.5, -0.5),
    )
    ax.set_title(f"{chips.image_ids[i]}: CATE {float(result['cate'][i]):.2f}", fontsize=9)
    if colorbar:
        bar = plt.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        bar.set_label(LABELS.get(var, var), fontsize=8)
        bar.ax.tick_params(labelsize=7)
    return ax


def _symmetric_limit(values: np.ndarray, vmax: float | None = None) -> float:
    """Colour limit symmetric around 0: ``vmax`` if given, else the largest absolute value
    (NaN ignored); 1 where that is not a positive finite number."""
    if vmax is not None:
        limit = float(vmax)
    else:
        magnitude = np.abs(values)
        limit = np.nan if np.isnan(magnitude).all() else float(np.nanmax(magnitude))
    return limit if np.isfinite(limit) and limit > 0 else 1.0


def _wrap(text: str, width: int = 34) -> str:
    """Break a label into lines of about ``width`` characters, so it fits beside the figure."""
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


def _save_figure(fig: Any, path: str | Path, dpi: int, overwrite: bool) -> Path:
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or "png")
    return path


def plot_cluster_gallery(
    fit: EffectFit,
    chips: Chips | np.ndarray,
    result: xr.Dataset | None = None,
    n: int = 4,
    path: str | Path | None = None,
    *,
    bands: tuple[int, ...] | None = None,
    var: str | None = None,
    panel_size: float = 2.2,
    dpi: int = 100,
    overwrite: bool = False,
    max_draws: int | None = None,
    seed: int = 0,
) -> Any:
    """A figure of the images most typical of each effect cluster (one row per cluster; with
    one cluster, images from the lowest CATE to the highest, see
    :func:`~imgcate.segments.typical_images`).

    Parameters
    ----------
    fit : EffectFit
        A fit that carries its encoder.
    chips : Chips or array_like
        Candidate chips.
    result : xarray.Dataset, optional
        Segment sensitivity of these chips; when given, each image shows its overlay.
    n : int
        Images per cluster (columns).
    path : path, optional
        Also save the figure here (written to a temporary name, then renamed); its size is
        ``(n * panel_size * dpi, K * panel_size * dpi)`` pixels.
    bands : tuple of int, optional
        Composite bands (see :func:`plot_chip`; default true colour found by band name).
    var : str, optional
        The overlay: ``"logodds_change_mean"`` (default when ``result`` has it and the fit
        has more than one cluster: the change in the log-odds of the image's own cluster,
        which shows what moves an image between clusters even where P(cluster) is 1.00 and
        the CATE barely changes) or ``"cate_change_mean"`` (outcome units; the default with
        one cluster, whose log-odds cannot move).
    panel_size : float
        Inches per image.
    dpi : int
        Resolution of the saved file.
    overwrite : bool
        Replace an existing ``path``.
    max_draws, seed
        Posterior draws used to rank images (see :func:`~imgcate.segments.typical_images`).

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    OutputExistsError
        If ``path`` exists and ``overwrite`` is False.

    Examples
    --------
    >>> fig = plot_cluster_gallery(fit, chips, n=4, path="gallery.png")  # doctest: +SKIP
    """
    plt = pyplot("imgcate.plots")
    chips = as_chips(chips)
    if path is not None:
        check_writable(path, overwrite)
    if result is not None:
        _check_result(result, chips)
    table = typical_images(fit, chips, n, max_draws=max_draws, seed=seed)
    k = fit.n_clusters
    fig, axes = plt.subplots(k, n, figsize=(n * panel_size, k * panel_size), squeeze=False)
    effects = fit.cluster_effects()
    limit = None
    if result is not None:  # one colour scale for every panel, so panels compare
        if var is None:  # with one cluster its log-odds cannot move: the CATE does
            logodds = "logodds_change_mean" in result and fit.n_clusters > 1
            var = "logodds_change_mean" if logodds else "cate_change_mean"
        shown = sensitivity_map(result, var).values[table["index"].to_numpy()]
        limit = _symmetric_limit(shown)
    for row in table.itertuples():
        ax = axes[row.cluster, row.rank]
        if result is None:
            plot_chip(chips, row.index, bands, ax=ax)
        else:
            plot_segment_sensitivity(
                chips, result, row.index, bands, ax=ax, var=var, colorbar=False, vmax=limit
            )
        detail = f"CATE {row.cate:.2f}" if k == 1 else f"P={row.cluster_prob:.3f}"
        ax.set_title(f"{row.image}\n{detail}", fontsize=7, pad=2)
        if row.rank == 0:
            ax.set_ylabel(
                f"cluster {row.cluster}\neffect {effects.tau_mean[row.cluster]:.2f}"
                if k > 1
                else f"one cluster\nmean effect {effects.tau_mean[row.cluster]:.2f}",
                fontsize=8,
            )
    for ax in axes.ravel()[len(table) :]:
        ax.set_axis_off()
    if result is None:
        fig.suptitle(
            "Most typical images of each effect cluster\n(P: cluster probability)"
            if k > 1
            else "Images from the lowest CATE to the highest\n(one cluster: the effect "
            "varies smoothly)",
            fontsize=9,
        )
        fig.tight_layout()
    else:
        what = (
            "the log-odds of the image's own cluster"
            if var == "logodds_change_mean"
            else "the unit's CATE"
        )
        fig.suptitle(
            f"Hiding a segment: change in {what}\n(red: rises, blue: falls; "
            + ("P: cluster probability)" if k > 1 else "images from the lowest CATE up)"),
            fontsize=9,
        )
        fig.tight_layout(rect=(0, 0, 0.80, 1))
        ScalarMappable = require("matplotlib.cm", "plots", "imgcate.plots").ScalarMappable
        Normalize = require("matplotlib.colors", "plots", "imgcate.plots").Normalize

        bar_ax = fig.add_axes((0.83, 0.15, 0.025, 0.7))
        bar = fig.colorbar(ScalarMappable(Normalize(-limit, limit), "RdBu_r"), cax=bar_ax)
        bar.set_label(_wrap(LABELS.get(var, var)), fontsize=7)
        bar.ax.tick_params(labelsize=7)
    if path is not None:
        _save_figure(fig, path, dpi, overwrite)
    return fig


def write_sensitivity_geotiff(
    result: xr.Dataset, chips: Chips, i: int, path: str | Path, *, overwrite: bool = False
) -> Path:
    """Write one chip's segment-sensitivity map as a georeferenced GeoTIFF.

    Three float32 bands, named by their descriptions: posterior mean CATE change, and the
    lower and upper interval bounds (:data:`GEOTIFF_BANDS`), with the chips' CRS and the
    chip's own geotransform, so the map lies exactly over the source raster. Written to a
    temporary name and renamed.

    Parameters
    ----------
    result : xarray.Dataset
        From :func:`~imgcate.segments.segment_sensitivity`.
    chips : Chips
        The chips ``result`` was computed on, read from a raster
        (:func:`~imgcate.chips.extract_chips`), so they carry a CRS and transforms.
    i : int
        Position of the chip.
    path : path
        GeoTIFF to write.
    overwrite : bool
        Replace an existing file.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    RasterError
        If the chips have no geotransform (in-memory chips).
    OutputExistsError
        If ``path`` exists and ``overwrite`` is False.

    Examples
    --------
    >>> write_sensitivity_geotiff(result, chips, 0, "sensitivity.tif")  # doctest: +SKIP
    """
    import rasterio

    chips = as_chips(chips)
    _check_result(result, chips)
    i = _check_index(chips, i)
    if chips.transforms is None or chips.crs is None:
        raise RasterError(
            "these chips have no geotransform or CRS (in-memory chips); read them from a raster "
            "with imgcate.chips.extract_chips to write a georeferenced map."
        )
    path = check_writable(path, overwrite)
    data = np.stack([sensitivity_map(result, v).values[i] for v in GEOTIFF_BANDS])
    data = data.astype(np.float32)
    profile = {
        "driver": "GTiff",
        "width": data.shape[2],
        "height": data.shape[1],
        "count": len(data),
        "dtype": "float32",
        "crs": chips.crs,
        "transform": chips.transforms[i],
        "nodata": np.nan,
        "compress": "deflate",
    }
    with atomic_path(path, overwrite=overwrite) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(data)
        for b, name in enumerate(GEOTIFF_BANDS, start=1):
            dst.set_band_description(b, name)
        dst.update_tags(
            image_id=str(chips.image_ids[i]),
            prob=str(result.attrs.get("prob")),
            fill=str(result.attrs.get("fill")),
            lower_percentile=str(result["cate_change_lower"].attrs.get("percentile")),
            upper_percentile=str(result["cate_change_upper"].attrs.get("percentile")),
        )
    return path
