"""Embeddings: seeded embedding of chips, serialization of encoders, sequences, loading."""

from __future__ import annotations

import json
import warnings

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from imgcate.chips import chips_from_array
from imgcate.embeddings import Embeddings, embed, encoder_from_state, load_embeddings
from imgcate.encoders import RandomConvFeatures
from imgcate.errors import FitError, InputError, OutputExistsError


@pytest.fixture(scope="module")
def chips():
    rng = np.random.default_rng(0)
    x = rng.gamma(2.0, 50.0, size=(60, 5, 12, 12)).astype(np.float32)
    x[:30, 2] += 80.0  # two kinds of images
    return chips_from_array(x, [f"img{i}" for i in range(60)])


def test_same_seed_same_embeddings_different_seed_different(chips):
    a = embed(chips, n_features=64, n_components=8, seed=1)
    b = embed(chips, n_features=64, n_components=8, seed=1)
    c = embed(chips, n_features=64, n_components=8, seed=2)
    assert isinstance(a, Embeddings) and a.values.shape == (60, 8)
    np.testing.assert_array_equal(a.values, b.values)
    assert not np.allclose(a.values, c.values, atol=1e-3)
    assert a.image_ids.tolist() == list(chips.image_ids)
    assert isinstance(a.encoder, RandomConvFeatures) and a.encoder.is_fitted


def test_save_load_transform_new_chips(chips, tmp_path, encoder_path):
    enc = embed(chips, n_features=64, n_components=8, seed=0).encoder
    config, arrays = enc.get_state()
    (tmp_path / "enc.json").write_text(json.dumps(config))
    np.savez(tmp_path / "enc.npz", **arrays)
    with np.load(tmp_path / "enc.npz") as data:
        loaded = encoder_from_state(json.loads((tmp_path / "enc.json").read_text()), dict(data))
    new = np.random.default_rng(5).gamma(2.0, 50.0, size=(9, 5, 12, 12)).astype(np.float32)
    np.testing.assert_allclose(loaded.transform(new), enc.transform(new), atol=1e-6)
    again = embed(chips_from_array(new), loaded)  # a fitted encoder is only applied
    np.testing.assert_allclose(again.values, enc.transform(new), atol=1e-6)


def test_sequences_combine(chips):
    seq = chips_from_array(
        np.stack([chips.values, chips.values * 1.1]), chips.image_ids, dates=["t0", "t1"]
    )
    concat = embed(seq, n_features=32, n_components=4, seed=0)
    assert concat.values.shape == (60, 8)
    for combine in ("mean", "difference"):
        out = embed(seq, n_features=32, n_components=4, combine=combine, seed=0)
        assert out.values.shape == (60, 4)
    diff = embed(seq, n_features=32, n_components=4, combine="difference", seed=0)
    np.testing.assert_allclose(diff.values, concat.values[:, 4:] - concat.values[:, :4], atol=1e-5)
    jax_out = diff.encoder.apply_jax(jnp.asarray(seq.values))
    np.testing.assert_allclose(np.asarray(jax_out), diff.values, atol=1e-5)


def test_errors(chips):
    with pytest.raises(InputError, match="encoder='vit' is not allowed"):
        embed(chips, "vit", seed=0)
    with pytest.raises(InputError, match="seed is required"):
        embed(chips)
    with pytest.raises(FitError, match="not fitted"):
        RandomConvFeatures().transform(chips)
    enc = RandomConvFeatures(16, n_components=2).fit(chips, seed=0)
    with pytest.raises(InputError, match="fitted on 5"):
        enc.transform(np.zeros((2, 3, 12, 12)))
    with pytest.raises(InputError, match="n_components=100 exceeds"):
        embed(chips, n_features=16, n_components=100, seed=0)
    with pytest.raises(InputError, match="combine='sum' is not allowed"):
        embed(chips, combine="sum", seed=0)


def test_load_embeddings(tmp_path):
    values = np.arange(12.0).reshape(4, 3)
    df = pd.DataFrame(values, columns=["f0", "f1", "f2"]).assign(image_id=list("abcd"))
    df.to_parquet(tmp_path / "e.parquet")
    emb = load_embeddings(tmp_path / "e.parquet")
    np.testing.assert_array_equal(emb.for_keys(np.array(["c", "a"])), values[[2, 0]])
    assert emb.feature_names == ("f0", "f1", "f2")  # for membership_weights(names=...)
    with pytest.raises(InputError, match="2 names for 3 features"):
        Embeddings(values=values, image_ids=np.arange(4), feature_names=["a", "b"])
    np.savez(tmp_path / "e.npz", key=np.array([5, 6, 7, 8]), values=values)
    assert load_embeddings(tmp_path / "e.npz", id_column="key").image_ids.tolist() == [5, 6, 7, 8]
    np.save(tmp_path / "e.npy", values)
    assert load_embeddings(tmp_path / "e.npy").values.shape == (4, 3)
    with pytest.raises(InputError, match="no id column 'tile'"):
        load_embeddings(tmp_path / "e.parquet", id_column="tile")
    with pytest.raises(InputError, match="does not exist"):
        load_embeddings(tmp_path / "nope.parquet")


