"""The example notebooks (jupytext .py files) run end to end with small settings."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("name", ["landsat_trial.py"])
def test_example_runs(name, landsat_path, monkeypatch, capsys):
    monkeypatch.setenv("IMGCATE_EXAMPLE_SMALL", "1")
    monkeypatch.setenv("IMGCATE_LANDSAT", str(landsat_path))
    namespace = runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    out = capsys.readouterr().out
    assert "AUTOC" in out and "cluster assignment accuracy" in out
    # the example's own claims: the model found the clusters the scene put there
    assert namespace["comparison"].best_k == 2
    assert namespace["autoc"].estimate > 0


def test_api_reference_lists_every_public_name():
    import imgcate

    text = (EXAMPLES.parent / "docs" / "api.md").read_text()
    missing = [n for n in imgcate.__all__ if n != "__version__" and f"`{n}`" not in text]
    assert not missing, f"docs/api.md lacks {missing}"
