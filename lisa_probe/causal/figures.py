"""Figures of the causal analyses: one sample's site maps over its condition, and the site × noise-window table of
intervention effects."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from lisa_probe.causal.maps import MAP_METHODS, REFERENCE_MAPS, to_grid

HIGH_NOISE_FIRST = "noise window (high noise → low noise, as sampled)"


def plot_site_maps(maps: dict[str, torch.Tensor], index: int, image: np.ndarray, cond: np.ndarray,
                   site_names: Sequence[str], t: float) -> Figure:
    """Sample ``index``'s maps at timestep ``t``: a row per method (``MAP_METHODS``, one shared colour scale per
    row, upsampled to the image and drawn over it) with the condition's outline in white; the last row the sample's
    image, the condition and the references (full, decoder, oracle). ``image`` (H, W, 3) uint8, ``cond`` (C, H, W)."""
    size = image.shape[:2]
    references = [name for name in REFERENCE_MAPS if name in maps]
    columns = max(len(site_names), 2 + len(references))
    fig, axes = plt.subplots(len(MAP_METHODS) + 1, columns, figsize=(1.6 * columns, 1.7 * (len(MAP_METHODS) + 1)),
                             squeeze=False)
    outline = cond.max(axis=0)

    def draw(ax, values: torch.Tensor, vmax: float, title: str) -> None:
        ax.imshow(image, alpha=0.35)
        shown = ax.imshow(to_grid(values[None], size)[0].numpy(), cmap="magma", alpha=0.75, vmin=0, vmax=vmax)
        ax.contour(outline, levels=[0.5], colors="white", linewidths=0.6)
        ax.set_title(title, fontsize=8)
        return shown

    for row, method in enumerate(MAP_METHODS):
        values = maps[method][index]
        vmax = float(values.max()) or 1.0
        for col, site in enumerate(site_names):
            shown = draw(axes[row, col], values[col], vmax, f"{method}\n{site}")
        fig.colorbar(shown, ax=list(axes[row, :len(site_names)]), fraction=0.02, pad=0.01)
    last = axes[-1]
    last[0].imshow(image)
    last[0].set_title("sample (x0)", fontsize=8)
    last[1].imshow(outline, cmap="gray")
    last[1].set_title("condition", fontsize=8)
    for col, name in enumerate(references, start=2):
        values = maps[name][index]
        draw(last[col], values, float(values.max()) or 1.0, name)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        if not ax.images:
            ax.remove()
    fig.suptitle(f"where each site acts at t = {t:.0f} (‖Δ prediction‖ over channels; white: the condition)",
                 fontsize=9)
    return fig


def plot_intervention_effects(table: pd.DataFrame, metric: str) -> Figure:
    """Heatmap of the effect on ``metric`` (intervention − full, mean across samples) of gating each site group off
    in each noise window and along the whole trajectory, with the 95 % t-interval half-width in each cell."""
    off = table[(table["metric"] == metric) & (table["inside"] == 0.0) & (table["outside"] == 1.0)]
    groups = list(dict.fromkeys(name.split(" off, ")[0] for name in off["intervention"]))
    windows = list(dict.fromkeys(name.split(" off, ")[1] for name in off["intervention"]))
    effect = np.full((len(groups), len(windows)), np.nan)
    half = np.full_like(effect, np.nan)
    for _, row in off.iterrows():
        group, window = row["intervention"].split(" off, ")
        effect[groups.index(group), windows.index(window)] = row["effect"]
        half[groups.index(group), windows.index(window)] = row["half"]
    limit = float(np.nanmax(np.abs(effect))) if np.isfinite(effect).any() else 1.0
    fig, ax = plt.subplots(figsize=(1.3 * len(windows) + 2, 0.45 * len(groups) + 1.5))
    shown = ax.imshow(effect, cmap="RdBu", vmin=-limit or -1, vmax=limit or 1, aspect="auto")
    for (i, j), value in np.ndenumerate(effect):
        if np.isfinite(value):
            ax.text(j, i, f"{value:+.3f}\n±{half[i, j]:.3f}" if np.isfinite(half[i, j]) else f"{value:+.3f}",
                    ha="center", va="center", fontsize=7)
    ax.set_xticks(np.arange(len(windows)), windows, fontsize=8)
    ax.set_yticks(np.arange(len(groups)), [f"{group} off" for group in groups], fontsize=8)
    ax.set_xlabel(HIGH_NOISE_FIRST)
    fig.colorbar(shown, ax=ax, label=f"Δ {metric} vs the full model")
    ax.set_title(f"causal effect on control ({metric}): mean paired difference ± 95 % t-interval over samples",
                 fontsize=9)
    return fig
