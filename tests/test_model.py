"""The model's arithmetic against the formulas of its docstring, written out in NumPy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro.handlers import seed

from imgcate.model import (
    PRIOR,
    ModelInputs,
    ModelSpec,
    linear_predictors,
    sample_parameters,
    softmax_with_reference,
    unit_quantities,
)


def test_softmax_with_reference_is_the_softmax_of_zero_and_the_logits():
    """Column by column, and finite where exp overflows: logits up to 1e4."""
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=30.0, size=(500, 3)).astype(np.float32)
    logits[0] = [1e4, -1e4, 0.0]
    full = np.concatenate([np.zeros((500, 1), np.float32), logits], 1)
    expected = jax.nn.softmax(jnp.asarray(full))
    got = softmax_with_reference(jnp.asarray(logits))
    assert np.isfinite(np.asarray(got)).all()
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose(np.asarray(got).sum(1), 1.0, atol=1e-6)


@pytest.mark.parametrize("n_features", [1, 4, 16, 32])
def test_a_membership_log_odds_has_the_same_prior_spread_for_any_number_of_features(n_features):
    """Prior draws of ``z B`` (z whitened: independent standard normals) have the same mean
    square whatever the number of features: E[(z B)^2] = E[s_B^2] * feature * E[l^2] E[r^2]
    = (scale^2 / feature) * df_s / (df_s - 2) * feature * df / (df - 2), the half-Student-t
    global and local scales' second moments (3 each for 3 degrees of freedom). With the scale
    not divided by sqrt(feature) (before 2026-12-04) it was 16 times that at 16 features. The
    expectation over z and r is taken exactly (E[(z B)^2 | s, l] = s^2 sum_j l_j^2), and over
    s too: E[s^2] from the density of the model's site for s (checked against scipy's), since
    s^2 and l^2 each have tail index 1.5 and a Monte Carlo mean of their product converges too
    slowly to test. Over 200,000 prior draws of l the mean's error is a few per cent; the
    tolerance on the root mean square is 6 %."""
    from numpyro import handlers
    from scipy import stats

    spec = ModelSpec(n_clusters=2, likelihood="gaussian", n_features=n_features, n_covariates=0)
    draws = 200_000
    keys = jax.random.split(jax.random.PRNGKey(n_features), draws)

    def one(key):
        params = seed(sample_parameters, key)(spec)
        return jnp.sum(params["membership_local"] ** 2)

    mean_local = float(jnp.mean(jax.jit(jax.vmap(one))(keys)))
    df_s, df = PRIOR["membership_scale_df"], PRIOR["membership_local_df"]
    scale = PRIOR["membership_scale"] / np.sqrt(n_features)
    site = handlers.trace(seed(sample_parameters, jax.random.PRNGKey(0))).get_trace(spec)
    x = np.array([0.01, 0.3, 2.0, 30.0]) * scale
    got = np.asarray(site["membership_scale"]["fn"].log_prob(jnp.asarray(x)))
    np.testing.assert_allclose(got, np.log(2) + stats.t.logpdf(x, df_s, scale=scale), rtol=1e-5)
    mean_square = scale**2 * df_s / (df_s - 2) * mean_local
    expected = PRIOR["membership_scale"] * np.sqrt(df_s / (df_s - 2) * df / (df - 2))
    assert np.sqrt(mean_square) == pytest.approx(expected * PRIOR["membership_local"], rel=0.06)


def test_the_membership_local_scale_is_half_student_t():
    """Each component's membership scale has the half-Student-t(3) prior: density twice the
    Student-t's on the positive half-line (the prior screened on 2026-12-05), half-normal when
    ``membership_local_df`` is infinite."""
    from scipy import stats

    from imgcate.model import membership_local_prior

    x = np.array([0.1, 1.0, 4.0, 20.0])
    got = np.asarray(membership_local_prior().log_prob(jnp.asarray(x)))
    np.testing.assert_allclose(got, np.log(2) + stats.t.logpdf(x, 3), rtol=1e-5)
    old = PRIOR["membership_local_df"]
    try:
        PRIOR["membership_local_df"] = float("inf")
        got = np.asarray(membership_local_prior().log_prob(jnp.asarray(x)))
    finally:
        PRIOR["membership_local_df"] = old
    np.testing.assert_allclose(got, stats.halfnorm.logpdf(x), rtol=1e-5)


def test_the_membership_global_scale_is_half_student_t_for_the_effect_memberships_only():
    """The effect memberships' global scale s_B: half-Student-t(3) with scale 1/sqrt(feature)
    (since 2026-12-06), half-normal with that scale where ``membership_scale_df`` is infinite;
    the baseline's own memberships keep the half-normal."""
    from scipy import stats

    from imgcate.model import membership_scale_dist

    x = np.array([0.01, 0.2, 1.0, 5.0])
    half_t = np.asarray(membership_scale_dist(4).log_prob(jnp.asarray(x)))
    np.testing.assert_allclose(half_t, np.log(2) + stats.t.logpdf(x, 3, scale=0.5), rtol=1e-5)
    baseline = np.asarray(membership_scale_dist(4, "baseline_").log_prob(jnp.asarray(x)))
    np.testing.assert_allclose(baseline, stats.halfnorm.logpdf(x, scale=0.5), rtol=1e-5)
    old = PRIOR["membership_scale_df"]
    try:
        PRIOR["membership_scale_df"] = float("inf")
        got = np.asarray(membership_scale_dist(4).log_prob(jnp.asarray(x)))
    finally:
        PRIOR["membership_scale_df"] = old
    np.testing.assert_allclose(got, stats.halfnorm.logpdf(x, scale=0.5), rtol=1e-5)


