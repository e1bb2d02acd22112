"""``causal.maps``: closed cases. Residuals zero outside a region give residual maps zero there; with one site
active, its add-one-in and leave-one-out maps are the full contribution and every other site's are zero; support
fractions on hand-made maps."""

from contextlib import contextmanager

import numpy as np
import pytest
import torch

from lisa_probe.causal.maps import (
    MAP_METHODS,
    cell_fractions,
    condition_support,
    inside_fraction,
    site_maps,
    summarise,
    support_table,
)
from lisa_probe.training.lisa import LisaDecoder
from tests.conftest import tiny_dual_branch


@contextmanager
def scaled_residuals(model, scale_of):
    """Multiply each site's residual by ``scale_of(name, residual)`` (a tensor broadcastable to it)."""
    handles = [model.site_module(name).register_forward_hook(
        lambda module, inputs, output, name=name: output * scale_of(name, output)) for name in model.site_names]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def inputs(model, batch=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    size = model.main.config.sample_size
    x_t = torch.randn(batch, model.main.config.in_channels, size, size, generator=generator)
    cond = (torch.rand(batch, 1, size, size, generator=generator) > 0.7).float()
    t = torch.full((batch,), 500.0) if model.parameterization.prediction_type == "flow" else torch.full((batch,), 500)
    return x_t, t, cond


def test_residuals_zero_outside_a_region_give_residual_maps_zero_there():
    model = tiny_dual_branch("unet", "eps").eval()

    def left_half(name, residual):
        mask = torch.zeros_like(residual)
        mask[..., : residual.shape[-1] // 2] = 1
        return mask

    with scaled_residuals(model, left_half):
        maps = site_maps(model, *inputs(model))
    residual = maps["residual"]
    assert residual.shape == (3, len(model.sites), 16, 16)
    assert torch.all(residual[..., 8:] == 0) and torch.all(residual[..., :8].flatten(2).amax(-1) > 0)


@pytest.mark.parametrize("backbone", [("unet", "eps"), ("dit", "flow")])
def test_one_active_site_carries_the_whole_contribution(backbone):
    model = tiny_dual_branch(*backbone).eval()
    active = model.site_names[1]
    with scaled_residuals(model, lambda name, residual: torch.tensor(float(name == active))):
        maps = site_maps(model, *inputs(model))
    s = model.site_names.index(active)
    assert maps["full"].abs().max() > 0
    for method in ("add_one_in", "leave_one_out"):
        torch.testing.assert_close(maps[method][:, s], maps["full"], rtol=0, atol=0)
        others = [k for k in range(len(model.sites)) if k != s]
        assert torch.all(maps[method][:, others] == 0), method
    assert torch.all(maps["residual"][:, others] == 0)


def test_decoder_and_oracle_maps_beside_the_sites():
    model = tiny_dual_branch("unet", "eps").eval()
    site = model.default_lisa_site()
    feature_map = model.site(site).map_shape
    decoder = LisaDecoder(feature_map[0], feature_map[-1], 4, 16, site=site)
    torch.nn.init.normal_(decoder.out.weight, std=0.1)
    x_t, t, cond = inputs(model)
    target = torch.randn_like(x_t)
    maps = site_maps(model, x_t, t, cond, decoder=decoder, lisa_site=site, target=target)
    assert set(maps) == {*MAP_METHODS, "full", "decoder", "oracle"}
    expected = (target - model.predict_main(x_t, t)).norm(dim=1)
    torch.testing.assert_close(maps["oracle"], expected, rtol=1e-5, atol=1e-6)
    assert maps["decoder"].shape == (3, 16, 16) and maps["decoder"].max() > 0


def test_support_fractions_on_hand_made_maps():
    cond = np.zeros((2, 1, 8, 8))
    cond[0, 0, 2:4, 2:4] = 1  # a 2x2 block: grown by one pixel, a 4x4 block
    support = condition_support(cond)
    assert support[0].sum() == 16 and not support[1].any()
    cells = cell_fractions(support, (4, 4))
    np.testing.assert_allclose(cells[0][0:3, 0:3].sum() * 4, 16)  # each 2x2 cell's covered share, summed
    indicator = cells.copy()
    np.testing.assert_allclose(inside_fraction(indicator[:1], cells[:1]), [np.sum(cells[0] ** 2) / cells[0].sum()])
    uniform = np.ones((2, 4, 4))
    np.testing.assert_allclose(inside_fraction(uniform, cells), [16 / 64, 0.0])
    assert np.isnan(inside_fraction(np.zeros((1, 4, 4)), cells[:1])[0])
    with pytest.raises(ValueError, match="does not tile"):
        cell_fractions(support, (3, 3))


def test_support_table_and_its_summary():
    maps = {"add_one_in": torch.ones(2, 2, 4, 4), "full": torch.ones(2, 4, 4)}
    cond = np.zeros((2, 1, 8, 8))
    cond[:, 0, :4] = 1  # the top half (grown by a row)
    table = support_table(maps, condition_support(cond), ["a", "b"], np.array([10.0, 10.0]), ["s0", "s1"], run="r")
    inside = table[table["metric"] == "inside_fraction"]
    np.testing.assert_allclose(inside["value"], 40 / 64)
    assert len(inside) == 2 * 2 + 2 and set(table["run"]) == {"r"}
    summary = summarise(table)
    row = summary[(summary["method"] == "add_one_in") & (summary["site"] == "a")].iloc[0]
    assert row["n"] == 2 and row["mean"] == pytest.approx(40 / 64) and row["half"] == pytest.approx(0)
