"""diffusers' ControlNet trainer option names: accepted beside ours with the same meaning, listed in ``--help``;
``--train_data_dir`` also selects the captioned dataset, as diffusers reads a datasets folder."""

from dataclasses import asdict
from pathlib import Path

import pytest

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


def test_a_diffusers_style_command_trains(sd_pipeline, captioned_data, tmp_path):
    assert main([f"--pretrained_model_name_or_path={sd_pipeline}", f"--output_dir={tmp_path}",
                 f"--train_data_dir={captioned_data}", "--resolution=32", "--learning_rate=1e-5",
                 "--train_batch_size=2", "--max_train_steps=2", "--checkpointing_steps=1", "--name=fill",
                 "--eval-samples=0"]) == 0
    assert (tmp_path / "fill" / "controlnet" / "config.json").exists()
    assert sorted(path.name for path in (tmp_path / "fill").glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]


def test_a_diffusers_choice_we_do_not_have_is_refused_by_name(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--lr_scheduler=piecewise_constant"])
    assert stop.value.code == 2 and "invalid choice: 'piecewise_constant'" in capsys.readouterr().err


def test_a_cached_model_id_trains_like_its_directory(sd_pipeline, captioned_data, tmp_path, monkeypatch):
    """--pretrained_model_name_or_path me/tiny-sd, found in the local Hugging Face cache (offline), is the same
    main net as its directory; an id that is not cached is refused in one line before anything is made."""
    import huggingface_hub.constants

    from tests.test_files import cache_model

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # HF_HUB_CACHE, read at import
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
    theirs = get_scheduler("constant_with_warmup" if schedule == "constant" else schedule, optimizer, num_warmup_steps=warmup, num_training_steps=steps, num_cycles=2,
                           power=2.0).lr_lambdas[0]
    for step in range(steps + 2):
        expected = lr * theirs(step + 1 if step < warmup else step)
        assert learning_rate(step, config) == pytest.approx(expected, rel=1e-9, abs=1e-15), step
