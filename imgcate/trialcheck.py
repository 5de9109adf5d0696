"""Trial checks: is the balance of a randomized trial what randomization gives?

A randomized trial balances every pre-treatment variable up to chance. :func:`check_randomization`
compares the arms on the trial's covariates and on the leading principal components of its
images' embedding, variable by variable (standardized mean differences, as
:func:`imgcate.confounding.balance_table`) and jointly (an F test of the treatment on all of
them), and asks how often re-randomizing as the design did (within strata, by whole clusters)
gives arms at least as different.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from imgcate.confounding.weights import smd, weighted_mean
from imgcate.embeddings import Embeddings, unit_embeddings
from imgcate.errors import BalanceWarning, InputError
from imgcate.intervals import quantiles, tidy_table
from imgcate.moments import (
    GatheredRows,
    affine_rows,
    column_moments,
    is_large,
    leading_eigenvectors,
)
from imgcate.rerandomization import (
    Design,
    as_trial,
    design_weights,
    permuted_smd,
    trial_design,
)
from imgcate.units import Trial
from imgcate.validation import check_positive_int, check_prob, seed_int


@dataclass(frozen=True, eq=False)
class RandomizationCheck:
    """Balance of a trial's arms against what its randomization gives.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per variable (index: covariate names, then ``pc1``, ``pc2``, ... for the
        embedding's principal components). Columns ``kind`` (covariate or embedding),
        ``mean_control``, ``mean_treated``, ``smd`` (standardized mean difference as
        :func:`imgcate.confounding.balance_table`; within strata, each stratum weighted by its
        size), ``z`` (the SMD in standard deviations of its re-randomization distribution),
        ``p_value`` (two-sided randomization p-value of the SMD) and ``implausible`` (p_value
        below ``alpha`` divided by the number of variables).
    statistic : float
        The joint F statistic: the treatment regressed on all variables (within strata), at the
        level of randomization (cluster means in a cluster-randomized trial).
    df : tuple of int
        Its degrees of freedom (variables, residual).
    p_value : float
        Joint randomization p-value: the share of re-randomizations whose F is at least the
        observed one, counting the observed assignment, ``(1 + count) / (n_permutations + 1)``.
        When no re-randomization reaches it, the F distribution's tail, at most
        ``1 / (n_permutations + 1)``; the per-variable ``p_value`` likewise, with the normal
        tail of ``z``.
    p_value_f : float
        The classical F test's p-value (NaN without residual degrees of freedom).
    n_permutations : int
        Re-randomizations drawn.
    alpha : float
        Level at which balance is called implausible (see :attr:`implausible`).
    level : {"unit", "cluster"}
        What was re-randomized.
    n_units, n_groups, n_strata : int
        Units, randomization units and strata compared (strata with a single arm are left out).
    notes : tuple of str
        Where the check departed from the declared design or left something out.
    permuted_smd : ndarray (permutation, variable)
        SMD of every variable under each re-randomization.
    permuted_statistic : ndarray (permutation,)
        F under each re-randomization.
    """

    table: pd.DataFrame
    statistic: float
    df: tuple[int, int]
    p_value: float
    p_value_f: float
    n_permutations: int
    alpha: float
    level: str
    n_units: int
    n_groups: int
    n_strata: int
    notes: tuple[str, ...]
    permuted_smd: np.ndarray
    permuted_statistic: np.ndarray

    @property
    def implausible(self) -> bool:
        """Balance is implausible for a randomized design: the joint p-value is below
        ``alpha``, or some variable's is below ``alpha`` over the number of variables."""
        return bool(self.p_value < self.alpha or self.table["implausible"].any())

    def worst(self, n: int = 3) -> pd.DataFrame:
        """The ``n`` rows of :attr:`table` least like randomization (largest ``|z|``)."""
        order = self.table["z"].abs().sort_values(ascending=False, na_position="last").index
        return self.table.loc[order[:n]]

    def tidy(self, prob: float = 0.95) -> pd.DataFrame:
        """The tidy schema: one row per variable, then one for the joint test.

        ``estimate`` is the SMD (the F statistic on the ``joint`` row), ``std_err`` its standard
        deviation over re-randomizations, the interval columns (named by percentile) the
        central ``prob`` range of its re-randomization distribution: where randomization puts
        it; then ``p_value`` and ``kind``.
        """
        lo, hi = quantiles(self.permuted_smd, prob)
        f_lo, f_hi = quantiles(self.permuted_statistic, prob)
        return tidy_table(
            [*self.table.index, "joint"],
            [*self.table["smd"], self.statistic],
            [*np.nanstd(self.permuted_smd, axis=0), np.nan],
            [*lo, f_lo],
            [*hi, f_hi],
            prob,
            p_value=[*self.table["p_value"], self.p_value],
            kind=[*self.table["kind"], "joint F"],
        )

    def message(self) -> str:
        """What is wrong and what to do, as the :class:`~imgcate.errors.BalanceWarning` says."""
        flagged = self.table[self.table["implausible"]]
        rows = self.worst(3) if flagged.empty else flagged.loc[flagged["z"].abs().nlargest(3).index]
        worst = ", ".join(
            f"{name} (SMD {row.smd:+.2f}, {abs(row.z):.1f} randomization sd, p = {row.p_value:.2g})"
            for name, row in rows.iterrows()
        )
        return (
            f"the treatment arms differ more than randomization allows ({self._design_text()}): "
            f"joint F test over {self.df[0]} variables p = {self.p_value:.2g} "
            f"({self.n_permutations} re-randomizations); largest differences: {worst}. Check "
            "the treatment column and the declared design (stratum=, cluster=); if assignment "
            "was not random, analyse the trial as observational: fit(trial, embeddings, "
            "propensity=...) with scores from imgcate.confounding.estimate_propensity. "
            "imgcate.check_randomization(trial, embeddings) gives the whole balance table."
        )

    def _design_text(self) -> str:
        strata = f" within {self.n_strata} strata" if self.n_strata > 1 else ""
        if self.level == "cluster":
            return f"{self.n_units} units in {self.n_groups} clusters randomized whole{strata}"
        return f"{self.n_units} units randomized individually{strata}"

    def _lines(self) -> list[str]:
        worst = self.worst(1)
        lines = [
            f"design: {self._design_text()}",
            f"joint: F = {self.statistic:.3g} on ({self.df[0]}, {self.df[1]}) df, randomization "
            f"p = {self.p_value:.3g} ({self.n_permutations} draws), F-test p = "
            f"{self.p_value_f:.3g}",
        ]
        if len(worst):
            row = worst.iloc[0]
            lines.append(
                f"largest: {worst.index[0]} SMD {row['smd']:+.3f} (z = {row['z']:.2f}, "
                f"p = {row['p_value']:.3g})"
            )
        verdict = "IMPLAUSIBLE for a randomized design" if self.implausible else "plausible"
        lines.append(f"balance: {verdict} (alpha = {self.alpha:g})")
        return lines + [f"note: {note}" for note in self.notes]

    def summary(self) -> str:
        """The headline (design, joint test, largest difference, verdict) and the table."""
        return "\n".join(self._lines()) + "\n\n" + self.table.to_string(float_format="%.3g")

    def __repr__(self) -> str:
        return "RandomizationCheck(\n" + "\n".join(f"  {x}" for x in self._lines()) + "\n)"


