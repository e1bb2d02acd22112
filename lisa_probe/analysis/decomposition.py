"""Decompose a per-example objective over the side branch's injection sites.

The caller supplies ``objective(gates) -> values``: ``gates`` is a (B, S) float tensor (1 = site's residual
injected, 0 = removed; row i always belongs to example i of a batch the objective fixed beforehand) and
``values`` a (B,) tensor, differentiable in ``gates`` for integrated gradients — e.g. the projection of
``pred_full − pred_main`` on its own direction. The objective moves ``gates`` to its own device. Nothing here
knows about models.

Every method returns (B, S) attributions: ``leave_one_out`` f(1) − f(1 − e_s); ``add_one_in``
f(e_s) − f(0); ``integrated_gradients`` (captum, baseline 0 → input 1) and ``shapley_sampling`` (captum),
both of which sum over sites to f(1) − f(0).
"""

from collections.abc import Callable, Sequence

import pandas as pd
import torch
from captum.attr import IntegratedGradients, ShapleyValueSampling

from lisa_probe.analysis.tables import long_table

Objective = Callable[[torch.Tensor], torch.Tensor]
METHODS = ("leave_one_out", "add_one_in", "integrated_gradients", "shapley_sampling")


def _gates(batch_size: int, n_sites: int, value: float) -> torch.Tensor:
    """(B, S) float32 gates all equal to ``value``."""
    return torch.full((batch_size, n_sites), float(value))


@torch.no_grad()
def total_effect(objective: Objective, n_sites: int, batch_size: int) -> torch.Tensor:
    """f(all sites open) − f(all closed), (B,): what the attributions decompose."""
    return objective(_gates(batch_size, n_sites, 1)) - objective(_gates(batch_size, n_sites, 0))


@torch.no_grad()
def _single_site_effects(objective: Objective, n_sites: int, batch_size: int, base: float) -> torch.Tensor:
    """(B, S): for each site, the change of f when only that site differs from ``base`` gates, signed so that
    opening the site counts positive."""
    gates = _gates(batch_size, n_sites, base)
    reference = objective(gates)
    effects = []
    for site in range(n_sites):
        flipped = gates.clone()
        flipped[:, site] = 1 - base
        effects.append(objective(flipped) - reference)
    effect = torch.stack(effects, dim=1)
    return effect if base == 0 else -effect


def leave_one_out(objective: Objective, n_sites: int, batch_size: int) -> torch.Tensor:
    """(B, S): f(all open) − f(all open but site s closed)."""
    return _single_site_effects(objective, n_sites, batch_size, base=1)


def add_one_in(objective: Objective, n_sites: int, batch_size: int) -> torch.Tensor:
    """(B, S): f(only site s open) − f(all closed)."""
    return _single_site_effects(objective, n_sites, batch_size, base=0)


def integrated_gradients(
    objective: Objective, n_sites: int, batch_size: int, n_steps: int = 32, method: str = "gausslegendre"
) -> tuple[torch.Tensor, torch.Tensor]:
    """captum ``IntegratedGradients`` from all-closed (zeros) to all-open (ones) gates.

    ``internal_batch_size=batch_size``, so every call of ``objective`` gets one (B, S) step whose row i is
    example i.

    Returns:
        attributions (B, S) and convergence delta (B,) = Σ_s attr − (f(1) − f(0)).
    """
    attributions, delta = IntegratedGradients(objective).attribute(
        _gates(batch_size, n_sites, 1),
        baselines=_gates(batch_size, n_sites, 0),
        n_steps=n_steps,
        method=method,
        internal_batch_size=batch_size,
        return_convergence_delta=True,
    )
    return attributions.detach(), delta.detach()


def shapley_sampling(
    objective: Objective, n_sites: int, batch_size: int, n_samples: int = 25, seed: int = 0
) -> torch.Tensor:
    """(B, S) captum ``ShapleyValueSampling`` of the sites (baseline all closed) over ``n_samples``
    permutations, drawn under ``torch.manual_seed(seed)`` without touching the global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        attributions = ShapleyValueSampling(objective).attribute(
            _gates(batch_size, n_sites, 1), baselines=_gates(batch_size, n_sites, 0), n_samples=n_samples
        )
    return attributions.detach()


def decomposition_table(
    objective: Objective,
    site_names: Sequence[str],
    batch_size: int,
    methods: Sequence[str] = METHODS,
    n_steps: int = 32,
    n_samples: int = 25,
    seed: int = 0,
    **ids,
) -> pd.DataFrame:
    """Attributions of ``objective`` to the sites ``site_names`` (in gate order) by each of ``methods``.

    Returns:
        long table with columns ``[*ids, method, example, site, metric, value]``: metric ``attribution`` per
        (method, example, site); for ``integrated_gradients`` also ``convergence_delta`` per example with
        ``site="all"``; and method ``all_sites``, metric ``effect``, ``site="all"``: f(1) − f(0) per example.
    """
    n_sites = len(site_names)
    compute = {
        "leave_one_out": lambda: (leave_one_out(objective, n_sites, batch_size), None),
        "add_one_in": lambda: (add_one_in(objective, n_sites, batch_size), None),
        "integrated_gradients": lambda: integrated_gradients(objective, n_sites, batch_size, n_steps),
        "shapley_sampling": lambda: (shapley_sampling(objective, n_sites, batch_size, n_samples, seed), None),
    }
    unknown = set(methods) - set(compute)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; choose from {METHODS}")

    def per_example(method: str, site: str, metric: str, values: torch.Tensor) -> list[dict]:
        return [
            {"method": method, "example": i, "site": site, "metric": metric, "value": float(v)}
            for i, v in enumerate(values.tolist())
        ]

    rows = per_example("all_sites", "all", "effect", total_effect(objective, n_sites, batch_size))
    for method in methods:
        attributions, delta = compute[method]()
        for s, site in enumerate(site_names):
            rows += per_example(method, site, "attribution", attributions[:, s])
        if delta is not None:
            rows += per_example(method, "all", "convergence_delta", delta)
    return long_table(rows, **ids)
