"""Figures of an onset study (``study.run_study``), each from the study's own tables:

* ``plot_onset_fits``: control fidelity vs step per arm, the seeds' mean with a 95% bootstrap band, each run's fitted
  logistic (``onset.logistic``) and the arm's mean ``t50`` with its CI;
* ``plot_t50_vs_lr``: ``t50`` against the learning rate on log–log axes with the fitted slope (−1: t50 ∝ 1/lr);
* ``plot_probe_signals``: the onset probe (explained share, cosine to the oracle likelihood score) and the side
  branch's residual and zero-module weight norms vs step, per arm.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from lisa_probe.study.onset import logistic
from lisa_probe.study.tables import control_curves

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PROBE_PANELS = (("probe/explained", "explained share of the prior's error"),
                ("probe/cosine", "cosine(model, oracle likelihood score)"),
                ("probe/residual_norm", "residual norm (sum over sites)"),
                ("probe/zero_weight_norm", "zero-module weight norm (sum over sites)"))


def _pyplot():
    import matplotlib.pyplot as plt

    return plt


def _grid(n: int, plt, width: float = 3.2, height: float = 2.6):
    columns = min(n, 4)
    rows = -(-n // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows), squeeze=False)
    for extra in axes.flat[n:]:
        extra.set_visible(False)
    return figure, list(axes.flat)


def plot_onset_fits(control: pd.DataFrame, onsets: pd.DataFrame, summary: pd.DataFrame, path: Path) -> Figure:
    """One panel per (setting, arm): evaluations (mean over seeds, band: min–max over seeds), each run's fitted
    logistic, and the arm's mean t50 (dashed) with its bootstrap CI (shaded).

    Args:
        control: long control-fidelity curves (run, setting, arm, seed, step, value).
        onsets: ``study.onset_table`` (run, t50, width, low, high, ...).
        summary: ``study.onset_summary`` (setting, arm, t50, t50_ci_low, t50_ci_high, ...).
    """
    plt = _pyplot()
    panels = sorted(set(zip(control["setting"], control["arm"])))
    figure, axes = _grid(len(panels), plt)
    fits = onsets.set_index("run")
    for ax, (setting, arm) in zip(axes, panels):
        data = control[(control["setting"] == setting) & (control["arm"] == arm)]
        by_step = data.groupby("step")["value"]
        ax.fill_between(by_step.min().index, by_step.min(), by_step.max(), alpha=0.2, color="C0")
        ax.plot(by_step.mean().index, by_step.mean(), "o", ms=3, color="C0", label="evaluations (mean)")
        for run in data["run"].unique():
            fit = fits.loc[run]
            if np.isfinite(fit["t50"]):
                steps = np.linspace(0, data["step"].max(), 200)
                ax.plot(steps, logistic(steps, fit["t50"], fit["width"], fit["low"], fit["high"]), color="C1", lw=1)
        row = summary[(summary["setting"] == setting) & (summary["arm"] == arm)]
        if len(row) and np.isfinite(row["t50"].iloc[0]):
            ax.axvline(row["t50"].iloc[0], color="k", ls="--", lw=1)
            if np.isfinite(row["t50_ci_low"].iloc[0]):
                ax.axvspan(row["t50_ci_low"].iloc[0], row["t50_ci_high"].iloc[0], color="k", alpha=0.1)
        onset_count = f"{int(row['n_onset'].iloc[0])}/{int(row['n_runs'].iloc[0])} with onset" if len(row) else ""
        ax.set_title(f"{arm} ({onset_count})", fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel(data["metric"].iloc[0] if "metric" in data else "control fidelity")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return figure


def lr_slope(sweep: pd.DataFrame) -> float:
    """Least-squares slope of log t50 on log lr over the runs of ``sweep`` (lr, t50) with an onset (NaN with fewer
    than two distinct learning rates)."""
    found = sweep[np.isfinite(sweep["t50"])]
    if found["lr"].nunique() < 2:
        return float("nan")
    return float(np.polyfit(np.log(found["lr"]), np.log(found["t50"]), 1)[0])


def plot_t50_vs_lr(sweep: pd.DataFrame, path: Path) -> Figure:
    """t50 of every run of ``sweep`` (lr, t50, arm) on log–log axes, with the fitted line and its slope and a
    slope −1 reference through the geometric mean."""
    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(4, 3.2))
    found = sweep[np.isfinite(sweep["t50"])]
    ax.loglog(found["lr"], found["t50"], "o", label="runs")
    slope = lr_slope(sweep)
    if np.isfinite(slope):
        lrs = np.geomspace(found["lr"].min(), found["lr"].max(), 20)
        centre_lr, centre_t = np.exp(np.log(found["lr"]).mean()), np.exp(np.log(found["t50"]).mean())
        ax.loglog(lrs, centre_t * (lrs / centre_lr) ** slope, "-", label=f"fit: slope {slope:.2f}")
        ax.loglog(lrs, centre_t * (lrs / centre_lr) ** -1.0, ":", color="gray", label="slope −1 (t50 ∝ 1/lr)")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("onset t50 (steps)")
    ax.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return figure


def plot_probe_signals(probes: pd.DataFrame, path: Path) -> Figure:
    """The onset probe and the norms vs step, one line per arm (mean over seeds); per-site norms are summed.

    Args:
        probes: long table (run, setting, arm, seed, step, metric, value) of ``metrics.csv``'s ``probe/*`` columns.
    """
    plt = _pyplot()
    figure, axes = _grid(len(PROBE_PANELS), plt, width=3.6)
    for ax, (prefix, label) in zip(axes, PROBE_PANELS):
        exact = probes["metric"] == prefix
        data = probes[exact] if exact.any() else probes[probes["metric"].str.startswith(prefix + "/")]
        per_run = data.groupby(["arm", "run", "step"])["value"].sum().reset_index()
        for arm, group in per_run.groupby("arm"):
            mean = group.groupby("step")["value"].mean()
            ax.plot(mean.index, mean.to_numpy(), label=arm, lw=1)
        ax.set_xlabel("step")
        ax.set_title(label, fontsize=9)
    axes[0].legend(fontsize=6)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return figure


def plot_curves(curves: pd.DataFrame, runs: pd.DataFrame, path: Path) -> None:
    """Control fidelity vs step, one panel per setting, mean and 95% CI over seeds per arm."""
    import seaborn as sns

    data = control_curves(curves, runs)
    if data.empty:
        return
    grid = sns.relplot(data=data, x="step", y="value", hue="arm", col="setting", kind="line",
                       errorbar=("ci", 95), facet_kws={"sharex": False}, height=3)
    grid.set_ylabels("control fidelity")
    grid.savefig(path, dpi=120)