def test_the_baseline_memberships_local_scale_has_a_prior_of_its_own():
    """``baseline_membership_local_df`` sets the baseline's own memberships' scale prior and
    leaves the effect memberships' alone (and the other way round)."""
    from numpyro import handlers
    from scipy import stats

    from imgcate.model import membership_local_prior

    x = np.array([0.1, 1.0, 4.0, 20.0])
    want = {3.0: np.log(2) + stats.t.logpdf(x, 3), float("inf"): stats.halfnorm.logpdf(x)}
    spec = ModelSpec(3, "gaussian", n_features=4, n_covariates=0, own_baseline_clusters=True)
    old = dict(PRIOR)
    try:
        for effect_df, baseline_df in ((3.0, float("inf")), (float("inf"), 3.0)):
            PRIOR["membership_local_df"] = effect_df
            PRIOR["baseline_membership_local_df"] = baseline_df
            effect = np.asarray(membership_local_prior().log_prob(jnp.asarray(x)))
            baseline = np.asarray(membership_local_prior("baseline_").log_prob(jnp.asarray(x)))
            np.testing.assert_allclose(effect, want[effect_df], rtol=1e-5)
            np.testing.assert_allclose(baseline, want[baseline_df], rtol=1e-5)
            # and the model's own sites use them
            sites = handlers.trace(seed(sample_parameters, jax.random.PRNGKey(0))).get_trace(spec)
            for name, df in (
                ("membership_local", effect_df),
                ("baseline_membership_local", baseline_df),
            ):
                got = float(sites[name]["fn"].log_prob(jnp.asarray(x)))
                assert got == pytest.approx(want[df].sum(), rel=1e-5), name
    finally:
        PRIOR.update(old)


def _numpy_memberships(p: dict, z, prefix: str = ""):
    """softmax([0, a + z B]) of every unit and of the centre image z = 0."""
    weights = p[f"{prefix}membership_scale"] * p[f"{prefix}membership_local"][:, None]
    weights = weights * p[f"{prefix}membership_raw"]
    logits = np.c_[np.zeros(len(z)), p[f"{prefix}membership_intercept"] + z @ weights]
    ref = np.exp(np.r_[0.0, p[f"{prefix}membership_intercept"]])
    return np.exp(logits) / np.exp(logits).sum(1, keepdims=True), ref / ref.sum()


