"""Sensitivity to unobserved confounding (Cinelli & Hazlett 2020): how strong a hidden
confounder would have to be to change the conclusion, benchmarked against observed covariates."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from imgcate.errors import InputError, SensitivityWarning
from imgcate.intervals import interval_names, normal_interval, tidy_table
from imgcate.optional import axes
from imgcate.validation import (
    as_features,
    as_float_array,
    as_treatment,
    check_lengths,
    check_prob,
)


def robustness_value(t_stat: float, dof: int, q: float = 1.0, prob: float | None = None) -> float:
    """Robustness value RV_q (or RV_{q,alpha}) of Cinelli & Hazlett (2020).

    The minimum partial R-squared that a confounder must have with both treatment and outcome to
    reduce the estimate by ``100 q`` percent (or, with ``prob``, to make the reduced estimate's
    central ``prob`` interval cover zero: insignificant at level ``alpha = 1 - prob``). With
    ``f_q = q |t| / sqrt(dof)``: ``RV_q = (sqrt(f_q^4 + 4 f_q^2) - f_q^2) / 2``; for
    RV_{q,alpha}, ``f_q`` is replaced by
    ``f_q - |t*_{alpha/2, dof-1}| / sqrt(dof - 1)`` (0 when negative; when
    ``f_q > 1 / f_crit`` the unconstrained solution ``(f_q^2 - f_crit^2) / (1 + f_q^2)`` applies).

    Parameters
    ----------
    t_stat : float
        t-statistic of the treatment coefficient.
    dof : int
        Residual degrees of freedom of the regression.
    q : float
        Fraction of the estimate to explain away (1 = bring it to zero).
    prob : float, optional
        Interval probability ``1 - alpha`` for RV_{q,alpha} (0.95 for alpha = 0.05).

    Returns
    -------
    float
        In [0, 1].

    Examples
    --------
    >>> round(robustness_value(4.18445, 783), 4)
    0.1388
    """
    if q <= 0:
        raise InputError(f"q={q!r} must be positive.")
    fq = q * abs(t_stat) / np.sqrt(dof)
    if prob is None:
        return float(0.5 * (np.sqrt(fq**4 + 4 * fq**2) - fq**2))
    f_crit = stats.t.ppf(0.5 + check_prob(prob) / 2, dof - 1) / np.sqrt(dof - 1)
    fqa = fq - f_crit
    if fqa <= 0:
        return 0.0
    if fq > 1 / f_crit:
        return float((fq**2 - f_crit**2) / (1 + fq**2))
    return float(0.5 * (np.sqrt(fqa**4 + 4 * fqa**2) - fqa**2))


def _ols(y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Coefficients, classical standard errors and residual dof of y on x (x has the constant)."""
    coef, _, rank, _ = np.linalg.lstsq(x, y, rcond=None)
    dof = len(y) - x.shape[1]
    if rank < x.shape[1]:
        raise InputError(
            "the covariates are collinear with each other or the treatment; drop redundant ones."
        )
    if dof < 2:
        raise InputError(f"too few units ({len(y)}) for {x.shape[1] - 1} regressors.")
    resid = y - x @ coef
    sigma2 = resid @ resid / dof
    se = np.sqrt(sigma2 * np.diag(np.linalg.inv(x.T @ x)))
    return coef, se, dof


def partial_r2(t_stat: Any, dof: float) -> Any:
    """Partial R2 of a regressor from its t-statistic: ``t^2 / (t^2 + dof)``.

    With a regression summary's t-value of a covariate and the residual degrees of freedom, this
    is the covariate's partial R2 with the regression's outcome given the other regressors
    (Cinelli & Hazlett 2020, sec. 4.5), the input of a benchmark.

    Parameters
    ----------
    t_stat : float or array-like
        t-statistic(s).
    dof : float
        Residual degrees of freedom of that regression.

    Returns
    -------
    float or numpy.ndarray

    Examples
    --------
    >>> round(partial_r2(4.18445, 783), 5)
    0.02187
    """
    t_stat = np.asarray(t_stat, dtype=float)
    out = t_stat**2 / (t_stat**2 + dof)
    return float(out) if out.ndim == 0 else out


