"""diffusers' ControlNet trainer option names: accepted beside ours with the same meaning, listed in ``--help``;
``--train_data_dir`` also selects the captioned dataset, as diffusers reads a datasets folder."""

import math
import shlex
from dataclasses import asdict
from pathlib import Path

import pytest

from lisa_probe.data import build_dataset
from lisa_probe.options import parse_config
from lisa_probe.train import main
from lisa_probe.training.config import DIFFUSERS_ALIASES, TrainConfig

PROG = "python -m lisa_probe.train"


def test_diffusers_names_parse_to_the_same_config_as_ours(sd_pipeline, captioned_data, tmp_path):
    theirs = parse_config(TrainConfig, [
        f"--pretrained_model_name_or_path={sd_pipeline}", f"--output_dir={tmp_path}", f"--train_data_dir={captioned_data}",
        "--resolution=32", "--learning_rate=1e-5", "--train_batch_size=4", "--max_train_steps=7",
        "--gradient_accumulation_steps=2", "--checkpointing_steps=5", "--checkpoints_total_limit=3",
        "--validation_steps=5", "--lr_scheduler=cosine", "--lr_warmup_steps=2", "--adam_weight_decay=0.02",
        "--mixed_precision=no", "--report_to=none", "--dataloader_num_workers=0", "--gradient_checkpointing",
        "--image_column=image", "--caption_column=text", "--proportion_empty_prompts=0.1"], PROG, "")
    ours = parse_config(TrainConfig, [
        "--main", str(sd_pipeline), "--out-dir", str(tmp_path), "--dataset", "captioned", "--data-root",
        str(captioned_data), "--resolution", "32", "--lr", "1e-5", "--batch-size", "4", "--steps", "7",
        "--grad-accum", "2", "--checkpoint-every", "5", "--keep-checkpoints", "3", "--eval-every", "5",
        "--lr-schedule", "cosine", "--lr-warmup-steps", "2", "--weight-decay", "0.02", "--mixed-precision", "no",
        "--report-to", "none", "--num-workers", "0", "--gradient-checkpointing", "--image-column", "image",
        "--caption-column", "text", "--proportion-empty-prompts", "0.1"], PROG, "")
    assert asdict(theirs) == asdict(ours)


