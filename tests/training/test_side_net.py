"""Side-net training: the three backbones, baseline vs LISA, exact resume, zero inference cost, bad input."""

import csv
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel, SD3ControlNetModel
from PIL import Image
from safetensors.torch import load_file

from lisa_probe.data import build_dataset
from lisa_probe.diffusion.parameterization import Parameterization
from lisa_probe.models import build_main, build_side, load_main, save_main
from lisa_probe.options import read_config
from lisa_probe.rundir import read_eval, read_run_config, read_summary
from lisa_probe.train import main as train_main
from lisa_probe.training.config import PretrainConfig, TrainConfig
from lisa_probe.training.control_evaluation import ControlEvaluation
from lisa_probe.training.engine import NonFiniteLossError
from lisa_probe.training.loading import build_dual_branch, load_run
from lisa_probe.training.main_net import pretrain
from lisa_probe.training.onset_probe import OnsetProbe
from lisa_probe.training.side_net import (
    SideNetObjective,
    build_decoder,
    condition_gate,
    init_condition_gate,
    init_zero_modules,
    run_splits,
    train,
)
from tests.conftest import launch_two_cpu_processes


def make_main(root: Path, family: str, kind: str, seed: int = 0, preset: str = "tiny") -> str:
    path = root / f"main-{family}-{kind}-{seed}-{preset}"
    if not path.exists():
        save_main(path, family, build_main(family, preset, 16, seed=seed), Parameterization(kind))
    return str(path)


def tiny_config(tmp_path: Path, family="unet", kind="eps", **overrides) -> TrainConfig:
    settings = dict(main=make_main(tmp_path, family, kind), out_dir=str(tmp_path / "runs"), steps=3, batch_size=4,
                    eval_samples=0, checkpoint_every=0, log_every=1, lr=1e-3)
    settings.update(overrides)
    return TrainConfig(**settings)


def read_metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def side_weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "diffusion_pytorch_model.safetensors")


@pytest.mark.parametrize("family,kind", [("unet", "eps"), ("unet", "v"), ("dit", "flow")])
def test_lisa_run_writes_a_plain_diffusers_side_net(tmp_path, family, kind):
    run_dir = train(tiny_config(tmp_path, family, kind, name="lisa"))
    rows = read_metrics(run_dir)
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    assert all(float(r["lisa_loss"]) > 0 and float(r["lisa_target_norm"]) > 0 for r in rows)
    # the first LISA loss equals the target norm: the decoder's output layer starts at zero
    assert float(rows[0]["lisa_loss"]) == pytest.approx(float(rows[0]["lisa_target_norm"]), rel=1e-5)
    assert (run_dir / "lisa_decoder" / "diffusion_pytorch_model.safetensors").exists()
    # the site resolved once is saved in config.yaml and in the decoder's own folder
    site = read_config(run_dir / "config.yaml")["config"]["lisa_site"]
    assert site and json.loads((run_dir / "lisa_decoder" / "config.json").read_text())["site"] == site
    side_class = ControlNetModel if family == "unet" else SD3ControlNetModel
    side = side_class.from_pretrained(run_dir / "controlnet")  # diffusers alone, no lisa_probe code
    assert isinstance(side, side_class)
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 3


