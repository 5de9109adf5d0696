"""The vectorized R-hat and ESS against ArviZ's own, scalar by scalar."""

import warnings

import arviz as az
import numpy as np
import pytest

from imgcate.diagnostics import _average_ranks, convergence_statistics


def _ar1(rng, chains, draws, n, phi):
    """Draws of an AR(1) chain: autocorrelation phi at lag 1."""
    noise = rng.normal(size=(chains, draws, n))
    x = np.empty_like(noise)
    x[:, 0] = noise[:, 0]
    for t in range(1, draws):
        x[:, t] = phi * x[:, t - 1] + noise[:, t]
    return x


def _cases():
    rng = np.random.default_rng(0)
    yield "independent", rng.normal(size=(4, 1000, 12))
    yield "sticky", _ar1(rng, 4, 1000, 12, 0.9)
    yield "antithetic", _ar1(rng, 4, 500, 8, -0.6)
    yield "nearly stuck", _ar1(rng, 2, 300, 6, 0.995)
    yield "one chain, odd draws", _ar1(rng, 1, 101, 5, 0.5)
    yield "chains apart", _ar1(rng, 4, 200, 6, 0.5) + np.arange(4)[:, None, None]
    yield "ties", rng.integers(0, 3, size=(4, 200, 6)).astype(float)
    yield "constant", np.ones((2, 50, 3))
    for draws in (3, 5, 6, 7):
        yield f"{draws} draws", _ar1(rng, 3, draws, 4, 0.3)
    with_nan = rng.normal(size=(2, 40, 3))
    with_nan[1, 7, 2] = np.nan
    yield "a NaN draw", with_nan
    yield "matrix-valued", rng.normal(size=(2, 60, 3, 2))
    # R-hat whose tail part is NaN: ArviZ's max(bulk, tail) keeps the bulk value
    yield (
        "two-valued chains",
        np.array([[0, 0, 0, 0, 1, 0, 0, 0], [1, 1, 1, 1, 0, 1, 1, 1.0]])[:, :, None],
    )
    for draws in (8, 13, 33):  # sizes where the 5 % / 95 % quantile's rounding matters
        yield f"ties, {draws} draws", rng.integers(0, 3, size=(1, draws, 6)).astype(float)
    yield "more scalars than one chunk", _ar1(rng, 2, 40, 600, 0.7)


@pytest.mark.parametrize("name,draws", list(_cases()), ids=[n for n, _ in _cases()])
def test_convergence_statistics_are_arviz_values(name, draws):
    """Each value equals ArviZ's rank-normalized R-hat, bulk ESS and tail ESS (Vehtari et
    al. 2021) for that scalar, to 1e-10: Geyer's sequence, ties, odd draws, one chain (no
    R-hat), too few draws and NaN draws (NaN) included."""
    ours = convergence_statistics(draws)
    data = az.convert_to_dataset({"x": draws})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = {
            "ess_bulk": az.ess(data, method="bulk")["x"].values,
            "ess_tail": az.ess(data, method="tail")["x"].values,
            "r_hat": az.rhat(data)["x"].values if draws.shape[0] > 1 else None,
        }
    for stat, want in expected.items():
        got = ours[stat]
        assert got.shape == draws.shape[2:]
        if want is None:
            assert np.isnan(got).all()
        else:
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=0, err_msg=stat)
    assert np.isfinite(ours["ess_bulk"]).any() == (draws.shape[1] >= 4)


def test_average_ranks_are_scipys():
    from scipy import stats

    rng = np.random.default_rng(1)
    for x in (rng.integers(0, 5, (7, 300)).astype(float), rng.normal(size=(3, 100))):
        np.testing.assert_array_equal(_average_ranks(x), stats.rankdata(x, axis=-1))


def test_r_hat_advice_names_clusters_only_where_the_clusters_mix_badly():
    """Chains that disagree on the noise scale alone: run longer, no word of clusters;
    on a cluster effect: compare fewer clusters too."""
    from imgcate.diagnostics import convergence_problems

    rng = np.random.default_rng(0)
    apart = rng.normal(size=(2, 200)) + np.array([[0.0], [3.0]])
    together = rng.normal(size=(2, 200))
    noise = az.from_dict(posterior={"sigma": apart, "tau_cluster": together})
    (problem,) = [p for p in convergence_problems(noise) if "R-hat" in p]
    assert "['sigma']" in problem and "compare fewer" not in problem
    clusters = az.from_dict(posterior={"sigma": together, "tau_cluster": apart})
    (problem,) = [p for p in convergence_problems(clusters) if "R-hat" in p]
    assert "compare fewer" in problem
    # a model whose effect has no clusters (K = 1, the constant effect): not that advice
    units = az.from_dict(posterior={"sigma": together, "tau_unit": apart[..., None]})
    assert "compare fewer" in " ".join(convergence_problems(units))
    (problem,) = [p for p in convergence_problems(units, effect_clusters=False) if "R-hat" in p]
    assert "tau_unit" in problem and "compare fewer" not in problem


def test_sampling_problems_follow_the_fit_config():
    from imgcate.config import FitConfig
    from imgcate.diagnostics import sampling_problems

    rng = np.random.default_rng(1)
    units = rng.normal(size=(2, 200, 1)) + np.array([0.0, 3.0])[:, None, None]
    idata = az.from_dict(posterior={"tau_unit": units})
    constant = FitConfig(n_clusters=2, equal_effects=True)
    assert constant.label.startswith("constant effect") and not constant.effect_clusters
    assert FitConfig(n_clusters=2).effect_clusters and not FitConfig(n_clusters=1).effect_clusters
    for config, advised in ((FitConfig(n_clusters=3), True), (constant, False)):
        (problem,) = [p for p in sampling_problems(idata, config) if "R-hat" in p]
        assert ("compare fewer" in problem) is advised
    assert sampling_problems(idata, FitConfig(n_clusters=3, method="svi")) == []
