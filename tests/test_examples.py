"""The example notebooks (jupytext .py files) run end to end with small settings."""

from __future__ import annotations

import runpy
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("name", ["landsat_trial.py"])
def test_example_runs(name, monkeypatch, capsys):
    monkeypatch.setenv("IMGCATE_EXAMPLE_SMALL", "1")
    namespace = runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    out = capsys.readouterr().out
    assert "AUTOC" in out and "cluster assignment accuracy" in out
    # the example's own claims: the model found the clusters the scene put there
    assert namespace["comparison"].best_k == 2
    assert namespace["autoc"].estimate > 0


def test_observational_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IMGCATE_EXAMPLE_SMALL", "1")
    monkeypatch.setenv("IMGCATE_EXAMPLE_DIR", str(tmp_path))
    ns = runpy.run_path(str(EXAMPLES / "observational_study.py"), run_name="__main__")
    assert "cluster assignment accuracy" in capsys.readouterr().out
    # the example's own claims: the naive estimate misses the truth, the adjusted ones cover it
    table, truth = ns["estimates"], ns["true_ate"]
    covers = (table["2.5%"] <= truth) & (truth <= table["97.5%"])
    assert not covers["difference_in_means"] and covers["ipw_hajek"] and covers["aipw"]
    assert ns["balance"]["smd_after"].abs().max() < ns["balance"]["smd_before"].abs().max() / 3
    assert ns["accuracy"] > 0.9
    assert np.corrcoef(ns["ps"].scores, ns["truth"].propensity)[0, 1] > 0.9
    # the text's sensitivity claims: pc1 is the feature most tied to treatment, weakly tied to
    # the outcome, and no confounder as strong as any one feature brings the interval to zero
    assert ns["most_tied"]["benchmark"] == "pc1" and ns["most_tied"]["r2yz_dx"] < 0.05
    assert (ns["bounds"]["adjusted_2.5%"] > 0).all()