def check_randomization(
    trial: Trial,
    embeddings: Embeddings | GatheredRows | np.ndarray | None = None,
    *,
    n_components: int = 8,
    n_permutations: int = 2000,
    seed: int = 0,
    alpha: float = 0.01,
    warn: bool = True,
) -> RandomizationCheck:
    """Balance of a randomized trial's arms on its covariates and embedding, tested jointly.

    Compares the arms on every covariate and on the leading principal components of the
    embedding (standardized mean differences, within strata when the trial has a stratum
    column), and tests them jointly: the F statistic of the treatment regressed on all of them
    (with stratum intercepts), at the level of randomization (cluster means when whole
    clusters were assigned). Its randomization p-value re-randomizes as the design did:
    permuting the treatment within strata, and whole clusters' assignments when the trial has
    a cluster column whose clusters each have a single arm (otherwise units, with a note).
    Strata with a single arm carry no comparison and are left out.

    Parameters
    ----------
    trial : Trial
        The trial (treatment, covariates, and its stratum and cluster columns if set).
    embeddings : Embeddings, GatheredRows or ndarray, optional
        The embeddings of the trial's images (matched through ``trial.image_keys``; a plain
        array or :class:`~imgcate.moments.GatheredRows` is one row per unit). Without them
        only covariates are compared.
    n_components : int
        Leading principal components of the embedding to compare (of its covariance; see
        :func:`principal_components`); 0 for none.
    n_permutations : int
        Re-randomizations drawn.
    seed : int
        Random seed; the same seed gives the same p-values.
    alpha : float
        Balance is implausible when the joint p-value is below ``alpha`` or some variable's is
        below ``alpha`` over the number of variables (Bonferroni).
    warn : bool
        Warn (:class:`~imgcate.errors.BalanceWarning`) when balance is implausible.

    Returns
    -------
    RandomizationCheck
        ``table`` (variable rows), the joint ``statistic``, ``p_value``, ``p_value_f``,
        ``implausible``, ``tidy()``, ``summary()``.

    Raises
    ------
    InputError
        When there is nothing to compare (no covariates and no embeddings; only constant
        variables), no stratum holds both arms, or the embeddings do not match the trial.

    Warns
    -----
    BalanceWarning
        When balance is implausible for a randomized design (and ``warn``).

    Examples
    --------
    >>> from imgcate.simulate import simulate_trial
    >>> sim = simulate_trial(seed=0, n_units=200, n_covariates=2)
    >>> check = check_randomization(sim.trial, sim.embeddings, n_components=3, seed=0)
    >>> list(check.table.index), check.implausible
    (['x0', 'x1', 'pc1', 'pc2', 'pc3'], False)
    """
    trial = as_trial(trial)
    n_components = int(n_components)
    if n_components < 0:
        raise InputError(f"n_components={n_components} must be 0 or more.")
    n_permutations = check_positive_int("n_permutations", n_permutations)
    alpha = check_prob(alpha, "alpha")
    rng = np.random.default_rng(seed_int(seed))
    if not trial.covariates and (embeddings is None or n_components == 0):
        raise InputError(
            "nothing to compare: the trial has no covariates; pass embeddings= (the embeddings "
            "of its images) or read the units with covariates=[...]."
        )
    variables, kinds = _variables(trial, embeddings, n_components)
    design = trial_design(trial)
    result = _check(variables, kinds, design, n_permutations, rng, alpha)
    if warn and result.implausible:
        warnings.warn(result.message(), BalanceWarning, stacklevel=2)
    return result