def _largest_kd(r2dxj: float) -> float:
    """The kd at which a confounder kd times as strong as covariate j would explain all of the
    treatment (R2_{D~Z|X} = 1); every possible kd lies below it."""
    return (1 - r2dxj) / r2dxj if r2dxj > 0 else np.inf


def _benchmark_bound(
    r2dxj: float, r2yxj: float, kd: float, ky: float
) -> tuple[float, float, bool] | None:
    """(R2_{D~Z|X}, R2_{Y~Z|D,X}, capped) of a confounder kd/ky times as strong as covariate j,
    or None when no such confounder can exist (kd at or above :func:`_largest_kd`).

    As sensemakr: an implied R2_{D~Z|X} (or R2_{Z~Xj}) of 1 or more is impossible; an implied
    R2_{Y~Z|D,X} above 1 is set to 1 and flagged.
    """
    if not kd < _largest_kd(r2dxj):
        return None
    r2dz = kd * r2dxj / (1 - r2dxj)
    r2zxj = kd * r2dxj**2 / ((1 - kd * r2dxj) * (1 - r2dxj))
    r2yz = ((np.sqrt(ky) + np.sqrt(r2zxj)) / np.sqrt(1 - r2zxj)) ** 2 * r2yxj / (1 - r2yxj)
    return float(r2dz), float(min(r2yz, 1.0)), bool(r2yz > 1)


def _impossible_message(name: str, r2dxj: float, kds: Sequence[float]) -> str:
    listed = ", ".join(f"{k:g}" for k in kds)
    return (
        f"kd={listed} is impossible for benchmark {name!r}: a confounder that many times as "
        f"strong as {name!r} would explain all of the treatment (R2_D~Z|X = "
        f"{max(kds) * r2dxj / (1 - r2dxj):.3g}). The largest possible kd is just below "
        f"{_largest_kd(r2dxj):.3g}."
    )


