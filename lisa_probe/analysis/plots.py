"""Seaborn figures from the analysis module's long tables.

Every function returns a ``matplotlib.figure.Figure`` and never shows it. Arms (the ``arm`` column, default the
run: runs that differ only in their seed form one arm) are overlaid on shared axes; error bars are 95 %
t-intervals across an arm's runs where it has several, else across the rows averaged into the point, or
across folds for a point measured once (``arm_points``, ``ERROR_BARS``). Timesteps are drawn as values with the noise direction marked (``NOISE_LABEL``);
small multiples wrap after ``MAX_COLUMNS`` panels. Close figures you
no longer need (``plt.close(fig)``): the figure-level seaborn functions register them with pyplot. The backend is
left to matplotlib (inline in a notebook, Agg without a display), so notebooks show the figures.
"""

from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from lisa_probe.analysis.intervals import t_interval

NOISE_LABEL = "timestep t   (low noise ← → high noise)"
MAX_COLUMNS = 4  # small multiples wrap after this many panels: a figure stays under ~2000 px at the saved dpi
ERROR_BARS = ("error bars: 95 % t-intervals across an arm's runs (seeds) where it has several; with one run, across "
              "the rows averaged into the point, or for a point measured once (a read-out, CKA, the decoder's "
              "alignment) across the sample-grouped cross-validation folds (the table's half column)")


def _select(table: pd.DataFrame, **equal) -> pd.DataFrame:
    """Rows where every named column equals the given value; an error if none has a defined value."""
    mask = np.logical_and.reduce([table[column] == value for column, value in equal.items()])
    selected = table[mask]
    if selected["value"].notna().sum() == 0:
        raise ValueError(f"no rows with {equal}")
    return selected


def arm_points(data: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """Mean and 95 % t-interval of ``value`` per ``arm`` (default: ``run``) and ``keys``: across the arm's runs
    (each run's rows averaged first) where it has several, else across the rows, and for a single row its own
    ``half`` column where the table has one (an interval across folds). Columns ``[arm, *keys, mean, half, n]``."""
    data = data if "arm" in data else data.assign(arm=data["run"])
    rows = []
    for group, part in data.groupby(["arm", *keys], sort=False, dropna=False):
        runs = part.groupby("run", sort=False)["value"].mean()
        mean, half, n = t_interval(runs.to_numpy() if len(runs) > 1 else part["value"].to_numpy())
        if len(part) == 1 and "half" in part:  # one run, one measurement: its own interval across folds
            half = float(part["half"].iloc[0])
        rows.append({**dict(zip(["arm", *keys], group)), "mean": mean, "half": half, "n": n})
    return pd.DataFrame(rows, columns=["arm", *keys, "mean", "half", "n"])


def _panels(n: int, width: float, height: float, ncols: int = MAX_COLUMNS, **kwargs) -> tuple[Figure, np.ndarray]:
    """A figure of ``n`` panels, ``width`` × ``height`` inches each, wrapped after ``ncols`` (at most
    ``MAX_COLUMNS``); unused axes removed; the axes (n,)."""
    ncols = min(ncols, MAX_COLUMNS, n)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False, **kwargs)
    for ax in axes.flat[n:]:
        ax.remove()
    return fig, axes.flat[:n]


def _arm_colors(arms: Sequence[str]) -> dict[str, tuple]:
    return dict(zip(arms, sns.color_palette(n_colors=max(len(arms), 1))))


def _extent(points: pd.DataFrame, low: float, high: float) -> tuple[float, float]:
    """(low, high) widened to the drawn means ± half-widths of ``points`` (NaN ignored)."""
    ends = np.r_[points["mean"] - points["half"].fillna(0), points["mean"] + points["half"].fillna(0)]
    ends = ends[np.isfinite(ends)]
    return (min(low, ends.min()), max(high, ends.max())) if len(ends) else (low, high)


