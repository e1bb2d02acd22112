"""Per-site score decomposition of a tiny real DualBranch: IG completeness, add-one-in by hand, decoder objective."""

import numpy as np
import pytest
import torch

from lisa_probe.analysis.report.attribution import attribution_table, rank_bins, score_objectives
from lisa_probe.models.hooks import capture
from lisa_probe.training.lisa import LisaDecoder
from tests.conftest import tiny_dual_branch

B = 3


def inputs(model, seed: int = 0):
    """x_t (B, C, H, W), timesteps (B,) on the model's schedule (two rows share one timestep), cond (B, 1, H, W)."""
    generator = torch.Generator().manual_seed(seed)
    size, channels = model.main.config.sample_size, model.main.config.in_channels
    x_t = torch.randn(B, channels, size, size, generator=generator)
    cond = torch.rand(B, 1, size, size, generator=generator)
    flow = model.parameterization.prediction_type == "flow"
    timesteps = torch.tensor([250.0, 750.0, 250.0]) if flow else torch.tensor([250, 750, 250])
    return x_t, timesteps, cond


@pytest.fixture(scope="module", params=[("unet", "eps"), ("dit", "flow")], ids=lambda b: "-".join(b))
def case(request):
    """(model, inputs, IG table of ``likelihood_projection``) per backbone."""
    model = tiny_dual_branch(*request.param).eval().requires_grad_(False)
    x_t, timesteps, cond = inputs(model)
    table = attribution_table(model, x_t, timesteps, cond, methods=("integrated_gradients", "add_one_in"),
                              n_steps=16, run="tiny")
    return model, (x_t, timesteps, cond), table


def per_site(table, method: str, metric: str = "attribution") -> np.ndarray:
    """(B, S) values of one method, examples in rows, sites in table order."""
    rows = table[(table["method"] == method) & (table["metric"] == metric)]
    sites = list(dict.fromkeys(rows["site"]))
    return rows.pivot(index="example", columns="site", values="value")[sites].to_numpy()


def test_integrated_gradients_are_complete(case):
    model, (x_t, timesteps, cond), table = case
    effect = per_site(table, "all_sites", "effect")[:, 0]
    attributions = per_site(table, "integrated_gradients")
    assert attributions.shape == (B, len(model.sites))
    # f(1) − f(0) is the norm of pred_full − pred_main (f(0) = 0): the side branch's likelihood score
    with torch.no_grad():
        out = model(x_t, timesteps, cond, main_rows=B)
    np.testing.assert_allclose(effect, (out.pred_full - out.pred_main).flatten(1).norm(dim=1).numpy(), rtol=1e-4)
    np.testing.assert_allclose(attributions.sum(axis=1), effect, rtol=2e-2, atol=1e-4)
    delta = per_site(table, "integrated_gradients", "convergence_delta")[:, 0]
    assert np.abs(delta).max() <= 2e-2 * np.abs(effect).max() + 1e-4


def test_add_one_in_equals_a_one_hot_gate_by_hand(case):
    model, (x_t, timesteps, cond), table = case
    with torch.no_grad():
        out = model(x_t, timesteps, cond, main_rows=B)
        delta = (out.pred_full - out.pred_main).flatten(1)
        direction = delta / delta.norm(dim=1, keepdim=True)
        closed = model(x_t, timesteps, cond, gates=torch.zeros(len(model.sites))).pred_full
        expected = []
        for s in range(len(model.sites)):
            one_hot = torch.zeros(len(model.sites))
            one_hot[s] = 1
            alone = model(x_t, timesteps, cond, gates=one_hot).pred_full
            expected.append(((alone - closed).flatten(1) * direction).sum(dim=1))
    np.testing.assert_allclose(per_site(table, "add_one_in"), torch.stack(expected, 1).numpy(), rtol=1e-4, atol=1e-5)


