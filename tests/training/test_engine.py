"""The training loop's pieces that stand alone: learning-rate schedule, config checks, device choice, resume
checks, the fp16 scaler's state, the finite-loss check."""

import json
import math
from types import SimpleNamespace

import pytest
import torch

from lisa_probe.training.checkpoints import load_grad_scaler, with_grad_scaler
from lisa_probe.training.config import LoopConfig, eval_steps
from lisa_probe.training.engine import (
    _check_resume_config,
    all_finite,
    cpu_only,
    is_eval_step,
    learning_rate,
    process_share,
    progress_postfix,
)


def test_warmup_then_constant():
    config = LoopConfig(lr=1e-3, lr_warmup_steps=4, steps=10)
    assert [learning_rate(s, config) for s in range(5)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3])
    assert learning_rate(9, config) == pytest.approx(1e-3)


def test_cosine_decays_to_zero_after_warmup():
    config = LoopConfig(lr=1e-3, lr_warmup_steps=2, steps=12, lr_schedule="cosine")
    assert learning_rate(0, config) == pytest.approx(5e-4)
    assert learning_rate(2, config) == pytest.approx(1e-3)  # first step after warm-up: full rate
    assert learning_rate(7, config) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 5 / 10)))  # half way
    assert learning_rate(12, config) == pytest.approx(0.0, abs=1e-12)
    rates = [learning_rate(s, config) for s in range(2, 13)]
    assert all(a > b for a, b in zip(rates, rates[1:]))


def test_unknown_schedule_names_allowed():
    with pytest.raises(ValueError, match="cosine"):
        LoopConfig(lr_schedule="step")


@pytest.mark.parametrize("field_name,value,bound", [("steps", 0, ">= 1"), ("log_every", 0, ">= 1"),
                                                    ("checkpoint_every", -1, ">= 0"), ("eval_every", -5, ">= 0"),
                                                    ("eval_samples", -1, ">= 0"), ("keep_checkpoints", -2, ">= 0")])
def test_out_of_range_counts_name_the_value_and_the_bound(field_name, value, bound):
    with pytest.raises(ValueError, match=f"--{field_name.replace('_', '-')} must be {bound}, got {value}"):
        LoopConfig(**{field_name: value})


def test_cpu_only_without_cuda_or_under_accelerate_launch_cpu(monkeypatch):
    """``fit``'s Accelerator and the process state that decides who writes run files must agree on the device: a
    mismatch makes accelerate refuse the second initialisation."""
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert not cpu_only()
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")  # what `accelerate launch --cpu` sets
    assert cpu_only()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("ACCELERATE_USE_CPU")
    assert cpu_only()


def test_cosine_schedule_refuses_a_new_length_on_resume(tmp_path):
    saved = {"config": {"steps": 100, "lr_schedule": "cosine"}}
    with pytest.raises(ValueError, match="steps=200: its cosine .* over steps=100"):
        _check_resume_config(saved, {"steps": 200, "lr_schedule": "cosine"}, tmp_path, {})
    _check_resume_config(saved, {"steps": 100, "lr_schedule": "cosine"}, tmp_path, {})
    constant = {"config": {"steps": 100, "lr_schedule": "constant"}}
    _check_resume_config(constant, {"steps": 200, "lr_schedule": "constant"}, tmp_path, {})


def test_grad_scaler_state_travels_in_the_trainer_state_json():
    """fp16 runs (GPU) keep the scaler's backed-off scale across a resume; a scaler on the CPU stands in here."""
    running = SimpleNamespace(scaler=torch.amp.GradScaler("cpu", init_scale=1024.0))
    running.scaler.scale(torch.ones(1))
    running.scaler.update(new_scale=128.0)
    state = {"step": 7, "micro_batches": 7}
    saved = json.loads(json.dumps(with_grad_scaler(running, state)))
    assert state == {"step": 7, "micro_batches": 7}  # a copy
    resumed = SimpleNamespace(scaler=torch.amp.GradScaler("cpu", init_scale=1024.0))
    load_grad_scaler(resumed, saved)
    assert resumed.scaler.get_scale() == 128.0
    without = SimpleNamespace(scaler=None)
    assert with_grad_scaler(without, state) == state
    load_grad_scaler(without, saved)  # nothing to restore into


