"""The persistent compilation cache (imgcate.compilation): a second process loads the compiled
sampler instead of compiling it, and draws the same; the folder follows the environment."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from imgcate import compilation

ROOT = Path(__file__).resolve().parents[1]

# A small fit in a fresh process; prints the compiler's persistent-cache hits and misses (JAX
# logs one line per program it looks up) and saves the cluster effects' draws.
FIT = """
import json, logging, sys, warnings
import numpy as np
records = []
class Keep(logging.Handler):
    def emit(self, record):
        records.append(record.getMessage())
logger = logging.getLogger("jax._src.compiler")
logger.setLevel(logging.DEBUG)
logger.addHandler(Keep())
import imgcate
from imgcate import compilation
sim = imgcate.simulate_trial(0, 200, 2, n_features=4)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    fit = imgcate.fit(sim.trial, sim.embeddings, n_clusters=2, num_warmup=20, num_samples=20,
                      num_chains=2, seed=0, progress=False, n_basis=0,
                      deviation="none")
np.save(sys.argv[1], fit.idata.posterior["tau_cluster"].values)
hits = [m for m in records if m.startswith("Persistent compilation cache hit")]
misses = [m for m in records if m.startswith("PERSISTENT COMPILATION CACHE MISS")]
print(json.dumps({"dir": str(compilation.enable_compilation_cache()), "hits": hits,
                  "misses": misses}))
"""

# What imgcate leaves JAX's cache folder at, printed after import.
FOLDER = """
import jax, imgcate
print(jax.config.jax_compilation_cache_dir)
print(float(jax.jit(lambda x: x + 1)(1.0)))
"""


def run(script: str, *args: str, env: dict) -> str:
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_a_second_process_loads_the_compiled_sampler_and_draws_the_same(tmp_path):
    """Also from a copy of the cache in another folder."""
    folder = tmp_path / "cache"
    env = {"IMGCATE_COMPILATION_CACHE": str(folder)}
    first = json.loads(run(FIT, str(tmp_path / "first.npy"), env=env).splitlines()[-1])
    assert first["dir"] == str(folder)
    # the first process compiled the sampler (NUTS's compiled block, "advance") and kept it
    assert any("'jit_advance'" in m for m in first["misses"]), first
    assert not first["hits"]
    kept = sorted(p.name for p in folder.iterdir() if p.name.endswith("-cache"))
    assert any(name.startswith("jit_advance") for name in kept), kept

    # the cache moved elsewhere still serves (no key holds the folder's path)
    moved = tmp_path / "moved"
    shutil.copytree(folder, moved)
    shutil.rmtree(folder)
    env = {"IMGCATE_COMPILATION_CACHE": str(moved)}
    second = json.loads(run(FIT, str(tmp_path / "second.npy"), env=env).splitlines()[-1])
    assert any("'jit_advance'" in m for m in second["hits"]), second
    assert not any("'jit_advance'" in m for m in second["misses"]), second
    np.testing.assert_array_equal(np.load(tmp_path / "first.npy"), np.load(tmp_path / "second.npy"))


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"IMGCATE_COMPILATION_CACHE": "off"}, "None"),
        ({"IMGCATE_COMPILATION_CACHE": "{tmp}/not-a-folder/cache"}, "None"),  # under a file
        ({"JAX_COMPILATION_CACHE_DIR": "{tmp}/own"}, "{tmp}/own"),  # the user's own kept
        ({"IMGCATE_COMPILATION_CACHE": "{tmp}/mine"}, "{tmp}/mine"),
    ],
)
def test_the_cache_folder_follows_the_environment(tmp_path, env, expected):
    (tmp_path / "not-a-folder").write_text("a file")
    env = {k: v.format(tmp=tmp_path) for k, v in env.items()}
    out = run(FOLDER, env=env).splitlines()
    assert out[0] == expected.format(tmp=tmp_path)
    assert out[1] == "2.0"  # JAX works either way


def test_the_default_folder_is_named_for_jax_and_the_processor(monkeypatch, tmp_path):
    import jax

    monkeypatch.delenv(compilation.ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    folder = compilation.cache_dir()
    assert folder.parent == tmp_path / "imgcate" / "jax"
    assert folder.name == compilation.machine_tag()
    assert folder.name.startswith(f"jax-{jax.__version__}-")
    for value in ("off", "OFF", "0", "none"):
        monkeypatch.setenv(compilation.ENV, value)
        assert compilation.cache_dir() is None
    for value in ("on", "1", "TRUE", ""):
        monkeypatch.setenv(compilation.ENV, value)
        assert compilation.cache_dir() == folder
    monkeypatch.setenv(compilation.ENV, "~/compiled")
    assert compilation.cache_dir() == Path.home() / "compiled"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(compilation.ENV, "relative/cache")
    assert compilation.cache_dir() == tmp_path / "relative" / "cache"


def test_no_home_directory_leaves_the_cache_off(monkeypatch):
    def no_home(cls):
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.delenv(compilation.ENV, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setattr(Path, "home", classmethod(no_home))
    assert compilation.cache_dir() is None