def test_embed_to_file_in_chunks_equals_one_pass(landsat_path, tmp_path):
    # 200 units on the real scene, 30 sharing images: embedded 64 images at a time, the
    # encoder fitted on 80 of them, the file holds what one pass with that encoder gives
    import pyarrow.parquet as pq

    from imgcate.chips import extract_chips
    from imgcate.embeddingfile import embed_to_file
    from imgcate.embeddings import embed, load_embeddings
    from tests.test_chips import _trial_at

    rng = np.random.default_rng(0)
    rows, cols = rng.integers(20, 330, 200), rng.integers(20, 330, 200)
    rows[170:], cols[170:] = rows[:30], cols[:30]
    image = np.r_[np.arange(170), np.arange(30)]
    trial = _trial_at(landsat_path, rows, cols, image_id=image)
    out = embed_to_file(
        trial,
        landsat_path,
        16,
        tmp_path / "e.parquet",
        n_features=32,
        n_components=4,
        chunk_images=64,
        fit_images=80,
        seed=1,
    )
    assert pq.ParquetFile(out).num_row_groups == 3  # 170 images in chunks of 64
    streamed = load_embeddings(out)
    whole = embed(extract_chips(trial, landsat_path, 16), streamed.encoder)
    order = np.argsort(streamed.image_ids)
    np.testing.assert_array_equal(streamed.image_ids[order], np.sort(whole.image_ids))
    np.testing.assert_allclose(
        streamed.values[order], whole.values[np.argsort(whole.image_ids)], atol=1e-5
    )
    assert streamed.provenance["streamed"] == {"chunk_images": 64, "fit_images": 80}
    with pytest.raises(OutputExistsError):  # checked before any chip is read
        embed_to_file(trial, landsat_path, 16, out, chunk_images=64, fit_images=80, seed=1)


def test_embed_to_file_warns_of_dropped_units(landsat_path, tmp_path):
    from imgcate.embeddingfile import embed_to_file
    from tests.test_chips import _trial_at

    rows, cols = np.array([3, 100, 200, 150, 340]), np.array([100, 3, 200, 150, 50])
    trial = _trial_at(landsat_path, rows, cols)  # the first two chips cross the edge
    with pytest.warns(UserWarning, match=r"2 units dropped .*'u0', 'u1'"):
        out = embed_to_file(
            trial,
            landsat_path,
            16,
            tmp_path / "e.parquet",
            n_features=8,
            n_components=2,
            chunk_images=2,  # the first chunk: every chip dropped
            seed=0,
            on_edge="drop",
        )
    assert sorted(load_embeddings(out).image_ids) == ["u2", "u3", "u4"]


def test_ids_read_as_numbers_against_ids_as_text_are_named_as_such():
    emb = Embeddings(values=np.zeros((3, 2)), image_ids=np.array(["0", "1", "2"]))
    with pytest.raises(InputError, match=r"ids are text and these are numbers: read .* as text"):
        emb.for_keys(np.array([0, 1]))
    numbered = Embeddings(values=np.zeros((3, 2)), image_ids=np.arange(3))
    with pytest.raises(InputError, match=r"ids are numbers and these are text: read .* numbers"):
        numbered.for_keys(np.array(["0", "1"]))
    with pytest.raises(InputError, match=r"\(first \['7'\]\); .* image_id column\)\.$"):
        emb.for_keys(np.array(["1", "7"]))  # another id of the same kind: no such hint


def test_embed_to_file_warns_once_of_units_at_one_location(landsat_path, tmp_path):
    """Units at the same place share a chip: one warning over the whole trial (it came once
    per chunk, and for the encoder's sample, each with that chunk's counts)."""
    from imgcate.embeddingfile import embed_to_file
    from tests.test_chips import _trial_at

    rows, cols = np.array([100, 100, 200, 200, 150, 150]), np.array([50, 50, 90, 90, 70, 70])
    trial = _trial_at(landsat_path, rows, cols)  # three pairs, each at one location
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        embed_to_file(
            trial,
            landsat_path,
            16,
            tmp_path / "e.parquet",
            n_features=8,
            n_components=2,
            chunk_images=2,
            seed=0,
        )
    said = [str(w.message) for w in caught if "same location" in str(w.message)]
    assert len(said) == 1 and said[0].startswith("6 units (") and "(3 chip(s)" in said[0]
    assert caught[0].filename == __file__
