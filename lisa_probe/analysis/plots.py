"""Seaborn figures from the analysis module's long tables.

Every function returns a ``matplotlib.figure.Figure`` and never shows it; error bars are 95 % bootstrap
confidence intervals over the rows averaged into a point (seeds, samples, factors ...). Close figures you
no longer need (``plt.close(fig)``): the figure-level seaborn functions register them with pyplot. The backend is
left to matplotlib (inline in a notebook, Agg without a display), so notebooks show the figures.
"""

from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

CI = ("ci", 95)


def _select(table: pd.DataFrame, **equal) -> pd.DataFrame:
    """Rows where every named column equals the given value and the value is defined (NaN measurements, e.g. DCI
    disentanglement of codes that predict no factor, are not drawn); an error if none is left."""
    mask = np.logical_and.reduce([table[column] == value for column, value in equal.items()])
    selected = table[mask & table["value"].notna()]
    if selected.empty:
        raise ValueError(f"no rows with {equal}")
    return selected


def plot_alignment_vs_t(
    table: pd.DataFrame, metric: str = "r2", method: str = "ridge", x: str = "t_bin", col: str = "run"
) -> Figure:
    """Lines of ``metric`` of ``method`` against ``x``, one colour per site, one panel per ``col``.

    ``table``: an alignment table (``readout_table``, ``decoder_alignment_table`` ...) with columns ``x``,
    ``site`` and ``col``; the ``control`` column, if present, sets the line style (shuffled pairs dashed).
    """
    data = _select(table, metric=metric, method=method)
    style = "control" if "control" in data else None
    grid = sns.relplot(
        data=data, x=x, y="value", hue="site", style=style, col=col, kind="line", marker="o", errorbar=CI
    )
    grid.set_ylabels(f"{method} {metric}")
    return grid.figure


def plot_probe_selectivity(table: pd.DataFrame, metric: str = "selectivity", col: str | None = None) -> Figure:
    """Bars of ``metric`` for carried vs not-carried factors, one colour per run (CI over factors and rows).

    ``table``: a ``probe_table`` (or any table with ``carried``, ``run``, ``metric``, ``value``).
    """
    data = _select(table, metric=metric).dropna(subset=["carried"])
    data = data.assign(carried=data["carried"].astype(bool).map({True: "carried", False: "not carried"}))
    grid = sns.catplot(
        data=data, x="carried", y="value", hue="run", col=col, kind="bar", order=["carried", "not carried"], errorbar=CI
    )
    grid.set_axis_labels("", metric)
    return grid.figure


def plot_umap_grid(embedding: np.ndarray, labels: Mapping[str, np.ndarray], ncols: int = 3) -> Figure:
    """Scatter plots of a 2-D embedding (N, 2), one panel per ``labels`` entry ``{name: (N,) values}``.

    Float labels get a continuous palette, all others (ints, strings, bools) a categorical one.
    """
    ncols = min(ncols, len(labels))
    nrows = -(-len(labels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 3.6 * nrows), squeeze=False)
    for ax, (name, values) in zip(axes.flat, labels.items()):
        values = np.asarray(values)
        hue = values if np.issubdtype(values.dtype, np.floating) else pd.Categorical(values)
        sns.scatterplot(x=embedding[:, 0], y=embedding[:, 1], hue=hue, s=8, linewidth=0, ax=ax)
        ax.set(title=name, xticks=[], yticks=[])
        ax.legend(fontsize="x-small", markerscale=0.8, loc="best")
    for ax in axes.flat[len(labels) :]:
        ax.remove()
    fig.tight_layout()
    return fig


def _mean_attribution(table: pd.DataFrame, method: str, metric: str, x: str, col: str) -> pd.Series:
    """Mean ``value`` per (col, site, x) of the selected rows, sites in order of appearance."""
    data = _select(table, method=method, metric=metric)
    return data.groupby([col, "site", x], sort=False)["value"].mean()


