"""The README's Python example runs as written (slow: it fits the model, about 40 s)."""

from __future__ import annotations

import os
import runpy
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.slow
def test_readme_python_block_runs(tmp_path, monkeypatch):
    text = README.read_text()
    assert text.count("```python\n") == 1
    block = text.split("```python\n")[1].split("```")[0]
    script = tmp_path / "readme_block.py"
    script.write_text(block)
    monkeypatch.chdir(tmp_path)
    names = runpy.run_path(os.fspath(script))
    assert (tmp_path / "fit.imgcate").exists()
    assert names["same"].cluster_effects().equals(names["result"].cluster_effects())
    assert len(names["result"].predict(names["new"]).to_frame()) == 5