def _with_origin(axes: Sequence, low: float, high: float) -> None:
    """Shared y-limits from ``low``/``high`` that include 0 (the origin a score is read against)."""
    low, high = min(low, 0.0), max(high, 0.0)
    pad = 0.05 * (high - low) or 0.05
    for ax in axes:
        ax.set_ylim(low - pad, high + pad)
        ax.axhline(0, color="0.6", linewidth=0.6, zorder=0)


def plot_alignment_vs_t(table: pd.DataFrame, metric: str = "r2", method: str = "ridge", x: str = "t") -> Figure:
    """``metric`` of ``method`` against the timestep, one panel per site on shared axes, the arms overlaid (one
    colour each; ``arm`` column, default the run), the ``shuffled_pairs`` control dashed in the same panel.

    Points: ``arm_points`` means with 95 % t-interval error bars; a point without a value (NaN, or flagged and set
    to NaN by the caller) is a gap in its line. The y-axis includes 0.
    """
    data = _select(table, metric=metric, method=method)
    controls = list(pd.unique(data["control"])) if "control" in data else [None]
    sites, grid = list(pd.unique(data["site"])), np.sort(pd.unique(data[x]))
    arms = list(pd.unique(data["arm"] if "arm" in data else data["run"]))
    colors = _arm_colors(arms)
    fig, axes = _panels(len(sites), 3.4, 2.8, sharex=True, sharey=True)
    low, high = np.inf, -np.inf
    for ax, site in zip(axes, sites):
        for control in controls:
            part = data[data["site"] == site] if control is None else \
                data[(data["site"] == site) & (data["control"] == control)]
            points = arm_points(part, [x])
            for arm in arms:
                line = points[points["arm"] == arm].set_index(x).reindex(grid)
                dashed = control not in (None, "none")
                ax.errorbar(grid, line["mean"].to_numpy(float), yerr=line["half"].to_numpy(float), color=colors[arm], marker="o", markersize=3,
                            linestyle="--" if dashed else "-", capsize=2, linewidth=1.2,
                            label=f"{arm} · shuffled pairs" if dashed else arm)
                low, high = _extent(line, low, high)
        ax.set_title(site)
    _with_origin(axes, low if np.isfinite(low) else 0.0, high if np.isfinite(high) else 1.0)
    pad = 0.05 * float(grid[-1] - grid[0]) or 1.0
    for ax in axes:
        ax.set_xlim(grid[0] - pad, grid[-1] + pad)  # the whole timestep grid, undefined ends included
        ax.set_xlabel(NOISE_LABEL if ax.get_subplotspec().is_last_row() else "")
        ax.set_ylabel(f"{method} {metric}" if ax.get_subplotspec().is_first_col() else "")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(labels), 4),
               fontsize="small", frameon=False)
    fig.tight_layout()
    return fig