def plot_decomposition_heatmap(
    table: pd.DataFrame,
    method: str = "integrated_gradients",
    metric: str = "attribution",
    x: str = "t_bin",
    col: str = "run",
) -> Figure:
    """Heatmaps of the mean attribution, site (rows) × ``x`` (columns), one panel per ``col`` value.

    ``table``: ``decomposition_table`` outputs with ``x`` and ``col`` columns. One shared, zero-centred colour
    scale (its colour bar is the last axes).
    """
    means = _mean_attribution(table, method, metric, x, col)
    panels, sites = pd.unique(means.index.get_level_values(col)), pd.unique(means.index.get_level_values("site"))
    limit = float(np.abs(means).max()) or 1.0
    fig, axes = plt.subplots(
        1, len(panels) + 1, figsize=(4 * len(panels) + 0.6, 0.4 * len(sites) + 2),
        gridspec_kw={"width_ratios": [1] * len(panels) + [0.06]},
    )
    for ax, panel in zip(axes[:-1], panels):
        grid = means.loc[panel].unstack(x).reindex(sites).sort_index(axis=1)
        sns.heatmap(grid, ax=ax, cmap="vlag", center=0, vmin=-limit, vmax=limit, cbar_ax=axes[-1])
        ax.set_title(f"{col} = {panel}")
    axes[-1].set_ylabel(f"{method} {metric}")
    fig.tight_layout()
    return fig


def plot_decomposition_bars(
    table: pd.DataFrame,
    method: str = "integrated_gradients",
    metric: str = "attribution",
    x: str = "t_bin",
    col: str = "run",
) -> Figure:
    """Stacked bars of the mean attribution per site against ``x``, one panel per ``col`` value.

    Positive and negative contributions stack on their own side of zero.
    """
    means = _mean_attribution(table, method, metric, x, col)
    panels, sites = pd.unique(means.index.get_level_values(col)), pd.unique(means.index.get_level_values("site"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), sharey=True, squeeze=False)
    colors = sns.color_palette(n_colors=len(sites))
    for ax, panel in zip(axes.flat, panels):
        bars = means.loc[panel].unstack("site").reindex(columns=sites).sort_index()
        bars.plot.bar(stacked=True, ax=ax, color=colors, width=0.8, legend=False)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set(title=f"{col} = {panel}", xlabel=x, ylabel=f"{method} {metric}")
    axes.flat[-1].legend(title="site", fontsize="x-small", bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.tight_layout()
    return fig


def plot_training_curves(metrics: pd.DataFrame, convergence_steps: Mapping[str, float] | None = None) -> Figure:
    """Training curves, one panel per metric, one colour per run; dashed vertical lines at convergence steps.

    Args:
        metrics: long table with columns ``run, step, metric, value`` (repeated runs of a ``run`` name give CIs).
        convergence_steps: ``{run: step}`` marked in every panel in the run's colour.
    """
    runs = pd.unique(metrics["run"])
    palette = dict(zip(runs, sns.color_palette(n_colors=len(runs))))
    n_metrics = metrics["metric"].nunique()
    grid = sns.relplot(
        data=metrics, x="step", y="value", hue="run", col="metric", col_wrap=min(3, n_metrics), kind="line",
        palette=palette, errorbar=CI, facet_kws={"sharey": False},
    )
    for ax in grid.axes.flat:
        for run, step in (convergence_steps or {}).items():
            ax.axvline(step, color=palette[run], linestyle="--", linewidth=1)
    return grid.figure


class Figures:
    """Saves figures under ``<out>/figures`` and remembers them by report section."""

    def __init__(self, out: Path) -> None:
        self.out, self.sections = out, defaultdict(list)
        (out / "figures").mkdir(parents=True, exist_ok=True)

    def save(self, section: str, name: str, figure: Figure, caption: str) -> None:
        """Write ``figures/<name>.png``, close the figure and list it under ``section`` with ``caption``."""
        path = Path("figures") / f"{name}.png"
        figure.savefig(self.out / path, dpi=90, bbox_inches="tight")
        plt.close(figure)
        self.sections[section].append((caption, path.as_posix()))
