"""Figures of the confounding module: overlap, Love plot, sensitivity contours."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from imgcate.confounding import (  # noqa: E402
    balance_table,
    confounding_sensitivity,
    plot_love,
)


def test_plots_draw_what_they_say(fitted, sim):
    ps, _ = fitted
    fig, axes = plt.subplots(1, 3)
    ax = ps.plot_overlap(ax=axes[0])
    assert ax.get_xlabel() == "propensity"
    assert len(ax.patches) == 60  # 30 bins per arm
    table = balance_table(sim.features, sim.treatment, weights=ps)
    ax = plot_love(table, ax=axes[1])
    assert len(ax.collections) == 2 and len(ax.get_yticks()) == table.shape[0]
    res = confounding_sensitivity(sim.outcome, sim.treatment, sim.features[:, :4], benchmark=0)
    ax = res.plot_contour(ax=axes[2])
    assert len(ax.lines) == 1 + len(res.bounds)  # unadjusted point + one per benchmark bound
    plt.close(fig)
