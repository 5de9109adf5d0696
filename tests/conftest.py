"""Shared fixtures: the real Landsat scene, the native/JAX encoder paths, the map fit."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import rasterio

from imgcate import ConvergenceWarning, datasets
from imgcate.inference import fit
from imgcate.simulate import simulate_trial


@pytest.fixture(params=["native", "jax"])
def encoder_path(request, monkeypatch):
    """Run a test through the native kernel (where it runs here) and through the JAX path,
    switched by the environment variable the library reads at each call."""
    from imgcate.encoders import native

    if request.param == "native":
        if not native.available():
            pytest.skip("native kernel not built, CPU without AVX-512, or JAX not on the CPU")
        monkeypatch.delenv("IMGCATE_NATIVE", raising=False)
    else:
        monkeypatch.setenv("IMGCATE_NATIVE", "0")
    return request.param


@pytest.fixture(scope="session")
def landsat_path() -> Path:
    """The real 6-band Landsat 7 scene the package ships (data/landsat/)."""
    return datasets.landsat_path()


@pytest.fixture(scope="session")
def dem_path() -> Path:
    """The elevation model over the Landsat scene (data/landsat/)."""
    return datasets.elevation_path()


@pytest.fixture(scope="session")
def k2():
    """(simulated K=2 trial, its fit), NUTS 2 x 300 draws: shared by the inference and results
    tests."""
    sim = simulate_trial(11, 600, 2, separation=4.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        result = fit(
            sim.trial,
            sim.embeddings,
            n_clusters=2,
            seed=1,
            num_warmup=300,
            num_samples=300,
            num_chains=2,
        )
    return sim, result


#: Chip and tile size of the map fit (``map_inputs``).
MAP_TILE = 32


@pytest.fixture(scope="session")
def map_inputs(tmp_path_factory) -> tuple[Path, Path]:
    """(scene.tif, fit.imgcate): a 384 x 384 synthetic scene and a K=2 fit on 300 units.

    Built on first use and kept for the session (NUTS 200 + 200 draws, one chain); the map
    tests (tests/maps/) and the CLI tests share it.
    """
    from imgcate.chips import extract_chips
    from imgcate.embeddings import embed
    from imgcate.inference import fit
    from imgcate.simulate import simulate_scene_trial, synthetic_scene

    root = tmp_path_factory.getbasetemp() / "map-inputs"
    scene, fit_path = root / "scene.tif", root / "fit.imgcate"
    if fit_path.exists():
        return scene, fit_path
    root.mkdir(exist_ok=True)
    synthetic_scene(scene, seed=4, width=384, height=384)
    sim = simulate_scene_trial(scene, seed=5, n_units=300, chip_size=MAP_TILE)
    chips = extract_chips(sim.trial, scene, MAP_TILE)
    emb = embed(chips, "rcf", n_features=128, n_components=8, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        result = fit(
            sim.trial,
            emb,
            n_clusters=2,
            seed=0,
            num_warmup=200,
            num_samples=200,
            num_chains=1,
            progress=False,
        )
    result.save(fit_path)
    return scene, fit_path


def _write_variant(
    src: Path,
    dst: Path,
    *,
    count: int | None = None,
    nodata_box: tuple[int, int, int, int] | None = None,
) -> Path:
    """A copy of ``src`` with fewer bands, or with a block of nodata pixels (row, col slices)."""
    with rasterio.open(src) as ds:
        data, profile = ds.read(), ds.profile
        names = ds.descriptions
    if count is not None:
        data, names = data[:count], names[:count]
    if nodata_box is not None:
        r0, r1, c0, c1 = nodata_box
        data[:, r0:r1, c0:c1] = 0
        profile["nodata"] = 0
    profile["count"] = len(data)
    with rasterio.open(dst, "w", **profile) as out:
        out.write(data)
        for i, name in enumerate(names, start=1):
            out.set_band_description(i, name)
    return dst


def _edit_fit_file(src: Path, dst: Path, *, meta=None, idata=None) -> Path:
    """A copy of the fit file ``src`` at ``dst`` with its ``meta.json`` replaced by
    ``meta(settings)`` (the parsed dict in, what to write out) and its posterior by
    ``idata(inference_data)``; the other members as they are."""
    import io
    import json
    import zipfile

    import arviz as az

    from imgcate.fitfile import _netcdf_bytes

    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.namelist():
            data = zin.read(item)
            if item == "meta.json" and meta is not None:
                data = json.dumps(meta(json.loads(data)))
            elif item == "idata.nc" and idata is not None:
                posterior = az.from_netcdf(io.BytesIO(data), engine="h5netcdf").load()
                data = _netcdf_bytes(idata(posterior))
            zout.writestr(item, data)
    return dst


@pytest.fixture(scope="session")
def edit_fit_file():
    """``edit_fit_file(src, dst, meta=..., idata=...)``: a copy of a fit file with its
    settings or posterior changed, as an older or damaged file would have them."""
    return _edit_fit_file


@pytest.fixture(scope="session")
def write_variant():
    """``write_variant(src, dst, count=..., nodata_box=...)``: a copy of a raster with fewer
    bands, or with a block of nodata pixels."""
    return _write_variant
