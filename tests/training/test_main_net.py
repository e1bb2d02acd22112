"""Main-net pretraining: diffusers layout, sample grid, quality numbers, bad input."""

import csv

import numpy as np
import pytest
import torch
from diffusers import SD3Transformer2DModel, UNet2DConditionModel
from PIL import Image
from safetensors.torch import load_file
from torch.utils.data import default_collate

from lisa_probe.data import build_dataset
from lisa_probe.diffusion.parameterization import Parameterization
from lisa_probe.models import build_main, load_main
from lisa_probe.options import read_config
from lisa_probe.pretrain import main
from lisa_probe.rundir import resolved_path
from lisa_probe.text.prompts import PromptEncoder, prompt_embeddings
from lisa_probe.training.config import PretrainConfig
from lisa_probe.training.main_net import MainNetObjective, pretrain
from tests.conftest import launch_two_cpu_processes


@pytest.mark.parametrize("backbone,main_class", [("unet", UNet2DConditionModel), ("dit", SD3Transformer2DModel)])
def test_pretrain_writes_a_diffusers_main_net_with_grid_and_quality(tmp_path, backbone, main_class):
    config = PretrainConfig(backbone=backbone, preset="tiny", resolution=16, steps=2, batch_size=4,
                            eval_samples=8, sample_steps=2, out_dir=str(tmp_path), log_every=1)
    run_dir = pretrain(config)
    assert run_dir.name == f"main-{backbone}-{'v' if backbone == 'unet' else 'flow'}-shapes16"
    main_class.from_pretrained(run_dir / ("unet" if backbone == "unet" else "transformer"))
    family, _, parameterization, _, _ = load_main(run_dir)
    assert family == backbone and parameterization.prediction_type == config.prediction_type
    assert (run_dir / "samples" / "step-2.png").exists()
    with open(run_dir / "eval.csv", newline="") as handle:
        metrics = {row["metric"]: float(row["value"]) for row in csv.DictReader(handle)}
    assert metrics["fd"] > 0 and metrics["fd_real_real"] > 0
    # two steps make noise, not shapes: the fit of its samples stays below that of real images
    assert 0 <= metrics["shape_fit_f1"] < metrics["shape_fit_f1_real"] <= 1


@pytest.mark.parametrize("argv,message", [(["--dataset", "imagenet"], "imagenet"), (["--backbone", "vit"], "vit"),
                                          (["--preset", "huge"], "huge"),
                                          (["--backbone", "dit", "--prediction-type", "eps"], "flow"),
                                          (["--backbone", "dit", "--min-snr-gamma", "5"], "flow"),
                                          (["--min-snr-gamma", "-1"], "-1"), (["--eval-samples", "-1"], "-1"),
                                          (["--dataset", "folder"], "needs its location: --data-root"),
                                          (["--ema-decay", "2"], "--ema-decay must be a finite number in [0, 1)"),
                                          (["--ema-decay", "-1"], "--ema-decay must be a finite number in [0, 1)"),
                                          (["--sample-steps", "0"], "--sample-steps must be >= 1, got 0"),
                                          (["--max-grad-norm", "nan"], "--max-grad-norm must be a finite number"),
                                          (["--seed", "-3"], "--seed must be a finite number in [0, "),
                                          (["--skip-bad-files"], "applies to --dataset folder"),
                                          (["--dataset", "digits", "--label-prompts"], "applies to --dataset shapes"),
                                          (["--label-prompts", "--proportion-empty-prompts", "2"],
                                           "--proportion-empty-prompts must be a finite number in [0, 1]")])
def test_bad_input_names_what_is_allowed(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit):
        main([*argv, "--out-dir", str(tmp_path / "runs")])
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # nothing is created for a run that cannot start


def test_min_snr_default_and_weighted_loss():
    import torch

    from lisa_probe.diffusion.parameterization import Parameterization
    from lisa_probe.models import build_main
    from lisa_probe.training.main_net import MainNetObjective

    assert PretrainConfig().min_snr_gamma == 5.0 and PretrainConfig(backbone="dit").min_snr_gamma == 0.0
    main_net = build_main("unet", "tiny", 16, seed=0)
    p = Parameterization("eps")
    x0, noise = torch.randn(3, 3, 16, 16), torch.randn(3, 3, 16, 16)
    timesteps = torch.tensor([5, 400, 990])
    plain = MainNetObjective("unet", main_net, p)(x0, noise, timesteps, step=0)["loss"]
    weighted = MainNetObjective("unet", main_net, p, min_snr_gamma=5.0)(x0, noise, timesteps, step=0)["loss"]
    with torch.no_grad():
        per_sample = (MainNetObjective("unet", main_net, p).predict(p.add_noise(x0, noise, timesteps), timesteps,
                                                                     ema=False) - noise).pow(2).flatten(1).mean(1)
    torch.testing.assert_close(plain, per_sample.mean())
    torch.testing.assert_close(weighted, (per_sample * p.min_snr_weight(timesteps, 5.0)).mean())