def test_all_finite_in_one_process():
    one = SimpleNamespace(num_processes=1)
    assert all_finite(one, torch.tensor(0.5))
    assert not all_finite(one, torch.tensor(float("nan")))
    assert not all_finite(one, torch.tensor(float("inf")))


def test_an_evaluation_schedule_is_dense_where_asked():
    assert sorted(eval_steps("10@50,25", 120)) == [10, 20, 30, 40, 50, 75, 100]
    assert sorted(eval_steps("5@20,20@100,100", 300)) == [5, 10, 15, 20, 40, 60, 80, 100, 200, 300]
    config = LoopConfig(steps=120, eval_schedule="10@50,25")
    assert [s for s in range(1, 121) if is_eval_step(s, config)] == [10, 20, 30, 40, 50, 75, 100]
    assert [s for s in range(1, 9) if is_eval_step(s, LoopConfig(steps=8, eval_every=4))] == [4, 8]
    for bad in ("10@50", "10,20", "0@50,10", "10@50,5@40,10", "x@3,1"):
        with pytest.raises(ValueError, match=f"--eval-schedule '{bad}'"):
            LoopConfig(steps=100, eval_schedule=bad)


def test_the_progress_bar_shows_the_diffusion_and_lisa_losses_apart():
    assert progress_postfix({"loss": 1.25, "diffusion_loss": 1.0, "lisa_loss": 1.25, "grad_norm": 3.0}) == {
        "loss": "1.2500", "diffusion": "1.0000", "lisa": "1.2500"}
    assert progress_postfix({"loss": 0.5, "diffusion_loss": 0.5}) == {"loss": "0.5000"}  # a baseline: one figure


@pytest.mark.parametrize("n, world, shares", [(5, 2, [range(0, 3), range(3, 5)]), (4, 2, [range(0, 2), range(2, 4)]),
                                              (7, 3, [range(0, 3), range(3, 5), range(5, 7)])])
def test_process_shares_are_contiguous_and_cover_every_row_once(n, world, shares):
    assert [process_share(n, rank, world) for rank in range(world)] == shares


GATHER_SCRIPT = """
import sys
from pathlib import Path

import torch

from lisa_probe.training.engine import end_processes, gather_rows, process_state

out = Path(sys.argv[1])
rank = process_state().process_index
computed = []


def make(rows):
    computed.extend(rows)
    return torch.arange(rows.start, rows.stop, dtype=torch.float32)[:, None].repeat(1, 2) * 10


whole = gather_rows(make, 5)
(out / f"rank-{rank}.txt").write_text(",".join(map(str, computed)) + ";" + ("none" if whole is None else
                                      ",".join(str(int(v)) for v in whole[:, 0].tolist())))
end_processes()  # take the process group down before exit, as the command lines do
"""


@pytest.mark.slow
def test_two_processes_compute_their_own_rows_and_the_main_one_gathers_them_in_order(tmp_path):
    from tests.conftest import launch_two_cpu_processes

    script = tmp_path / "gather.py"
    script.write_text(GATHER_SCRIPT)
    result = launch_two_cpu_processes(str(script), [str(tmp_path)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "rank-0.txt").read_text() == "0,1,2;0,10,20,30,40"
    assert (tmp_path / "rank-1.txt").read_text() == "3,4;none"


def test_epoch_steps_count_the_samples_a_checkpoint_has_seen(tmp_path):
    """--num-train-epochs 2 over 20 samples at batch 4 in one process: 10 steps fresh; resumed from a checkpoint that
    two processes wrote at step 2 (16 samples seen), the 24 left take 6 more steps: 8."""
    from lisa_probe.training.engine import with_epoch_steps

    config = LoopConfig(batch_size=4, num_train_epochs=2)
    assert with_epoch_steps(config, 20).steps == 10 and with_epoch_steps(LoopConfig(), 20).steps == 1000
    checkpoint = tmp_path / "checkpoint-2"
    checkpoint.mkdir()
    (checkpoint / "trainer_state.json").write_text(json.dumps(
        {"step": 2, "micro_batches": 2, "samples": 16, "world_size": 2, "config": {"batch_size": 4}}))
    resumed = LoopConfig(batch_size=4, num_train_epochs=2, resume=str(checkpoint))
    assert with_epoch_steps(resumed, 20, tmp_path).steps == 8
