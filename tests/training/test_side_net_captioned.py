"""Training a ControlNet on a captioned dataset through the pipeline's own text encoder, as diffusers' trainer does,
and using it in diffusers' pipeline."""

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from diffusers import ControlNetModel, StableDiffusionControlNetPipeline
from PIL import Image
from torch.utils.data import default_collate
from transformers import CLIPTextModel, CLIPTokenizer

from lisa_probe.analysis.config import AnalyzeOptions
from lisa_probe.analysis.report.inputs import rebuild_inputs
from lisa_probe.analysis.report.selection import open_run
from lisa_probe.analyze import main as analyze_main
from lisa_probe.data import build_dataset
from lisa_probe.data.captioned import CaptionedDataset
from lisa_probe.extract import main as extract_main
from lisa_probe.rundir import cache_dir, read_summary
from lisa_probe.store import FeatureStore
from lisa_probe.text.prompts import PromptEncoder, _loaded_encoder, prompt_embeddings
from lisa_probe.train import main as train_main
from lisa_probe.training.config import TrainConfig
from lisa_probe.training.loading import build_dual_branch, load_run
from lisa_probe.training.side_net import SideNetObjective, train
from tests.tiny_pipelines import shape_row, write_sd_pipeline
from tests.training.test_side_net import make_main, read_metrics, side_weights


def captioned_config(tmp_path, sd_pipeline, captioned_data, **overrides) -> TrainConfig:
    settings = dict(main=str(sd_pipeline), dataset="captioned", data_root=str(captioned_data),
                    out_dir=str(tmp_path / "runs"), steps=3, batch_size=4, eval_samples=0, checkpoint_every=0,
                    log_every=1, lr=1e-4)
    settings.update(overrides)
    return TrainConfig(**settings)


