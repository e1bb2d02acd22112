import pytest
import torch

from lisa_probe.analysis.decomposition import (
    add_one_in,
    decomposition_table,
    integrated_gradients,
    leave_one_out,
    shapley_sampling,
    total_effect,
)

B, S = 4, 3
W = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, 1.0], [2.0, 2.0, -1.0], [-1.0, 0.5, 4.0]])


def linear(gates):
    return (gates * W).sum(dim=1)


def nonlinear(gates):
    return torch.tanh(linear(gates)) ** 2 + gates[:, 0] * gates[:, 1] * W[:, 2] + torch.exp(0.3 * gates[:, 2])


def product(gates):
    """f = g0·g1 + 2·g2: sites 0 and 1 only act together."""
    return gates[:, 0] * gates[:, 1] + 2 * gates[:, 2]


def test_integrated_gradients_linear_is_exact():
    attributions, delta = integrated_gradients(linear, S, B, n_steps=8)
    torch.testing.assert_close(attributions, W)
    assert delta.abs().max() < 1e-5


def test_integrated_gradients_completeness_nonlinear():
    attributions, delta = integrated_gradients(nonlinear, S, B, n_steps=64)
    expected = nonlinear(torch.ones(B, S)) - nonlinear(torch.zeros(B, S))
    torch.testing.assert_close(attributions.sum(dim=1), expected, atol=1e-4, rtol=1e-4)
    assert delta.abs().max() < 1e-4


def test_objective_always_gets_one_step_of_the_batch():
    shapes = []

    def recording(gates):
        shapes.append(tuple(gates.shape))
        return linear(gates)

    integrated_gradients(recording, S, B, n_steps=5)
    shapley_sampling(recording, S, B, n_samples=2)
    assert set(shapes) == {(B, S)}


def test_shapley_exact_for_additive_and_fair_for_interaction():
    torch.testing.assert_close(shapley_sampling(linear, S, B, n_samples=3), W)
    values = shapley_sampling(product, S, 1, n_samples=200, seed=1)[0]
    assert values.sum() == pytest.approx(3.0)
    assert values[0] == pytest.approx(0.5, abs=0.1) and values[2] == pytest.approx(2.0)
    torch.testing.assert_close(shapley_sampling(product, S, 1, seed=4), shapley_sampling(product, S, 1, seed=4))


def test_leave_one_out_and_add_one_in():
    torch.testing.assert_close(leave_one_out(product, S, 2), torch.tensor([[1.0, 1.0, 2.0]] * 2))
    torch.testing.assert_close(add_one_in(product, S, 2), torch.tensor([[0.0, 0.0, 2.0]] * 2))
    torch.testing.assert_close(leave_one_out(linear, S, B), W)
    torch.testing.assert_close(add_one_in(linear, S, B), W)
    torch.testing.assert_close(total_effect(product, S, 2), torch.tensor([3.0, 3.0]))


def test_decomposition_table():
    sites = ["down.0", "down.1", "mid"]
    table = decomposition_table(product, sites, 2, n_steps=16, n_samples=5, run="lisa", t_bin=3)
    assert list(table.columns) == ["run", "t_bin", "method", "example", "site", "metric", "value"]
    attributions = table[table.metric == "attribution"]
    assert len(attributions) == 4 * 2 * 3
    ig = attributions[attributions.method == "integrated_gradients"].groupby("example")["value"].sum()
    effect = table[table.method == "all_sites"].set_index("example")["value"]
    assert ig.to_numpy() == pytest.approx(effect.to_numpy(), abs=1e-4)
    loo = attributions[(attributions.method == "leave_one_out") & (attributions.example == 0)]
    assert loo.set_index("site")["value"].to_dict() == {"down.0": 1.0, "down.1": 1.0, "mid": 2.0}
    assert set(table.loc[table.metric == "convergence_delta", "method"]) == {"integrated_gradients"}
    with pytest.raises(ValueError, match="unknown"):
        decomposition_table(product, sites, 2, methods=("lime",))
