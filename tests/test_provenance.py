"""Provenance records, and saving chips and embeddings with them (and the encoder)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from imgcate import datasets, embed, extract_chips, load_chips, load_embeddings
from imgcate.embeddings import Embeddings
from imgcate.provenance import collect, dumps, file_sha256, loads, summary_lines
from imgcate.simulate import landsat_trial


def test_collect_records_version_inputs_hashes_command_and_seeds(tmp_path):
    from imgcate import __version__

    table = tmp_path / "units.csv"
    table.write_text("id,lon,lat\n1,0,0\n")
    record = collect(
        {"units": table, "raster": [datasets.landsat_path()], "missing": tmp_path / "nope.tif"},
        command=["imgcate", "fit", "units.csv"],
        seeds={"fit": 3},
        roles={"id": "id"},
    )
    assert record["imgcate_version"] == __version__
    assert record["inputs"]["units"] == {
        "path": str(table.resolve()),
        "bytes": table.stat().st_size,
        "sha256": file_sha256(table),
    }
    assert record["inputs"]["raster"][0]["sha256"] == file_sha256(datasets.landsat_path())
    assert record["inputs"]["missing"] == {"path": str(tmp_path / "nope.tif")}
    assert record["command"] == ["imgcate", "fit", "units.csv"] and record["seeds"] == {"fit": 3}
    assert loads(dumps(record)) == record and json.loads(dumps(record)) == record
    text = "\n".join(summary_lines(record))
    assert "imgcate fit units.csv" in text and "fit=3" in text and "units.csv" in text
    assert loads("not json") == {} and loads(None) == {}


def test_collect_refuses_what_json_cannot_hold():
    with pytest.raises(Exception, match="JSON"):
        collect(command=[], settings=object())


def test_vrt_inputs_list_their_sources(tmp_path):
    from imgcate.raster import stack_bands

    files = datasets.landsat_band_files(tmp_path / "bands")
    vrt = stack_bands(files[:2], tmp_path / "two.vrt", names=["blue", "green"])
    record = collect({"raster": vrt}, command=[])
    sources = record["inputs"]["raster"]["sources"]
    assert [s["path"] for s in sources] == [str(f.resolve()) for f in files[:2]]
    assert all(s["sha256"] for s in sources)


@pytest.fixture(scope="module")
def chips():
    trial = landsat_trial(datasets.landsat_path(), seed=3, n_units=40, chip_size=16).trial
    return extract_chips(trial, datasets.landsat_path(), 16)


def test_chips_save_and_load_everything(chips, tmp_path):
    path = chips.save(tmp_path / "chips.npz")
    same = load_chips(path)
    np.testing.assert_array_equal(same.values, chips.values)
    for name in ("image_ids", "unit_image", "unit_ids", "unit_keys", "kept", "padded"):
        np.testing.assert_array_equal(getattr(same, name), getattr(chips, name))
    assert same.transforms == chips.transforms and same.crs == chips.crs
    assert same.band_names == chips.band_names and same.spec() == chips.spec()
    assert same.provenance["inputs"]["raster"]["sha256"] == file_sha256(datasets.landsat_path())
    with pytest.raises(Exception, match="exists"):
        chips.save(path)
    with pytest.raises(Exception, match="not an imgcate chips file"):
        np.savez(tmp_path / "other.npz", x=np.zeros(3))
        load_chips(tmp_path / "other.npz")


def test_embeddings_save_and_load_with_their_encoder(chips, tmp_path):
    emb = embed(chips, n_features=32, n_components=4, seed=5)
    path = emb.save(tmp_path / "emb.parquet")
    same = load_embeddings(path)
    np.testing.assert_allclose(same.values, emb.values)
    np.testing.assert_array_equal(same.image_ids, emb.image_ids)
    assert same.encoder is not None
    np.testing.assert_allclose(same.encoder.transform(chips), emb.values, atol=1e-5)
    assert same.provenance["seeds"]["encoder"] == 5
    assert same.provenance["inputs"]["raster"]["path"] == str(datasets.landsat_path())
    # a plain Parquet reader sees the table
    import pandas as pd

    table = pd.read_parquet(path)
    assert list(table.columns) == ["image_id", "e0", "e1", "e2", "e3"]


def test_embeddings_repr_is_compact():
    emb = Embeddings(np.zeros((10_000, 16)), np.arange(10_000))
    text = repr(emb)
    assert len(text) < 120 and "10000 images x 16 features" in text and "no encoder" in text
    html = emb._repr_html_()
    assert "<table>" in html and "10,000" in html and len(html) < 2000


def test_a_files_hash_is_kept_until_the_file_changes(tmp_path, monkeypatch):
    """file_sha256 is the SHA-256 of the bytes. A file unchanged for a while is hashed once
    (the second call reads nothing); one that just changed is hashed again at each call, so
    a rewrite of the same size within one tick of the file clock is still seen."""
    import hashlib
    import os

    from imgcate import provenance

    path = tmp_path / "scene.bin"
    path.write_bytes(b"a" * 4096)
    assert file_sha256(path) == hashlib.sha256(b"a" * 4096).hexdigest()
    stat = path.stat()
    path.write_bytes(b"b" * 4096)  # the same size, at once; mtime set back as it was
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert file_sha256(path) == hashlib.sha256(b"b" * 4096).hexdigest()
    # settled (here: a zero settling time, its change time in the past): kept
    monkeypatch.setattr(provenance, "SETTLED_S", -1.0)
    first = file_sha256(path)
    monkeypatch.setattr(provenance.hashlib, "sha256", None)  # hashing again would fail
    assert file_sha256(path) == first
