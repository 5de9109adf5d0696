"""Column moments in chunks (imgcate.moments) against the direct computations they replace for
large arrays: the standardizer's whitening and the randomization check's components."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from imgcate import moments
from imgcate.config import FitConfig, Standardizer
from imgcate.trialcheck import principal_components


@pytest.fixture
def chunked(monkeypatch):
    """Every array summarized chunk by chunk, in chunks of a few hundred values."""
    monkeypatch.setattr(moments, "CHUNKED_VALUES", 0)
    monkeypatch.setattr(moments, "CHUNK_VALUES", 700)


def embedding(n: int, d: int, seed: int, offset: float = 0.0) -> np.ndarray:
    """Correlated features of unequal scales (leading components well separated)."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(d, d)) * np.linspace(3.0, 0.2, d)[:, None]
    return offset + rng.normal(size=(n, d)) @ mixing + rng.normal(size=d)


def test_column_moments_against_numpy(chunked):
    """Mean and covariance (divisor n) over 59 chunks, with an offset of 1e6 that a sum of
    squares about zero would cancel to a few digits."""
    x = embedding(1000, 40, 0, offset=1e6)
    got = moments.column_moments(x)
    assert len(list(moments.row_chunks(*x.shape))) == 59  # of 17 rows (700 // 40)
    np.testing.assert_allclose(got.mean, x.mean(0), rtol=1e-13)
    np.testing.assert_allclose(got.cov, np.cov(x, rowvar=False, ddof=0), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(got.sd, x.std(0), rtol=1e-10)
    mean, scale, matrix = x.mean(0), x.std(0), np.arange(80.0).reshape(40, 2)
    np.testing.assert_allclose(
        moments.affine_rows(x, mean, scale, matrix), ((x - mean) / scale) @ matrix, atol=1e-9
    )


def _standardizer(x: np.ndarray, n_components: int | None) -> Standardizer:
    config = FitConfig(n_clusters=2, seed=0, n_components=n_components).validate()
    y = np.linspace(0.0, 1.0, len(x))
    return Standardizer.fitted(y, np.zeros((len(x), 0)), x, config)


@pytest.mark.parametrize(
    ("d", "n_components", "null"),
    [(40, None, False), (12, None, "copy"), (12, None, "float32 sum"), (40, 8, False)],
    ids=["16-of-40", "all-12-one-a-copy", "all-12-one-a-float32-sum", "8-of-40"],
)
def test_large_standardizer_whitens_as_the_svd_does(monkeypatch, d, n_components, null):
    """The whitening from the columns' moments gives the SVD's model-scale embedding, each
    component up to its sign (which both choose arbitrarily), also with a feature that is
    another's copy or a float32 sum of two others (a component without variance beyond
    rounding: both leave it at rounding's size instead of blowing it up to unit variance)."""
    x = embedding(900, d, 1)
    if null == "copy":
        x[:, -1] = x[:, 0]
    elif null:  # no variance of its own beyond float32 rounding (an embedding in float32)
        x[:, -1] = (x[:, 0].astype(np.float32) + x[:, 1].astype(np.float32)).astype(float)
    direct = _standardizer(x, n_components)
    monkeypatch.setattr(moments, "CHUNKED_VALUES", 0)
    monkeypatch.setattr(moments, "CHUNK_VALUES", 500)
    large = _standardizer(x, n_components)
    np.testing.assert_allclose(large.embedding_mean, direct.embedding_mean, rtol=1e-12)
    np.testing.assert_allclose(large.embedding_sd, direct.embedding_sd, rtol=1e-10)
    new = np.random.default_rng(2).normal(size=(50, d)) * direct.embedding_sd
    a, b = direct.embedding(new), large.embedding(new)  # chunked: is_large is 0 here
    kept = slice(None, -1) if null else slice(None)  # the null component: noise in both
    signs = np.sign((a * b).sum(0))
    np.testing.assert_allclose(b[:, kept] * signs[kept], a[:, kept], rtol=1e-7, atol=1e-7)
    whitened = large.embedding(x)[:, kept]
    np.testing.assert_allclose(np.cov(whitened, rowvar=False), np.eye(whitened.shape[1]), atol=1e-8)
    if null:  # no variance beyond rounding: scale 1, values at rounding's size
        assert np.abs(large.embedding(x)[:, -1]).max() < 1e-6


def test_large_principal_components_as_the_direct_ones(chunked):
    """The randomization check's components (signs fixed alike) and, for whitened features
    whose eigenvalues tie, its fallback to the columns themselves."""
    x = embedding(800, 30, 3)
    chunked_values = moments.CHUNKED_VALUES
    got = principal_components(x, 3)
    moments.CHUNKED_VALUES = 10**12  # the direct computation
    try:
        want = principal_components(x, 3)
        white = np.random.default_rng(4).normal(size=(800, 6))
        white = (white - white.mean(0)) @ np.linalg.inv(
            np.linalg.cholesky(np.cov(white.T, ddof=0))
        ).T
        want_tied = principal_components(white, 3)
    finally:
        moments.CHUNKED_VALUES = chunked_values
    np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(principal_components(white, 3), want_tied, atol=1e-10)
    first = (white[:, :3] - white[:, :3].mean(0)) / white[:, :3].std(0)  # the first columns
    np.testing.assert_allclose(want_tied, first, atol=1e-10)


def test_unit_rows_in_image_order_are_a_read_only_view():
    """Embeddings whose images are the units' in order are not copied (a foundation model's
    embedding of a million units is GBs); in another order they are, as before."""
    from imgcate.embeddings import Embeddings

    values = embedding(50, 4, 5)
    emb = Embeddings(values=values, image_ids=np.arange(50) + 100)
    rows = emb.for_keys(np.arange(50) + 100)
    assert np.shares_memory(rows, values) and not rows.flags.writeable
    np.testing.assert_array_equal(rows, values)
    with pytest.raises(ValueError, match="read-only"):
        rows[0, 0] = 1.0
    order = np.random.default_rng(0).permutation(50)
    shuffled = emb.for_keys(order + 100)
    assert not np.shares_memory(shuffled, values)
    np.testing.assert_array_equal(shuffled, values[order])


def test_units_sharing_images_are_read_a_chunk_at_a_time(chunked, monkeypatch):
    """Where the units' rows of a large embedding would be a copy (units sharing images, or in
    another order), the fit reads them through ``GatheredRows``, a chunk at a time, and never
    gathers them all: the randomization check, the standardizer, the model's inputs and a
    whole fit are the same as from the copy."""
    from imgcate import fit
    from imgcate.config import model_data
    from imgcate.embeddings import Embeddings, unit_embeddings
    from imgcate.moments import GatheredRows
    from imgcate.simulate import simulate_trial
    from imgcate.trialcheck import check_randomization

    sim = simulate_trial(0, 600, 2, n_images=150)
    emb, keys = sim.embeddings, sim.trial.image_keys
    rows, copy = emb.unit_rows(keys), emb.for_keys(keys)
    assert isinstance(rows, GatheredRows) and rows.shape == copy.shape
    assert isinstance(unit_embeddings(emb, sim.trial), GatheredRows)  # crossfit's, the check's
    with pytest.raises(ValueError, match="a copy is needed"):
        np.asarray(rows, copy=False)
    np.testing.assert_array_equal(rows[10:20], copy[10:20])
    np.testing.assert_array_equal(np.asarray(rows), copy)
    in_order = Embeddings(values=copy, image_ids=np.arange(600))
    assert not isinstance(in_order.unit_rows(np.arange(600)), GatheredRows)  # a view

    def gathered(self, dtype=None, copy=None):
        raise AssertionError("every unit's row was gathered at once")

    monkeypatch.setattr(GatheredRows, "__array__", gathered)
    np.testing.assert_array_equal(principal_components(rows, 3), principal_components(copy, 3))
    # the copy, a plain array in unit order, goes with a trial that does not name its images
    # (a plain array is refused where the units name theirs); the design is the same
    unnamed = dataclasses.replace(sim.trial, image_id=None)
    balance = [
        check_randomization(trial, x, n_components=3, seed=0)
        for trial, x in ((sim.trial, rows), (unnamed, copy))
    ]
    assert balance[0].table.equals(balance[1].table)
    config = FitConfig(n_clusters=2).validate()
    stds = [
        Standardizer.fitted(sim.trial.outcome_array, sim.trial.covariate_matrix, x, config)
        for x in (rows, copy)
    ]
    for name in ("embedding_mean", "embedding_sd", "projection", "basis_landmarks"):
        np.testing.assert_array_equal(getattr(stds[0], name), getattr(stds[1], name))
    inputs = [model_data(sim.trial, x, stds[0], config).inputs for x in (rows, copy)]
    np.testing.assert_array_equal(inputs[0].embedding, inputs[1].embedding)

    options = dict(method="svi", svi_steps=50, svi_draws=20, init_restarts=2, init_steps=20)
    gathered_fit = fit(sim.trial, emb, seed=0, progress=False, **options)
    monkeypatch.setattr(Embeddings, "unit_rows", Embeddings.for_keys)
    copied_fit = fit(sim.trial, emb, seed=0, progress=False, **options)
    np.testing.assert_array_equal(
        gathered_fit.idata.posterior["tau"].values, copied_fit.idata.posterior["tau"].values
    )
