"""Spatial score maps: where in the prediction each site of the side branch acts, at one noisy input.

For inputs ``(x_t, t, cond)`` and per-site gates ``g`` (all ones: the full model, all zeros: the main net alone),
the side branch's contribution is ``Δ(g) = pred_full(g) − pred_main`` (B, C, H, W). Per site s, as maps (B, H, W) on
the prediction's grid (the image for pixel-space models, the latent grid for latent ones; the decoded image is the
same picture at ``vae_scale`` times the size):

* ``add_one_in``: ‖Δ(e_s)‖ over channels, only site s open;
* ``leave_one_out``: ‖Δ(1) − Δ(1 − e_s)‖, what closing site s removes from the full model;
* ``residual``: ‖r_s‖ over channels of the residual site s adds to the main net, on its own grid, upsampled
  (nearest) to the prediction's;

and, beside them, ``full`` = ‖Δ(1)‖, the LISA decoder's output ‖D(h, t)‖ (``decoder``, where the run has one) and
the oracle ‖y − pred_main‖ (``oracle``, where the target is known). The sites interact through the main net, so
``add_one_in`` maps do not sum to ``full``.

``support_fractions`` then says whether a site acts where the condition is: the share of a map's mass inside the
condition's support (``condition_support``: pixels where the condition is on, grown by ``SUPPORT_RING`` pixels,
area-averaged onto the map's grid), beside the support's share of the area (a uniform map's value).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.ndimage as ndi
import torch
import torch.nn.functional as F

from lisa_probe.analysis.intervals import t_interval
from lisa_probe.models import DualBranch
from lisa_probe.models.hooks import capture

SUPPORT_RING = 1  # pixels the condition's support is grown by (an outline's ring, not only its 1-px line)
MAP_METHODS = ("add_one_in", "leave_one_out", "residual")
REFERENCE_MAPS = ("full", "decoder", "oracle")


def channel_norm(values: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H, W) Euclidean norm over channels, float32 on the CPU."""
    return values.detach().float().norm(dim=1).cpu()


def to_grid(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) maps on a coarser (or equal) grid -> (B, *size), each cell repeated (nearest): a site's map shown
    where its cells lie."""
    return F.interpolate(maps[:, None], size=size, mode="nearest")[:, 0] if tuple(maps.shape[-2:]) != size else maps


@torch.no_grad()
def site_maps(model: DualBranch, x_t: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor,
              context: dict | None = None, decoder=None, lisa_site: str | None = None,
              target: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """``{method: (B, S, H, W)}`` for ``MAP_METHODS`` and ``{reference: (B, H, W)}`` for the references there are
    (``full`` always; ``decoder`` with a LISA ``decoder`` at ``lisa_site``; ``oracle`` with the ``target`` y), on the
    prediction's (H, W) grid. Inputs as ``DualBranch.forward``; the side residuals and the main net's shared prefix
    are computed once for all 2 + 2S gate settings (``gated_prediction``)."""
    names = model.site_names
    with capture(model, names, what=("residual",) + (("feature",) if decoder is not None else ())) as records:
        predict = model.gated_prediction(x_t, timesteps, cond, context)
    batch, sites = len(x_t), len(names)
    ones = torch.ones(batch, sites, device=x_t.device)
    pred_main, pred_full = predict(torch.zeros_like(ones)), predict(ones)
    size = tuple(pred_full.shape[-2:])
    eye = torch.eye(sites, device=x_t.device)
    add_one_in = [channel_norm(predict(eye[s].expand(batch, -1)) - pred_main) for s in range(sites)]
    leave_one_out = [channel_norm(pred_full - predict((1 - eye[s]).expand(batch, -1))) for s in range(sites)]
    residual = [to_grid(channel_norm(model.feature_to_map(name, records[name]["residual"])), size) for name in names]
    maps = {"add_one_in": torch.stack(add_one_in, 1), "leave_one_out": torch.stack(leave_one_out, 1),
            "residual": torch.stack(residual, 1), "full": channel_norm(pred_full - pred_main)}
    if decoder is not None:
        feature = model.feature_to_map(lisa_site, records[lisa_site]["feature"])
        maps["decoder"] = channel_norm(decoder(feature, timesteps))
    if target is not None:
        maps["oracle"] = channel_norm(target - pred_main)
    return maps


def condition_support(cond: np.ndarray, ring: int = SUPPORT_RING) -> np.ndarray:
    """(N, C, H, W) conditions in [0, 1] -> (N, H, W) bool: where the condition is on (any channel > 0.5), grown by
    ``ring`` pixels in every direction (diagonals included)."""
    on = np.asarray(cond).max(axis=1) > 0.5
    if ring:
        on = np.stack([ndi.binary_dilation(mask, structure=np.ones((3, 3)), iterations=ring) for mask in on])
    return on


def cell_fractions(support: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N, H, W) bool at the image's resolution -> (N, h, w): the share of each cell of an (h, w) grid inside the
    support (area average; H, W multiples of h, w)."""
    n, height, width = support.shape
    fy, fx = height // size[0], width // size[1]
    if fy * size[0] != height or fx * size[1] != width:
        raise ValueError(f"a {height}x{width} support does not tile a {size[0]}x{size[1]} map grid")
    return support.reshape(n, size[0], fy, size[1], fx).mean(axis=(2, 4))


