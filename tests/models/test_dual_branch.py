"""DualBranch: sites, gates, shared vs separate forward, local diffusers directories."""

import pytest
import torch
from diffusers import ControlNetModel, SD3Transformer2DModel, UNet2DConditionModel
from safetensors.torch import save_file

from lisa_probe.diffusion.parameterization import Parameterization
from lisa_probe.models import (
    build_main,
    build_side,
    check_side_matches,
    detect_family,
    load_main,
    make_dual_branch,
    save_main,
)
from lisa_probe.models.build import NULL_CONTEXT_FILE, null_context_for
from lisa_probe.models.hooks import capture
from tests.conftest import tiny_dual_branch


def inputs(model, batch=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    size = model.main.config.sample_size
    x = torch.randn(batch, model.main.config.in_channels, size, size, generator=generator)
    timesteps = model.parameterization.sample_timesteps(batch, generator)
    cond = torch.rand(batch, 1, size, size, generator=generator)
    return x, timesteps, cond


def test_sites_have_names_shapes_and_hookable_modules(dual_branch):
    names = dual_branch.site_names
    prefix = "down." if dual_branch.family == "unet" else "block."
    assert names[0] == f"{prefix}0" and len(names) >= 2
    x, t, c = inputs(dual_branch)
    with capture(dual_branch, names, what=("feature", "residual")) as records:
        dual_branch(x, t, c)
    for site in dual_branch.sites:
        assert tuple(records[site.name]["feature"].shape[1:]) == site.feature_shape
        assert tuple(records[site.name]["residual"].shape[1:]) == site.residual_shape
        feature_map = dual_branch.feature_to_map(site.name, records[site.name]["feature"])
        assert tuple(feature_map.shape[1:]) == site.map_shape


def test_unknown_site_lists_valid_ones(dual_branch):
    with pytest.raises(ValueError, match="valid sites: .*" + dual_branch.site_names[-1]):
        dual_branch.site("nope.3")


def test_zero_gates_reproduce_main_alone(dual_branch):
    x, t, c = inputs(dual_branch)
    closed = dual_branch(x, t, c, gates=torch.zeros(len(dual_branch.sites))).pred_full
    torch.testing.assert_close(closed, dual_branch.predict_main(x, t), rtol=0, atol=0)
    opened = dual_branch(x, t, c).pred_full
    assert (opened - closed).abs().max() > 1e-3  # the side net does change the prediction


@pytest.mark.parametrize("main_pass", ["separate", "batched"])
def test_shared_call_matches_separate_calls(dual_branch, main_pass):
    x, t, c = inputs(dual_branch)
    out = dual_branch(x, t, c, main_rows=2, main_pass=main_pass)
    reference_full = dual_branch.predict_full_reference(x, t, c)
    torch.testing.assert_close(out.pred_full, reference_full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.pred_main, dual_branch.predict_main(x[:2], t[:2]), rtol=1e-5, atol=1e-6)
    assert not out.pred_main.requires_grad


def prompt_context(model, batch, seed=5, length=4):
    """Random per-sample text conditioning of the model's widths: (B, L, D) tokens (and (B, P) pooled for SD3)."""
    generator = torch.Generator().manual_seed(seed)
    return {key: torch.randn((batch, length, width) if key == "context" else (batch, width), generator=generator)
            for key, width in model.context_widths().items()}


@pytest.mark.parametrize("main_pass", ["separate", "batched"])
def test_per_sample_context_matches_diffusers_forward_row_by_row(dual_branch, main_pass):
    """With a context per row, the shared call equals diffusers' own forwards, and each row is what a one-row call
    with that row's context gives (the rows' prompts do not mix); another context changes the prediction."""
    x, t, c = inputs(dual_branch)
    context = prompt_context(dual_branch, 3)
    out = dual_branch(x, t, c, main_rows=2, main_pass=main_pass, context=context)
    torch.testing.assert_close(out.pred_full, dual_branch.predict_full_reference(x, t, c, context=context),
                               rtol=1e-5, atol=1e-6)
    head = {key: tensor[:2] for key, tensor in context.items()}
    torch.testing.assert_close(out.pred_main, dual_branch.predict_main(x[:2], t[:2], head), rtol=1e-5, atol=1e-6)
    for row in range(3):
        one = {key: tensor[row:row + 1] for key, tensor in context.items()}
        torch.testing.assert_close(out.pred_full[row:row + 1], dual_branch(x[row:row + 1], t[row:row + 1],
                                                                           c[row:row + 1], context=one).pred_full,
                                   rtol=1e-4, atol=1e-5)
    assert (out.pred_full - dual_branch(x, t, c).pred_full).abs().max() > 1e-4


def test_main_context_gives_pred_main_its_own_prompt(dual_branch):
    """``main_context`` (e.g. the empty prompt for LISA's prior) conditions pred_main only."""
    x, t, c = inputs(dual_branch)
    context, empty = prompt_context(dual_branch, 3), prompt_context(dual_branch, 2, seed=9)
    out = dual_branch(x, t, c, main_rows=2, context=context, main_context=empty)
    torch.testing.assert_close(out.pred_main, dual_branch.predict_main(x[:2], t[:2], empty), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.pred_full, dual_branch.predict_full_reference(x, t, c, context=context),
                               rtol=1e-5, atol=1e-6)
    assert not out.pred_main.requires_grad


def test_a_context_of_the_wrong_width_is_refused_naming_the_shapes(dual_branch):
    x, t, c = inputs(dual_branch)
    context = prompt_context(dual_branch, 3)
    context["context"] = torch.zeros(3, 4, 7)
    width = dual_branch.context_widths()["context"]
    with pytest.raises(ValueError, match=rf"shape \(3, 4, 7\); this model takes \(3, L, {width}\)"):
        dual_branch(x, t, c, context=context)
    with pytest.raises(ValueError, match="needs the keys"):
        dual_branch(x, t, c, context={"other": torch.zeros(3, 4, width)})


def test_a_null_context_of_the_wrong_width_is_refused(tmp_path):

    main = build_main("unet", "tiny", 16)
    save_main(tmp_path, "unet", main, Parameterization("eps"))
    save_file({"context": torch.zeros(1, 77, 768)}, tmp_path / NULL_CONTEXT_FILE)
    family, main, parameterization, null_context, _ = load_main(tmp_path)
    with pytest.raises(ValueError, match=rf"shape \(1, 77, 768\), but this main net takes width "
                                         rf"{main.config.cross_attention_dim}"):
        make_dual_branch(family, main, build_side(main, family, 1), parameterization, null_context)


def test_batched_main_pass_gives_the_separate_pass_gradients(dual_branch):
    x, t, c = inputs(dual_branch)
    grads = {}
    for main_pass in ("separate", "batched"):
        dual_branch.side.zero_grad(set_to_none=True)
        out = dual_branch(x, t, c, main_rows=2, main_pass=main_pass)
        out.pred_full.square().mean().backward()
        grads[main_pass] = torch.cat([p.grad.flatten() for p in dual_branch.side.parameters() if p.grad is not None])
    assert grads["separate"].abs().sum() > 0
    torch.testing.assert_close(grads["batched"], grads["separate"], rtol=1e-4, atol=1e-7)


def test_unknown_main_pass_lists_allowed_ones(dual_branch):
    with pytest.raises(ValueError, match="'fused'.*separate, batched"):
        dual_branch(*inputs(dual_branch), main_rows=1, main_pass="fused")


def test_per_sample_gates_and_gradients_through_gates(dual_branch):
    x, t, c = inputs(dual_branch)
    gates = torch.ones(3, len(dual_branch.sites))
    gates[1] = 0
    gates.requires_grad_(True)
    pred = dual_branch(x, t, c, gates=gates).pred_full
    torch.testing.assert_close(pred[1], dual_branch.predict_main(x, t)[1], rtol=0, atol=0)
    pred.sum().backward()
    assert gates.grad.abs().sum() > 0


def test_gated_prediction_is_the_forward_with_gates_and_its_gradient(dual_branch):
    x, t, c = inputs(dual_branch)
    predict = dual_branch.gated_prediction(x, t, c)
    for seed in range(2):
        gates = torch.rand(3, len(dual_branch.sites), generator=torch.Generator().manual_seed(seed))
        forward_gates, reused_gates = gates.clone().requires_grad_(True), gates.clone().requires_grad_(True)
        expected, got = dual_branch(x, t, c, gates=forward_gates).pred_full, predict(reused_gates)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)  # the same operations on the same tensors
        expected.square().sum().backward()
        got.square().sum().backward()
        torch.testing.assert_close(reused_gates.grad, forward_gates.grad, rtol=0, atol=0)
        assert forward_gates.grad.abs().sum() > 0