def test_every_alias_is_in_help_beside_ours(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert all(alias in text for aliases in DIFFUSERS_ALIASES.values() for alias in aliases)
    assert "--train_data_dir STR  as --data-root, with --dataset captioned" in text


# examples/controlnet/README.md of diffusers, "Training" (accelerate launch train_controlnet.py \ ...), verbatim
README_COMMAND = """
 --pretrained_model_name_or_path=$MODEL_DIR \\
 --output_dir=$OUTPUT_DIR \\
 --dataset_name=fusing/fill50k \\
 --resolution=512 \\
 --learning_rate=1e-5 \\
 --validation_image "./conditioning_image_1.png" "./conditioning_image_2.png" \\
 --validation_prompt "red circle with blue background" "cyan circle with brown floral background" \\
 --train_batch_size=4
"""


def test_diffusers_readme_command_trains(sd_pipeline, captioned_data, tmp_path, monkeypatch):
    """diffusers' README command for train_controlnet.py through our CLI, with its paths ours (the tiny pipeline,
    the local fill50k-like table, two conditioning images written here), --resolution 64 instead of 512 (CPU) and
    diffusers' own default --num_train_epochs=1 made explicit (ours is --steps 600): it trains one epoch, evaluates
    the validation split and the two pairs, and draws them in the grid."""
    from PIL import Image

    from lisa_probe.rundir import read_run_config

    monkeypatch.chdir(tmp_path)
    for i, colour in ((1, (255, 0, 0)), (2, (0, 255, 255))):
        Image.new("RGB", (80, 64), colour).save(f"conditioning_image_{i}.png")
    command = (README_COMMAND.replace("\\\n", " ").replace("$MODEL_DIR", str(sd_pipeline))
               .replace("$OUTPUT_DIR", "out").replace("fusing/fill50k", str(captioned_data))
               .replace("--resolution=512", "--resolution=64"))
    assert main([*shlex.split(command), "--num_train_epochs=1", "--name=fill"]) == 0
    run = tmp_path / "out" / "fill"
    config = read_run_config(run, TrainConfig, "train")
    train_rows = len(build_dataset("captioned", split="train", root=str(captioned_data), resolution=64))
    assert config.steps == math.ceil(train_rows / 4) and config.num_train_epochs == 1
    assert config.validation_pairs == [(str(tmp_path / "conditioning_image_1.png"), "red circle with blue background"),
                                       (str(tmp_path / "conditioning_image_2.png"),
                                        "cyan circle with brown floral background")]
    assert (run / "controlnet" / "config.json").exists()
    val_rows = len(build_dataset("captioned", split="val", root=str(captioned_data), resolution=64))
    grid = Image.open(run / "samples" / f"step-{config.steps}.png")
    columns = min(8, val_rows) + 2  # the split's first 8, then the two pairs
    assert grid.width == 64 + columns * (64 * 2 + 2)


def test_a_diffusers_choice_we_do_not_have_is_refused_by_name(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--lr_scheduler=piecewise_constant"])
    assert stop.value.code == 2 and "invalid choice: 'piecewise_constant'" in capsys.readouterr().err


def test_a_cached_model_id_trains_like_its_directory(sd_pipeline, captioned_data, tmp_path, monkeypatch):
    """--pretrained_model_name_or_path me/tiny-sd, found in the local Hugging Face cache (offline), is the same
    main net as its directory; an id that is not cached is refused in one line before anything is made."""
    import huggingface_hub.constants

    from tests.test_files import cache_model

    # the cache directory is read from HF_HUB_CACHE at import: patch the constant
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snapshot = cache_model(tmp_path / "hub", "me/tiny-sd", sd_pipeline)
    config = parse_config(TrainConfig, ["--pretrained_model_name_or_path=me/tiny-sd", f"--output_dir={tmp_path}",
                                        f"--train_data_dir={captioned_data}"], PROG, "")
    assert Path(config.main) == snapshot
    assert main(["--pretrained_model_name_or_path=me/tiny-sd", f"--output_dir={tmp_path / 'out'}",
                 f"--train_data_dir={captioned_data}", "--resolution=32", "--max_train_steps=1", "--name=cached",
                 "--eval-samples=0"]) == 0
    with pytest.raises(SystemExit) as stop:
        main(["--pretrained_model_name_or_path=me/uncached", f"--output_dir={tmp_path / 'x'}"])
    assert stop.value.code == 2 and not (tmp_path / "x").exists()


def with_fp16_variant(pipeline: Path, out: Path) -> Path:
    """A copy of ``pipeline`` whose unet/, vae/ and text_encoder/ also hold fp16 variant weight files
    (``*.fp16.safetensors``, the weights rounded to float16), as diffusers' ``save_pretrained(variant="fp16")``
    names them."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(pipeline, out)
    for part, name in (("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"),
                       ("text_encoder", "model")):
        weights = load_file(out / part / f"{name}.safetensors")
        save_file({key: value.half() for key, value in weights.items()}, out / part / f"{name}.fp16.safetensors")
    return out


def test_revision_and_variant_pick_the_cached_snapshot_and_weight_files(sd_pipeline, captioned_data, tmp_path,
                                                                        monkeypatch):
    """--revision v2 resolves the id to the snapshot refs/v2 names (refs/main names another); --variant fp16 loads
    its fp16 weight files (the unet's and the text encoder's weights are the float16-rounded ones) and trains; the
    main snapshot has no fp16 files: refused in one line, nothing made."""
    import huggingface_hub.constants
    import torch

    from lisa_probe.text.prompts import prompt_encoder
    from lisa_probe.training.loading import load_main_net
    from tests.test_files import cache_model

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    plain = cache_model(tmp_path / "hub", "me/tiny-sd", sd_pipeline)
    v2 = cache_model(tmp_path / "hub", "me/tiny-sd", with_fp16_variant(sd_pipeline, tmp_path / "fp16"), ref="v2",
                     commit="fedcba9876543210fedcba9876543210fedcba98")
    common = ["--pretrained_model_name_or_path=me/tiny-sd", f"--train_data_dir={captioned_data}", "--resolution=32",
              "--max_train_steps=1", "--eval-samples=0"]
    assert Path(parse_config(TrainConfig, common, PROG, "").main) == plain
    config = parse_config(TrainConfig, [*common, "--revision=v2", "--variant=fp16"], PROG, "")
    assert Path(config.main) == v2
    net, _ = load_main_net(config)
    reference, _ = load_main_net(parse_config(TrainConfig, [*common, "--revision=v2"], PROG, ""))
    for found, expected in zip(net.main.parameters(), reference.main.parameters()):
        assert torch.equal(found, expected.half().float())
    assert any(not torch.equal(p, p.half().float()) for p in reference.main.parameters())  # the variant is another
    encoder = prompt_encoder(config.main, "fp16").text_encoders[0]
    plain_encoder = prompt_encoder(config.main).text_encoders[0]
    assert all(torch.equal(a, b.half().float()) for a, b in zip(encoder.parameters(), plain_encoder.parameters()))
    assert main([*common, "--revision=v2", "--variant=fp16", f"--output_dir={tmp_path / 'out'}", "--name=v"]) == 0
    assert (tmp_path / "out" / "v" / "controlnet" / "config.json").exists()
    with pytest.raises(SystemExit) as stop:
        main([*common, "--variant=fp16", f"--output_dir={tmp_path / 'x'}"])
    assert stop.value.code == 2 and not (tmp_path / "x").exists()
    # extraction of the trained ControlNet against the same id, revision and variant: the store records them
    from lisa_probe.extract import main as extract_main
    from lisa_probe.store import FeatureStore

    store = tmp_path / "v.h5"
    assert extract_main(["--controlnet", str(tmp_path / "out" / "v" / "controlnet"), "--main", "me/tiny-sd",
                         "--revision", "v2", "--variant", "fp16", "--dataset", "captioned", "--data-root",
                         str(captioned_data), "--resolution", "32", "--samples", "2", "--timesteps", "1",
                         "--out", str(store)]) == 0
    stored = FeatureStore(store).attrs["config"]
    assert stored["variant"] == "fp16" and (store.parent / stored["main"]).resolve() == v2.resolve()


@pytest.mark.parametrize("schedule", ["constant", "constant_with_warmup", "cosine", "cosine_with_restarts", "linear",
                                      "polynomial"])
def test_the_learning_rate_schedules_are_diffusers_own(schedule):
    """Each --lr_scheduler against diffusers.optimization.get_scheduler on a real optimizer: equal after the warm-up;
    during it ours runs one step ahead (our step s takes diffusers' rate of step s + 1, so no step trains at rate 0).
    Our constant warms up as diffusers' constant_with_warmup (diffusers' constant ignores the warm-up)."""
    import torch
    from diffusers.optimization import get_scheduler

    from lisa_probe.training.engine import learning_rate

    warmup, steps, lr = 4, 20, 1e-3
    config = TrainConfig(main=None, lr=lr, lr_warmup_steps=warmup, steps=steps, lr_schedule=schedule,
                         lr_num_cycles=2, lr_power=2.0)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    theirs = get_scheduler("constant_with_warmup" if schedule == "constant" else schedule, optimizer,
                           num_warmup_steps=warmup, num_training_steps=steps, num_cycles=2, power=2.0).lr_lambdas[0]
    for step in range(steps + 2):
        expected = lr * theirs(step + 1 if step < warmup else step)
        assert learning_rate(step, config) == pytest.approx(expected, rel=1e-9, abs=1e-15), step
