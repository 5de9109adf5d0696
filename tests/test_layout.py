"""The package's shape: module names that never hide what they export, no private names shared
between modules, modules short enough to read, optional dependencies that stay optional."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import imgcate
from imgcate.errors import MissingDependencyError

PACKAGE = Path(imgcate.__file__).parent
SOURCES = sorted(PACKAGE.rglob("*.py"))
#: The largest a module may grow before it should be split by job.
MAX_LINES = 600


def _packages() -> list[str]:
    names = ["imgcate"]
    for info in pkgutil.walk_packages(imgcate.__path__, "imgcate."):
        if info.ispkg:
            names.append(info.name)
    return names


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@pytest.mark.parametrize("package", _packages())
def test_no_module_is_named_like_a_name_its_package_exports(package):
    """``imgcate.fit`` was a function hiding the module ``imgcate/fit.py``: a submodule's name
    must differ from every name its package's ``__init__`` exports."""
    module = importlib.import_module(package)
    exported = set(module.__all__)
    submodules = {info.name for info in pkgutil.iter_modules(module.__path__)}
    assert not exported & submodules, f"{package} exports {sorted(exported & submodules)}"
    for name in exported:  # and every exported name is what it says, not a module
        assert not isinstance(getattr(module, name), type(sys)), f"{package}.{name}"


def test_no_module_anywhere_is_named_like_a_top_level_export():
    modules = {path.stem for path in SOURCES} | {path.parent.name for path in SOURCES}
    clash = modules & set(imgcate.__all__)
    assert not clash, f"modules named like names imgcate exports: {sorted(clash)}"


def _private_imports(path: Path) -> list[str]:
    """``from imgcate.x import _name`` and ``x._name`` with x an imgcate module, in one file."""
    tree = ast.parse(path.read_text())
    here = _module_name(path)
    found, module_aliases = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                found.append(f"relative import in {here} (line {node.lineno})")
                continue
            if not (node.module or "").startswith("imgcate"):
                continue
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"{here} imports {node.module}.{alias.name}")
                full = f"{node.module}.{alias.name}"
                if importlib.util.find_spec(node.module) and _is_module(full):
                    module_aliases[alias.asname or alias.name] = full
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("imgcate"):
                    module_aliases[alias.asname or alias.name.split(".")[0]] = alias.name
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in module_aliases
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and module_aliases[node.value.id] != here
        ):
            found.append(f"{here} uses {module_aliases[node.value.id]}.{node.attr}")
    return found


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def test_no_private_name_is_imported_across_modules():
    """Helpers shared by modules are public within the package (validation, intervals, output,
    raster, ...); a ``_name`` is used only in the module that defines it."""
    found = [item for path in SOURCES for item in _private_imports(path)]
    assert not found, "\n".join(found)


def test_modules_are_short_enough_to_read():
    sizes = {_module_name(p): len(p.read_text().splitlines()) for p in SOURCES}
    largest = max(sizes, key=sizes.get)
    assert sizes[largest] <= MAX_LINES, f"{largest} has {sizes[largest]} lines; split it by job"


def test_import_imgcate_leaves_the_optional_dependencies_alone():
    """Optional paths import their dependencies when they run, not when imgcate is imported."""
    code = (
        "import sys, imgcate\n"
        "heavy = ('dask', 'distributed', 'matplotlib', 'skimage', 'optax', 'arviz')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "[]"


def _hide(monkeypatch, *modules: str) -> None:
    """Make ``import module`` fail as it does where the package is not installed."""
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


def test_a_missing_optional_dependency_names_its_extra(monkeypatch):
    import numpy as np

    from imgcate.encoders import CNNEncoder
    from imgcate.evaluate import plot_toc, rate
    from imgcate.optional import require
    from imgcate.segments import segment_chips

    chips = np.random.default_rng(0).normal(size=(4, 3, 16, 16)).astype(np.float32)
    result = rate(np.arange(20.0), np.arange(20.0), n_bootstrap=10, seed=0)
    _hide(monkeypatch, "matplotlib", "matplotlib.pyplot")
    with pytest.raises(MissingDependencyError, match=r'pip install "imgcate\[plots\]"'):
        plot_toc(result)
    _hide(monkeypatch, "skimage", "skimage.segmentation")
    with pytest.raises(MissingDependencyError, match=r'pip install "imgcate\[segments\]"'):
        segment_chips(chips, "slic")
    assert segment_chips(chips, "grid", n_segments=4).shape == (4, 16, 16)  # needs no extra
    _hide(monkeypatch, "optax")
    with pytest.raises(MissingDependencyError, match=r'pip install "imgcate\[cnn\]"'):
        CNNEncoder(8, n_steps=1).fit(chips, seed=0)
    _hide(monkeypatch, "distributed")
    with pytest.raises(MissingDependencyError, match=r"needs distributed.*imgcate\[dask\]"):
        require("distributed", "dask", "predict_map with workers > 1")
    assert issubclass(MissingDependencyError, ImportError)