def diffusers_prediction(pipeline_dir: Path, controlnet, x_t, timesteps, cond, prompts) -> torch.Tensor:
    """The UNet's prediction with ControlNet residuals for these prompts, from diffusers and transformers alone."""
    tokenizer = CLIPTokenizer.from_pretrained(pipeline_dir / "tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(pipeline_dir / "text_encoder")
    pipe = StableDiffusionControlNetPipeline.from_pretrained(pipeline_dir, controlnet=controlnet,
                                                             safety_checker=None, requires_safety_checker=False)
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    with torch.no_grad():
        text = text_encoder(ids)[0]
        down, mid = controlnet(x_t, timesteps, encoder_hidden_states=text, controlnet_cond=cond, return_dict=False)
        return pipe.unet(x_t, timesteps, encoder_hidden_states=text, down_block_additional_residuals=down,
                         mid_block_additional_residual=mid).sample


def test_baseline_and_lisa_train_on_captions_and_drive_diffusers_pipeline(tmp_path, sd_pipeline, captioned_data,
                                                                            monkeypatch):
    """Both arms train from the command line on a parquet dataset; the exported ControlNet drives
    StableDiffusionControlNetPipeline from a PIL control image and a prompt, with no lisa_probe code."""
    monkeypatch.setenv("LISA_PROBE_CACHE", str(tmp_path / "cache"))  # this test's prompt caches alone
    common = ["--main", str(sd_pipeline), "--dataset", "captioned", "--data-root", str(captioned_data),
              "--out-dir", str(tmp_path / "runs"), "--steps", "3", "--batch-size", "4", "--eval-every", "3",
              "--eval-samples", "2", "--sample-steps", "2", "--probe-every", "3", "--probe-samples", "2",
              "--proportion-empty-prompts", "0.2"]
    for name, weight in (("base", "0"), ("lisa", "0.2")):
        train_main([*common, "--name", name, "--lisa-weight", weight])
        run = tmp_path / "runs" / name
        assert read_summary(run)["steps"] == 3 and (run / "samples" / "step-3.png").exists()
        rows = read_metrics(run)
        assert ("lisa_loss" in rows[0]) == (name == "lisa") and "probe/explained" in rows[-1]
    # both arms encode the same captions with the same encoder: one cache entry (reuse itself: tests/text/test_prompts.py)
    assert len(list((cache_dir(tmp_path / "runs") / "prompts").glob("prompts-*.safetensors"))) == 1
    controlnet = ControlNetModel.from_pretrained(tmp_path / "runs" / "lisa" / "controlnet")
    assert controlnet.config.conditioning_channels == 3
    pipe = StableDiffusionControlNetPipeline.from_pretrained(sd_pipeline, controlnet=controlnet, safety_checker=None,
                                                             requires_safety_checker=False)
    control = shape_row(0, 64)["conditioning_image"]
    assert isinstance(control, Image.Image) and control.mode == "RGB"
    image = pipe("a big red circle", image=control, num_inference_steps=2, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 64, 64, 3) and np.isfinite(image).all()


def test_the_training_forward_is_diffusers_forward_with_the_captions(tmp_path, sd_pipeline, captioned_data):
    """pred_full in training = diffusers' UNet + ControlNet on the captions' CLIP embeddings (transformers alone)."""
    config = captioned_config(tmp_path, sd_pipeline, captioned_data)
    model, dataset_kwargs = build_dual_branch(config)
    with torch.no_grad():
        for parameter in model.side.controlnet_down_blocks.parameters():  # open the zero-convs
            parameter.normal_(0, 0.1)
    prompts = prompt_embeddings(config, [build_dataset("captioned", split=split, **dataset_kwargs) for split in ("train", "val")],
                                    tmp_path / 'cache')
    dataset = build_dataset("captioned", split="train", **dataset_kwargs)
    batch = default_collate([dataset[i] for i in range(3)])
    objective = SideNetObjective(model, None, config, model.default_lisa_site(), prompts)
    inputs = objective.draw(batch, torch.Generator().manual_seed(0))
    x_t = model.parameterization.add_noise(inputs["x0"], inputs["noise"], inputs["timesteps"])
    ours = model(x_t, inputs["timesteps"], inputs["cond"], context={"context": inputs["context"]}).pred_full
    theirs = diffusers_prediction(sd_pipeline, model.side, x_t, inputs["timesteps"], batch["cond"], batch["text"])
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    assert (ours - model(x_t, inputs["timesteps"], inputs["cond"]).pred_full).abs().max() > 1e-4


def test_caption_dropout_feeds_the_empty_prompt(tmp_path, sd_pipeline, captioned_data):
    batch = default_collate([build_dataset("captioned", split="train", resolution=64, root=captioned_data)[i]
                             for i in range(4)])
    contexts = {}
    for proportion in (0.0, 1.0):
        config = captioned_config(tmp_path, sd_pipeline, captioned_data, proportion_empty_prompts=proportion)
        model, dataset_kwargs = build_dual_branch(config)
        prompts = prompt_embeddings(config, [build_dataset("captioned", split=split, **dataset_kwargs) for split in ("train", "val")],
                                    tmp_path / 'cache')
        objective = SideNetObjective(model, None, config, model.default_lisa_site(), prompts)
        contexts[proportion] = objective.draw(batch, torch.Generator().manual_seed(0))["context"]
        torch.testing.assert_close(contexts[proportion], (prompts.lookup(batch["text"])["context"] if proportion == 0
                                                          else model.null_context_batch(4)["context"]), rtol=0, atol=0)
    assert (contexts[0.0] - contexts[1.0]).abs().max() > 1e-3


def test_lisa_main_prompt_empty_gives_pred_main_the_null_context(tmp_path, sd_pipeline, captioned_data, monkeypatch):
    seen = {}
    for mode in ("caption", "empty"):
        config = captioned_config(tmp_path, sd_pipeline, captioned_data, lisa_main_prompt=mode, name=mode)
        model, _ = build_dual_branch(config)
        original = type(model).forward

        def recording(self, *args, main_context=None, mode=mode, original=original, **kwargs):
            seen[mode] = main_context
            return original(self, *args, main_context=main_context, **kwargs)

        monkeypatch.setattr(type(model), "forward", recording)
        train(config)
        monkeypatch.setattr(type(model), "forward", original)
    assert seen["caption"] is None  # pred_main shares the caption with pred_full
    torch.testing.assert_close(seen["empty"]["context"], model.null_context_batch(4)["context"], rtol=0, atol=0)


def test_resume_on_the_captioned_path_continues_exactly(tmp_path, sd_pipeline, captioned_data):
    common = dict(checkpoint_every=2, proportion_empty_prompts=0.5)
    straight = train(captioned_config(tmp_path, sd_pipeline, captioned_data, name="straight", steps=4, **common))
    train(captioned_config(tmp_path, sd_pipeline, captioned_data, name="resumed", steps=2, **common))
    resumed = train(captioned_config(tmp_path, sd_pipeline, captioned_data, name="resumed", steps=4, resume="latest",
                                     **common))
    for name in ("controlnet", "lisa_decoder"):
        a, b = side_weights(straight / name), side_weights(resumed / name)
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert [r["loss"] for r in read_metrics(straight)] == [r["loss"] for r in read_metrics(resumed)]


@pytest.mark.parametrize("argv,message", [
    (["--data-root", "none"], "--dataset captioned needs --data-root"),
    (["--caption-column", "prompt"], "caption column 'prompt' is not in"),
    (["--conditioning-image-column", "hint"], "its columns: image, conditioning_image, text, colour, size"),
    (["--dataset", "folder", "--data-root", "{parquet}"], "not a directory of images (it looks like a `datasets` "
                                                          "dataset: read it with --dataset captioned)"),
    (["--main", "{pixel}"], "has no text_encoder/ and tokenizer/; train without them with --caption-column none"),
    (["--val-fraction", "0", "--eval-samples", "2"], "the val split of"),
    (["--proportion-empty-prompts", "2"], "--proportion-empty-prompts must be a finite number in [0, 1], got 2.0"),
    (["--lisa-main-prompt", "none"], "invalid choice: 'none'"),
])
def test_bad_captioned_inputs_exit_2_naming_the_value_with_no_run_dir(tmp_path, sd_pipeline, captioned_data, capsys,
                                                                      argv, message):
    values = {"{parquet}": str(next((captioned_data / "data").glob("*.parquet"))),
              "{pixel}": make_main(tmp_path, "unet", "eps")}
    argv = [values.get(arg, arg) for arg in argv]
    base = ["--main", str(sd_pipeline), "--dataset", "captioned", "--data-root", str(captioned_data),
            "--out-dir", str(tmp_path / "runs"), "--eval-samples", "0"]
    with pytest.raises(SystemExit) as stop:
        train_main([*base, *argv])
    error = capsys.readouterr().err
    assert stop.value.code == 2 and message in error and "Traceback" not in error
    assert not (tmp_path / "runs").exists()


def test_extraction_and_analysis_on_captions_for_our_run_and_a_diffusers_controlnet(tmp_path, sd_pipeline,
                                                                                      captioned_data):
    """Stores of captioned data record each row's prompt; --prompt empty conditions every row on the null context;
    the rows' predictions are rebuilt from the store and the prompt cache; the analysis (with the model-based
    decomposition) runs on the store of a lisa_probe run and on that of a ControlNet diffusers built."""
    run = train(captioned_config(tmp_path, sd_pipeline, captioned_data, steps=2, name="lisa"))
    stores = {}
    for mode in ("caption", "empty"):
        stores[mode] = tmp_path / f"{mode}.h5"
        extract_main(["--ckpt", str(run), "--out", str(stores[mode]), "--samples", "20", "--timesteps", "2",
                      "--prompt", mode, "--split", "train"])
    captioned, empty = FeatureStore(stores["caption"]), FeatureStore(stores["empty"])
    val = build_dataset("captioned", split="train", resolution=64, root=captioned_data)
    assert list(captioned.read("meta/prompt")) == [val[i]["text"] for i in range(20) for _ in range(2)]
    assert set(empty.read("meta/prompt")) == {""}
    assert captioned.attrs["inputs"]["prompts"].startswith("each row's meta/prompt")
    full = captioned.read("scores/full")
    assert np.abs(full - empty.read("scores/full")).max() > 1e-4  # the captions condition the rows
    config, model, _, dataset_kwargs = load_run(run)
    selected = open_run(stores["caption"], "caption", AnalyzeOptions(n_splits=2))
    x_t, steps, cond, context, *_ = rebuild_inputs(selected, model, config, dataset_kwargs,
                                                   np.arange(len(selected.rows)))
    with torch.no_grad():
        rebuilt = model(x_t, steps, cond, context=context).pred_full.numpy()
    np.testing.assert_allclose(rebuilt, full[selected.rows], rtol=1e-4, atol=1e-5)

    controlnet = ControlNetModel.from_unet(model.main)  # what diffusers' trainer starts from: 3 channels
    controlnet.save_pretrained(tmp_path / "theirs")
    extract_main(["--controlnet", str(tmp_path / "theirs"), "--main", str(sd_pipeline), "--dataset", "captioned",
                  "--data-root", str(captioned_data), "--out", str(tmp_path / "theirs.h5"), "--samples", "20",
                  "--timesteps", "2", "--residuals", "--split", "train"])
    assert list(FeatureStore(tmp_path / "theirs.h5").read("meta/prompt"))[:2] == [val[0]["text"]] * 2
    analyze_main([str(stores["caption"]), str(tmp_path / "theirs.h5"), "--out", str(tmp_path / "report"),
                  "--no-umap", "--attribution-samples", "1", "--ig-steps", "2", "--shapley-samples", "2",
                  "--n-splits", "3"])
    decomposition = pd.read_csv(tmp_path / "report" / "decomposition.csv")
    assert ((decomposition["source"] == "model") & (decomposition["run"] == "caption")).any()
    assert set(pd.read_csv(tmp_path / "report" / "alignment.csv")["run"]) == {"caption", "theirs"}


def test_an_sd2_v_prediction_pipeline_trains_on_captions(tmp_path, captioned_data):
    """SD 2.x-style: the scheduler's v_prediction is the target; captions through its text encoder as for SD 1.x."""
    pipeline = write_sd_pipeline(tmp_path / "sd2v", prediction_type="v_prediction")
    run = train(captioned_config(tmp_path, pipeline, captioned_data, steps=2, name="v"))
    _, model, _, _ = load_run(run)
    assert model.parameterization.prediction_type == "v"
    assert read_summary(run)["steps"] == 2 and all(math.isfinite(float(r["loss"])) for r in read_metrics(run))


def test_a_pipeline_with_a_second_text_encoder_but_no_second_tokenizer_is_refused_by_name(tmp_path, sd_pipeline,
                                                                                           captioned_data, capsys):
    half_sdxl = tmp_path / "half-sdxl"
    shutil.copytree(sd_pipeline, half_sdxl)
    shutil.copytree(sd_pipeline / "text_encoder", half_sdxl / "text_encoder_2")
    with pytest.raises(SystemExit) as stop:
        train_main(["--main", str(half_sdxl), "--dataset", "captioned", "--data-root", str(captioned_data),
                    "--out-dir", str(tmp_path / "runs"), "--eval-samples", "0"])
    error = capsys.readouterr().err
    assert stop.value.code == 2 and "text_encoder_2/ or tokenizer_2/ but not both" in error
    assert not (tmp_path / "runs").exists()


def test_bf16_holds_the_frozen_main_net_and_vae_in_bf16_and_the_side_net_in_fp32(tmp_path, sd_pipeline,
                                                                                 captioned_data, monkeypatch):
    """As diffusers' trainers under --mixed_precision: the frozen modules in the weight dtype, the trained one in
    fp32; training, the evaluation and the onset probe run (under autocast) to finite numbers."""
    seen = {}
    forward = SideNetObjective.forward

    def recording(self, *args, **kwargs):
        seen.update(main=self.model.main.dtype, vae=self.model.vae.dtype, side=self.model.side.dtype)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(SideNetObjective, "forward", recording)
    run = train(captioned_config(tmp_path, sd_pipeline, captioned_data, steps=2, mixed_precision="bf16",
                                 eval_samples=2, eval_every=2, sample_steps=2, probe_every=2, probe_samples=2))
    assert seen == {"main": torch.bfloat16, "vae": torch.bfloat16, "side": torch.float32}
    rows = read_metrics(run)
    assert all(math.isfinite(float(row["loss"])) for row in rows) and math.isfinite(float(rows[-1]["probe/explained"]))
    assert (run / "samples" / "step-2.png").exists()  # the evaluation sampled and decoded through the bf16 VAE


def test_resolution_runs_the_pipeline_at_another_size(tmp_path, sd_pipeline, captioned_data):
    """--resolution 32 on a 64-px pipeline: 32-px images (shorter side resized, centre crop), 4x4 latents, sites
    at that size, a resumable run; sizes the UNet cannot take are refused naming what it can."""
    config = captioned_config(tmp_path, sd_pipeline, captioned_data, steps=2, resolution=32, name="r32")
    model, kwargs = build_dual_branch(config)
    assert kwargs["resolution"] == 32 and model.main.config.sample_size == 4
    assert build_dataset("captioned", split="train", **kwargs)[0]["image"].shape == (3, 32, 32)
    native, _ = build_dual_branch(captioned_config(tmp_path, sd_pipeline, captioned_data))
    assert [site.feature_shape[1:] for site in model.sites] == [
        tuple(size // 2 for size in site.feature_shape[1:]) for site in native.sites]
    run = train(config)
    assert read_summary(run)["steps"] == 2
    with pytest.raises(ValueError, match="--resolution 36 does not fit this main net: it takes multiples of 16"):
        build_dual_branch(captioned_config(tmp_path, sd_pipeline, captioned_data, resolution=36))


def test_a_run_with_random_crops_and_flips_resumes_exactly(tmp_path, sd_pipeline, captioned_data):
    """The crops come from (seed, draw number) and the flips from the run's generator: a resumed run ends with the
    side net of an uninterrupted one (same settings, same process)."""
    options = dict(random_crop=True, random_flip=True, resolution=32, checkpoint_every=1)
    whole = train(captioned_config(tmp_path, sd_pipeline, captioned_data, steps=3, name="whole", **options))
    train(captioned_config(tmp_path, sd_pipeline, captioned_data, steps=2, name="parts", **options))
    parts = train(captioned_config(tmp_path, sd_pipeline, captioned_data, steps=3, name="parts", resume="latest",
                                   **options))
    first, second = side_weights(whole / "controlnet"), side_weights(parts / "controlnet")
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_random_flip_mirrors_image_and_condition_together_about_half_the_time(tmp_path, sd_pipeline, captioned_data):
    config = captioned_config(tmp_path, sd_pipeline, captioned_data, random_flip=True)
    model, kwargs = build_dual_branch(config)
    objective = SideNetObjective(model, None, config, model.site_names[0])
    dataset = build_dataset("captioned", split="train", **kwargs)
    batch = default_collate([dataset[i] for i in range(16)])
    captured = {}
    model.encode_images = lambda images, generator=None: captured.setdefault("images", images)
    drawn = objective.draw(batch, torch.Generator().manual_seed(0))
    flipped = [torch.equal(captured["images"][i], batch["image"][i].flip(-1)) for i in range(16)]
    kept = [torch.equal(captured["images"][i], batch["image"][i]) for i in range(16)]
    assert all(f or k for f, k in zip(flipped, kept)) and 3 <= sum(flipped) <= 13
    for i in range(16):  # the condition goes with its image
        assert torch.equal(drawn["cond"][i], batch["cond"][i].flip(-1) if flipped[i] else batch["cond"][i])


@pytest.mark.parametrize("argv,message", [
    (["--cache-latents", "--random-flip"], "--cache-latents cannot be used with --random-flip"),
    (["--cache-latents", "--random-crop"], "--cache-latents cannot be used with --random-crop"),
    (["--cache-latents", "--main", "{pixel}", "--caption-column", "none"], "--cache-latents needs a latent main net")])
def test_bad_latent_cache_options_exit_2_with_no_run_dir(tmp_path, sd_pipeline, captioned_data, capsys, argv,
                                                         message):
    argv = [make_main(tmp_path, "unet", "eps") if arg == "{pixel}" else arg for arg in argv]
    with pytest.raises(SystemExit) as stop:
        train_main(["--main", str(sd_pipeline), "--dataset", "captioned", "--data-root", str(captioned_data),
                    "--out-dir", str(tmp_path / "runs"), "--eval-samples", "0", *argv])
    error = capsys.readouterr().err
    assert stop.value.code == 2 and message in error and "Traceback" not in error
    assert not (tmp_path / "runs").exists()


def test_a_run_builds_each_split_once_and_loads_the_text_encoder_once(tmp_path, sd_pipeline, captioned_data,
                                                                     monkeypatch):
    """One decision in one place: train() builds the train and val splits once and passes them on (evaluation,
    onset probe, prompt cache, side-net channels), and the null context and the captions share one loaded encoder."""
    built, loaded = [], []
    init, from_pipeline = CaptionedDataset.__init__, PromptEncoder.from_pipeline.__func__

    def counting_init(self, split="train", *args, **kwargs):
        built.append(split)
        init(self, split, *args, **kwargs)

    def counting_load(cls, pipeline, variant=None):
        loaded.append(pipeline)
        return from_pipeline(cls, pipeline, variant)

    monkeypatch.setattr(CaptionedDataset, "__init__", counting_init)
    monkeypatch.setattr(PromptEncoder, "from_pipeline", classmethod(counting_load))
    _loaded_encoder.cache_clear()
    train(captioned_config(tmp_path, sd_pipeline, captioned_data, steps=2, eval_samples=2, eval_every=2,
                           sample_steps=2, probe_every=2, probe_samples=2, name="once"))
    assert sorted(built) == ["train", "val"] and len(loaded) == 1
