"""SDXL and SD3 pipelines on captions: the dual branch equals diffusers' forward with the pipelines' own prompt
embeddings (SDXL's pooled text and time ids; SD3's CLIP-L/G + T5 tokens and pooled projections), both arms train
from the command line on a captioned parquet dataset, and the exported ControlNets drive diffusers' ControlNet
pipelines from a PIL control image and a prompt."""

import numpy as np
import pytest
import torch
from diffusers import (
    ControlNetModel,
    SD3ControlNetModel,
    StableDiffusion3ControlNetPipeline,
    StableDiffusionXLControlNetPipeline,
    StableDiffusionXLPipeline,
)

from lisa_probe.models import build_side, load_main, make_dual_branch
from lisa_probe.rundir import read_summary
from lisa_probe.text.prompts import PromptEncoder
from lisa_probe.train import main as train_main
from tests.tiny_pipelines import shape_row
from tests.training.test_side_net import read_metrics
from tests.training.test_side_net_labels import assert_rows_rebuild

PROMPTS = ["a big red circle", "a small blue square", ""]


def perturbed(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` with its zero-initialised outputs made non-zero, so that the residuals matter."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return module


def test_the_sdxl_dual_branch_is_diffusers_unet_and_controlnet_with_pooled_text_and_time_ids(sdxl_pipeline):
    family, main, parameterization, null_context, vae = load_main(sdxl_pipeline)
    empty = PromptEncoder.from_pipeline(sdxl_pipeline).empty()
    assert family == "unet" and all(torch.equal(null_context[k], empty[k]) for k in ("context", "pooled"))
    side = perturbed(build_side(main, family, 3, latent=True))
    model = make_dual_branch(family, main, side, parameterization, null_context, vae)
    pipe = StableDiffusionXLPipeline.from_pretrained(sdxl_pipeline)
    context, _, pooled, _ = pipe.encode_prompt(PROMPTS, do_classifier_free_guidance=False)
    time_ids = pipe._get_add_time_ids((64, 64), (0, 0), (64, 64), dtype=torch.float32,
                                      text_encoder_projection_dim=pooled.shape[-1]).repeat(3, 1)
    added = {"text_embeds": pooled, "time_ids": time_ids}
    x_t, timesteps, cond = torch.randn(3, 4, 8, 8), torch.tensor([10, 500, 900]), torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        out = model(x_t, timesteps, cond, context={"context": context, "pooled": pooled}, main_rows=3)
        down, mid = side(x_t, timesteps, encoder_hidden_states=context, controlnet_cond=cond,
                         added_cond_kwargs=added, return_dict=False)
        full = main(x_t, timesteps, encoder_hidden_states=context, added_cond_kwargs=added,
                    down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
        alone = main(x_t, timesteps, encoder_hidden_states=context, added_cond_kwargs=added).sample
    # the same kernels on the same inputs: equal but for accumulation order in the shared prefix
    torch.testing.assert_close(out.pred_full, full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.pred_main, alone, rtol=1e-5, atol=1e-5)
    assert (full - alone).abs().max() > 1e-2


@pytest.mark.parametrize("fixture", ["sd3_pipeline", "sd3_pipeline_without_t5"])
def test_the_sd3_dual_branch_is_diffusers_transformer_and_controlnet_with_the_pipelines_prompts(request, fixture):
    from diffusers import StableDiffusion3Pipeline

    path = request.getfixturevalue(fixture)
    family, main, parameterization, null_context, vae = load_main(path)
    assert family == "dit" and null_context["context"].shape == (1, 16 + 77, 32)
    side = perturbed(build_side(main, family, 3))
    model = make_dual_branch(family, main, side, parameterization, null_context, vae)
    missing = {} if (path / "text_encoder_3").is_dir() else {"text_encoder_3": None, "tokenizer_3": None}
    context, _, pooled, _ = StableDiffusion3Pipeline.from_pretrained(path, **missing).encode_prompt(
        PROMPTS, PROMPTS, PROMPTS, do_classifier_free_guidance=False, max_sequence_length=77)
    x_t, timesteps, cond = torch.randn(3, 4, 8, 8), torch.tensor([0.1, 0.5, 0.9]), torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        out = model(x_t, timesteps, cond, context={"context": context, "pooled": pooled}, main_rows=3)
        control = vae.encode(cond * 2 - 1).latent_dist.mode()
        control = (control - (vae.config.shift_factor or 0.0)) * vae.config.scaling_factor
        residuals = side(x_t, controlnet_cond=control, encoder_hidden_states=context, pooled_projections=pooled,
                         timestep=timesteps, return_dict=False)[0]
        full = main(x_t, encoder_hidden_states=context, pooled_projections=pooled, timestep=timesteps,
                    block_controlnet_hidden_states=residuals).sample
    torch.testing.assert_close(out.pred_full, full, rtol=1e-5, atol=1e-5)


def train_arms(tmp_path, pipeline, captioned_data) -> dict:
    common = ["--main", str(pipeline), "--dataset", "captioned", "--data-root", str(captioned_data),
              "--out-dir", str(tmp_path / "runs"), "--steps", "2", "--batch-size", "4", "--eval-every", "2",
              "--eval-samples", "2", "--sample-steps", "2", "--proportion-empty-prompts", "0.2"]
    runs = {}
    for name, weight in (("base", "0"), ("lisa", "0.2")):
        train_main([*common, "--name", name, "--lisa-weight", weight])
        runs[name] = tmp_path / "runs" / name
        assert read_summary(runs[name])["steps"] == 2
        assert ("lisa_loss" in read_metrics(runs[name])[0]) == (name == "lisa")
    return runs


def test_sdxl_arms_train_on_captions_and_drive_the_sdxl_controlnet_pipeline(tmp_path, sdxl_pipeline,
                                                                           captioned_data):
    runs = train_arms(tmp_path, sdxl_pipeline, captioned_data)
    controlnet = ControlNetModel.from_pretrained(runs["lisa"] / "controlnet")
    assert controlnet.config.addition_embed_type == "text_time" and controlnet.config.conditioning_channels == 3
    pipe = StableDiffusionXLControlNetPipeline.from_pretrained(sdxl_pipeline, controlnet=controlnet)
    image = pipe("a big red circle", image=shape_row(0, 64)["conditioning_image"], num_inference_steps=2,
                 height=64, width=64, output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 64, 64, 3) and np.isfinite(image).all()


def test_sd3_arms_train_on_captions_and_drive_the_sd3_controlnet_pipeline(tmp_path, sd3_pipeline, captioned_data):
    runs = train_arms(tmp_path, sd3_pipeline, captioned_data)
    controlnet = SD3ControlNetModel.from_pretrained(runs["lisa"] / "controlnet")
    pipe = StableDiffusion3ControlNetPipeline.from_pretrained(sd3_pipeline, controlnet=controlnet)
    image = pipe("a big red circle", control_image=shape_row(0, 64)["conditioning_image"], num_inference_steps=2,
                 height=64, width=64, output_type="np", max_sequence_length=77,
                 generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 64, 64, 3) and np.isfinite(image).all()


@pytest.mark.parametrize("fixture", ["sdxl_pipeline", "sd3_pipeline"])
def test_extraction_on_sdxl_and_sd3_runs_records_prompts_and_rebuilds_the_rows(tmp_path, request, fixture,
                                                                              captioned_data):
    """The stores' rows, rebuilt from the store and the prompt cache (tokens and pooled embeddings), give the stored
    predictions again."""
    from lisa_probe.extract import main as extract_main
    from lisa_probe.store import FeatureStore

    pipeline = request.getfixturevalue(fixture)
    train_main(["--main", str(pipeline), "--dataset", "captioned", "--data-root", str(captioned_data), "--out-dir",
                str(tmp_path / "runs"), "--steps", "1", "--batch-size", "2", "--eval-samples", "0", "--name", "run"])
    run, store_path = tmp_path / "runs" / "run", tmp_path / "run.h5"
    extract_main(["--ckpt", str(run), "--out", str(store_path), "--samples", "3", "--timesteps", "2"])
    store = FeatureStore(store_path)
    assert len(set(store.read("meta/prompt"))) > 1
    recipe = store.attrs["inputs"]  # the recipe names this layout's text encoders, not SD 1.x's
    wanted = {"sdxl_pipeline": "time_ids = (h, w, 0, 0, h, w)", "sd3_pipeline": "T5's (tokenizer_3/ + text_encoder_3/)"}
    assert wanted[fixture] in recipe["prompts"] and "last hidden state is context" not in recipe["prompts"]
    assert recipe["resolution"] == 64 and recipe["draws"] == 1 and "captioned/<split>/<table split>-" in recipe["split"]
    assert recipe["target"].startswith("y = noise - x0" if fixture == "sd3_pipeline" else "y = noise")
    assert_rows_rebuild(run, store_path)