def inside_fraction(maps: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """(N, ..., h, w) non-negative maps and (N, h, w) support cell fractions -> (N, ...): the share of each map's
    mass inside the support (NaN for a map that is zero everywhere)."""
    maps = np.asarray(maps, dtype=np.float64)
    cells = cells.reshape(cells.shape[0], *([1] * (maps.ndim - 3)), *cells.shape[1:])
    total = maps.sum(axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (maps * cells).sum(axis=(-2, -1)) / total, np.nan)


def support_table(maps: dict[str, torch.Tensor], support: np.ndarray, site_names: Sequence[str],
                  timesteps: np.ndarray, sample_ids: Sequence[str], rows: Sequence[int] | None = None,
                  **ids) -> pd.DataFrame:
    """Long table ``[*ids, sample_id, (row,) t, method, site, metric, value]``, metrics ``inside_fraction`` (per
    map) and, once per input, ``area_fraction`` (site ``""``, method ``support``: the support's share of the grid);
    ``rows``: the store rows the inputs are, as a ``row`` column."""
    records = []
    some = next(iter(maps.values()))
    cells = cell_fractions(support, tuple(some.shape[-2:]))
    area = cells.mean(axis=(1, 2))
    keys = [{**ids, "sample_id": sample_id, **({"row": int(rows[i])} if rows is not None else {}), "t": float(t)}
            for i, (sample_id, t) in enumerate(zip(sample_ids, timesteps))]
    for method, values in maps.items():
        fractions = inside_fraction(values.numpy(), cells)
        for i, key in enumerate(keys):
            per_site = zip(site_names, fractions[i]) if fractions.ndim == 2 else [("", fractions[i])]
            records += [{**key, "method": method, "site": site, "metric": "inside_fraction", "value": float(value)}
                        for site, value in per_site]
    records += [{**key, "method": "support", "site": "", "metric": "area_fraction", "value": float(a)}
                for key, a in zip(keys, area)]
    return pd.DataFrame(records)


def summarise(table: pd.DataFrame, keys: Sequence[str] = ("method", "site", "t", "metric")) -> pd.DataFrame:
    """Mean and 95 % t-interval half-width across samples of ``value`` per ``keys``: columns ``[*keys, mean, half,
    n]``."""
    rows = []
    for group, part in table.groupby(list(keys), sort=False):
        mean, half, n = t_interval(part["value"].to_numpy())
        rows.append({**dict(zip(keys, group)), "mean": mean, "half": half, "n": n})
    return pd.DataFrame(rows)
