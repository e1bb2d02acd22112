"""Per-site decomposition of a DualBranch's likelihood score at given inputs.

The side branch's contribution in prediction units is ``Δ(g) = pred_full(g) − pred_main`` for per-site gates ``g``
(B, S) (all ones: the normal model, all zeros: the main net alone). Each *score objective* projects ``Δ(g)`` of
example i on a fixed unit direction ``u_i`` (flattened over C, H, W) and returns (B,) values, differentiable in the
gates; ``lisa_probe.analysis.decomposition`` then splits ``f(1) − f(0)`` over the sites:

* ``likelihood_projection``: ``u_i = Δ_i(1) / ‖Δ_i(1)‖``, the direction of the model's own likelihood-score estimate,
  so ``f(1) = ‖Δ_i(1)‖`` and ``f(0) = 0``;
* ``lisa_alignment`` (with a LISA decoder): ``u_i = D(h_i, t_i) / ‖D(h_i, t_i)‖``, the decoder's output at its hooked
  site (the feature ``h`` does not depend on the gates), so ``f(1)`` is how far the side branch moves the prediction
  along what the decoder reads from ``h``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from lisa_probe.analysis.decomposition import METHODS, decomposition_table
from lisa_probe.models import DualBranch
from lisa_probe.models.hooks import capture

Objective = Callable[[torch.Tensor], torch.Tensor]
EPS = 1e-12


def _unit_rows(values: torch.Tensor) -> torch.Tensor:
    """(B, ...) -> (B, P) rows scaled to unit norm (zero rows stay zero)."""
    rows = values.flatten(1)
    return rows / rows.norm(dim=1, keepdim=True).clamp_min(EPS)


def _memoised(predict: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """``predict`` keeping its outputs at gate settings that carry no gradient: the objectives of one batch ask for
    the same settings (leave-one-out, add-one-in, the seeded Shapley permutations), so a second objective reuses the
    first one's forwards. Settings with ``requires_grad`` (integrated gradients) always run."""
    outputs = {}

    def memo(gates: torch.Tensor) -> torch.Tensor:
        if gates.requires_grad:
            return predict(gates)
        key = (tuple(gates.shape), gates.detach().cpu().numpy().tobytes())
        if key not in outputs:
            with torch.no_grad():
                outputs[key] = predict(gates)
        return outputs[key]

    return memo


def _projection(predict: Callable[[torch.Tensor], torch.Tensor], pred_main: torch.Tensor,
                direction: torch.Tensor, device: torch.device) -> Objective:
    """``gates (B, S) -> (B,)``: ``(predict(gates) − pred_main) · direction`` per example (flattened), ``predict``
    being ``DualBranch.gated_prediction`` at the inputs."""

    def objective(gates: torch.Tensor) -> torch.Tensor:
        return ((predict(gates.to(device)) - pred_main).flatten(1) * direction).sum(dim=1)

    return objective


def score_objectives(model: DualBranch, x_t: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor,
                     decoder: torch.nn.Module | None = None, lisa_site: str | None = None,
                     context: dict[str, torch.Tensor] | None = None) -> dict[str, Objective]:
    """Score objectives of ``model`` at fixed inputs, for ``lisa_probe.analysis.decomposition``.

    Args:
        x_t: (B, C, H, W) noisy samples in model space; timesteps: (B,) as fed to the model; cond: (B, Cc, Hc, Wc).
        decoder: a LISA decoder ``D(feature map, timesteps)``; adds ``lisa_alignment``.
        lisa_site: the decoder's hooked site (the run's ``lisa_site``, as its store records it); needed with a
            decoder.
        context: per-row text conditioning (``DualBranch.context``; None: the null context).

    Returns:
        ``{"likelihood_projection": f, ["lisa_alignment": f]}``, each ``f(gates (B, S)) -> (B,)``; ``pred_main``, the
        directions, the side residuals and the main net's shared prefix are computed once here, so each call runs
        only the part of the main net the gated residuals enter (``DualBranch.gated_prediction``), and the objectives
        share the predictions at gate settings without gradients (``_memoised``).
    """
    if decoder is not None and lisa_site is None:
        raise ValueError("a LISA decoder needs its site (lisa_site): the run's config.yaml and its stores record it")
    site = lisa_site
    hook = capture(model, [site], detach=True) if decoder is not None else nullcontext({})
    with torch.no_grad(), hook as records:
        out = model(x_t, timesteps, cond, main_rows=len(x_t), context=context)
    directions = {"likelihood_projection": _unit_rows(out.pred_full - out.pred_main)}
    if decoder is not None:
        with torch.no_grad():
            decoded = decoder(model.feature_to_map(site, records[site]["feature"]), timesteps)
        directions["lisa_alignment"] = _unit_rows(decoded)
    predict = _memoised(model.gated_prediction(x_t, timesteps, cond, context))
    return {name: _projection(predict, out.pred_main, direction, x_t.device) for name, direction in directions.items()}


def rank_bins(values: np.ndarray) -> np.ndarray:
    """(B,) values -> (B,) int64 rank of each value among the sorted unique values (the default ``t_bin``)."""
    return np.unique(np.asarray(values), return_inverse=True)[1].reshape(-1)


def attribution_table(
    model: DualBranch,
    x_t: torch.Tensor,
    timesteps: torch.Tensor,
    cond: torch.Tensor,
    decoder: torch.nn.Module | None = None,
    lisa_site: str | None = None,
    context: dict[str, torch.Tensor] | None = None,
    methods: Sequence[str] = METHODS,
    t_bins: np.ndarray | None = None,
    batch_size: int = 32,
    n_steps: int = 32,
    n_samples: int = 25,
    seed: int = 0,
    **ids,
) -> pd.DataFrame:
    """Decompose every ``score_objectives`` objective over ``model.site_names`` at the given inputs.

    Rows are processed in batches of ``batch_size`` (any mix of timesteps: the model takes per-row timesteps), each
    through ``decomposition_table`` (methods ``leave_one_out``, ``add_one_in``, ``integrated_gradients``,
    ``shapley_sampling``; ``n_steps`` IG steps, ``n_samples`` Shapley permutations with ``seed``).

    Args:
        x_t, timesteps, cond, context: as for ``score_objectives``, B rows in all.
        t_bins: (B,) bin label of each row (default: ``rank_bins(timesteps)``).
        **ids: constant identifying columns (``run=...``).

    Returns:
        long table ``[*ids, objective, t, t_bin, method, example, site, metric, value]`` (``decomposition_table``'s
        rows), ``example`` being the row index in the inputs and ``t`` its timestep.
    """
    steps = timesteps.detach().cpu().double().numpy()
    t_bins = rank_bins(steps) if t_bins is None else np.asarray(t_bins)
    tables = []
    for start in tqdm(range(0, len(x_t), batch_size), desc="attribution", unit="batch"):
        part = slice(start, start + batch_size)
        rows = None if context is None else {key: tensor[part] for key, tensor in context.items()}
        objectives = score_objectives(model, x_t[part], timesteps[part], cond[part], decoder, lisa_site, rows)
        for name, objective in objectives.items():
            table = decomposition_table(objective, model.site_names, len(x_t[part]), methods, n_steps, n_samples,
                                        seed, **ids)
            table.insert(len(ids), "objective", name)
            tables.append(table.assign(example=table["example"] + start))
    table = pd.concat(tables, ignore_index=True)
    table.insert(len(ids) + 1, "t", steps[table["example"]])
    table.insert(len(ids) + 2, "t_bin", t_bins[table["example"]])
    return table