def test_gradients_reach_side_net_only():
    model = tiny_dual_branch("unet", "eps")
    x, t, c = inputs(model)
    model(x, t, c).pred_full.square().mean().backward()
    assert all(p.grad is None for p in model.main.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.side.parameters())


def test_every_trainable_side_parameter_gets_a_gradient(dual_branch):
    """DDP (``accelerate launch``) waits for a gradient of every trainable parameter: none may be left out. The SD3
    ControlNet's last block writes text tokens nothing reads; those weights are frozen."""
    x, t, c = inputs(dual_branch)
    dual_branch(x, t, c).pred_full.square().mean().backward()
    trainable = {name: p for name, p in dual_branch.side.named_parameters() if p.requires_grad}
    assert trainable and [name for name, p in trainable.items() if p.grad is None] == []
    frozen = [name for name, p in dual_branch.side.named_parameters() if not p.requires_grad]
    if dual_branch.family == "dit":
        last = len(dual_branch.side.transformer_blocks) - 1
        assert frozen and all(name.startswith((f"transformer_blocks.{last}.attn.to_add_out",
                                               f"transformer_blocks.{last}.ff_context")) for name in frozen)
    else:
        assert frozen == []


@pytest.mark.parametrize("family,kind,main_class", [("unet", "v", UNet2DConditionModel),
                                                    ("dit", "flow", SD3Transformer2DModel)])