def plot_probe_selectivity(table: pd.DataFrame, metric: str = "selectivity") -> Figure:
    """Bars of ``metric`` per site, the arms side by side, one panel for the factors the condition carries and one
    for those it does not (shared y-axis through 0); error bars as ``arm_points`` (across seeds, else across the
    factors × timestep bins averaged into the bar).

    ``table``: a ``probe_table`` (or any table with ``carried``, ``site``, ``run``, ``metric``, ``value``).
    """
    data = _select(table, metric=metric).dropna(subset=["carried"])
    data = data.assign(carried=data["carried"].astype(bool).map({True: "carried", False: "not carried"}))
    data = data if "site" in data else data.assign(site="")
    sites, arms = list(pd.unique(data["site"])), list(pd.unique(data["arm"] if "arm" in data else data["run"]))
    panels = [flag for flag in ("carried", "not carried") if flag in set(data["carried"])]
    colors, width = _arm_colors(arms), 0.8 / len(arms)
    fig, axes = plt.subplots(1, len(panels), figsize=(min(1.0 + 0.45 * len(sites) * len(arms), 10.0) * len(panels),
                                                      3.2), sharey=True, squeeze=False)
    low, high = 0.0, 0.0
    for ax, flag in zip(axes.flat, panels):
        points = arm_points(data[data["carried"] == flag], ["site"])
        for k, arm in enumerate(arms):
            bars = points[points["arm"] == arm].set_index("site").reindex(sites)
            ax.bar(np.arange(len(sites)) + (k - (len(arms) - 1) / 2) * width, bars["mean"].to_numpy(float), width,
                   yerr=bars["half"].to_numpy(float), color=colors[arm], capsize=2, label=arm)
            low, high = _extent(bars, low, high)
        ax.set_xticks(np.arange(len(sites)), sites, rotation=30 if len(sites) > 4 else 0, ha="right"
                      if len(sites) > 4 else "center")
        ax.set_title(f"{flag} factors")
    _with_origin(axes.flat, low, high)
    axes.flat[0].set_ylabel(metric)
    axes.flat[-1].legend(title="arm", fontsize="small", bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.tight_layout()
    return fig


def plot_umap_grid(embedding: np.ndarray, labels: Mapping[str, np.ndarray], ncols: int = 3,
                   levels: Mapping[str, Sequence[str] | None] | None = None) -> Figure:
    """Scatter plots of a 2-D embedding (N, 2), one panel per ``labels`` entry ``{name: (N,) values}``.

    Float labels get a continuous palette, all others (ints, strings, bools) a categorical one whose legend names
    the categories: ``levels[name][i]`` for class code i where given (a store's ``factors[name]["levels"]``).
    """
    fig, axes = _panels(len(labels), 4.0, 3.6, ncols)
    for ax, (name, values) in zip(axes, labels.items()):
        values = np.asarray(values)
        names = (levels or {}).get(name)
        if np.issubdtype(values.dtype, np.floating):
            hue = values
        elif names is not None:
            hue = pd.Categorical.from_codes(values.astype(np.int64), categories=list(names))
        else:
            hue = pd.Categorical(values)
        sns.scatterplot(x=embedding[:, 0], y=embedding[:, 1], hue=hue, s=8, linewidth=0, ax=ax)
        ax.set(title=name, xticks=[], yticks=[])
        ax.legend(fontsize="x-small", markerscale=0.8, loc="best")
    fig.tight_layout()
    return fig


def _mean_attribution(table: pd.DataFrame, method: str, metric: str, x: str, col: str) -> pd.Series:
    """Mean ``value`` per (col, site, x) of the selected rows, sites in order of appearance."""
    data = _select(table, method=method, metric=metric)
    return data.groupby([col, "site", x], sort=False)["value"].mean()


def _t_ticks(ax, values: Sequence[float], axis: str = "x") -> None:
    """Tick labels of the timestep values at the centres of their cells, and the noise-level axis label."""
    labels = [f"{value:g}" for value in values]
    if axis == "x":
        ax.set_xticks(np.arange(len(values)), labels)
        ax.set_xlabel(NOISE_LABEL)
    else:
        ax.set_yticks(np.arange(len(values)), labels)


def plot_decomposition_heatmap(
    table: pd.DataFrame, method: str = "integrated_gradients", metric: str = "attribution", x: str = "t",
    col: str = "run",
) -> Figure:
    """Heatmaps of the mean attribution, site (rows) × timestep (columns, low to high noise), one panel per
    ``col`` value (wrapped), one shared zero-centred colour scale (its colour bar spans the panels).

    ``table``: ``decomposition_table`` outputs with ``x`` and ``col`` columns.
    """
    means = _mean_attribution(table, method, metric, x, col)
    panels, sites = pd.unique(means.index.get_level_values(col)), list(pd.unique(means.index.get_level_values("site")))
    grid_t = np.sort(pd.unique(means.index.get_level_values(x)))
    limit = float(np.nanmax(np.abs(means))) or 1.0
    fig, axes = _panels(len(panels), max(2.6, 0.55 * len(grid_t) + 1.0), 0.35 * len(sites) + 1.6, sharey=True,
                        layout="constrained")
    for ax, panel in zip(axes, panels):
        grid = means.loc[panel].unstack(x).reindex(index=sites, columns=grid_t)
        image = ax.imshow(grid.to_numpy(), cmap="vlag", vmin=-limit, vmax=limit, aspect="auto")
        _t_ticks(ax, grid_t)
        ax.set_yticks(np.arange(len(sites)), sites)
        ax.set_title(f"{panel}")
    fig.colorbar(image, ax=list(axes), label=f"{method} {metric}", shrink=0.8)
    return fig


def plot_decomposition_bars(
    table: pd.DataFrame, method: str = "integrated_gradients", metric: str = "attribution", x: str = "t",
    col: str = "run",
) -> Figure:
    """Stacked bars of the mean attribution per site against the timestep, one panel per ``col`` value (wrapped,
    shared y-axis). Positive and negative contributions stack on their own side of zero."""
    means = _mean_attribution(table, method, metric, x, col)
    panels, sites = pd.unique(means.index.get_level_values(col)), pd.unique(means.index.get_level_values("site"))
    fig, axes = _panels(len(panels), 4.0, 3.4, sharey=True)
    colors = sns.color_palette(n_colors=len(sites))
    for ax, panel in zip(axes, panels):
        bars = means.loc[panel].unstack("site").reindex(columns=sites).sort_index()
        bars.plot.bar(stacked=True, ax=ax, color=colors, width=0.8, legend=False, rot=0)
        ax.axhline(0, color="black", linewidth=0.8)
        _t_ticks(ax, bars.index)
        ax.set(title=f"{panel}", ylabel=f"{method} {metric}")
    axes[-1].legend(title="site", fontsize="x-small", bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.tight_layout()
    return fig


def plot_training_curves(metrics: pd.DataFrame, convergence_steps: Mapping[str, float] | None = None) -> Figure:
    """Training curves, one panel per metric (wrapped), the arms overlaid (``arm`` column, default the run; the
    mean across an arm's runs with a 95 % t-interval band where it has several); dashed vertical lines at the
    runs' convergence steps. A metric with fewer than two finite points in every run has no panel (one point is
    no curve); the metrics are drawn as given, so compare the LISA run's ``diffusion_loss``, not its ``loss``
    (which adds λ·LISA loss).

    Args:
        metrics: long table with columns ``run, step, metric, value`` (optionally ``arm``).
        convergence_steps: ``{run: step}`` marked in every panel in the run's arm's colour.
    """
    metrics = metrics if "arm" in metrics else metrics.assign(arm=metrics["run"])
    finite = metrics[np.isfinite(metrics["value"].astype(float))]
    counts = finite.groupby(["metric", "run"])["step"].nunique().groupby("metric").max()
    shown = [name for name in pd.unique(metrics["metric"]) if counts.get(name, 0) >= 2]
    if not shown:
        raise ValueError("no metric has two or more finite points in any run")
    arms = list(pd.unique(metrics["arm"]))
    colors = _arm_colors(arms)
    arm_of = dict(zip(metrics["run"], metrics["arm"]))
    fig, axes = _panels(len(shown), 3.6, 2.8, sharex=True)
    for ax, name in zip(axes, shown):
        points = arm_points(finite[finite["metric"] == name], ["step"]).sort_values("step")
        for arm in arms:
            line = points[points["arm"] == arm]
            ax.plot(line["step"], line["mean"], color=colors[arm], marker="o", markersize=2.5, label=arm)
            ax.fill_between(line["step"], line["mean"] - line["half"], line["mean"] + line["half"],
                            color=colors[arm], alpha=0.2, linewidth=0)
        for run, step in (convergence_steps or {}).items():
            ax.axvline(step, color=colors[arm_of.get(run, arms[0])], linestyle="--", linewidth=1)
        ax.set(title=name, xlabel="step")
    axes[-1].legend(title="arm", fontsize="small", bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.tight_layout()
    return fig


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
