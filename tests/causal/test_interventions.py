"""``causal.interventions``: closed cases. Every site off is the main net alone exactly, none off the full model, a
window over the whole trajectory the plain gate; windows partition the sampler's steps; the table's effects are the
paired differences recomputed from the images."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lisa_probe.causal.interventions import (
    Intervention,
    intervention_table,
    noise_windows,
    sampler_timesteps,
    standard_interventions,
)
from lisa_probe.evaluation.fidelity import fidelity_per_sample
from lisa_probe.generation.setup import Drawing
from tests.conftest import tiny_dual_branch

STEPS = 4


@pytest.fixture(scope="module", params=[("unet", "eps"), ("dit", "flow")], ids=lambda b: "-".join(b))
def drawn(request):
    model = tiny_dual_branch(*request.param).eval()
    generator = torch.Generator().manual_seed(0)
    cond = torch.zeros(3, 1, 16, 16)
    cond[:, :, 4:12, 4:12] = 1
    noise = torch.randn(3, model.main.config.in_channels, 16, 16, generator=generator)
    return model, Drawing(SimpleNamespace(batch_size=2, steps=STEPS), cond, None, noise, torch.device("cpu"))


def test_all_off_is_the_main_net_none_off_the_full_model_and_a_whole_window_the_plain_gate(drawn):
    model, drawing = drawn
    main_alone = drawing.images(model, None)
    full = drawing.images(model, lambda t: None)
    everything = tuple(model.site_names)
    torch.testing.assert_close(drawing.images(model, Intervention("off", everything).schedule(model)), main_alone,
                               rtol=0, atol=0)
    torch.testing.assert_close(drawing.images(model, Intervention("none", ()).schedule(model)), full, rtol=0, atol=0)
    assert (full - main_alone).abs().max() > 0
    visited = sampler_timesteps(model, STEPS)
    site = model.site_names[0]
    whole = Intervention("w", (site,), 0.5, 1.0, (float(visited.min()), float(visited.max())))
    plain = Intervention("p", (site,), 0.5)
    torch.testing.assert_close(drawing.images(model, whole.schedule(model)), drawing.images(model, plain.schedule(model)),
                               rtol=0, atol=0)
    with pytest.raises(ValueError, match="unknown site 'nope'"):
        Intervention("x", ("nope",)).schedule(model)


def test_windows_partition_the_steps_and_the_design(drawn):
    model, _ = drawn
    windows = noise_windows(model, STEPS, 3)
    visited = sampler_timesteps(model, STEPS)
    inside = [[low <= t <= high for low, high in windows] for t in visited]
    assert all(sum(flags) == 1 for flags in inside) and windows[0][0] >= windows[-1][1]  # high noise first
    with pytest.raises(ValueError, match="between 1 and the 4 sampler steps"):
        noise_windows(model, STEPS, 5)
    design = standard_interventions(["a", "b"], windows)
    assert len(design) == 3 * (1 + 3) + 3  # a, b, all off (whole + each window), all only in each window
    assert design[-1].inside == 1.0 and design[-1].outside == 0.0


def test_effects_are_paired_differences_from_the_full_model(drawn):
    model, drawing = drawn
    everything = tuple(model.site_names)
    full_images = drawing.images(model, lambda t: None)
    table = intervention_table(model, drawing, [Intervention("all off", everything)], "mask", ["mask_iou", "edge_f1"],
                               full_images)
    full = fidelity_per_sample(full_images, drawing.cond, "mask")
    off = fidelity_per_sample(drawing.images(model, None), drawing.cond, "mask")
    row = table[(table["intervention"] == "all off") & (table["metric"] == "mask_iou")].iloc[0]
    assert row["effect"] == pytest.approx(np.mean(off["mask_iou"] - full["mask_iou"]))
    assert row["value"] == pytest.approx(np.nanmean(off["mask_iou"])) and row["n"] == 3
    assert (table.loc[table["intervention"] == "full", "effect"] == 0).all()
    readback = {"f": np.array([1.0, 0.0, 1.0])}
    with_readback = intervention_table(model, drawing, [Intervention("all off", everything)], "mask", ["mask_iou"],
                                       full_images, readback=lambda images: readback)
    row = with_readback[(with_readback["intervention"] == "all off") & (with_readback["metric"] == "readback/f")]
    assert row["effect"].iloc[0] == 0 and row["value"].iloc[0] == pytest.approx(2 / 3)