def test_local_diffusers_directory_round_trip(tmp_path, family, kind, main_class):
    main = build_main(family, "tiny", 16, seed=3)
    save_main(tmp_path, family, main, Parameterization(kind))
    assert detect_family(tmp_path) == family
    loaded_family, loaded, parameterization, null_context, vae = load_main(tmp_path)
    assert (loaded_family, parameterization.prediction_type, vae) == (family, kind, None)
    reloaded = main_class.from_pretrained(tmp_path / ("unet" if family == "unet" else "transformer"))
    for a, b in zip(main.parameters(), reloaded.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="not 'eps'" if kind != "eps" else "not"):
        load_main(tmp_path, prediction_type="eps")


def test_null_context_stored_beside_the_main_net(tmp_path):
    """A precomputed prompt embedding saved as null_context.safetensors replaces the zero context."""

    main = build_main("unet", "tiny", 16)
    save_main(tmp_path, "unet", main, Parameterization("eps"))
    assert torch.count_nonzero(load_main(tmp_path)[3]["context"]) == 0
    embedding = torch.randn(1, 3, main.config.cross_attention_dim)
    save_file({"context": embedding.contiguous()}, tmp_path / NULL_CONTEXT_FILE)
    torch.testing.assert_close(load_main(tmp_path)[3]["context"], embedding, rtol=0, atol=0)


def test_not_a_diffusers_directory(tmp_path):
    with pytest.raises(ValueError, match="not a diffusers main-net directory"):
        detect_family(tmp_path)


