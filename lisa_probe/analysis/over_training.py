"""Features over training: how a side net's hooked features change across the checkpoints of one run, from a store
written by ``extract --ckpt RUN --checkpoints all`` (a block of the same rows per checkpoint, ``meta/step``).

Per checkpoint and site, on the mean-pooled features of that block's rows: ``alignment_r2`` (grouped
cross-validated ridge R² of the pooled model estimate ``pred_full − pred_main`` from the features), ``probe/<factor>``
(R² of a ridge probe for a continuous factor, accuracy of a logistic one for a categorical factor, the same folds)
and ``cka_to_final`` (linear CKA with the same rows' features at the last checkpoint: 1 once the representation has
settled). The run's fitted onset of control ``t50`` is drawn on the curves by the command line when it is known —
the representational side of the sudden onset.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from lisa_probe.analysis.alignment import linear_cka, ridge_readout
from lisa_probe.store import FeatureStore


def step_blocks(store: FeatureStore) -> dict[int, np.ndarray]:
    """``{step: its rows (increasing)}`` of a store with ``meta/step`` (ValueError for one without)."""
    if "meta/step" not in store.layout:
        raise ValueError(f"{store.paths[0]} has no meta/step: extract it with --ckpt RUN --checkpoints all")
    steps = store.read("meta/step")
    return {int(step): np.flatnonzero(steps == step) for step in np.unique(steps)}


def probe_score(X: np.ndarray, y: np.ndarray, kind: str, groups: np.ndarray, n_splits: int) -> float:
    """Grouped cross-validated R² (continuous) or accuracy (categorical) of a linear probe of ``y`` from ``X``."""
    if kind != "categorical":
        return ridge_readout(X, y, groups, n_splits=n_splits)
    if len(np.unique(y)) < 2:
        return float("nan")
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    return float(cross_val_score(model, X, y, groups=groups, cv=GroupKFold(n_splits)).mean())


def over_training_table(store: FeatureStore, sites: Sequence[str] | None = None, n_splits: int = 5) -> pd.DataFrame:
    """Long table ``[step, site, metric, value]`` (module docstring) over every checkpoint block of ``store``."""
    blocks = step_blocks(store)
    sites = list(sites or store.sites)
    final = max(blocks)
    last = {site: store.read(f"features/{site}", blocks[final], pool="mean") for site in sites}
    rows = []
    for step, block in blocks.items():
        meta = store.read_meta(block)
        groups = meta["sample_id"].to_numpy()
        estimate = store.read("scores/full", block, pool="mean") - store.read("scores/main", block, pool="mean")
        for site in sites:
            X = store.read(f"features/{site}", block, pool="mean")
            measured = {"alignment_r2": ridge_readout(X, estimate, groups, n_splits=n_splits),
                        "cka_to_final": linear_cka(X, last[site])}
            for name, spec in store.factors.items():
                measured[f"probe/{name}"] = probe_score(X, meta[name].to_numpy(), spec["kind"], groups, n_splits)
            rows += [{"step": step, "site": site, "metric": metric, "value": value}
                     for metric, value in measured.items()]
    return pd.DataFrame(rows)


def plot_over_training(table: pd.DataFrame, t50: float | None = None) -> Figure:
    """A panel per metric, a line per site over the checkpoints' steps; the run's onset ``t50`` dashed."""
    metrics = list(dict.fromkeys(table["metric"]))
    columns = min(4, len(metrics))
    rows = -(-len(metrics) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.6 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        part = table[table["metric"] == metric]
        for site, line in part.groupby("site", sort=False):
            ax.plot(line["step"], line["value"], marker="o", markersize=3, label=site)
        if t50 is not None and np.isfinite(t50):
            ax.axvline(t50, color="grey", linestyle="--", linewidth=1, label="onset t50")
        ax.set_title(metric, fontsize=9)
        ax.set_xlabel("training step")
    for ax in axes.flat[len(metrics):]:
        ax.remove()
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 6), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    return fig