def test_baseline_builds_no_decoder_and_samples_at_the_same_cost(tmp_path):
    lisa_dir = train(tiny_config(tmp_path, name="lisa"))
    base_dir = train(tiny_config(tmp_path, name="base", lisa_weight=0.0))
    assert not (base_dir / "lisa_decoder").exists()
    assert "lisa_loss" not in read_metrics(base_dir)[0]
    # same architecture, same parameter count: sampling costs the same; the decoder is not needed to sample
    lisa_side, base_side = (ControlNetModel.from_pretrained(d / "controlnet") for d in (lisa_dir, base_dir))
    ignore = {"_name_or_path"}
    assert {k: v for k, v in lisa_side.config.items() if k not in ignore} == \
        {k: v for k, v in base_side.config.items() if k not in ignore}
    assert sum(p.numel() for p in lisa_side.parameters()) == sum(p.numel() for p in base_side.parameters())
    _, model, decoder, _ = load_run(lisa_dir)
    assert decoder is not None
    unet = model.main
    x, t, c = torch.randn(2, 3, 16, 16), torch.tensor([10, 700]), torch.rand(2, 1, 16, 16)
    down, mid = lisa_side(x, t, encoder_hidden_states=torch.zeros(2, 1, unet.config.cross_attention_dim),
                          controlnet_cond=c, return_dict=False)
    plain = unet(x, t, encoder_hidden_states=torch.zeros(2, 1, unet.config.cross_attention_dim),
                 down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
    torch.testing.assert_close(model(x, t, c).pred_full, plain, rtol=1e-5, atol=1e-6)


def test_resume_continues_exactly(tmp_path, capsys):
    common = dict(grad_accum=2, checkpoint_every=2, lisa_fraction=0.5)
    straight = train(tiny_config(tmp_path, name="straight", steps=4, **common))
    interrupted = train(tiny_config(tmp_path, name="resumed", steps=2, **common))
    capsys.readouterr()
    resumed = train(tiny_config(tmp_path, name="resumed", steps=4, resume="latest", **common))
    assert resumed == interrupted and "resuming from checkpoint-2 (step 2 of 4)" in capsys.readouterr().out
    for name in ("controlnet", "lisa_decoder"):
        a, b = side_weights(straight / name), side_weights(resumed / name)
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert [r["loss"] for r in read_metrics(straight)] == [r["loss"] for r in read_metrics(resumed)]
    seconds = [float(r["seconds"]) for r in read_metrics(resumed)]  # training time carries on across the resume
    assert all(0 < a < b for a, b in zip(seconds, seconds[1:]))


def test_batched_main_pass_trains_like_the_separate_one(tmp_path):
    common = dict(lisa_fraction=0.5)
    runs = {main_pass: train(tiny_config(tmp_path, name=main_pass, lisa_main_pass=main_pass, **common))
            for main_pass in ("separate", "batched")}
    losses = {main_pass: [float(r["lisa_loss"]) for r in read_metrics(run)] for main_pass, run in runs.items()}
    assert len(losses["separate"]) == 3 and losses["separate"][0] > 0
    np.testing.assert_allclose(losses["batched"], losses["separate"], rtol=1e-4)


def test_resume_from_another_config_is_refused(tmp_path):
    train(tiny_config(tmp_path, name="run", steps=2))
    with pytest.raises(ValueError, match="another config.*lisa_weight"):
        train(tiny_config(tmp_path, name="run", steps=4, lisa_weight=0.5, resume="latest"))


def test_resume_from_a_checkpoint_that_predates_an_option(tmp_path):
    """An option added after the checkpoint was written resumes at its default and refuses any other value."""
    run_dir = train(tiny_config(tmp_path, name="run", steps=2, checkpoint_every=2))
    state_file = run_dir / "checkpoint-2" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    del state["config"]["lisa_main_pass"]
    state_file.write_text(json.dumps(state))
    with pytest.raises(ValueError, match="another config.*lisa_main_pass: checkpoint 'separate' vs now 'batched'"):
        train(tiny_config(tmp_path, name="run", steps=3, lisa_main_pass="batched", resume="latest"))
    assert train(tiny_config(tmp_path, name="run", steps=3, resume="latest")) == run_dir
    assert [int(r["step"]) for r in read_metrics(run_dir)] == [1, 2, 3]


def test_non_finite_loss_stops_naming_the_step(tmp_path, monkeypatch):
    original = SideNetObjective.forward

    def poisoned(self, *args, step, **kwargs):
        out = original(self, *args, step=step, **kwargs)
        if step == 1:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(SideNetObjective, "forward", poisoned)
    with pytest.raises(NonFiniteLossError, match="at step 2"):
        train(tiny_config(tmp_path, name="nan", steps=3, checkpoint_every=1))
    run_dir = tmp_path / "runs" / "nan"
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-1"]
    assert not list(run_dir.glob(".checkpoint-*"))
    monkeypatch.setattr(SideNetObjective, "forward", original)
    # the stopped run left no accelerate state behind: the next run in this process may change the precision
    assert read_metrics(train(tiny_config(tmp_path, name="after", steps=1, mixed_precision="bf16")))


def test_bad_input_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown site 'down.99'; valid sites: down.0"):
        train(tiny_config(tmp_path, lisa_site="down.99", name="bad-site"))
    assert not (tmp_path / "runs" / "bad-site").exists()  # nothing is created for a run that cannot start
    with pytest.raises(ValueError, match=r"--lisa-weight must be a finite number in \[0, inf\]"):
        tiny_config(tmp_path, lisa_weight=-1.0)
    with pytest.raises(ValueError, match="batch fraction"):
        tiny_config(tmp_path, lisa_fraction=0.0)
    with pytest.raises(ValueError, match="unknown LISA main pass 'fused'"):
        tiny_config(tmp_path, lisa_main_pass="fused")
    with pytest.raises(ValueError, match="needs a positive end step"):
        tiny_config(tmp_path, lisa_schedule="cutoff")
    other_main = make_main(tmp_path, "unet", "eps", preset="small")
    other_run = train(tiny_config(tmp_path, name="other", main=other_main, steps=1, lisa_weight=0.0))
    with pytest.raises(ValueError, match="does not match the main net"):
        train(tiny_config(tmp_path, name="mismatch", side=str(other_run / "controlnet")))


def test_every_site_and_distance_and_schedule(tmp_path):
    config = tiny_config(tmp_path, name="cos", lisa_site="mid", lisa_distance="cosine", lisa_schedule="cutoff",
                         lisa_end_step=2)
    rows = read_metrics(train(config))
    assert [float(r["lisa_weight"]) for r in rows] == [0.2, 0.2, 0.0]
    # the decoder starts at zero output, so the first step's cosine distance 1 - cos(0, target) is exactly 1
    assert float(rows[0]["lisa_loss"]) == pytest.approx(1.0, abs=1e-6)
    assert float(rows[1]["lisa_loss"]) != pytest.approx(1.0, abs=1e-6)  # after one update it is not


@pytest.mark.slow
def test_two_cpu_processes_with_accelerate(tmp_path):
    """Two gloo CPU processes (``accelerate launch --multi_gpu``) train one side net; rank 0 alone writes the
    run-level files."""
    main = make_main(tmp_path, "unet", "eps")
    out = tmp_path / "runs"
    result = launch_two_cpu_processes("lisa_probe.train", [
        "--main", main, "--out-dir", str(out), "--name", "ddp", "--steps", "2", "--batch-size", "2",
        "--eval-samples", "0", "--checkpoint-every", "0"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("side net written to") == 1  # run-level files and report from rank 0 only
    assert json.loads((out / "ddp" / "summary.json").read_text())["steps"] == 2
    assert read_config(out / "ddp" / "config.yaml")["config"]["steps"] == 2
    checkpoint = out / "ddp" / "checkpoint-2"
    assert {p.name for p in checkpoint.glob("rng-*.safetensors")} == {"rng-0.safetensors", "rng-1.safetensors"}
    assert json.loads((checkpoint / "trainer_state.json").read_text())["world_size"] == 2
    ControlNetModel.from_pretrained(out / "ddp" / "controlnet")


@pytest.mark.slow
def test_evaluation_on_two_processes_equals_one_process_evaluation(tmp_path, monkeypatch):
    """Two gloo processes each sample their share of the 5 validation rows (3 and 2) and rank 0 scores the gathered
    images: the metrics and grid equal those of the same side net evaluated in one process (float noise: the
    batches differ in size, 1e-4 relative as for the validation pairs; the grid's pixels within 2 levels). Both use
    the default read-back net (the launched run trains and caches it; this process reads it)."""
    from lisa_probe.evaluation import readback as readback_module
    from tests.conftest import SmallReadbackConfig

    monkeypatch.setattr(readback_module, "ReadbackConfig", SmallReadbackConfig.__bases__[0])
    main = make_main(tmp_path, "unet", "eps")
    out = tmp_path / "runs"
    result = launch_two_cpu_processes("lisa_probe.train", [
        "--main", main, "--out-dir", str(out), "--name", "ddp", "--steps", "1", "--batch-size", "2",
        "--eval-samples", "5", "--sample-steps", "3", "--checkpoint-every", "0"])
    assert result.returncode == 0, result.stderr[-3000:]
    run = out / "ddp"
    config, model, _, dataset_kwargs = load_run(run)
    alone = tmp_path / "alone"
    alone.mkdir()
    splits = run_splits(config, dataset_kwargs)
    expected = ControlEvaluation(model, config, splits["val"], splits["train"], dataset_kwargs, alone)(1)
    found = read_eval(run)[1]
    assert found.keys() == expected.keys() and "main_alone/edge_f1" in found
    for metric, value in expected.items():
        assert abs(found[metric] - value) <= 1e-4 * max(1.0, abs(value)), metric
    grids = [np.asarray(Image.open(path / "samples" / "step-1.png"), dtype=np.int16) for path in (run, alone)]
    assert grids[0].shape == grids[1].shape and np.abs(grids[0] - grids[1]).max() <= 2


@pytest.mark.slow
def test_a_run_resumes_under_another_number_of_processes(tmp_path, capsys):
    """1 process to step 2, then 2 gloo processes to step 4, then 1 process to step 6: each resume goes on at the
    stream position the checkpoint saved (4, then 4 + 2 steps x 2 samples x 2 processes = 12, then 16: no sample
    skipped or repeated, ``data.stream``), with the optimizer state and modules of the checkpoint."""
    main = make_main(tmp_path, "unet", "eps")
    out = tmp_path / "runs"
    args = ["--main", main, "--out-dir", str(out), "--name", "nm", "--batch-size", "2", "--eval-samples", "0",
            "--checkpoint-every", "2", "--keep-checkpoints", "0"]
    assert train_main([*args, "--steps", "2"]) == 0
    result = launch_two_cpu_processes("lisa_probe.train", [*args, "--steps", "4", "--resume", "latest"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming a run of 1 processes with 2: a step now takes 4 samples; the data go on at sample 4" in \
        result.stdout
    capsys.readouterr()
    assert train_main([*args, "--steps", "6", "--resume", "latest"]) == 0
    assert "resuming a run of 2 processes with 1: a step now takes 2 samples; the data go on at sample 12" in \
        capsys.readouterr().out
    states = {step: json.loads((out / "nm" / f"checkpoint-{step}" / "trainer_state.json").read_text())
              for step in (2, 4, 6)}
    assert [(s["samples"], s["world_size"]) for s in states.values()] == [(4, 1), (12, 2), (16, 1)]
    assert [int(r["step"]) for r in read_metrics(out / "nm")] == [2, 4, 6]  # logged at each run's last step


def test_pretraining_then_bf16_training_in_one_process(tmp_path):
    """A second loop in the same process (the default main net's pretraining, then the side net) may change the
    mixed precision: accelerate's per-run state does not outlive ``fit``."""
    main_dir = pretrain(PretrainConfig(preset="tiny", resolution=16, steps=2, batch_size=2, eval_samples=0,
                                       out_dir=str(tmp_path), name="main"))
    run_dir = train(tiny_config(tmp_path, main=str(main_dir), name="bf16", mixed_precision="bf16", steps=2))
    rows = read_metrics(run_dir)
    assert [int(r["step"]) for r in rows] == [1, 2] and all(math.isfinite(float(r["loss"])) for r in rows)


TWO_PROCESS_SCRIPT = """
import sys
from pathlib import Path

from lisa_probe.training.engine import NonFiniteLossError, end_processes, process_state
from lisa_probe.training.config import PretrainConfig
from lisa_probe.training.main_net import pretrain
from lisa_probe.training.config import TrainConfig
from lisa_probe.training.side_net import SideNetObjective, train
from lisa_probe.train import main as train_main

out = Path(sys.argv[1])
main = pretrain(PretrainConfig(backbone="dit", preset="tiny", resolution=16, steps=2, batch_size=2, eval_samples=0,
                               out_dir=str(out), name="main"))
common = dict(main=str(main), out_dir=str(out), steps=2, batch_size=2, eval_samples=0, checkpoint_every=0)
train(TrainConfig(name="ddp", **common))
forward = SideNetObjective.forward


def nan_on_rank_1(self, *args, **kwargs):
    outputs = forward(self, *args, **kwargs)
    if process_state().process_index == 1:
        outputs["loss"] = outputs["loss"] * float("nan")
    return outputs


SideNetObjective.forward = nan_on_rank_1
try:
    train(TrainConfig(name="nan", **common))
except NonFiniteLossError as error:
    (out / f"rank-{process_state().process_index}-stopped.txt").write_text(str(error))
end_processes()
"""


@pytest.mark.slow
def test_two_processes_pretrain_then_train_a_dit_and_stop_together_on_nan(tmp_path):
    """Under ``accelerate launch``: pretraining then training in one process (the path of the default main net),
    DDP over the SD3 ControlNet (no parameter without a gradient), and a NaN on one rank stops both."""
    script = tmp_path / "two_fits.py"
    script.write_text(TWO_PROCESS_SCRIPT)
    result = launch_two_cpu_processes(str(script), [str(tmp_path / "out")])
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "out" / "ddp" / "summary.json").read_text())["steps"] == 2
    SD3ControlNetModel.from_pretrained(tmp_path / "out" / "ddp" / "controlnet")
    for rank in (0, 1):  # each process stopped with the error instead of waiting for the other
        message = (tmp_path / "out" / f"rank-{rank}-stopped.txt").read_text()
        assert message.startswith("non-finite loss") and "at step 1 (this process or another)" in message


@pytest.mark.parametrize("argv,message", [
    (["--main", "{tmp}/missing"], "missing is not a diffusers main-net directory"),
    (["--lisa-site", "down.99"], "unknown site 'down.99'; valid sites"),
    (["--steps", "two"], "argument --steps/--max_train_steps: invalid int value: 'two'"),
    (["--lisa-schedule", "sometimes"], "invalid choice: 'sometimes'"),
    (["--max-grad-norm", "-1"], "--max-grad-norm must be a finite number in (0, inf], got -1.0"),
    (["--lisa-weight", "nan"], "--lisa-weight must be a finite number in [0, inf], got nan"),
    (["--convergence-threshold", "nan"], "--convergence-threshold must be a finite number in [0, 1], got nan"),
    (["--lr", "0"], "--lr must be a finite number in (0, inf], got 0.0"),
    (["--weight-decay", "inf"], "--weight-decay must be a finite number in [0, inf], got inf"),
    (["--sample-steps", "0"], "--sample-steps must be >= 1, got 0"),
    (["--seed", "-1"], "--seed must be a finite number in [0, 4.29497e+09], got -1"),
    (["--seed", "99999999999"], "--seed must be a finite number in [0, 4.29497e+09], got 99999999999"),
    (["--lisa-fraction", "nan"], "LISA batch fraction must be in (0, 1], got nan"),
    (["--skip-bad-files"], "--skip-bad-files applies to --dataset folder, not 'shapes'"),
    (["--use-8bit-adam"], "--use-8bit-adam needs bitsandbytes, which is not installed: pip install 'lisa_probe[bnb]'"),
    (["--weighting-scheme", "sigma_sqrt"], "--weighting-scheme 'sigma_sqrt' is for flow matching (SD3-style main "
                                           "nets), not 'eps' prediction"),
    (["--logit-std", "0"], "--logit-std must be a finite number in (0, inf], got 0.0"),
    (["--weighting-scheme", "logit_normal", "--timestep-sampling", "cubic"],
     "--weighting-scheme 'logit_normal' draws the timesteps itself; it needs --timestep-sampling uniform"),
    (["--dataset", "folder"], "the folder dataset needs its location: --data-root PATH"),
    (["--resolution", "15"], "--resolution 15 does not fit this main net: it takes multiples of 2"),
    (["--random-crop"], "--random-crop applies to --dataset captioned, not 'shapes'"),
    (["--dataset", "folder", "--data-root", "{tmp}/missing"], "missing")])
def test_cli_reports_bad_input_without_a_traceback(tmp_path, capsys, argv, message):
    """Bad options and inputs: one line naming the value and what is allowed, exit 2, and no run directory."""
    main_dir = make_main(tmp_path, "unet", "eps")
    argv = [arg.replace("{tmp}", str(tmp_path)) for arg in argv]
    with pytest.raises(SystemExit) as stop:
        train_main(["--main", main_dir, "--out-dir", str(tmp_path / "runs"), "--eval-samples", "0", *argv])
    error = capsys.readouterr().err
    assert stop.value.code == 2 and message in error and "Traceback" not in error
    assert error.startswith("usage:") or error.startswith("python -m lisa_probe.train: error:")
    assert not (tmp_path / "runs").exists()


def test_an_existing_run_is_continued_or_replaced_only_when_asked(tmp_path, capsys):
    """A second run into the same directory would mix two runs: refused, naming --resume and --overwrite;
    --overwrite starts afresh (the old run's checkpoints gone) and --resume latest continues."""
    config = dict(steps=2, checkpoint_every=1, keep_checkpoints=0, name="r")
    first = train(tiny_config(tmp_path, **config))
    (first / "checkpoint-1" / "marker").write_text("old run")
    with pytest.raises(FileExistsError, match="already holds a run; pass --resume latest.*or --overwrite"):
        train(tiny_config(tmp_path, **config))
    argv = ["--main", make_main(tmp_path, "unet", "eps"), "--out-dir", str(tmp_path / "runs"), "--name", "r",
            "--steps", "2", "--eval-samples", "0"]
    with pytest.raises(SystemExit) as stop:
        train_main(argv)
    assert stop.value.code == 2 and "--overwrite" in capsys.readouterr().err
    assert (first / "checkpoint-1" / "marker").exists()  # refused before anything was touched
    train(tiny_config(tmp_path, **config, overwrite=True))
    assert not (first / "checkpoint-1" / "marker").exists()
    assert [int(r["step"]) for r in read_metrics(train(tiny_config(tmp_path, **{**config, "steps": 3},
                                                                   resume="latest")))] == [1, 2, 3]


def test_a_non_finite_loss_is_reported_in_one_line(tmp_path, capsys, monkeypatch):
    """A NaN loss stops the run with exit 2; the message says whether a checkpoint is there to resume from."""
    forward = SideNetObjective.forward

    def nan_from_step_2(self, *args, step, **kwargs):
        outputs = forward(self, *args, step=step, **kwargs)
        return {**outputs, "loss": outputs["loss"] * (float("nan") if step >= 1 else 1.0)}

    monkeypatch.setattr(SideNetObjective, "forward", nan_from_step_2)
    argv = ["--main", make_main(tmp_path, "unet", "eps"), "--out-dir", str(tmp_path / "runs"), "--steps", "3",
            "--batch-size", "2", "--eval-samples", "0"]
    for checkpoint_every, expected in (("0", "no checkpoint had been saved yet"),
                                       ("1", "the last good checkpoint is " + str(tmp_path / "runs" / "b" /
                                                                                  "checkpoint-1"))):
        with pytest.raises(SystemExit) as stop:
            train_main([*argv, "--name", "b", "--checkpoint-every", checkpoint_every, "--overwrite"])
        error = capsys.readouterr().err
        assert stop.value.code == 2 and "non-finite loss nan at step 2" in error and expected in error, error
        assert "Traceback" not in error


def test_pickle_weights_are_refused(tmp_path):
    """Weights load from safetensors only: a side net saved as .bin (pickle) is refused with how to convert it."""
    main_dir = make_main(tmp_path, "unet", "eps")
    side = build_side(load_main(Path(main_dir))[1], "unet", cond_channels=1, seed=0)
    side.save_pretrained(tmp_path / "side", safe_serialization=False)
    assert not list((tmp_path / "side").glob("*.safetensors"))
    with pytest.raises(ValueError, match=r"only pickle \(.bin\) weights.*safe_serialization=True"):
        train(tiny_config(tmp_path, side=str(tmp_path / "side")))
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("condition", ["sobel", "canny"])
def test_a_folder_run_with_any_registered_extractor_completes(tmp_path, condition):
    """Every condition kind an extractor makes trains, evaluates and writes its summary on a folder of images (sobel
    has no reference to score control against: its summary says so with nulls instead of a KeyError at the end)."""
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    for i in range(40):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "img" / f"{i}.png")
    run_dir = train(tiny_config(tmp_path, dataset="folder", data_root=str(tmp_path / "img"), condition=condition,
                                steps=2, eval_samples=4, eval_every=2, sample_steps=2))
    summary = read_summary(run_dir)
    expected = {"sobel": None, "canny": "edge_f1"}[condition]
    assert summary["steps"] == 2 and summary["control_metric"] == expected
    assert ("edge_f1" in summary["final"]) == (expected is not None)
    if expected is None:
        assert summary["convergence_step"] is None


def test_a_failing_evaluation_loses_no_training(tmp_path, monkeypatch):
    """At a step with a checkpoint and an evaluation, the checkpoint is written first: an evaluation that fails
    (here at the last step) leaves the trained state, and --resume latest finishes the run from it."""
    evaluate = ControlEvaluation.__call__

    def fail_at_step_2(self, step):
        if step == 2:
            raise RuntimeError("evaluation broke")
        return evaluate(self, step)

    monkeypatch.setattr(ControlEvaluation, "__call__", fail_at_step_2)
    config = dict(name="e", steps=2, checkpoint_every=2, eval_samples=4, eval_every=1, sample_steps=2)
    with pytest.raises(RuntimeError, match="evaluation broke"):
        train(tiny_config(tmp_path, **config))
    assert (tmp_path / "runs" / "e" / "checkpoint-2" / "trainer_state.json").exists()
    monkeypatch.setattr(ControlEvaluation, "__call__", evaluate)
    run_dir = train(tiny_config(tmp_path, **config, resume="latest"))
    assert read_summary(run_dir)["steps"] == 2 and (run_dir / "controlnet" / "config.json").exists()


def test_parameter_groups_take_their_learning_rate_factors(tmp_path):
    """Every trainable parameter is in exactly one group; the zero modules are the sites' modules; a step gives each
    group the schedule's rate times its factor; all factors 1 keep one group in module order (old checkpoints)."""
    config = tiny_config(tmp_path, lr_scale_zero_modules=10.0, lr_scale_trunk=0.1, lr_scale_cond_embedding=0.5,
                         lr_scale_decoder=2.0)
    model, _ = build_dual_branch(config)
    objective = SideNetObjective(model, build_decoder(model, "mid", 0), config, "mid")
    groups = {group["name"]: group for group in objective.param_groups()}
    assert {name: group["lr_scale"] for name, group in groups.items()} == {
        "zero_modules": 10.0, "cond_embedding": 0.5, "trunk": 0.1, "decoder": 2.0}
    grouped = [id(p) for group in groups.values() for p in group["params"]]
    trainable = [id(p) for p in objective.parameters() if p.requires_grad]
    assert sorted(grouped) == sorted(trainable) and len(set(grouped)) == len(grouped)
    sites = {id(p) for name in model.site_names for p in model.site_module(name).parameters()}
    assert {id(p) for p in groups["zero_modules"]["params"]} == sites
    run_dir = train(tiny_config(tmp_path, name="scaled", steps=2, lr_scale_zero_modules=10.0, lr_scale_trunk=0.0,
                                lr_scale_cond_embedding=0.0, lisa_weight=0.0))
    trained = ControlNetModel.from_pretrained(run_dir / "controlnet")
    fresh, _ = build_dual_branch(tiny_config(tmp_path))
    changed = {name for name, p in trained.named_parameters()
               if not torch.equal(p, dict(fresh.side.named_parameters())[name])}
    assert changed and all(name.startswith(("controlnet_down_blocks", "controlnet_mid_block")) for name in changed)
    one = SideNetObjective(model, None, tiny_config(tmp_path), "mid").param_groups()
    assert len(one) == 1 and [id(p) for p in one[0]["params"]] == [id(p) for p in objective.model.parameters()
                                                                   if p.requires_grad]


def test_cubic_timesteps_conditioning_scale_and_zero_init(tmp_path):
    """Cubic sampling puts 3/4 of the mass above the middle (mean t/T = 3/4); a conditioning scale of 0 trains on
    the main net's prediction alone; a zero-init scale makes the zero modules non-zero with the requested spread."""
    generator = torch.Generator().manual_seed(0)
    cubic = Parameterization("eps").sample_timesteps(20000, generator, "cubic").double() / 1000
    uniform = Parameterization("eps").sample_timesteps(20000, generator).double() / 1000
    assert cubic.mean().item() == pytest.approx(0.75, abs=0.01) and uniform.mean().item() == pytest.approx(0.5, abs=0.01)
    assert (Parameterization("flow").sample_timesteps(100, generator, "cubic") <= 1000).all()
    config = tiny_config(tmp_path, conditioning_scale=0.0, zero_init_scale=1.0, lisa_weight=0.0)
    model, _ = build_dual_branch(config)
    init_zero_modules(model, 1.0, seed=0)
    weight = model.site_module("mid").weight
    assert weight.abs().sum() > 0 and weight.std().item() == pytest.approx(1 / weight[0].numel() ** 0.5, rel=0.2)
    objective = SideNetObjective(model, None, config, "mid")
    x0, cond = torch.randn(2, 3, 16, 16), torch.rand(2, 1, 16, 16)
    noise, steps = torch.randn(2, 3, 16, 16), torch.tensor([10, 900])
    loss = objective(x0, cond, noise, steps, step=0)["loss"]
    with torch.no_grad():
        main_only = torch.nn.functional.mse_loss(model.predict_main(model.parameterization.add_noise(x0, noise, steps),
                                                                    steps), noise)
    assert loss.item() == pytest.approx(main_only.item(), rel=1e-5)
    with pytest.raises(ValueError, match="--conditioning-scale must be a finite number"):
        tiny_config(tmp_path, conditioning_scale=float("nan"))


def test_sd3_weighting_schemes_weight_the_diffusion_loss_and_train(tmp_path):
    """``sigma_sqrt`` weights each sample's flow-matching MSE by 1/σ² (diffusers' SD3 trainer's loss, recomputed
    here from the model's own predictions); a DiT run with ``logit_normal`` timesteps trains to a finite loss."""
    config = tiny_config(tmp_path, family="dit", kind="flow", weighting_scheme="sigma_sqrt", lisa_weight=0.0)
    model, _ = build_dual_branch(config)
    init_zero_modules(model, 1.0, seed=0)
    objective = SideNetObjective(model, None, config, model.default_lisa_site())
    cond = torch.rand(2, 1, 16, 16)
    x0 = torch.randn(2, model.main.config.in_channels, 16, 16)
    noise, steps = torch.randn_like(x0), torch.tensor([200.0, 800.0])
    loss = objective(x0, cond, noise, steps, step=0)["loss"]
    with torch.no_grad():
        x_t = model.parameterization.add_noise(x0, noise, steps)
        per_sample = (model(x_t, steps, cond).pred_full - (noise - x0)).pow(2).flatten(1).mean(1)
    expected = (per_sample / torch.tensor([0.2, 0.8]) ** 2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss.item() != pytest.approx(per_sample.mean().item(), rel=1e-2)
    run = train(tiny_config(tmp_path, family="dit", kind="flow", weighting_scheme="logit_normal", steps=2))
    assert all(np.isfinite(float(row["loss"])) for row in read_metrics(run))


def test_the_onset_probe_logs_into_metrics_csv(tmp_path):
    """A fresh side net (zero modules at 0) adds nothing: explained share, cosine, residual and zero-weight norms all
    0. Training logs the probe with its steps' rows in metrics.csv (earlier rows blank in its columns), and the
    zero modules' weights grow from 0."""
    config = tiny_config(tmp_path, steps=4, probe_every=2, probe_samples=8, lisa_weight=0.0)
    model, dataset_kwargs = build_dual_branch(config)
    val = build_dataset(config.dataset, split="val", **dataset_kwargs)
    fresh = OnsetProbe(model, config, val, every=2, samples=8)(0)
    assert fresh["probe/explained"] == 0.0 and fresh["probe/cosine"] == 0.0
    assert all(fresh[f"probe/{kind}/{site}"] == 0.0 for kind in ("residual_norm", "zero_weight_norm")
               for site in model.site_names)
    assert {f"probe/explained/t{b}" for b in range(OnsetProbe.BINS)} <= set(fresh)
    rows = read_metrics(train(config))
    assert [row["probe/explained"] == "" for row in rows] == [True, False, True, False]
    norms = [float(rows[k]["probe/zero_weight_norm/mid"]) for k in (1, 3)]
    assert 0 < norms[0] < norms[1] and all(math.isfinite(float(rows[k]["probe/cosine/t3"])) for k in (1, 3))


def test_a_resumed_run_logs_main_alone_once_as_an_uninterrupted_one(tmp_path):
    """eval.csv after a resume holds the same metrics at every step as an uninterrupted run: the main net alone is
    scored at the first evaluation only, not again at the resumed run's first one."""
    common = dict(steps=2, eval_every=1, eval_samples=4, sample_steps=2, checkpoint_every=1, keep_checkpoints=0)
    whole = read_eval(train(tiny_config(tmp_path, name="whole", **common)))
    train(tiny_config(tmp_path, name="cut", **{**common, "steps": 1}))
    resumed = read_eval(train(tiny_config(tmp_path, name="cut", **common, resume="latest")))
    assert {step: sorted(metrics) for step, metrics in resumed.items()} == {
        step: sorted(metrics) for step, metrics in whole.items()}
    assert any(m.startswith("main_alone/") for m in resumed[1]) and not any(m.startswith("main_alone/")
                                                                            for m in resumed[2])


def test_gradient_checkpointing_gives_the_same_gradients(tmp_path):
    """``--gradient-checkpointing`` turns on diffusers' checkpointing in the ControlNet (not in the LISA decoder, which
    does not support it) and leaves the loss and every side-net and decoder gradient as they were (float32
    recomputation of the same ops: equal to rounding), with the LISA hook in place."""
    config = tiny_config(tmp_path, lisa_weight=0.2)
    grads = []
    for checkpointing in (False, True):
        model, _ = build_dual_branch(config)
        init_zero_modules(model, 1.0, seed=0)
        site = model.default_lisa_site()
        objective = SideNetObjective(model, build_decoder(model, site, seed=0), config, site)
        if checkpointing:
            assert objective.enable_gradient_checkpointing() == ["controlnet"]
            assert model.side.is_gradient_checkpointing
        objective.train()
        generator = torch.Generator().manual_seed(3)
        x0, cond = torch.randn(4, 3, 16, 16, generator=generator), torch.rand(4, 1, 16, 16, generator=generator)
        noise, steps = torch.randn(4, 3, 16, 16, generator=generator), torch.tensor([5, 300, 600, 950])
        loss = objective(x0, cond, noise, steps, step=0)["loss"]
        loss.backward()
        grads.append((loss.item(), [p.grad.clone() for p in objective.parameters() if p.requires_grad]))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-6)
    for plain, recomputed in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(recomputed, plain, rtol=1e-4, atol=1e-6)
    assert any(g.abs().sum() > 0 for g in grads[1][1])


def test_8bit_adam_uses_bitsandbytes_when_installed(tmp_path, monkeypatch):
    """With bitsandbytes importable the optimizer is its AdamW8bit (a stand-in module records the call here: the
    real one needs CUDA); without it the option is refused before anything is made (test_cli_reports_bad_input...)."""
    import importlib.machinery
    import types

    made = []

    class FakeAdamW8bit(torch.optim.AdamW):
        def __init__(self, groups, **kwargs):
            made.append(kwargs)
            super().__init__(groups, **kwargs)

    fake = types.ModuleType("bitsandbytes")
    fake.__spec__ = importlib.machinery.ModuleSpec("bitsandbytes", None)
    fake.optim = types.SimpleNamespace(AdamW8bit=FakeAdamW8bit)
    monkeypatch.setitem(sys.modules, "bitsandbytes", fake)
    run = train(tiny_config(tmp_path, use_8bit_adam=True, steps=2, lr=2e-3))
    assert made == [{"lr": 2e-3, "weight_decay": 0.01, "betas": (0.9, 0.999), "eps": 1e-8}]
    assert len(read_metrics(run)) == 2


def test_a_diffusers_trained_rgb_controlnet_is_fine_tuned_on_greyscale_conditions(tmp_path):
    """``--side`` with a 3-channel ControlNet (diffusers' trainers make those) on the 1-channel shapes edges: the
    conditions are repeated to RGB, the run trains and exports a 3-channel ControlNet."""
    main_dir = make_main(tmp_path, "unet", "eps")
    family, main, *_ = load_main(Path(main_dir))
    build_side(main, family, cond_channels=3, seed=0).save_pretrained(tmp_path / "rgb-controlnet")
    run = train(tiny_config(tmp_path, side=str(tmp_path / "rgb-controlnet"), steps=2, lisa_weight=0.2))
    assert json.loads((run / "controlnet" / "config.json").read_text())["conditioning_channels"] == 3
    assert len(read_metrics(run)) == 2


def test_report_to_sends_the_logged_scalars_to_the_trackers_and_none_to_none(tmp_path):
    """TensorBoard (accelerate's tracker) gets every metrics.csv scalar at its step and the evaluations as eval/*, a
    resume keeps one event per step; --report-to none writes no tracker files (metrics.csv stays)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = train(tiny_config(tmp_path, steps=2, checkpoint_every=1, eval_every=2, eval_samples=2, sample_steps=2,
                            name="tb"))
    train(tiny_config(tmp_path, steps=3, checkpoint_every=1, eval_every=2, eval_samples=2, sample_steps=2, name="tb",
                      resume="latest"))
    events = EventAccumulator(str(run / "tensorboard")).Reload()
    logged = read_metrics(run)
    loss = events.Scalars("loss")
    assert [event.step for event in loss] == [int(row["step"]) for row in logged] == [1, 2, 3]
    assert [event.value for event in loss] == pytest.approx([float(row["loss"]) for row in logged], rel=1e-6)
    assert "eval/fd" in events.Tags()["scalars"]
    images = events.Images("validation")  # the evaluation's sample grid, as written to samples/
    assert [event.step for event in images] == [2, 3]
    from io import BytesIO

    from PIL import Image

    sent = np.asarray(Image.open(BytesIO(images[0].encoded_image_string)).convert("RGB"))
    np.testing.assert_array_equal(sent, np.asarray(Image.open(run / "samples" / "step-2.png").convert("RGB")))
    quiet = train(tiny_config(tmp_path, steps=2, report_to="none", name="quiet"))
    assert not (quiet / "tensorboard").exists() and len(read_metrics(quiet)) == 2


def test_report_to_a_tracker_that_is_not_installed_names_the_extra(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(SystemExit) as stop:
        train_main(["--main", make_main(tmp_path, "unet", "eps"), "--out-dir", str(tmp_path / "runs"),
                    "--report-to", "all"])
    error = capsys.readouterr().err
    assert stop.value.code == 2 and "--report-to all needs wandb" in error and "lisa_probe[wandb]" in error
    assert not (tmp_path / "runs").exists()


def test_a_transformer_runs_at_a_smaller_resolution_and_refuses_one_beyond_its_position_embeddings(tmp_path):
    from lisa_probe.training.loading import build_dual_branch

    model, kwargs = build_dual_branch(tiny_config(tmp_path, "dit", "flow", resolution=8))
    assert kwargs["resolution"] == 8 and model.sites[0].map_shape[1:] == (4, 4)  # 8 px / patch 2
    with torch.no_grad():
        out = model(torch.randn(2, 3, 8, 8), torch.tensor([0.2, 0.7]), torch.rand(2, 1, 8, 8), main_rows=2)
    assert out.pred_full.shape == (2, 3, 8, 8)
    with pytest.raises(ValueError, match="--resolution 32 does not fit this main net: it takes multiples of 2 from 2 up "
                                         "to 16"):
        build_dual_branch(tiny_config(tmp_path, "dit", "flow", resolution=32))


def test_a_folder_pair_with_captions_and_factors_trains_from_the_command_line(tmp_path, sd_pipeline):
    """--dataset folder with --conditioning-dir (your conditions, used as they are), --captions-file (a caption per
    image, through the pipeline's text encoder) and --factors-csv (recorded as factors, read back in evaluation)."""
    rng = np.random.default_rng(0)
    for directory in ("img", "cond"):
        (tmp_path / directory).mkdir()
    captions, factors = ["file,text"], ["file,size"]
    for i in range(40):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "img" / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "cond" / f"{i}.jpg")
        captions.append(f"{i}.png,a {'red' if i % 2 else 'blue'} circle")
        factors.append(f"{i}.png,{i / 40}")
    (tmp_path / "captions.csv").write_text("\n".join(captions) + "\n")
    (tmp_path / "factors.csv").write_text("\n".join(factors) + "\n")
    train_main(["--main", str(sd_pipeline), "--dataset", "folder", "--data-root", str(tmp_path / "img"),
                "--conditioning-dir", str(tmp_path / "cond"), "--captions-file", str(tmp_path / "captions.csv"),
                "--factors-csv", str(tmp_path / "factors.csv"), "--carried-factors", "size", "--out-dir",
                str(tmp_path / "runs"), "--steps", "2", "--batch-size", "4", "--eval-every", "2", "--eval-samples",
                "4", "--sample-steps", "2", "--name", "pair"])
    config = read_run_config(tmp_path / "runs" / "pair", TrainConfig, "train")
    dataset = build_dataset("folder", split="train", **config.dataset_kwargs(64, 0))
    assert dataset.cond_channels == 3 and dataset[0]["text"] in {"a red circle", "a blue circle"}
    assert dataset.captions() == [dataset[i]["text"] for i in range(len(dataset))]
    assert "readback/size" in read_eval(tmp_path / "runs" / "pair")[2]


def test_folder_options_on_another_dataset_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        train_main(["--main", make_main(tmp_path, "unet", "eps"), "--conditioning-dir", str(tmp_path),
                    "--out-dir", str(tmp_path / "runs")])
    assert stop.value.code == 2 and "--conditioning-dir applies to --dataset folder" in capsys.readouterr().err


def test_train_size_keeps_a_fixed_subset_for_many_epochs(tmp_path):
    """--train-size N: the run's training split is its first N samples (the same ones every epoch)."""
    config = tiny_config(tmp_path, train_size=4, steps=3, batch_size=4, name="small-set")
    _, kwargs = build_dual_branch(config)
    subset = run_splits(config, kwargs)["train"]
    whole = build_dataset("shapes", split="train", **kwargs)
    assert len(subset) == 4 and [subset[i]["id"] for i in range(4)] == [whole[i]["id"] for i in range(4)]
    assert read_summary(train(config))["steps"] == 3  # three epochs of the four samples


def test_the_lisa_decoder_width_is_an_option_and_is_saved(tmp_path):
    config = tiny_config(tmp_path, lisa_decoder_channels=4, steps=1, name="narrow")
    run = train(config)
    decoder_config = json.loads((run / "lisa_decoder" / "config.json").read_text())
    assert decoder_config["min_channels"] == 4
    model, _ = build_dual_branch(config)
    site = model.default_lisa_site()
    default = build_decoder(model, site, 0)
    narrow = build_decoder(model, site, 0, min_channels=4)
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert count(narrow) < count(default) and narrow.config.min_channels == 4


@pytest.mark.parametrize("family,kind", [("unet", "eps"), ("dit", "flow")])
def test_the_condition_gate_opens_by_the_init_scale(tmp_path, family, kind):
    """--cond-embedding-init-scale s: the condition embedding's zero-initialised output gets N(0, (s/√fan_in)²)
    weights (seeded), 0 keeps it zero as ControlNet's."""
    config = tiny_config(tmp_path, family, kind)
    model, _ = build_dual_branch(config)
    gate = condition_gate(model).weight
    assert not gate.any()
    init_condition_gate(model, 0.0, 0)
    assert not gate.any()
    init_condition_gate(model, 0.5, 0)
    expected = 0.5 / gate[0].numel() ** 0.5
    assert gate.any() and gate.std().item() == pytest.approx(expected, rel=0.35)
    again, _ = build_dual_branch(config)
    init_condition_gate(again, 0.5, 0)
    assert torch.equal(condition_gate(again).weight, gate)  # seeded


def test_epochs_set_the_steps_and_resume_exactly(tmp_path, capsys):
    """--num-train-epochs 2 on 12 samples at batch 4 x grad-accum 1 is 6 steps, saved as the run's steps; one epoch
    resumed to two continues to the same weights as two epochs straight."""
    common = dict(train_size=12, checkpoint_every=3)
    straight = train(tiny_config(tmp_path, name="straight", num_train_epochs=2, **common))
    assert read_run_config(straight, TrainConfig, "train").steps == 6 and read_summary(straight)["steps"] == 6
    resumed = train(tiny_config(tmp_path, name="resumed", num_train_epochs=1, **common))
    assert read_summary(resumed)["steps"] == 3
    capsys.readouterr()
    train(tiny_config(tmp_path, name="resumed", num_train_epochs=2, resume="latest", **common))
    assert "resuming from checkpoint-3 (step 3 of 6)" in capsys.readouterr().out
    a, b = side_weights(straight / "controlnet"), side_weights(resumed / "controlnet")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_a_validation_image_that_cannot_be_read_is_refused_before_the_run_exists(tmp_path):
    config = tiny_config(tmp_path, name="pairs", eval_samples=2, validation_image=[str(tmp_path / "missing.png")])
    with pytest.raises(ValueError, match="--validation-image '.*missing.png': FileNotFoundError"):
        train(config)
    assert not (tmp_path / "runs" / "pairs").exists()


@pytest.mark.slow
def test_compiled_training_matches_eager_training(tmp_path, monkeypatch):
    """--compile (torch.compile of the side net and the frozen main net) trains to the eager losses within float
    noise (1e-5 relative: inductor fuses and reorders the float32 sums) and saves the same state-dict keys; about
    20-40 s of compilation on 2 cores."""
    compiled_classes = []
    original = torch.nn.Module.compile

    def recording_compile(module, *args, **kwargs):
        compiled_classes.append(type(module).__name__)
        return original(module, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "compile", recording_compile)
    eager = train(tiny_config(tmp_path, name="eager"))
    assert compiled_classes == []
    compiled = train(tiny_config(tmp_path, name="compiled", compile=True))
    assert sorted(compiled_classes) == ["ControlNetModel", "UNet2DConditionModel"]
    losses = {name: [float(r["loss"]) for r in read_metrics(run)] for name, run in (("e", eager), ("c", compiled))}
    np.testing.assert_allclose(losses["c"], losses["e"], rtol=1e-5)
    assert side_weights(eager / "controlnet").keys() == side_weights(compiled / "controlnet").keys()


def test_allow_tf32_sets_the_cuda_switches_and_xformers_needs_xformers(tmp_path):
    import importlib.util

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        train(tiny_config(tmp_path, name="tf32", steps=1, allow_tf32=True))
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    if importlib.util.find_spec("xformers") is None:
        with pytest.raises(ValueError, match="needs xformers, which is not installed"):
            tiny_config(tmp_path, enable_xformers_memory_efficient_attention=True)
