"""Smoke test of benchmarks/peers.py: the peer methods and the scoring run on a small trial."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "peers.py"


@pytest.fixture(scope="module")
def peers():
    spec = importlib.util.spec_from_file_location("peers_bench", PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_peer_methods_score_a_small_trial(peers):
    data = peers.simulated(0, 200, 2)
    scores = peers.rate_scores(data, 0)
    assert scores.shape == (200,) and np.isfinite(scores).all()
    train, test = np.arange(0, 200, 2), np.arange(1, 200, 2)
    for est, oof in (
        (peers.run_t_learner(data, 0), peers.oof_t_learner(data, train, test, 0)),
        (peers.run_kmeans(data, 0), peers.oof_kmeans(data, train, test, 0)),
    ):
        priority = np.zeros(200)
        priority[test] = oof
        row = peers.score(data, est, priority, scores, 0)
        assert row["sqrt_pehe"] is not None and row["sqrt_pehe"] >= 0
        assert row["rate_autoc"] is not None
    km = peers.score(data, peers.run_kmeans(data, 0), priority, scores, 0)
    assert 0 <= km["coverage_90"] <= 1


def test_causal_forest_runs_when_econml_is_installed(peers):
    pytest.importorskip("econml")
    data = peers.simulated(0, 200, 2)
    est = peers.run_forest(data, 40, 0)
    assert est.cate.shape == (200,) and (est.lower <= est.upper).all()


def test_bcf_runs_when_stochtree_is_installed(peers):
    pytest.importorskip("stochtree")
    data = peers.simulated(0, 200, 2)
    est = peers.run_bcf(data, 0)
    assert est.cate.shape == (200,) and np.isfinite(est.cate).all()
    assert (est.lower <= est.upper).all()
    train, test = np.arange(0, 200, 2), np.arange(1, 200, 2)
    assert peers.oof_bcf(data, train, test, 0).shape == (100,)


def test_summary_reports_the_pehe_ratio(peers):
    row = {
        "sqrt_pehe": 0.2,
        "ate_error": 0.1,
        "coverage_90": 0.9,
        "interval_width": 1.0,
        "rate_autoc": 1.0,
        "fit_seconds": 1.0,
    }
    methods = {m: dict(row) for m in peers.METHODS}
    methods["causal_forest_dml"]["sqrt_pehe"] = 0.5
    out = peers.summarize([{"dataset": "sim_K2_seed0", "methods": methods}], list(peers.METHODS))
    assert out["sim_K2"]["pehe_ratio_imgcate_to_forest"] == 0.4
