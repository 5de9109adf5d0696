"""The example notebooks run end to end as notebooks (nbclient), from another working
directory: small settings in the fast suite, the full settings in the slow one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NOTEBOOKS = sorted(p.name for p in EXAMPLES.glob("*.ipynb"))

#: Claims each notebook makes in its text, checked in its own kernel after it ran.
CLAIMS = {
    "landsat_trial.ipynb": """
# K = 2 (the truth) scores within the rule's margin of the best, and a simpler model scores
# clearly worse; the conservative rule may keep a simpler model with the quick settings' few
# draws
table = comparison.table
from imgcate.selection import MIN_ELPD_GAIN, SE_MULTIPLE
assert table.loc[2, "elpd_diff"] <= max(MIN_ELPD_GAIN, SE_MULTIPLE * table.loc[2, "dse"]), table
assert (table.loc[[0, 1], "elpd"] < table.loc[2, "elpd"]).all(), table
assert comparison.best_k == 2 or (SMALL and comparison.best_k < 2), table
assert autoc.estimate > 0
""",
    "bring_your_own_raster.ipynb": """
assert embeddings.encoder is not None
green = checked.loc[checked.true_cate == 2, "tau_mean"].mean()
other = checked.loc[checked.true_cate == 0, "tau_mean"].mean()
assert green > other + 0.5, (green, other)
assert set(districts["district"]) == {"south-west", "south-east", "north-west", "north-east"}
assert (WORK / "cli_map.tif").exists() and (WORK / "cli_districts.gpkg").exists()
import pandas as pd
assert list(pd.read_csv(WORK / "cli_unit_effects.csv").columns[:3]) == ["village", "lon", "lat"]
""",
    # the naive estimate misses the truth, the adjusted ones cover it; pc1 is the feature most
    # tied to treatment, weakly tied to the outcome, and no confounder as strong as any one
    # feature brings the interval to zero
    "observational_study.ipynb": """
import numpy as np
covers = (estimates["2.5%"] <= true_ate) & (true_ate <= estimates["97.5%"])
assert not covers["difference_in_means"] and covers["ipw_hajek"] and covers["aipw"], estimates
assert balance["smd_after"].abs().max() < balance["smd_before"].abs().max() / 3
assert accuracy > 0.9, accuracy
assert np.corrcoef(ps.scores, truth.propensity)[0, 1] > 0.9
assert most_tied["benchmark"] == "pc1" and most_tied["r2yz_dx"] < 0.05, most_tied
assert (bounds["adjusted_2.5%"] > 0).all(), bounds
# trim="crump" is the Crump rule's units; the fit given the Propensity stacks its estimation
assert trimmed.attrs["trim"]["n_kept"] == kept.keep.sum() < len(kept.keep)
assert result.ate().loc["aipw", "vcov"].endswith("score estimation stacked")
""",
}


def run_notebook(name: str, workdir: Path, small: bool, timeout: int = 1800):
    """Execute a notebook in a fresh kernel whose working directory is ``workdir``."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(EXAMPLES / name, as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell(CLAIMS.get(name, "")))
    env = {"IMGCATE_EXAMPLE_SMALL": "1" if small else "0", "MPLBACKEND": "Agg"}
    env["IMGCATE_EXAMPLE_DIR"] = str(workdir / "out")
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        client = nbclient.NotebookClient(
            notebook,
            timeout=timeout,
            kernel_name="python3",
            resources={"metadata": {"path": str(workdir)}},
        )
        client.execute()
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return notebook


def outputs(notebook) -> str:
    return "\n".join(
        out.get("text", "") for cell in notebook.cells for out in cell.get("outputs", [])
    )


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_small(name, tmp_path):
    notebook = run_notebook(name, tmp_path, small=True)
    text = outputs(notebook)
    assert "Traceback" not in text and "os.fork() was called" not in text
    assert "IProgress not found" not in text  # no widget bar without ipywidgets


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_full(name, tmp_path):
    run_notebook(name, tmp_path, small=False, timeout=3600)