def _adjusted(
    estimate: float, se: float, dof: int, r2dz: Any, r2yz: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Estimate and standard error after removing the bias of a confounder (r2dz, r2yz)."""
    r2dz, r2yz = np.asarray(r2dz, dtype=float), np.asarray(r2yz, dtype=float)
    bias = se * np.sqrt(dof) * np.sqrt(r2yz * r2dz / (1 - r2dz))
    adj = np.sign(estimate) * (abs(estimate) - bias)
    adj_se = se * np.sqrt(dof / (dof - 1)) * np.sqrt((1 - r2yz) / (1 - r2dz))
    return adj, adj_se


@dataclass(frozen=True)
class ConfoundingSensitivity:
    """Sensitivity of an OLS treatment effect to an unobserved confounder Z.

    Attributes
    ----------
    estimate, std_err, t_stat : float
        Treatment coefficient of ``outcome ~ 1 + treatment + covariates``, its classical
        standard error and t-statistic.
    dof : int
        Residual degrees of freedom.
    partial_r2 : float
        R2_{Y~D|X}: share of residual outcome variance explained by the treatment; also the
        smallest R2_{D~Z|X} that a confounder explaining all the outcome residual needs to
        explain the effect away.
    rv_q, rv_qa : float
        Robustness values RV_q and RV_{q,alpha} (alpha = 1 - prob).
    q, prob : float
        The fraction of the estimate to explain away and the interval probability.
    bounds : pandas.DataFrame
        One row per (benchmark, kd): ``benchmark``, ``kd``, ``ky``, ``r2dz_x``, ``r2yz_dx``,
        ``capped`` (True where the implied ``r2yz_dx`` exceeded 1 and was set to 1, as
        sensemakr does: such a confounder would explain all the outcome's residual variance,
        so the adjusted standard error is 0 and the interval has no width; lower kd/ky),
        ``impossible`` (True where no confounder kd times as strong as the benchmark can
        exist, because it would explain all of the treatment; the row's R2 values and
        adjusted figures are then NaN), ``adjusted_estimate``, ``adjusted_se``,
        ``adjusted_t`` and the adjusted estimate's central ``prob`` interval, named by
        percentile (``adjusted_2.5%``, ``adjusted_97.5%`` for ``prob=0.95``).
    """

    estimate: float
    std_err: float
    t_stat: float
    dof: int
    partial_r2: float
    rv_q: float
    rv_qa: float
    q: float
    prob: float
    bounds: pd.DataFrame

    def summary(self) -> pd.DataFrame:
        """One-row DataFrame of the estimate and its sensitivity statistics.

        Returns
        -------
        pandas.DataFrame
            Columns ``estimate``, ``std_err``, ``t_stat``, ``dof``, ``partial_r2_yd_x``,
            ``rv_q``, ``rv_qa``, ``q``, ``prob``; index ``treatment``.
        """
        row = {
            "estimate": self.estimate,
            "std_err": self.std_err,
            "t_stat": self.t_stat,
            "dof": self.dof,
            "partial_r2_yd_x": self.partial_r2,
            "rv_q": self.rv_q,
            "rv_qa": self.rv_qa,
            "q": self.q,
            "prob": self.prob,
        }
        return pd.DataFrame([row], index=["treatment"])

    def tidy(self) -> pd.DataFrame:
        """The unadjusted treatment coefficient in the tidy schema: ``term`` ("treatment"),
        ``estimate``, ``std_err``, its central ``prob`` t interval (``dof`` degrees of freedom)
        named by percentile, then ``t_stat``, ``dof``, ``rv_q``, ``rv_qa``."""
        lower, upper = normal_interval(self.estimate, self.std_err, self.prob, df=self.dof)
        return tidy_table(
            ["treatment"],
            self.estimate,
            self.std_err,
            lower,
            upper,
            self.prob,
            t_stat=[self.t_stat],
            dof=[self.dof],
            rv_q=[self.rv_q],
            rv_qa=[self.rv_qa],
        )

    def adjusted_estimate(self, r2dz_x: Any, r2yz_dx: Any) -> np.ndarray:
        """Estimate after removing the bias of a confounder with the given partial R2 values."""
        return _adjusted(self.estimate, self.std_err, self.dof, r2dz_x, r2yz_dx)[0]

    def plot_contour(self, ax: Any = None, lim: float | None = None, levels: int = 12) -> Any:
        """Contours of the adjusted estimate over confounder strength, with benchmarks.

        Parameters
        ----------
        ax : matplotlib.axes.Axes, optional
            Axes to draw on.
        lim : float, optional
            Upper limit of both axes (partial R2); default covers the benchmarks.
        levels : int
            Number of contour levels.

        Returns
        -------
        matplotlib.axes.Axes
        """
        ax = axes(ax)
        finite = self.bounds[["r2dz_x", "r2yz_dx"]].to_numpy(dtype=float)
        finite = finite[np.isfinite(finite).all(axis=1)]
        if lim is None:
            top = finite.max() * 1.2 if len(finite) else 0.0
            lim = float(min(max(0.4, top), 0.99))
        grid = np.linspace(0, lim, 101)
        dz, yz = np.meshgrid(grid, grid)
        adj = self.adjusted_estimate(dz, yz)
        cs = ax.contour(dz, yz, adj, levels=levels, colors="black", linewidths=0.8)
        ax.clabel(cs, fontsize=7)
        if adj.min() < 0 < adj.max() or adj.min() <= 0:
            ax.contour(dz, yz, adj, levels=[0.0], colors="red", linestyles="--", linewidths=1.5)
        ax.plot(0, 0, marker="^", color="black")
        ax.annotate(f"unadjusted ({self.estimate:.3g})", (0, 0), fontsize=8)
        for row in self.bounds.itertuples():
            if np.isfinite(row.r2dz_x) and np.isfinite(row.r2yz_dx):
                ax.plot(row.r2dz_x, row.r2yz_dx, marker="D", color="red")
                ax.annotate(
                    f"{row.kd:g}x {row.benchmark} ({row.adjusted_estimate:.3g})",
                    (row.r2dz_x, row.r2yz_dx),
                    fontsize=8,
                )
        ax.set_xlabel("partial R² of confounder with treatment (R²_{D~Z|X})")
        ax.set_ylabel("partial R² of confounder with outcome (R²_{Y~Z|D,X})")
        ax.set_xlim(0, lim)
        ax.set_ylim(0, lim)
        return ax


def _benchmark_positions(benchmark: Any, names: Sequence[str]) -> list[int]:
    if benchmark is None:
        return []
    items = [benchmark] if isinstance(benchmark, str | int | np.integer) else list(benchmark)
    positions = []
    for b in items:
        if isinstance(b, str):
            if b not in names:
                raise InputError(f"benchmark {b!r} is not a covariate name; use one of {names}.")
            positions.append(list(names).index(b))
        elif 0 <= int(b) < len(names):
            positions.append(int(b))
        else:
            raise InputError(f"benchmark {b!r} is not a covariate position (0..{len(names) - 1}).")
    return positions


def confounding_sensitivity(
    outcome: Any,
    treatment: Any,
    covariates: Any,
    *,
    benchmark: str | int | Sequence[str | int] | None = None,
    names: Sequence[str] | None = None,
    q: float = 1.0,
    prob: float = 0.95,
    kd: float | Sequence[float] = (1, 2, 3),
    ky: float | Sequence[float] | None = None,
) -> ConfoundingSensitivity:
    """Sensitivity of the OLS treatment effect to unobserved confounding (Cinelli & Hazlett 2020).

    Fits ``outcome ~ 1 + treatment + covariates`` by OLS and reports the treatment's partial R2,
    the robustness values RV_q and RV_{q,alpha}, and, for each benchmark covariate X_j and
    multiplier kd, the strength of a confounder "kd times as strong as X_j" (from X_j's partial
    R2 with the treatment given the other covariates, and with the outcome given treatment and the
    other covariates) together with the estimate adjusted for such a confounder.

    With images, ``covariates`` should hold the image features (the embedding) as well as the
    tabular covariates: the treatment coefficient is then adjusted for what the image shows, as
    the IPW and AIPW estimates are, and the benchmarks ask how much a confounder as strong as
    an observed feature would move *that* estimate. Leaving the embedding out analyses an
    estimate that is still confounded by the image.

    Parameters
    ----------
    outcome : array-like
        Shape (unit,).
    treatment : array-like
        Shape (unit,), binary 0/1.
    covariates : array-like
        Shape (unit, covariate): observed controls (covariates and/or embedding features).
    benchmark : str, int or sequence, optional
        Covariate(s) to benchmark against, by name (with ``names``) or position.
    names : sequence of str, optional
        Covariate names; default ``covariate_0``, ...
    q : float
        Fraction of the estimate to be explained away (1 = bring it to zero).
    prob : float
        Probability of the adjusted intervals; RV_{q,alpha} uses ``alpha = 1 - prob``.
    kd : float or sequence of float
        Multipliers of the benchmark's association with the treatment. A kd is possible for
        benchmark X_j only below ``(1 - R2_{D~Xj|X-j}) / R2_{D~Xj|X-j}``: a strong benchmark
        (an image feature that nearly predicts treatment) allows only small kd.
    ky : float or sequence of float, optional
        Multipliers of its association with the outcome; default equal to ``kd``.

    Returns
    -------
    ConfoundingSensitivity
        With ``summary()``, ``tidy()``, ``bounds`` and ``plot_contour()``.

    Raises
    ------
    InputError
        On non-binary treatment, mismatched lengths, collinear covariates, unknown benchmarks,
        or a single kd so large that the confounder would explain all of the treatment.

    Warns
    -----
    SensitivityWarning
        When a bound's implied R2_{Y~Z|D,X} exceeds 1 and is capped at 1 (exactly when
        sensemakr warns); the row's ``capped`` is True. And when, of several kd, some are
        impossible for a benchmark (sensemakr raises): the message names them and the
        largest possible kd, and those rows have ``impossible`` True and NaN bounds.

    Examples
    --------
    >>> sim = simulate_confounded(seed=0, n_units=300)
    >>> res = confounding_sensitivity(sim.outcome, sim.treatment, sim.features[:, :3],
    ...                               benchmark=0)
    >>> res.bounds.shape[0]
    3
    """
    prob = check_prob(prob)
    y = as_float_array("outcome", outcome, ndim=1)
    t = as_treatment(treatment)
    x = as_features(covariates, "covariates")
    n = check_lengths(outcome=y, treatment=t, covariates=x)
    names = [f"covariate_{j}" for j in range(x.shape[1])] if names is None else list(names)
    if len(names) != x.shape[1]:
        raise InputError(f"names has {len(names)} entries but covariates has {x.shape[1]} columns.")
    constant = [name for name, span in zip(names, np.ptp(x, axis=0), strict=True) if span == 0]
    if constant:
        raise InputError(
            f"covariates {constant} are constant (the regression has its intercept already); "
            "drop them."
        )
    positions = _benchmark_positions(benchmark, names)
    const = np.ones((n, 1))
    coef, se, dof = _ols(y, np.hstack([const, t[:, None], x]))
    benchmarks = {}
    if positions:
        coef_d, se_d, dof_d = _ols(t, np.hstack([const, x]))
        t_y, t_d = coef[2:] / se[2:], coef_d[1:] / se_d[1:]
        for j in positions:
            benchmarks[names[j]] = (partial_r2(t_d[j], dof_d), partial_r2(t_y[j], dof))
    return confounding_sensitivity_from_summary(
        float(coef[1]), float(se[1]), dof, benchmarks=benchmarks, q=q, prob=prob, kd=kd, ky=ky
    )


def confounding_sensitivity_from_summary(
    estimate: float,
    std_err: float,
    dof: int,
    *,
    benchmarks: Mapping[str, tuple[float, float]] | None = None,
    q: float = 1.0,
    prob: float = 0.95,
    kd: float | Sequence[float] = (1, 2, 3),
    ky: float | Sequence[float] | None = None,
) -> ConfoundingSensitivity:
    """The same sensitivity analysis from a regression's summary instead of its data.

    What :func:`confounding_sensitivity` computes from the data, from the treatment's estimate,
    standard error and residual degrees of freedom in ``outcome ~ 1 + treatment + covariates``,
    and each benchmark covariate's partial R2s (from the t-values a regression summary prints,
    with :func:`partial_r2`), as sensemakr's ``sensemakr(estimate=, se=, dof=, r2dxj.x=,
    r2yxj.dx=)`` does. Useful to analyse a published table, or a model fitted elsewhere.

    Parameters
    ----------
    estimate, std_err : float
        The treatment coefficient and its (classical OLS) standard error.
    dof : int
        Residual degrees of freedom of the outcome regression.
    benchmarks : mapping of str to (float, float), optional
        For each benchmark covariate X_j: ``(R2_{D~Xj|X-j}, R2_{Y~Xj|D,X-j})``, its partial R2
        with the treatment given the other covariates (``partial_r2`` of its t-value in the
        regression of the treatment on the covariates, with that regression's dof) and with the
        outcome given the treatment and the other covariates (its t-value in the outcome
        regression, with ``dof``).
    q, prob, kd, ky
        As in :func:`confounding_sensitivity`.

    Returns
    -------
    ConfoundingSensitivity

    Raises
    ------
    InputError
        On a non-positive standard error or dof below 2, partial R2 outside [0, 1), or a
        single kd that is impossible for a benchmark.

    Warns
    -----
    SensitivityWarning
        When a bound's implied R2_{Y~Z|D,X} exceeds 1 (it is capped at 1 and flagged), or
        some of several kd are impossible for a benchmark (NaN rows, ``impossible`` True).

    Examples
    --------
    >>> res = confounding_sensitivity_from_summary(
    ...     0.0973, 0.0233, 783, benchmarks={"female": (0.00908, 0.109)}, kd=1)
    >>> round(float(res.bounds["adjusted_estimate"].iloc[0]), 3)
    0.075
    """
    prob = check_prob(prob)
    if not std_err > 0 or not dof >= 2:
        raise InputError(
            f"std_err={std_err!r} must be positive and dof={dof!r} at least 2 (the residual "
            "degrees of freedom of the outcome regression)."
        )
    kds = np.atleast_1d(np.asarray(kd, dtype=float))
    kys = kds if ky is None else np.broadcast_to(np.asarray(ky, dtype=float), kds.shape)
    if (kds <= 0).any() or (kys <= 0).any():
        raise InputError(f"kd={kd!r} and ky={ky!r} must be positive multipliers.")
    lo_name, hi_name = (f"adjusted_{name}" for name in interval_names(prob))
    rows, capped_rows, impossible = [], [], []
    for name, (r2dxj, r2yxj) in (benchmarks or {}).items():
        if not (0 <= r2dxj < 1 and 0 <= r2yxj < 1):
            raise InputError(
                f"benchmark {name!r}: partial R2 values ({r2dxj!r}, {r2yxj!r}) must lie in "
                "[0, 1); compute them with partial_r2(t_value, dof)."
            )
        too_strong = [k for k in kds if not k < _largest_kd(r2dxj)]
        if too_strong and len(kds) == 1:
            raise InputError(_impossible_message(name, r2dxj, too_strong) + " Use a smaller kd.")
        if too_strong:
            impossible.append(_impossible_message(name, r2dxj, too_strong))
        for k_d, k_y in zip(kds, kys, strict=True):
            bound = _benchmark_bound(r2dxj, r2yxj, k_d, k_y)
            if bound is not None and bound[2]:
                capped_rows.append(f"{k_d:g}x/{k_y:g}x {name}")
            row = {"benchmark": name, "kd": k_d, "ky": k_y}
            rows.append(row | _bound_columns(estimate, std_err, dof, bound, prob))
    _warn_about(capped_rows, impossible)
    columns = [
        "benchmark",
        "kd",
        "ky",
        "r2dz_x",
        "r2yz_dx",
        "capped",
        "impossible",
        "adjusted_estimate",
        "adjusted_se",
        "adjusted_t",
        lo_name,
        hi_name,
    ]
    t_stat = estimate / std_err
    return ConfoundingSensitivity(
        estimate=float(estimate),
        std_err=float(std_err),
        t_stat=float(t_stat),
        dof=int(dof),
        partial_r2=float(partial_r2(t_stat, dof)),
        rv_q=robustness_value(t_stat, dof, q),
        rv_qa=robustness_value(t_stat, dof, q, prob),
        q=float(q),
        prob=prob,
        bounds=pd.DataFrame(rows, columns=columns),
    )


def _bound_columns(
    estimate: float,
    std_err: float,
    dof: int,
    bound: tuple[float, float, bool] | None,
    prob: float,
) -> dict[str, Any]:
    """The bounds row's columns after ``kd``/``ky``: NaN for an impossible confounder."""
    lo_name, hi_name = (f"adjusted_{name}" for name in interval_names(prob))
    if bound is None:
        nan = float("nan")
        values = dict.fromkeys(["r2dz_x", "r2yz_dx", "adjusted_estimate", "adjusted_se"], nan)
        values |= {"adjusted_t": nan, lo_name: nan, hi_name: nan}
        return {**values, "capped": False, "impossible": True}
    r2dz, r2yz, capped = bound
    adj, adj_se = _adjusted(estimate, std_err, dof, r2dz, r2yz)
    with np.errstate(divide="ignore", invalid="ignore"):
        adj_t = adj / adj_se  # r2yz_dx = 1 leaves no residual: se 0, t infinite
    # as sensemakr (ovb_bounds): t quantile with the regression's dof
    lower, upper = normal_interval(adj, adj_se, prob, df=dof)
    return {
        "r2dz_x": r2dz,
        "r2yz_dx": r2yz,
        "capped": capped,
        "impossible": False,
        "adjusted_estimate": float(adj),
        "adjusted_se": float(adj_se),
        "adjusted_t": float(adj_t),
        lo_name: float(lower),
        hi_name: float(upper),
    }


def _warn_about(capped_rows: list[str], impossible: list[str]) -> None:
    """One SensitivityWarning for the capped rows, one for the impossible ones."""
    if capped_rows:
        warnings.warn(
            f"Implied bound on r2yz_dx greater than 1 for {', '.join(capped_rows)}: set to 1 "
            "(rows with capped=True), where the adjusted standard error is 0 and the interval "
            "has no width. Such a confounder would explain all the outcome's residual "
            "variance; try lower kd and/or ky.",
            SensitivityWarning,
            stacklevel=3,
        )
    if impossible:
        warnings.warn(
            " ".join(impossible) + " Those rows have impossible=True and NaN bounds; drop "
            "them or use smaller kd.",
            SensitivityWarning,
            stacklevel=3,
        )