#: Relative gap between eigenvalues below which principal components are not identified.
TIED_EIGENVALUES = 1e-3


def principal_components(values: np.ndarray | GatheredRows, n_components: int) -> np.ndarray:
    """Leading principal components of the columns of ``values`` (unit, feature), scaled to
    unit variance, shape (unit, component); columns without variance are left out. Signs are
    fixed: each component's largest loading is positive.

    The components are those of the covariance, not of the correlation: embedding features
    share one scale (an encoder's output), and an encoder's PCA output is uncorrelated, so its
    correlation matrix is the identity and its "components" would be whatever rotation
    rounding picks (the same trial then passed or failed the balance check by 1e-5 changes
    in the embedding). Where the leading eigenvalues are tied (whitened features), the
    components are not identified either; the columns themselves are used, largest variance
    first (the first columns on a tie).
    """
    if not isinstance(values, GatheredRows):  # read a chunk at a time where large
        values = np.asarray(values, dtype=float)
    if is_large(values) and values.shape[1] <= len(values):
        return _components_from_moments(values, n_components)
    x = np.asarray(values, dtype=float)
    sd = x.std(axis=0)
    keep = sd > 1e-12 * np.maximum(1.0, np.abs(x.mean(axis=0)))
    z = x[:, keep] - x[:, keep].mean(axis=0)
    n = len(z)
    if z.shape[1] == 0 or n < 2:
        return np.zeros((n, 0))
    # eigenvectors of the smaller Gram matrix: a fraction of an SVD's cost for n >> feature
    wide = z.shape[1] > n
    eigval, eigvec = np.linalg.eigh(z @ z.T if wide else z.T @ z)
    eigval, eigvec = eigval[::-1], eigvec[:, ::-1]
    k, tied = _kept_components(eigval, n_components)
    if tied:
        order = _by_variance(z.std(axis=0))[:k]
        return z[:, order] / z[:, order].std(axis=0)
    loadings = z.T @ eigvec[:, :k] if wide else eigvec[:, :k]
    signs = np.sign(loadings[np.abs(loadings).argmax(axis=0), np.arange(k)])
    scores = eigvec[:, :k] * np.sqrt(eigval[:k]) if wide else z @ eigvec[:, :k]
    return scores * signs / np.sqrt(eigval[:k] / n)


