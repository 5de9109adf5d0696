"""Trial checks: balance of a randomized trial against what its randomization gives, and the
covariates a trial refuses."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import imgcate
from imgcate import BalanceWarning, InputError, check_randomization, read_units
from imgcate.confounding import balance_table
from imgcate.rerandomization import rerandomize, trial_design
from imgcate.simulate import simulate_trial
from imgcate.trialcheck import principal_components


def units(
    n: int,
    seed: int,
    *,
    shift: float = 0.0,
    n_covariates: int = 2,
    strata: int = 0,
    clusters: int = 0,
) -> pd.DataFrame:
    """A units table: half the units (or whole clusters) treated at random, within strata if
    asked; covariate x0 moved by ``shift`` sd in the treated arm."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "id": np.arange(n),
            "lon": rng.uniform(30, 31, n),
            "lat": rng.uniform(0, 1, n),
            "outcome": rng.normal(size=n),
        }
    )
    if clusters:
        df["village"] = np.arange(n) % clusters
        chosen = rng.permutation(clusters)[: clusters // 2]
        df["treatment"] = np.isin(df["village"], chosen).astype(int)
        level = rng.normal(size=clusters)[df["village"]]  # cluster-level covariates (ICC 0.8)
        for j in range(n_covariates):
            df[f"x{j}"] = 2 * level + rng.normal(size=n) + j * rng.normal(size=n)
        return df
    df["stratum"] = np.arange(n) % strata if strata else 0
    t = np.zeros(n, dtype=int)
    for s in np.unique(df["stratum"]):
        idx = rng.permutation(np.flatnonzero(df["stratum"] == s))
        t[idx[: len(idx) // 2]] = 1
    df["treatment"] = t
    for j in range(n_covariates):
        df[f"x{j}"] = rng.normal(size=n) + (shift * t if j == 0 else 0.0)
    if strata:  # strata differ in their covariates (as blocks are built)
        df["x1"] += 2.0 * df["stratum"]
    return df


def trial(df: pd.DataFrame, **kwargs) -> imgcate.Trial:
    covs = [c for c in df.columns if c.startswith("x")]
    return read_units(df, covariates=covs, **kwargs)


def quiet_check(tr, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error", BalanceWarning)
        return check_randomization(tr, *args, **kwargs)


def test_balanced_randomized_trial_passes_quietly():
    sim = simulate_trial(seed=3, n_units=300, n_covariates=3)
    check = quiet_check(sim.trial, sim.embeddings, n_components=4, seed=1)
    assert list(check.table.index) == ["x0", "x1", "x2", "pc1", "pc2", "pc3", "pc4"]
    assert list(check.table["kind"]) == ["covariate"] * 3 + ["embedding"] * 4
    assert not check.implausible and check.p_value > 0.05
    assert check.df == (7, 300 - 1 - 7)
    assert check.level == "unit" and check.n_units == check.n_groups == 300
    # under randomization an SMD is about sqrt(1/150 + 1/150) = 0.115 sd
    assert check.table["smd"].abs().max() < 0.35
    assert "plausible" in repr(check) and "IMPLAUSIBLE" not in repr(check)


def test_smd_is_balance_tables_and_the_randomization_sd_its_formula():
    df = units(400, seed=0, n_covariates=3)
    tr = trial(df)
    check = quiet_check(tr, n_permutations=4000, seed=0)
    reference = balance_table(tr.covariate_matrix, tr.treatment_array, names=tr.covariates)
    np.testing.assert_allclose(check.table["smd"], reference["smd_before"], rtol=1e-12)
    np.testing.assert_allclose(check.table["mean_treated"], reference["mean_treated"])
    # complete randomization, 200 of 400 treated: sd(SMD) ~ sqrt(1/200 + 1/200) = 0.1
    spread = check.tidy()["std_err"].to_numpy()[:3]
    np.testing.assert_allclose(spread, 0.1, rtol=0.06)  # sd of an sd from 4000 draws: 1.1%


def test_f_test_matches_the_classical_f_distribution():
    """F of the treatment on the variables: the restricted/unrestricted residual sums of
    squares of ordinary least squares (with stratum intercepts), and statsmodels."""
    df = units(120, seed=4, n_covariates=3, strata=3)
    tr = trial(df, stratum="stratum")
    check = quiet_check(tr, n_permutations=100, seed=0)
    t = tr.treatment_array.astype(float)
    dummies = pd.get_dummies(df["stratum"]).to_numpy(float)
    full = np.column_stack([dummies, tr.covariate_matrix])

    def rss(x):
        return float(np.sum((t - x @ np.linalg.lstsq(x, t, rcond=None)[0]) ** 2))

    k, resid = 3, 120 - 3 - 3
    f = ((rss(dummies) - rss(full)) / k) / (rss(full) / resid)
    assert check.df == (k, resid)
    assert check.statistic == pytest.approx(f, rel=1e-9)
    assert check.p_value_f == pytest.approx(stats.f.sf(f, k, resid), rel=1e-9)
    sm = pytest.importorskip("statsmodels.api")
    ols = sm.OLS(t, full).fit()
    restriction = np.hstack([np.zeros((k, 3)), np.eye(k)])
    assert check.p_value_f == pytest.approx(float(ols.f_test(restriction).pvalue), rel=1e-8)
    # one variable, no strata: the F test is the t test of the slope (scipy's linregress)
    one = trial(units(80, seed=5, n_covariates=1))
    single = quiet_check(one, n_permutations=100, seed=0)
    slope = stats.linregress(one.covariate_matrix[:, 0], one.treatment_array)
    assert single.p_value_f == pytest.approx(slope.pvalue, rel=1e-9)


def test_randomization_p_value_matches_full_enumeration():
    """10 units, 5 treated: all 252 assignments give the exact randomization p-value."""
    df = units(10, seed=2, n_covariates=2)
    tr = trial(df)
    draws = 20_000
    check = quiet_check(tr, n_permutations=draws, seed=0)
    x = tr.covariate_matrix - tr.covariate_matrix.mean(0)
    q = np.linalg.qr(x)[0]

    def r2(t):
        centred = t - t.mean()
        return np.sum((centred @ q) ** 2) / (centred @ centred)

    observed = r2(tr.treatment_array.astype(float))
    values = []
    for treated in itertools.combinations(range(10), 5):
        t = np.zeros(10)
        t[list(treated)] = 1
        values.append(r2(t))
    exact = np.mean(np.asarray(values) >= observed - 1e-12)
    mc_sd = np.sqrt(exact * (1 - exact) / draws)
    assert abs(check.p_value - exact) < 4 * mc_sd + 1 / draws


def rejection_rate(make, n_trials: int, alpha: float = 0.05) -> float:
    """Share of the trials ``make(seed)`` whose joint randomization p-value is <= alpha."""
    rejected = 0
    for seed in range(n_trials):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", BalanceWarning)
            check = check_randomization(make(seed), n_permutations=199, seed=seed)
        rejected += check.p_value <= alpha
    return rejected / n_trials


def test_rejection_rate_under_true_randomization_is_nominal():
    """Over 300 randomized trials the joint test rejects at 5% about 5% of the time: the
    binomial sd is sqrt(0.05 * 0.95 / 300) = 0.0126, so [0.015, 0.09] is about -3 to +3.5 sd."""
    rate = rejection_rate(lambda s: trial(units(60, seed=100 + s, n_covariates=3)), 300)
    assert 0.015 <= rate <= 0.09


def test_cluster_randomization_is_respected():
    """Whole villages assigned, covariates mostly village-level: re-randomizing villages keeps
    the rejection rate nominal, where treating units as randomized alone would not."""
    make = lambda s: trial(units(200, seed=500 + s, clusters=20), cluster="village")  # noqa: E731
    assert 0.0 <= rejection_rate(make, 120) <= 0.11  # sd 0.02 at 5%
    naive = lambda s: trial(units(200, seed=500 + s, clusters=20))  # noqa: E731
    assert rejection_rate(naive, 120) > 0.25  # ignoring the design: far above 5%


def test_rerandomization_keeps_strata_counts_and_whole_clusters():
    df = units(90, seed=1, strata=3)
    tr = trial(df, stratum="stratum")
    draws = rerandomize(tr, 500, seed=0)
    strata = df["stratum"].to_numpy()
    for s in range(3):
        in_s = strata == s
        assert (draws[:, in_s].sum(axis=1) == tr.treatment_array[in_s].sum()).all()
    assert len({row.tobytes() for row in draws}) > 490  # they do vary
    share = draws.mean(axis=0)  # each unit treated about half the time
    assert np.abs(share - 0.5).max() < 0.1

    cl = units(120, seed=2, clusters=12)
    ctr = trial(cl, cluster="village")
    draws = rerandomize(ctr, 300, seed=0)
    village = cl["village"].to_numpy()
    for v in range(12):
        block = draws[:, village == v]
        assert (block == block[:, :1]).all()  # a village moves as one
    assert (draws.reshape(300, 10, 12)[:, 0, :].sum(axis=1) == 6).all()  # 6 of 12 villages
    assert trial_design(ctr).level == "cluster"


@pytest.mark.parametrize(
    "design", ["one stratum", "strata", "unequal clusters", "unequal clusters in strata"]
)
def test_permuted_smds_are_the_smd_of_each_draw(design):
    """The re-randomizations' SMDs, computed from the randomization groups' totals for all
    draws at once, equal ``smd(x, t, design_weights(t, stratum))`` computed on the units draw
    by draw (the slow obvious way), also where clusters of unequal size make the treated
    share vary between draws and strata."""
    from imgcate.confounding.weights import smd
    from imgcate.rerandomization import design_weights, permuted_smd

    rng = np.random.default_rng(7)
    if design == "one stratum":
        tr = trial(units(150, seed=6))
    elif design == "strata":
        tr = trial(units(150, seed=8, strata=3), stratum="stratum")
    else:
        df = units(150, seed=9, clusters=10)
        df["village"] = rng.integers(0, 10, len(df))  # villages of unequal size
        df["treatment"] = np.isin(df["village"], [0, 1, 4, 7]).astype(int)
        if design == "unequal clusters in strata":
            df["stratum"] = df["village"] % 2  # two treated villages of five in each
            tr = trial(df, cluster="village", stratum="stratum")
        else:
            tr = trial(df, cluster="village")
    plan = trial_design(tr)
    draws = plan.draw(60, np.random.default_rng(1))  # (draw, group)
    on_units = draws[:, plan.group].astype(float)
    if design.startswith("unequal"):  # the treated share varies from draw to draw
        assert plan.level == "cluster" and len({d.sum() for d in on_units}) > 1
    unit_stratum = plan.stratum[plan.group]
    x = tr.covariate_matrix + 5.0  # off centre: the slow way centres nothing
    slow = np.array([smd(x, d, design_weights(d, unit_stratum)) for d in on_units])
    centred = x - x.mean(axis=0)
    sums = np.zeros((len(plan.stratum), x.shape[1]))
    squares = np.zeros_like(sums)
    np.add.at(sums, plan.group, centred)
    np.add.at(squares, plan.group, centred**2)
    sizes = np.bincount(plan.group, minlength=len(plan.stratum))
    fast = permuted_smd(sums, squares, sizes, draws, plan.stratum)
    np.testing.assert_allclose(fast, slow, rtol=1e-10, atol=1e-12)


def test_mixed_clusters_are_said_and_units_permuted():
    df = units(60, seed=3).assign(village=np.arange(60) % 6)  # units randomized, not villages
    tr = trial(df, cluster="village")
    check = quiet_check(tr, n_permutations=200, seed=0)
    assert check.level == "unit" and check.n_groups == 60
    assert any("hold both treated and control units" in note for note in check.notes)
    assert "units were re-randomized" in repr(check)


def test_strata_are_compared_within():
    """Strata with different covariate levels and treated shares: within strata the arms
    balance (raw SMD would not), and one-arm strata are left out."""
    rng = np.random.default_rng(0)
    n = 400
    stratum = np.repeat([0, 1, 2, 3], 100)
    t = np.zeros(n, dtype=int)
    for s, share in zip(range(3), (0.2, 0.5, 0.8), strict=True):
        idx = rng.permutation(np.flatnonzero(stratum == s))
        t[idx[: int(share * 100)]] = 1
    t[stratum == 3] = 1  # a stratum with one arm
    df = pd.DataFrame(
        {
            "id": range(n),
            "lon": rng.uniform(30, 31, n),
            "lat": rng.uniform(0, 1, n),
            "treatment": t,
            "outcome": rng.normal(size=n),
            "stratum": stratum,
            "x0": stratum + rng.normal(size=n),
        }
    )
    naive = balance_table(df[["x0"]].to_numpy(), t)["smd_before"].iloc[0]
    assert abs(naive) > 0.5  # the treated share rises with x0's level across strata
    check = quiet_check(read_units(df, covariates=["x0"], stratum="stratum"), seed=0)
    assert abs(check.table.loc["x0", "smd"]) < 0.35 and not check.implausible
    assert check.n_strata == 3 and check.n_units == 300
    assert any("strata with a single arm" in note for note in check.notes)


def test_covariate_correlated_with_treatment_is_flagged():
    """Correlation 0.5 with the treatment (as in the trial that motivated the check): an SMD
    near 1.15, about 10 randomization sd: flagged, with the variable named."""
    tr = trial(units(300, seed=7, shift=1.15))
    r = np.corrcoef(tr.covariate_matrix[:, 0], tr.treatment_array)[0, 1]
    assert 0.4 < r < 0.6
    with pytest.warns(BalanceWarning, match=r"x0 \(SMD \+1\.\d\d") as record:
        check = check_randomization(tr, seed=0)
    assert check.implausible and check.p_value < 1e-10
    assert check.table.loc["x0", "implausible"] and not check.table.loc["x1", "implausible"]
    text = str(record[0].message)
    assert "treatment column" in text and "propensity=" in text and "x1" not in text


def test_fit_warns_on_implausible_balance():
    """fit checks balance before it samples (here the warning, made an error, stops it there);
    with propensity= the trial is observational and no check runs."""
    sim = simulate_trial(seed=0, n_units=200, n_covariates=1)
    data = sim.trial.data.drop(columns="geometry")
    data["x0"] = data["x0"] + 1.2 * data["treatment"]
    shifted = read_units(data, covariates=["x0"], image_id="image_id")
    with warnings.catch_warnings():
        warnings.simplefilter("error", BalanceWarning)
        with pytest.raises(BalanceWarning, match="imgcate fit: the treatment arms differ") as err:
            imgcate.fit(shifted, sim.embeddings, num_warmup=50, num_samples=50, num_chains=1)
        assert "x0 (SMD +1." in str(err.value) and "propensity=" in str(err.value)
        # a continuous outcome with likelihood="bernoulli" fails after the check, before sampling
        with pytest.raises(InputError, match="needs a 0/1 outcome"):
            imgcate.fit(
                shifted, sim.embeddings, propensity=np.full(200, 0.5), likelihood="bernoulli"
            )


def test_same_seed_same_p_values():
    tr = trial(units(80, seed=9, n_covariates=3))
    a = quiet_check(tr, n_permutations=300, seed=5)
    b = quiet_check(tr, n_permutations=300, seed=5)
    c = quiet_check(tr, n_permutations=300, seed=6)
    assert a.p_value == b.p_value
    pd.testing.assert_frame_equal(a.table, b.table)
    np.testing.assert_array_equal(a.permuted_statistic, b.permuted_statistic)
    assert not np.array_equal(a.permuted_statistic, c.permuted_statistic)


def test_tidy_schema_and_intervals():
    tr = trial(units(200, seed=11, n_covariates=2))
    check = quiet_check(tr, n_permutations=1000, seed=0)
    tidy = check.tidy(prob=0.9)
    assert list(tidy.columns) == ["term", "estimate", "std_err", "5%", "95%", "p_value", "kind"]
    assert list(tidy["term"]) == ["x0", "x1", "joint"]
    # 90% of re-randomized SMDs fall inside the range: about +-1.645 randomization sd
    width = (tidy["95%"] - tidy["5%"])[:2] / tidy["std_err"][:2]
    np.testing.assert_allclose(width, 2 * 1.645, rtol=0.1)
    assert tidy["estimate"].iloc[-1] == check.statistic


def test_principal_components_are_the_svds():
    rng = np.random.default_rng(0)
    for n, d in [(200, 12), (15, 40)]:
        x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
        x[:, 0] = 3.0  # a constant feature is left out
        pcs = principal_components(x, 4)
        z = x[:, 1:] - x[:, 1:].mean(0)  # the covariance's components: centred, not scaled
        u = np.linalg.svd(z, full_matrices=False)[0][:, :4] * np.sqrt(n)
        np.testing.assert_allclose(np.abs(np.sum(pcs * u, axis=0) / n), 1.0, atol=1e-8)
        np.testing.assert_allclose(pcs.std(axis=0), 1.0)


def test_as_many_components_as_features_asked_or_more():
    """Asking for as many components as the embedding has features, or more, gives them all
    (it had failed on the last component's missing successor)."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 4)) @ rng.normal(size=(4, 4))
    for k in (4, 8):
        pcs = principal_components(x, k)
        assert pcs.shape == (300, 4)
        np.testing.assert_allclose(pcs.std(axis=0), 1.0)
    tr = trial(units(300, seed=1))
    check = check_randomization(tr, x, n_components=8, n_permutations=200, seed=0, warn=False)
    assert [name for name in check.table.index if name.startswith("pc")] == [
        "pc1",
        "pc2",
        "pc3",
        "pc4",
    ]


def test_an_arm_of_one_unit_has_no_smd_and_no_p_value():
    """With one treated unit there is no pooled sd: the SMD is NaN, and so is its p-value (not
    the floor 1 / (n + 1) of zero exceedances), so no variable is called implausible."""
    df = units(60, seed=2)
    df["treatment"] = (df["id"] == 0).astype(int)
    check = check_randomization(trial(df), n_permutations=200, seed=0, warn=False)
    assert check.table["smd"].isna().all()
    assert check.table["p_value"].isna().all() and not check.table["implausible"].any()
    assert any("have no SMD" in note for note in check.notes)


def test_components_of_an_encoders_output_do_not_turn_with_rounding():
    """An encoder's PCA output is uncorrelated with decreasing variance: its components are
    its own columns, and a 1e-5 change (the native kernel against the JAX path) leaves them
    (and so the balance check) as they were. Standardizing first made the correlation the
    identity, and the 'components' a rotation picked by rounding."""
    rng = np.random.default_rng(1)
    raw = rng.normal(size=(300, 8)) @ rng.normal(size=(8, 8))
    centred = raw - raw.mean(0)
    scores = centred @ np.linalg.svd(centred, full_matrices=False)[2].T  # PCA output
    nudged = scores + rng.uniform(-2.5e-5, 2.5e-5, scores.shape)
    a, b = principal_components(scores, 3), principal_components(nudged, 3)
    np.testing.assert_allclose(np.abs(a), np.abs(scores[:, :3] / scores[:, :3].std(0)), atol=1e-8)
    np.testing.assert_allclose(np.abs(a), np.abs(b), atol=1e-3)
    # whitened features (every variance 1): no components are identified, the columns are used
    white = scores / scores.std(0)
    np.testing.assert_allclose(
        principal_components(white + 1e-6 * nudged, 3), white[:, :3], atol=1e-4
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.assign(x1=2.5), "covariate 'x1' is constant (2.5 for every unit)"),
        (lambda d: d.assign(x1=d["treatment"]), "covariate 'x1' is (nearly) the treatment"),
        (lambda d: d.assign(x1=1 - d["treatment"]), "covariate 'x1' is (nearly) the treatment"),
        (
            lambda d: d.assign(x1=d["treatment"] + 0.01 * d["x0"]),
            "'treatment' (correlation +1.000)",
        ),
    ],
)
def test_constant_and_treatment_copy_covariates_are_errors(change, message):
    df = change(units(50, seed=0))
    with pytest.raises(InputError) as err:
        read_units(df, covariates=["x0", "x1"])
    assert message in str(err.value) and "drop it from covariates" in str(err.value)
    read_units(df, covariates=["x0"])  # the other covariate is fine
    read_units(df.drop(columns="outcome"), covariates=["x0", "x1"], outcome=None)  # no trial
    with pytest.raises(InputError, match="treatment column 'treatment' is listed among"):
        read_units(units(50, seed=0), covariates=["x0", "treatment"])


def test_input_errors():
    tr = trial(units(40, seed=0, n_covariates=0))
    with pytest.raises(InputError, match="nothing to compare"):
        check_randomization(tr)
    with pytest.raises(InputError, match="40 units"):
        check_randomization(tr, np.zeros((39, 3)))
    with pytest.raises(InputError, match="alpha"):
        check_randomization(tr, np.eye(40)[:, :5], alpha=1.5)
    with pytest.raises(InputError, match="trial must be a Trial"):
        check_randomization(pd.DataFrame())
    for bad in (None, True, "100", 0, 2.5):
        with pytest.raises(InputError, match="n_permutations.*positive integer"):
            check_randomization(tr, np.eye(40)[:, :5], n_permutations=bad)


def test_a_constant_treatment_says_how_to_read_places_to_predict_at():
    """Places without a trial (every unit 'treated', or 0) are refused as a trial, with the
    way to read them as places to predict at, which then works."""
    df = units(50, seed=0).assign(treatment=0)
    with pytest.raises(InputError, match="read them with treatment=None, outcome=None"):
        read_units(df)
    assert read_units(df, treatment=None, outcome=None).n_units == 50