def test_latent_unet_with_vae(tmp_path):
    """A Stable-Diffusion-like layout (unet/ + vae/ + scheduler/) trains in latent space, condition in pixels."""
    from diffusers import AutoencoderKL

    main = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16),
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), layers_per_block=1,
                                norm_num_groups=8, cross_attention_dim=8, attention_head_dim=8)
    save_main(tmp_path, "unet", main, Parameterization("eps"))
    AutoencoderKL(block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
                  up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4,
                  norm_num_groups=8).save_pretrained(tmp_path / "vae")
    family, main, parameterization, null_context, vae = load_main(tmp_path)
    from lisa_probe.models import make_dual_branch
    side = build_side(main, family, cond_channels=1, latent=True)
    model = make_dual_branch(family, main, side, parameterization, null_context, vae)
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    latents = model.encode_images(images)
    assert latents.shape == (2, 4, 8, 8)
    out = model(latents, torch.tensor([10, 500]), torch.rand(2, 1, 64, 64), main_rows=2)
    assert out.pred_full.shape == (2, 4, 8, 8)
    # a new side net for this layout, as train builds it, takes RGB control images (diffusers' pipelines feed PIL)
    from lisa_probe.training.config import TrainConfig
    from lisa_probe.training.loading import build_dual_branch

    built, _ = build_dual_branch(TrainConfig(main=str(tmp_path), out_dir=str(tmp_path / "runs")))
    assert built.side.config.conditioning_channels == 3 and built.cond_channels == 3
    assert model.decode_samples(latents).shape == (2, 3, 64, 64)


def test_a_greyscale_condition_feeds_an_rgb_controlnet_as_pil_would():
    """A 3-channel ControlNet (diffusers' default, what its pipelines feed a PIL image to) takes a 1-channel
    condition repeated to RGB: the same prediction as the repeated condition; a count that does not divide is
    refused naming both, before any forward pass (``check_condition``)."""
    from lisa_probe.models import make_dual_branch

    main = build_main("unet", "tiny", 16, seed=0)
    side = build_side(main, "unet", cond_channels=3, seed=0)
    with torch.no_grad():
        for parameter in side.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(1)))
    model = make_dual_branch("unet", main, side, Parameterization("eps"), null_context_for(main, "unet"))
    assert model.cond_channels == 3
    x_t, steps, grey = torch.randn(2, 3, 16, 16), torch.tensor([10, 500]), torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x_t, steps, grey).pred_full, model(x_t, steps, grey.repeat(1, 3, 1, 1)).pred_full)
    model.check_condition(1)
    model.check_condition(3)
    with pytest.raises(ValueError, match="the condition has 2 channel\\(s\\) but this ControlNet takes 3"):
        model.check_condition(2)
    with pytest.raises(ValueError, match="has 2 channel"):
        model(x_t, steps, torch.rand(2, 2, 16, 16))


def test_side_net_must_match_main_net():
    main = build_main("unet", "tiny", 16)
    other = build_main("unet", "small", 16)
    side = build_side(other, "unet", 1)
    assert isinstance(side, ControlNetModel)
    with pytest.raises(ValueError, match="does not match the main net.*block_out_channels"):
        check_side_matches("unet", main, side)
    check_side_matches("unet", main, build_side(main, "unet", 1))


def test_dit_side_net_built_from_a_copy():
    main = build_main("dit", "tiny", 16)
    layers = main.config.num_layers
    side = build_side(main, "dit", 1)
    assert main.config.num_layers == layers and side.config.num_layers < layers
    assert null_context_for(main, "dit")["pooled"].shape == (1, main.config.pooled_projection_dim)


def test_unet_at_a_size_the_down_path_does_not_divide():
    """15 px: the up path must be given each skip's size, as diffusers' own forward does (zero gates = main alone)."""
    model = tiny_dual_branch("unet", "v", resolution=15)
    x, t, c = inputs(model)
    closed = model(x, t, c, gates=torch.zeros(len(model.sites))).pred_full
    reference = model.predict_main(x, t)  # diffusers' own UNet forward
    assert closed.shape == x.shape
    torch.testing.assert_close(closed, reference, rtol=1e-5, atol=1e-6)