@pytest.mark.slow
def test_two_cpu_processes_with_accelerate(tmp_path):
    """Two gloo CPU processes pretrain one main net (the path ``lisa_probe.train`` takes under ``accelerate launch``
    when the default main net is missing); rank 0 alone writes config, scheduler and report."""
    result = launch_two_cpu_processes("lisa_probe.pretrain", [
        "--preset", "tiny", "--resolution", "16", "--steps", "2", "--batch-size", "2", "--eval-samples", "0",
        "--out-dir", str(tmp_path), "--name", "ddp"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("main net written to") == 1
    assert read_config(tmp_path / "ddp" / "config.yaml")["config"]["steps"] == 2
    family, _, parameterization, _, _ = load_main(tmp_path / "ddp")
    assert family == "unet" and parameterization.prediction_type == "v"
    assert not (tmp_path / "ddp" / "eval.csv").exists()  # --eval-samples 0: no evaluation


def test_pretrain_on_an_image_folder(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    for i in range(24):
        Image.fromarray(rng.integers(0, 256, (20, 28, 3), dtype=np.uint8)).save(tmp_path / "img" / f"{i}.png")
    with pytest.warns(UserWarning, match="no carried factors: no read-back scores and no FD"):
        assert main(["--dataset", "folder", "--data-root", str(tmp_path / "img"), "--preset", "tiny", "--resolution",
                     "16", "--steps", "2", "--batch-size", "2", "--eval-samples", "4", "--sample-steps", "2",
                     "--out-dir", str(tmp_path / "runs")]) == 0
    run_dir = tmp_path / "runs" / "main-unet-v-folder16"
    assert load_main(run_dir)[0] == "unet" and (run_dir / "samples" / "step-2.png").exists()
    stored = read_config(run_dir / "config.yaml")["config"]["data_root"]  # relative to the run directory
    assert stored == "../../img" and resolved_path(stored, run_dir) == tmp_path / "img"


@pytest.mark.parametrize("backbone", ["unet", "dit"])
def test_pretraining_on_label_prompts_conditions_the_main_net_and_resumes_exactly(tmp_path, backbone):
    """The run directory gets the label encoder (a pipeline's text_encoder/ + tokenizer/, whose empty prompt is the
    null context); each sample is conditioned on its own prompt, dropped to the empty one at the set rate; the
    evaluation scores the factors the prompts name; and a resumed run ends with the weights of an uninterrupted one
    (same settings, same process: exact)."""
    options = dict(backbone=backbone, preset="tiny", resolution=16, batch_size=4, label_prompts=True,
                   proportion_empty_prompts=0.5, checkpoint_every=2, log_every=1)
    whole = pretrain(PretrainConfig(**options, steps=4, eval_samples=8, sample_steps=2, out_dir=str(tmp_path / "a")))
    assert (whole / "text_encoder" / "model.safetensors").exists() and (whole / "tokenizer" / "vocab.json").exists()
    empty = PromptEncoder.from_pipeline(whole).empty()
    null = load_main(whole)[3]
    assert set(null) == set(empty) and all(torch.equal(null[name], empty[name]) for name in null)
    with open(whole / "eval.csv", newline="") as handle:
        metrics = {row["metric"]: float(row["value"]) for row in csv.DictReader(handle)}
    assert {"readback/kind", "readback/hue", "readback/x"} <= set(metrics)

    config = PretrainConfig(**options, steps=4, eval_samples=0, out_dir=str(tmp_path / "b"))
    prompts = prompt_embeddings(config, [build_dataset(config.dataset, split="train", **config.dataset_kwargs(16, 0))],
                                tmp_path / "cache", progress=False,
                                pipeline=whole)
    objective = MainNetObjective(backbone, build_main(backbone, "tiny", 16), Parameterization(
        config.prediction_type), prompts=prompts, proportion_empty_prompts=0.5, pipeline=whole)
    dataset = build_dataset("shapes", split="train", resolution=16, label_prompts=True, size=32)
    batch = default_collate([dataset[i] for i in range(32)])
    drawn = objective.draw(batch, torch.Generator().manual_seed(0))
    dropped = [torch.equal(drawn["context"][i], empty["context"][0]) for i in range(32)]
    kept = [torch.allclose(drawn["context"][i], prompts.lookup([batch["text"][i]])["context"][0]) for i in range(32)]
    assert all(d or k for d, k in zip(dropped, kept)) and 5 <= sum(dropped) <= 27  # about half, each its own prompt
    assert len({tuple(row[1:3].flatten().tolist()) for row in drawn["context"]}) > 2  # (row 0: the start token)

    pretrain(PretrainConfig(**options, steps=2, eval_samples=0, out_dir=str(tmp_path / "c"), name="r"))
    resumed = pretrain(PretrainConfig(**options, steps=4, eval_samples=0, out_dir=str(tmp_path / "c"), name="r",
                                      resume="latest"))
    reference = pretrain(PretrainConfig(**options, steps=4, eval_samples=0, out_dir=str(tmp_path / "d"), name="r"))
    sub = "unet" if backbone == "unet" else "transformer"
    first, second = (load_file(next((d / sub).glob("*.safetensors"))) for d in (resumed, reference))
    assert all(torch.equal(first[name], second[name]) for name in first)
