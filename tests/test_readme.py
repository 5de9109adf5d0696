"""The README's Python example runs as written (slow: it fits the model, about 40 s)."""

from __future__ import annotations

import os
import runpy
import shlex
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


def readme_commands() -> list[str]:
    """The command lines of the README's command-line block (continuations joined)."""
    text = README.read_text()
    block = text.split("## Command line")[1].split("```bash\n")[1].split("```")[0]
    return [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def test_readme_command_block_uses_the_shipped_data():
    commands = readme_commands()
    assert commands[0] == ". .venv/bin/activate" and commands[1] == "mkdir -p out"
    steps = [shlex.split(c)[1] for c in commands[2:]]
    assert steps == ["chips", "embed", "fit", "map", "aggregate", "info"]
    for command in commands[2:]:
        for word in shlex.split(command):
            if word.startswith("data/"):
                assert (README.parent / word).exists(), word
    # the map is made from the fit the block made
    assert "imgcate map out/fit.imgcate" in " ".join(commands)


@pytest.mark.slow
def test_readme_command_block_runs_as_written(tmp_path, monkeypatch):
    """Each command, in-process, from a folder that looks like the repository root."""
    from click.testing import CliRunner

    from imgcate.cli import main

    (tmp_path / "data").symlink_to(README.parent / "data")
    monkeypatch.chdir(tmp_path)
    commands = readme_commands()
    (tmp_path / "out").mkdir()
    for command in commands[2:]:
        words = shlex.split(command)
        assert words[0] == "imgcate"
        res = CliRunner().invoke(main, words[1:])
        assert res.exit_code == 0, f"{command}\n{res.output}"
    assert (tmp_path / "out" / "effect_map.tif").exists()
    assert "outside_support" in res.output and "out/fit.imgcate" in res.output
