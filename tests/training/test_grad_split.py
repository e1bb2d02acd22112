"""The gradient split of --probe-grad-split against an independent computation: gradients read from ``.grad`` after
separate backward passes, and AdamW's own step on copies of the parameters and state."""

import copy
import math

import pytest
import torch

from lisa_probe.training.grad_split import gradient_split
from lisa_probe.training.loading import build_dual_branch
from lisa_probe.training.side_net import SideNetObjective, build_decoder, train
from tests.training.test_side_net import read_metrics, tiny_config


def objective_with_adam_state(tmp_path):
    """A tiny LISA objective whose zero modules are open, and an AdamW that has taken two steps on it."""
    config = tiny_config(tmp_path, lisa_weight=0.5)
    model, _ = build_dual_branch(config)
    with torch.no_grad():
        for name in model.site_names:
            model.site_module(name).weight.normal_(0, 0.05)
    site = model.default_lisa_site()
    objective = SideNetObjective(model, build_decoder(model, site, 0), config, site)
    optimizer = torch.optim.AdamW(objective.parameters(), lr=1e-3, weight_decay=1e-2)
    generator = torch.Generator().manual_seed(0)
    batch = {"x0": torch.randn(4, 3, 16, 16, generator=generator), "cond": torch.rand(4, 1, 16, 16, generator=generator),
             "noise": torch.randn(4, 3, 16, 16, generator=generator), "timesteps": torch.tensor([10, 300, 600, 900])}
    for step in range(2):
        objective(**batch, step=step)["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
    return objective, optimizer, batch


def grads_by_backward(objective, batch, term):
    """``{id(param): .grad}`` of one loss term from its own backward pass (None where it does not reach)."""
    objective.zero_grad(set_to_none=True)
    terms = objective.loss_terms(**batch, step=2)
    loss = terms["diffusion"] if term == "diffusion" else float(terms["weight"]) * terms["lisa"]
    loss.backward()
    grads = {id(p): None if p.grad is None else p.grad.clone() for p in objective.parameters()}
    objective.zero_grad(set_to_none=True)
    return grads


def test_the_split_matches_backward_passes_and_adamws_own_step(tmp_path):
    objective, optimizer, batch = objective_with_adam_state(tmp_path)
    values = gradient_split(objective.loss_terms(**batch, step=2), objective.parameter_sets(), optimizer)
    diffusion, lisa = grads_by_backward(objective, batch, "diffusion"), grads_by_backward(objective, batch, "lisa")
    sets = objective.parameter_sets()
    upstream = [p for p in sets["trunk"] if lisa[id(p)] is not None and lisa[id(p)].any()]
    assert upstream and len(upstream) < len(sets["trunk"])  # the LISA loss reaches the trunk up to its site only
    side = objective.model.side
    assert any(p is side.conv_in.weight for p in upstream)  # the first layer is upstream of every site
    assert not any(p is q for p in upstream for q in side.controlnet_mid_block.parameters())
    groups = {"trunk_to_site": upstream, "zero_modules": sets["zero_modules"], "decoder": sets["decoder"]}
    for name, members in groups.items():
        g_d = torch.cat([(torch.zeros_like(p) if diffusion[id(p)] is None else diffusion[id(p)]).flatten()
                         for p in members]).double()
        g_l = torch.cat([(torch.zeros_like(p) if lisa[id(p)] is None else lisa[id(p)]).flatten()
                         for p in members]).double()
        assert values[f"grad/{name}/diffusion_norm"] == pytest.approx(float(g_d.norm()), rel=1e-5)
        assert values[f"grad/{name}/lisa_norm"] == pytest.approx(float(g_l.norm()), rel=1e-5)
        if g_l.norm() > 0 and g_d.norm() > 0:
            assert values[f"grad/{name}/cosine"] == pytest.approx(float(g_d @ g_l / (g_d.norm() * g_l.norm())),
                                                                  abs=1e-5)
        # AdamW's own step from copies of the parameters and state, with and without the LISA gradient
        steps = {}
        for label, with_lisa in (("without", False), ("with", True)):
            params = [p.detach().clone().requires_grad_(True) for p in members]
            twin = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-2)
            twin.load_state_dict({"state": {i: copy.deepcopy(optimizer.state[p]) for i, p in enumerate(members)},
                                  "param_groups": [{**twin.param_groups[0], "params": list(range(len(members)))}]})
            for param, original in zip(params, members):
                grad = torch.zeros_like(original) if diffusion[id(original)] is None else diffusion[id(original)]
                if with_lisa and lisa[id(original)] is not None:
                    grad = grad + lisa[id(original)]
                param.grad = grad.clone()
            twin.step()
            steps[label] = torch.cat([(p.detach() - q.detach()).flatten() for p, q in zip(params, members)]).double()
        expected = float((steps["with"] - steps["without"]).norm() / steps["without"].norm())
        assert values[f"grad/{name}/adam_change"] == pytest.approx(expected, rel=1e-3, abs=1e-9)
    assert math.isnan(values["grad/trunk_after_site/cosine"]) or values["grad/trunk_after_site/lisa_norm"] == 0


def test_a_run_logs_the_split_with_the_probe(tmp_path):
    run = train(tiny_config(tmp_path, steps=2, probe_every=2, probe_samples=4, probe_grad_split=True, name="split"))
    last = read_metrics(run)[-1]
    for group in ("trunk_to_site", "zero_modules", "decoder"):
        assert math.isfinite(float(last[f"grad/{group}/diffusion_norm"]))
    assert float(last["grad/trunk_to_site/lisa_norm"]) > 0 and float(last["grad/trunk_after_site/lisa_norm"]) == 0
