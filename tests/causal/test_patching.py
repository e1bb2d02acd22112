"""``causal.patching``: closed cases. No site patched, or a sample patched with itself, is the full model and every
site patched is the full model on the donor's condition, bit for bit; steering with α = 0 is the identity; donors
differ from their recipient in one factor; the image measures read the shapes' position; the moved fraction and the
probe directions on known answers."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from lisa_probe.causal.patching import (
    RANDOM,
    decoder_directions,
    donor_index,
    measure_images,
    moved_fraction,
    one_factor_donors,
    patched_images,
    probe_directions,
    steered,
)
from lisa_probe.data import build_dataset
from lisa_probe.generation.setup import Drawing
from tests.conftest import tiny_dual_branch


@pytest.mark.parametrize("backbone", [("unet", "eps"), ("dit", "flow")])
def test_patching_none_self_and_all_are_the_full_model(backbone):
    model = tiny_dual_branch(*backbone).eval()
    generator = torch.Generator().manual_seed(0)
    x_t = torch.randn(3, model.main.config.in_channels, 16, 16, generator=generator)
    t = torch.full((3,), 300.0) if backbone[1] == "flow" else torch.full((3,), 300)
    cond, donor = (torch.rand(2, 3, 1, 16, 16, generator=generator) > 0.6).float()
    with torch.no_grad():
        full, on_donor = model(x_t, t, cond).pred_full, model(x_t, t, donor).pred_full
        assert torch.equal(model.patched_prediction(x_t, t, cond, donor, []), full)
        assert torch.equal(model.patched_prediction(x_t, t, cond, cond, model.site_names), full)
        assert torch.equal(model.patched_prediction(x_t, t, cond, donor, model.site_names), on_donor)
        one = model.patched_prediction(x_t, t, cond, donor, [model.site_names[0]])
    assert not torch.equal(one, full) and not torch.equal(one, on_donor)


def test_steering_with_zero_is_the_identity_and_patching_all_sites_samples_the_donor():
    model = tiny_dual_branch("unet", "eps").eval()
    cond = torch.zeros(2, 1, 16, 16)
    cond[0, :, 2:8, 2:8], cond[1, :, 8:14, 8:14] = 1, 1
    noise = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    drawing = Drawing(SimpleNamespace(batch_size=2, steps=3), cond, None, noise, torch.device("cpu"))
    full = drawing.images(model, lambda t: None)
    site = model.site_names[1]
    channels = model.site(site).map_shape[0]
    with steered(model, site, torch.zeros(channels)):
        assert torch.equal(drawing.images(model, lambda t: None), full)
    with steered(model, site, torch.ones(channels)):
        assert not torch.equal(drawing.images(model, lambda t: None), full)
    swapped = Drawing(SimpleNamespace(batch_size=2, steps=3), cond[[1, 0]], None, noise, torch.device("cpu"))
    torch.testing.assert_close(patched_images(model, drawing, cond[[1, 0]], model.site_names),
                               swapped.images(model, lambda t: None), rtol=0, atol=0)


def test_one_factor_donors_change_only_that_factor():
    dataset = build_dataset("shapes", split="val", resolution=32, condition="mask")
    items = [dataset[i] for i in range(6)]
    factors = default_collate(items)["factors"]  # as a batch holds them (float64: the scene is drawn exactly)
    assert torch.equal(dataset.condition_from_factors(items[0]["factors"]), items[0]["cond"])
    donors = one_factor_donors(dataset, factors, "x")
    for i, j in enumerate(donor_index(6)):
        expected = dataset.condition_from_factors({**items[i]["factors"], "x": items[j]["factors"]["x"]})
        assert torch.equal(donors[i], expected) and not torch.equal(donors[i], items[i]["cond"])
    with pytest.raises(ValueError, match="'nope' is not a factor"):
        one_factor_donors(dataset, factors, "nope")
    with pytest.raises(ValueError, match="cannot draw a condition from factors"):
        one_factor_donors(SimpleNamespace(name="captioned"), factors, "x")


def test_image_measures_read_the_shapes_position():
    dataset = build_dataset("shapes", split="val", resolution=32)
    items = [dataset[i] for i in range(40)]
    measured = measure_images(torch.stack([item["image"] for item in items]))
    for factor, measure in (("x", "centroid_x"), ("y", "centroid_y")):
        truth = np.array([item["factors"][factor] for item in items])
        assert np.corrcoef(truth, measured[measure])[0, 1] > 0.95, factor
    assert np.isnan(measure_images(torch.zeros(1, 3, 32, 32))["size"][0])


def test_moved_fraction_and_probe_directions_on_known_answers():
    recipient, donor = np.array([0.2, 0.2, 0.5]), np.array([0.8, 0.8, 0.52])
    np.testing.assert_allclose(moved_fraction(np.array([0.2, 0.8, 0.6]), recipient, donor), [0.0, 1.0, np.nan])
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 6)) * np.array([1, 2, 3, 1, 1, 5])
    w = np.array([1.0, 0, -2, 0, 0.5, 0])
    positions = rng.normal(size=(800, 6))
    directions, probes = probe_directions({"s": (X, positions)}, {"f": X @ w + 0.01 * rng.normal(size=200)},
                                          np.arange(200))
    unit, spread = directions["s"]["f"]
    assert abs(unit @ w / np.linalg.norm(w)) > 0.99 and spread == pytest.approx((positions @ unit).std())
    assert probes.loc[0, "value"] > 0.99 and np.linalg.norm(directions["s"][RANDOM][0]) == pytest.approx(1)


def test_the_decoders_directions_are_its_first_layers_most_and_least_read():
    from lisa_probe.training.lisa import LisaDecoder

    decoder = LisaDecoder(16, 4, 3, 16, min_channels=8)
    torch.nn.init.normal_(decoder.trunk[0].weight, generator=torch.Generator().manual_seed(0))
    weights = decoder.trunk[0].weight.detach().double().sum(dim=(2, 3)).numpy()  # (8, 16): a null space of 8
    found = decoder_directions(decoder)
    singular = np.linalg.svd(weights, compute_uv=False)
    assert np.linalg.norm(weights @ found["decoder_read"]) == pytest.approx(singular[0])
    assert np.linalg.norm(weights @ found["decoder_complement"]) == pytest.approx(0, abs=1e-9)