def test_table_columns_timesteps_and_batches(case):
    model, (x_t, timesteps, cond), table = case
    assert list(table.columns[:5]) == ["run", "objective", "t", "t_bin", "method"]
    assert set(table["objective"]) == {"likelihood_projection"}
    rows = table.drop_duplicates("example").sort_values("example")
    np.testing.assert_array_equal(rows["t"], timesteps.double().numpy())
    np.testing.assert_array_equal(rows["t_bin"], [0, 1, 0])
    np.testing.assert_array_equal(rank_bins(np.array([5.0, 1.0, 5.0, 3.0])), [2, 0, 2, 1])
    split = attribution_table(model, x_t, timesteps, cond, methods=("add_one_in",), batch_size=2, run="tiny")
    np.testing.assert_allclose(per_site(split, "add_one_in"), per_site(table, "add_one_in"), rtol=1e-4, atol=1e-5)


def test_lisa_alignment_projects_on_the_decoder_output():
    model = tiny_dual_branch("unet", "eps").eval().requires_grad_(False)
    site = model.default_lisa_site()
    channels, height, _ = model.site(site).map_shape
    torch.manual_seed(0)
    decoder = LisaDecoder(channels, height, model.main.config.out_channels, model.main.config.sample_size).eval()
    torch.nn.init.normal_(decoder.out.weight, std=0.1)  # the zero-initialised output would give no direction
    x_t, timesteps, cond = inputs(model)
    with pytest.raises(ValueError, match="a LISA decoder needs its site"):
        score_objectives(model, x_t, timesteps, cond, decoder=decoder)
    objectives = score_objectives(model, x_t, timesteps, cond, decoder=decoder, lisa_site=site)
    assert set(objectives) == {"likelihood_projection", "lisa_alignment"}
    with torch.no_grad(), capture(model, [site]) as records:
        out = model(x_t, timesteps, cond, main_rows=B)
        decoded = decoder(model.feature_to_map(site, records[site]["feature"]), timesteps).flatten(1)
        expected = ((out.pred_full - out.pred_main).flatten(1) * decoded).sum(1) / decoded.norm(dim=1)
        value = objectives["lisa_alignment"](torch.ones(B, len(model.sites)))
    np.testing.assert_allclose(value.numpy(), expected.numpy(), rtol=1e-4, atol=1e-6)
    assert torch.allclose(objectives["lisa_alignment"](torch.zeros(B, len(model.sites))), torch.zeros(B), atol=1e-5)


def test_objectives_share_their_forwards_without_gradients_and_not_with(monkeypatch):
    model = tiny_dual_branch("unet", "eps").eval().requires_grad_(False)
    site = model.default_lisa_site()
    channels, height, _ = model.site(site).map_shape
    torch.manual_seed(0)
    decoder = LisaDecoder(channels, height, model.main.config.out_channels, model.main.config.sample_size).eval()
    torch.nn.init.normal_(decoder.out.weight, std=0.1)
    x_t, timesteps, cond = inputs(model)
    objectives = score_objectives(model, x_t, timesteps, cond, decoder=decoder, lisa_site=site)
    calls = []
    rest = model._rest
    monkeypatch.setattr(model, "_rest", lambda *args: calls.append(1) or rest(*args))
    gates = torch.rand(B, len(model.sites), generator=torch.Generator().manual_seed(2))
    first = objectives["likelihood_projection"](gates)
    second = objectives["lisa_alignment"](gates)
    assert len(calls) == 1  # the second objective reused the first one's forward at the same gates
    objectives["lisa_alignment"](gates + 0.5)
    assert len(calls) == 2
    fresh = score_objectives(model, x_t, timesteps, cond, decoder=decoder, lisa_site=site)
    np.testing.assert_array_equal(first.numpy(), fresh["likelihood_projection"](gates).numpy())
    np.testing.assert_array_equal(second.numpy(), fresh["lisa_alignment"](gates).numpy())
    traced = gates.clone().requires_grad_(True)  # gradients: always a fresh forward, and they flow to the gates
    calls.clear()
    objectives["likelihood_projection"](traced).sum().backward()
    objectives["lisa_alignment"](traced).sum().backward()
    assert len(calls) == 2 and traced.grad.abs().sum() > 0