def _numpy_predictors(p: dict, z, basis, x, codes, spec: ModelSpec):
    """The docstring's formulas, one part at a time, the obvious way."""
    if spec.n_clusters > 1:
        prob, ref = _numpy_memberships(p, z)
    else:
        prob, ref = np.ones((len(z), 1)), np.ones(1)
    base_prob, base_ref = prob, ref
    if spec.own_baseline_clusters:
        base_prob, base_ref = _numpy_memberships(p, z, "baseline_")
    bases, effects = [], []
    for prefix in spec.parts:
        q = {k[len(prefix) :]: v for k, v in p.items() if k.startswith(prefix)}
        eta0 = q["alpha"] + z @ (q["gamma_scale"] * q["gamma_raw"]) + x @ q["beta"]
        eta0 = eta0 + q["basis_amp"] * basis @ q["basis_raw"]
        eta0 = eta0 + q["stratum_sd"] * q["stratum_raw"][codes]
        steps = np.cumsum(q["tau_step"]) if "tau_step" in q else q["tau_contrast"]
        level = np.r_[0.0, steps]
        tau_k = q["tau_centre"] + level - ref @ level
        eta0 = eta0 + (base_prob - base_ref)[:, 1:] @ q["mu_cluster"]
        tau = prob @ tau_k + z @ (q["deviation_scale"] * q["deviation_local"] * q["deviation_raw"])
        tau = tau + q["deviation_amp"] * basis @ q["deviation_basis_raw"]
        bases.append(eta0)
        effects.append(tau)
    return prob, np.stack(bases), np.stack(effects)


@pytest.mark.parametrize(
    ("likelihood", "n_clusters", "own"),
    [("gaussian", 3, False), ("hurdle", 2, False), ("gaussian", 3, True), ("hurdle", 2, True)],
)
def test_linear_predictors_follow_the_formulas(likelihood, n_clusters, own):
    """Fast path (one pass over each design matrix, small axes column by column) against the
    formulas, for one- and two-part likelihoods, the baseline's cluster term with the effect
    clusters' memberships or its own, at a prior draw."""
    spec = ModelSpec(
        n_clusters=n_clusters,
        likelihood=likelihood,
        n_features=5,
        n_covariates=2,
        n_basis=7,
        n_strata=4,
        own_baseline_clusters=own,
    )
    rng = np.random.default_rng(1)
    n = 300
    z, basis, x = rng.normal(size=(n, 5)), rng.normal(size=(n, 7)), rng.normal(size=(n, 2))
    codes = rng.integers(0, 4, n)
    inputs = ModelInputs(
        *(jnp.asarray(a, jnp.float32) for a in (z, basis, x)),
        treatment=jnp.asarray(rng.integers(0, 2, n)),
        stratum=jnp.asarray(codes),
    )
    with seed(rng_seed=2):
        params = sample_parameters(spec)
    assert ("baseline_membership_raw" in params) == own
    prob, eta0, tau = linear_predictors(params, inputs, spec)
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    want = _numpy_predictors(p, z, basis, x, codes, spec)
    for got, expected in zip((prob, eta0, tau), want, strict=True):
        scale = max(1.0, float(np.abs(expected).max()))
        np.testing.assert_allclose(np.asarray(got), expected, atol=2e-5 * scale)


@pytest.mark.parametrize("likelihood", ["gaussian", "student_t", "bernoulli", "hurdle"])
def test_the_cate_is_the_difference_of_the_arms_means(likelihood):
    """``cate`` is ``mu1 - mu0`` for every family; where the mean is the linear predictor it
    is the effect ``tau`` itself, taken exactly (not the rounded difference)."""
    spec = ModelSpec(n_clusters=2, likelihood=likelihood, n_features=3, n_covariates=0)
    rng = np.random.default_rng(4)
    n = 200
    inputs = ModelInputs(
        jnp.asarray(rng.normal(size=(n, 3)), jnp.float32),
        jnp.zeros((n, 0), jnp.float32),
        jnp.zeros((n, 0), jnp.float32),
        treatment=jnp.asarray(rng.integers(0, 2, n)),
    )
    with seed(rng_seed=5):
        params = sample_parameters(spec)
    q = {k: np.asarray(v) for k, v in unit_quantities(params, inputs, spec).items()}
    np.testing.assert_allclose(q["cate"], q["mu1"] - q["mu0"], rtol=1e-5, atol=1e-5)
    if likelihood in ("gaussian", "student_t"):
        np.testing.assert_array_equal(q["cate"], q["tau"][0])