def _kept_components(eigval: np.ndarray, n_components: int) -> tuple[int, bool]:
    """How many leading components (eigenvalues descending) to compare, and whether any of
    them ties with its successor (then the components are not identified)."""
    k = min(n_components, int((eigval > 1e-10 * eigval[0]).sum()))
    following = np.append(eigval, 0.0)[1 : k + 1]  # the last kept component has no successor
    gaps = eigval[:k] - following
    return k, bool(len(gaps) and (gaps <= TIED_EIGENVALUES * eigval[0]).any())


def _by_variance(sd: np.ndarray) -> np.ndarray:
    """Columns by decreasing sd, the first columns first where sds tie to 9 digits (whitened
    features: rounding alone would order them)."""
    return np.argsort(-np.round(sd / sd.max(), 9), kind="stable")


def _components_from_moments(x: np.ndarray, n_components: int) -> np.ndarray:
    """:func:`principal_components` of a large array from its columns' moments
    (:mod:`imgcate.moments`): the same components, computed a chunk of rows at a time."""
    moments = column_moments(x)
    n, sd = moments.n, moments.sd
    keep = sd > 1e-12 * np.maximum(1.0, np.abs(moments.mean))
    if not keep.any() or n < 2:
        return np.zeros((n, 0))
    cov = moments.cov[np.ix_(keep, keep)]
    eigval, eigvec = leading_eigenvectors(cov * n)  # of z'z, as the direct computation
    k, tied = _kept_components(eigval, n_components)
    columns = np.flatnonzero(keep)
    if tied:
        order = _by_variance(sd[keep])[:k]
        pick = np.zeros((x.shape[1], k))
        pick[columns[order], np.arange(k)] = 1.0 / sd[keep][order]
        return affine_rows(x, moments.mean, 1.0, pick)
    rotation = np.zeros((x.shape[1], k))
    rotation[columns] = eigvec[:, :k] / np.sqrt(eigval[:k] / n)
    return affine_rows(x, moments.mean, 1.0, rotation)


def _variables(
    trial: Trial, embeddings: Embeddings | GatheredRows | np.ndarray | None, n_components: int
) -> tuple[pd.DataFrame, list[str]]:
    """The variables compared (unit, variable) and the kind of each."""
    frame = pd.DataFrame(trial.covariate_matrix, columns=list(trial.covariates))
    kinds = ["covariate"] * len(trial.covariates)
    if embeddings is not None and n_components:
        pcs = principal_components(unit_embeddings(embeddings, trial), n_components)
        for j in range(pcs.shape[1]):
            name = f"pc{j + 1}"
            frame[name if name not in frame else f"{name} (embedding)"] = pcs[:, j]
            kinds.append("embedding")
    return frame, kinds


