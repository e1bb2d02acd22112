"""Interventions during sampling: which sites, and which part of the trajectory, carry the control.

An ``Intervention`` sets the gates of some sites to ``inside`` at the sampler steps whose timestep lies in its
``window`` (every step without one) and to ``outside`` at the others; the other sites stay open. Every intervention
samples from the same noise, conditions and prompts as the full model (``generation.setup``), so its effect on a
sample's control fidelity is a paired difference: ``intervention_table`` reports each intervention's fidelity and its
effect (intervention − full) with the 95 % t-interval across samples.

``standard_interventions`` is the site × noise-window design: each site (and all at once) gated off in each window of
the trajectory (``noise_windows``: the sampler's steps cut into contiguous groups, high noise first) and along the
whole trajectory, and all sites open only inside each window.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from lisa_probe.analysis.intervals import t_interval
from lisa_probe.evaluation.fidelity import fidelity_per_sample
from lisa_probe.generation.setup import Drawing, GateSchedule
from lisa_probe.models import DualBranch

ALL_SITES = "all"


@dataclass(frozen=True)
class Intervention:
    """Gates of ``sites`` at ``inside`` for the steps whose timestep lies in ``window`` = (low, high) (inclusive;
    None: every step) and at ``outside`` elsewhere; other sites open (1)."""

    name: str
    sites: tuple[str, ...]
    inside: float = 0.0
    outside: float = 1.0
    window: tuple[float, float] | None = None

    def schedule(self, model: DualBranch) -> GateSchedule:
        """``t -> gates (S,)`` of this intervention on ``model`` (ValueError listing the sites for an unknown one)."""
        chosen = torch.zeros(len(model.sites), dtype=torch.bool)
        for name in self.sites:
            model.site(name)
            chosen[model.site_names.index(name)] = True
        inside = torch.where(chosen, torch.tensor(float(self.inside)), torch.tensor(1.0))
        outside = torch.where(chosen, torch.tensor(float(self.outside)), torch.tensor(1.0))

        def gates(t: float) -> torch.Tensor:
            within = self.window is None or self.window[0] <= t <= self.window[1]
            return inside if within else outside

        return gates


def sampler_timesteps(model: DualBranch, steps: int) -> np.ndarray:
    """The timesteps the sampler visits with ``steps`` steps, in order (high noise first)."""
    scheduler = model.parameterization.make_sampler(clip_sample=model.vae is None)
    scheduler.set_timesteps(steps)
    return scheduler.timesteps.float().cpu().numpy()


def noise_windows(model: DualBranch, steps: int, count: int) -> list[tuple[float, float]]:
    """The sampler's timesteps cut into ``count`` contiguous groups of steps (as equal as possible), as (low, high)
    timestep windows, high noise first; each step lies in exactly one."""
    visited = sampler_timesteps(model, steps)
    if not 1 <= count <= len(visited):
        raise ValueError(f"--windows {count}: between 1 and the {len(visited)} sampler steps")
    return [(float(part.min()), float(part.max())) for part in np.array_split(visited, count)]


def window_label(window: tuple[float, float] | None) -> str:
    """``"t 1000-790"`` (high to low noise, rounded) or ``"all steps"``."""
    return "all steps" if window is None else f"t {window[1]:.0f}-{window[0]:.0f}"


def standard_interventions(sites: Sequence[str], windows: Sequence[tuple[float, float]]) -> list[Intervention]:
    """Each of ``sites`` and all of them gated off along the whole trajectory and in each window; all sites open
    only inside each window."""
    groups = [(site, (site,)) for site in sites] + [(ALL_SITES, tuple(sites))]
    made = []
    for label, group in groups:
        made += [Intervention(f"{label} off, {window_label(window)}", group, 0.0, 1.0, window)
                 for window in (None, *windows)]
    made += [Intervention(f"{ALL_SITES} only, {window_label(window)}", tuple(sites), 1.0, 0.0, window)
             for window in windows]
    return made


def intervention_table(model: DualBranch, drawing: Drawing, interventions: Sequence[Intervention], kind: str,
                       metrics: Sequence[str], full_images: torch.Tensor, silhouettes: np.ndarray | None = None,
                       progress=None, readback=None) -> pd.DataFrame:
    """Long table ``[intervention, sites, inside, outside, window_low, window_high, metric, value, effect, half,
    n]``: per intervention and control ``metric`` (and, with ``readback``: images -> {factor: (N,) per-sample
    read-back accuracy or absolute error}, each ``readback/<factor>``), the mean across samples (``value``), the mean
    paired difference from the full model on the same noise (``effect``) and its 95 % t-interval half-width (``half``);
    a first row per metric for the full model itself (intervention ``full``, effect 0; ``full_images``: its images
    from the same noise, ``drawing.images(model, lambda t: None)``)."""
    cond = drawing.cond

    def scored(images: torch.Tensor) -> dict[str, np.ndarray]:
        values = fidelity_per_sample(images, cond, kind, silhouettes=silhouettes)
        values = {metric: values[metric] for metric in metrics}
        if readback is not None:
            values.update({f"readback/{name}": score for name, score in readback(images).items()})
        return values

    full = scored(full_images)
    rows = [{"intervention": "full", "sites": "", "inside": 1.0, "outside": 1.0, "window_low": np.nan,
             "window_high": np.nan, "metric": metric, "value": float(np.nanmean(full[metric])), "effect": 0.0,
             "half": 0.0, "n": len(cond)} for metric in full]
    for intervention in interventions:
        images = drawing.images(model, intervention.schedule(model), progress)
        scores = scored(images)
        low, high = intervention.window or (np.nan, np.nan)
        for metric in full:
            effect, half, n = t_interval(scores[metric] - full[metric])
            rows.append({"intervention": intervention.name, "sites": ",".join(intervention.sites),
                         "inside": intervention.inside, "outside": intervention.outside, "window_low": low,
                         "window_high": high, "metric": metric, "value": float(np.nanmean(scores[metric])),
                         "effect": effect, "half": half, "n": n})
    return pd.DataFrame(rows)
