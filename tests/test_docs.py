"""The documentation matches the code: every dotted path it names resolves, and the API page
lists every public name."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import pytest

import imgcate

ROOT = Path(__file__).resolve().parents[1]
#: Where users read dotted paths: the README, the guide, the examples, and the package's own
#: docstrings and error messages. (CHANGELOG.md names the old paths on purpose.)
TEXTS = sorted(
    [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "examples").glob("*.py")]
    + list((ROOT / "examples").glob("*.ipynb"))
    + list((ROOT / "imgcate").rglob("*.py"))
)


def read_text(path: Path) -> str:
    """A file's text; a notebook's cells, one after another."""
    if path.suffix == ".ipynb":
        cells = json.loads(path.read_text())["cells"]
        return "\n".join("".join(cell["source"]) for cell in cells)
    return path.read_text()


DOTTED = re.compile(r"(?<![\w./-])imgcate(?:\.[A-Za-z_]\w*)+")
FROM_IMPORT = re.compile(r"^\s*(?:>>> )?from (imgcate[\w.]*) import \(?([\w, \n]+?)\)?$", re.M)


def resolve(path: str) -> object:
    """The object a dotted path names: the longest importable module, then attributes."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ModuleNotFoundError(path)


def _paths(text: str) -> set[str]:
    # a trailing attribute of a file name ("fit.imgcate") or a sentence's full stop is not a path
    return {m.rstrip(".") for m in DOTTED.findall(text)}


@pytest.mark.parametrize("path", TEXTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_dotted_path_resolves(path):
    broken = []
    for dotted in sorted(_paths(read_text(path))):
        try:
            resolve(dotted)
        except (AttributeError, ModuleNotFoundError) as exc:
            broken.append(f"{dotted} ({type(exc).__name__}: {exc})")
    assert not broken, f"{path.name} names paths that do not resolve:\n" + "\n".join(broken)


@pytest.mark.parametrize("path", TEXTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_import_statement_imports(path):
    """``from imgcate.x import y`` needs a module ``imgcate.x`` (a function of that name would
    let a dotted path resolve, but not the import)."""
    broken = []
    for module, names in FROM_IMPORT.findall(read_text(path)):
        try:
            imported = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            broken.append(f"from {module} import ... ({exc})")
            continue
        for name in (n.split(" as ")[0].strip() for n in names.replace("\n", ",").split(",")):
            if name and not hasattr(imported, name):
                broken.append(f"from {module} import {name}")
    assert not broken, f"{path.name} has imports that fail:\n" + "\n".join(broken)


def test_api_reference_lists_every_public_name():
    text = (ROOT / "docs" / "api.md").read_text()
    missing = [n for n in imgcate.__all__ if n != "__version__" and f"`{n}`" not in text]
    assert not missing, f"docs/api.md lacks {missing}"


def test_docs_site_builds_strict(tmp_path):
    """mkdocs build --strict (notebooks rendered unexecuted; the tests execute them): a broken
    link, a missing page or a page outside the navigation fails. Needs the docs extra."""
    import os
    import subprocess
    import sys

    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocs_jupyter")
    pytest.importorskip("mkdocstrings")
    env = {**os.environ, "IMGCATE_DOCS_EXECUTE": "false", "NO_MKDOCS_2_WARNING": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    for notebook in (ROOT / "examples").glob("*.ipynb"):
        assert (tmp_path / "examples" / notebook.stem / "index.html").exists(), notebook.name
    assert "stack_bands" in (tmp_path / "reference" / "index.html").read_text()


def test_examples_are_notebooks_in_the_site():
    """Every example is a notebook (the tests execute them, the site renders them) and the
    site's navigation lists each one."""
    examples = sorted(p.name for p in (ROOT / "examples").iterdir() if not p.name.startswith("."))
    assert examples and all(name.endswith(".ipynb") for name in examples), examples
    nav = (ROOT / "mkdocs.yml").read_text()
    missing = [name for name in examples if f": examples/{name}\n" not in nav]
    assert not missing, f"mkdocs.yml's nav lacks {missing}"
    assert (ROOT / "docs" / "examples").resolve() == (ROOT / "examples").resolve()


def test_confounding_page_runs_top_to_bottom(tmp_path, monkeypatch):
    """docs/confounding.md's Python blocks, in order, as one script (with 200 units instead of
    the worked example's 1,000, to keep it to seconds): each block uses only what the page
    defined before it."""
    import re
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    text = (ROOT / "docs" / "confounding.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 3 and "n_units=1000" in blocks[0]
    script = "\n".join(blocks).replace("n_units=1000", "n_units=200")
    monkeypatch.chdir(tmp_path)  # the page writes scene.tif in the working directory
    namespace: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", imgcate.OverlapWarning)  # 200 units: a few extreme scores
        exec(compile(script, "docs/confounding.md", "exec"), namespace)
    plt.close("all")
    assert list(namespace["sens"].bounds["benchmark"][:2]) == ["pc1", "pc2"]
    table = namespace["table"]
    assert set(table.index) == {"difference_in_means", "ipw_hajek", "aipw"}
