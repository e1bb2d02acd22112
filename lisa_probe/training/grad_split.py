"""LISA's mechanism, measured (``--probe-grad-split``): per parameter group, the diffusion loss's gradient g_d, the
weighted LISA gradient λ·g_L, their cosine, and how much λ·g_L changes the step AdamW would take next.

Groups: ``trunk_to_site`` (the side net's trainable trunk up to the LISA site: the trunk parameters the LISA loss
reaches, found from its gradient, so the split is exact for any architecture), ``trunk_after_site`` (the rest of the
trunk), ``cond_embedding``, ``zero_modules`` and ``decoder`` (``SideNetObjective.parameter_sets``). AdamW's step of
a parameter with gradient g from its current state (m, v, t) is torch's: ``−lr·wd·θ − lr·m̂ / (√v̂ + eps)`` with
``m = β1·m + (1 − β1)·g``, ``v = β2·v + (1 − β2)·g²`` and bias corrections at step t + 1; ``adam_change`` is
``‖step(g_d + λ g_L) − step(g_d)‖ / ‖step(g_d)‖``.
"""

from __future__ import annotations

import math

import torch

GROUPS = ("trunk_to_site", "trunk_after_site", "cond_embedding", "zero_modules", "decoder")


def adamw_step(param: torch.Tensor, grad: torch.Tensor, state: dict, group: dict) -> torch.Tensor:
    """The change torch's AdamW would make to ``param`` given ``grad`` and its current ``state`` (``exp_avg``,
    ``exp_avg_sq``, ``step``; empty before the first step) under the hyper-parameters of its param ``group``."""
    beta1, beta2 = group["betas"]
    step = float(state.get("step", 0)) + 1
    grad = grad.double()
    m = beta1 * state["exp_avg"].double() + (1 - beta1) * grad if "exp_avg" in state else (1 - beta1) * grad
    v = (beta2 * state["exp_avg_sq"].double() + (1 - beta2) * grad * grad if "exp_avg_sq" in state
         else (1 - beta2) * grad * grad)
    m_hat, v_hat = m / (1 - beta1**step), v / (1 - beta2**step)
    return -group["lr"] * group["weight_decay"] * param.detach().double() - group["lr"] * m_hat / (v_hat.sqrt()
                                                                                                  + group["eps"])


def gradient_split(terms: dict[str, torch.Tensor], sets: dict[str, list[torch.nn.Parameter]],
                   optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """``grad/<group>/{diffusion_norm, lisa_norm, cosine, adam_change}`` for the ``loss_terms`` of one batch
    (``diffusion``, ``lisa``, ``weight``) over the parameter ``sets``, with ``optimizer``'s AdamW state (an
    accelerate-wrapped optimizer is unwrapped). Groups without parameters are left out; a cosine or change with a
    zero norm is NaN."""
    inner = getattr(optimizer, "optimizer", optimizer)
    params = [p for name in ("trunk", "cond_embedding", "zero_modules", "decoder") for p in sets.get(name, [])]
    diffusion = torch.autograd.grad(terms["diffusion"], params, retain_graph=True, allow_unused=True)
    lisa = torch.autograd.grad(float(terms["weight"]) * terms["lisa"], params, allow_unused=True)
    grads = {id(p): (torch.zeros_like(p) if d is None else d, g) for p, d, g in zip(params, diffusion, lisa)}
    reached = {id(p) for p in sets.get("trunk", []) if grads[id(p)][1] is not None and grads[id(p)][1].any()}
    groups = {"trunk_to_site": [p for p in sets.get("trunk", []) if id(p) in reached],
              "trunk_after_site": [p for p in sets.get("trunk", []) if id(p) not in reached],
              "cond_embedding": sets.get("cond_embedding", []), "zero_modules": sets.get("zero_modules", []),
              "decoder": sets.get("decoder", [])}
    group_of = {id(p): group for group in inner.param_groups for p in group["params"]}
    values = {}
    for name, members in groups.items():
        if not members:
            continue
        g_d = torch.cat([grads[id(p)][0].double().flatten() for p in members])
        g_l = torch.cat([(torch.zeros_like(p) if grads[id(p)][1] is None else grads[id(p)][1]).double().flatten()
                         for p in members])
        without = torch.cat([adamw_step(p, grads[id(p)][0], inner.state.get(p, {}), group_of[id(p)]).flatten()
                             for p in members])
        with_lisa = torch.cat([adamw_step(p, grads[id(p)][0] + (0 if grads[id(p)][1] is None else grads[id(p)][1]),
                                          inner.state.get(p, {}), group_of[id(p)]).flatten() for p in members])
        d_norm, l_norm, w_norm = float(g_d.norm()), float(g_l.norm()), float(without.norm())
        values.update({
            f"grad/{name}/diffusion_norm": d_norm, f"grad/{name}/lisa_norm": l_norm,
            f"grad/{name}/cosine": float(g_d @ g_l) / (d_norm * l_norm) if d_norm and l_norm else math.nan,
            f"grad/{name}/adam_change": float((with_lisa - without).norm()) / w_norm if w_norm else math.nan})
    return values


__all__ = ["GROUPS", "adamw_step", "gradient_split"]
