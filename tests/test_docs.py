"""The documentation matches the code: every dotted path it names resolves, and the API page
lists every public name."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

import imgcate

ROOT = Path(__file__).resolve().parents[1]
#: Where users read dotted paths: the README, the guide, the examples, and the package's own
#: docstrings and error messages. (CHANGELOG.md names the old paths on purpose.)
TEXTS = sorted(
    [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "examples").glob("*.py")]
    + list((ROOT / "imgcate").rglob("*.py"))
)
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
    for dotted in sorted(_paths(path.read_text())):
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
    for module, names in FROM_IMPORT.findall(path.read_text()):
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