def _randomization_p(count: np.ndarray, n_permutations: int, tail: np.ndarray) -> np.ndarray:
    """``(1 + count) / (n + 1)``; where no draw reached the observed value, the classical
    ``tail`` p-value, capped at ``1 / (n + 1)``."""
    floor = 1.0 / (n_permutations + 1)
    tail = np.where(np.isnan(tail), floor, np.minimum(tail, floor))
    return np.where(count > 0, (1.0 + count) * floor, tail)


def _check(
    variables: pd.DataFrame,
    kinds: list[str],
    design: Design,
    n_permutations: int,
    rng: np.random.Generator,
    alpha: float,
) -> RandomizationCheck:
    informative = design.informative()
    kept = informative[design.unit_stratum]
    notes = list(design.notes)
    if not kept.any():
        raise InputError(
            "no stratum holds both treated and control units, so randomization left nothing "
            "to compare; check the treatment and stratum columns."
        )
    if not informative.all():
        notes.append(
            f"{int((~informative).sum())} strata with a single arm ({int((~kept).sum())} units) "
            "were left out"
        )
    x_all = variables.to_numpy(dtype=float)[kept]
    varies = np.ptp(x_all, axis=0) > 0
    if not varies.all():
        notes.append(f"constant variables {list(variables.columns[~varies])} were left out")
    if not varies.any():
        raise InputError(
            f"every variable compared ({list(variables.columns)}) is constant over the units "
            "compared; give covariates or embeddings that vary."
        )
    names = list(variables.columns[varies])
    kinds = [k for k, v in zip(kinds, varies, strict=True) if v]
    x = x_all[:, varies]
    groups = np.unique(design.group[kept], return_inverse=True)[1].reshape(-1)
    g_kept = informative[design.stratum]
    g_stratum = np.unique(design.stratum[g_kept], return_inverse=True)[1].reshape(-1)
    u_stratum = g_stratum[groups]
    g_treatment = design.treatment[g_kept]
    with warnings.catch_warnings():  # an arm of one unit has no sd: NaN, said in a note
        warnings.simplefilter("ignore", RuntimeWarning)
        table = _balance_table(x, names, kinds, g_treatment[groups].astype(float), u_stratum)
    if table["smd"].isna().any():
        notes.append(
            f"{list(table.index[table['smd'].isna()])} have no SMD (an arm with fewer than two "
            "units, or no spread within the arms), hence no p-value"
        )
    # each randomization unit's totals of its units' values, once: the SMDs' and the F
    # test's permutations work on them (centred: neither moves with a shift)
    centred = x - x.mean(axis=0)
    sums, squares = _group_sums(centred, groups), _group_sums(centred**2, groups)
    sizes = np.bincount(groups)
    basis, t_mean, df = _joint_basis(sums / sizes[:, None], g_treatment, g_stratum)
    smd_draws, r2_draws = [], []
    block = max(1, 2**22 // len(design.stratum))  # bounds memory: about 32 MB of draws
    for start in range(0, n_permutations, block):
        draws = design.draw(min(block, n_permutations - start), rng)[:, g_kept]
        smd_draws.append(permuted_smd(sums, squares, sizes, draws, g_stratum))
        r2_draws.append(_r2(draws, basis, t_mean))
    smd_draws, r2_draws = np.concatenate(smd_draws), np.concatenate(r2_draws)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        table = _per_variable_p(table, smd_draws, n_permutations, alpha)
    r2 = float(_r2(g_treatment[None], basis, t_mean)[0])
    f = float(_f(r2, df))
    p_f = float(stats.f.sf(f, *df)) if not np.isnan(f) else float("nan")
    count = int((r2_draws >= r2 * (1 - 1e-9) - 1e-12).sum())
    return RandomizationCheck(
        table=table,
        statistic=f,
        df=df,
        p_value=float(_randomization_p(np.array(count), n_permutations, np.array(p_f))),
        p_value_f=p_f,
        n_permutations=n_permutations,
        alpha=alpha,
        level=design.level,
        n_units=int(kept.sum()),
        n_groups=int(g_kept.sum()),
        n_strata=int(informative.sum()),
        notes=tuple(notes),
        permuted_smd=smd_draws,
        permuted_statistic=_f(r2_draws, df),
    )


def _balance_table(
    x: np.ndarray, names: list[str], kinds: list[str], t: np.ndarray, stratum: np.ndarray
) -> pd.DataFrame:
    """Means by arm (each stratum weighted by its size) and SMD of each variable."""
    w = design_weights(t, stratum)
    return pd.DataFrame(
        {
            "kind": kinds,
            "mean_control": weighted_mean(x[t == 0], w[t == 0]),
            "mean_treated": weighted_mean(x[t == 1], w[t == 1]),
            "smd": smd(x, t, w),
        },
        index=pd.Index(names, name="variable"),
    )


def _per_variable_p(
    table: pd.DataFrame, permuted_smd: np.ndarray, n_permutations: int, alpha: float
) -> pd.DataFrame:
    observed = table["smd"].to_numpy()
    spread = np.nanstd(permuted_smd, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(spread > 0, observed / spread, 0.0)
    count = (np.abs(permuted_smd) >= np.abs(observed) * (1 - 1e-9) - 1e-12).sum(axis=0)
    p = _randomization_p(count, n_permutations, 2 * stats.norm.sf(np.abs(z)))
    # no SMD (an arm with one unit: no sd): no p-value, not a count of zero exceedances
    z, p = np.where(np.isnan(observed), np.nan, z), np.where(np.isnan(observed), np.nan, p)
    return table.assign(z=z, p_value=p, implausible=p < alpha / len(table))


def _group_sums(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Sums of the rows of ``values`` (unit, variable) by group code (group, variable)."""
    return np.stack([np.bincount(groups, weights=v) for v in values.T], axis=1)


def _joint_basis(
    xg: np.ndarray, treatment: np.ndarray, stratum: np.ndarray
) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """For the F test of the treatment on the variables with stratum intercepts, over the
    randomization units, given the means of their units' variables ``xg`` (group, variable):
    an orthonormal basis of the variables within strata (group, rank), the treatment's
    stratum means (group,) and the F test's df. Within a stratum every re-randomization has
    the observed number of treated units, so the same stratum means."""
    xg = xg - _stratum_means(xg, stratum)
    u, s, _ = np.linalg.svd(xg, full_matrices=False)
    rank = int((s > 1e-10 * s[0]).sum()) if s.size and s[0] > 0 else 0
    t_mean = _stratum_means(treatment.astype(float)[:, None], stratum)[:, 0]
    return u[:, :rank], t_mean, (rank, len(xg) - int(stratum.max()) - 1 - rank)


def _r2(draws: np.ndarray, basis: np.ndarray, t_mean: np.ndarray) -> np.ndarray:
    """R2 of each assignment (draw, group) on the basis, within strata (draw,)."""
    centred = draws - t_mean
    return np.sum((centred @ basis) ** 2, axis=1) / np.sum(centred**2, axis=1)


def _stratum_means(values: np.ndarray, stratum: np.ndarray) -> np.ndarray:
    return (_group_sums(values, stratum) / np.bincount(stratum)[:, None])[stratum]


def _f(r2: float | np.ndarray, df: tuple[int, int]) -> np.ndarray:
    """F from R2: ``(R2 / df1) / ((1 - R2) / df2)``; NaN without (residual) df."""
    r2 = np.asarray(r2, dtype=float)
    if df[0] < 1 or df[1] < 1:
        return np.full(r2.shape, np.nan)
    with np.errstate(divide="ignore"):
        return r2 / df[0] / (np.maximum(1.0 - r2, 0.0) / df[1])
