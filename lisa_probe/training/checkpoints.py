"""Resumable training state without pickle: safetensors for tensors, JSON for the rest; writing, reading and
exporting a training objective's modules (``objective.modules_to_save()``: an ``engine.Objective``).

A checkpoint directory ``checkpoint-<step>/`` holds the trained modules in diffusers ``save_pretrained`` format
(one subfolder each), ``optimizer.safetensors`` + ``optimizer.json``, ``rng-<rank>.safetensors`` and
``trainer_state.json``. It is written under a temporary name and renamed when complete, so a directory named
``checkpoint-<step>`` is always whole.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lisa_probe.files import replace_dir, write_json

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")


def optimizer_to_safe(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict into tensors ``state.<param>.<key>`` and JSON-able metadata."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"state.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_safe(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Load the output of ``optimizer_to_safe`` back into ``optimizer``."""
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    for name, value in meta["scalars"].items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_rng(path: Path, generator: torch.Generator) -> None:
    """Save the noise generator's and torch's global RNG states (uint8 tensors)."""
    save_file({"generator": generator.get_state(), "torch": torch.get_rng_state()}, path)


def load_rng(path: Path, generator: torch.Generator) -> None:
    """Restore what ``save_rng`` wrote."""
    states = load_file(path)
    generator.set_state(states["generator"])
    torch.set_rng_state(states["torch"])


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint directories of a run, oldest first."""
    run_dir = Path(run_dir)
    found = [p for p in run_dir.glob("checkpoint-*") if p.is_dir() and CHECKPOINT_PATTERN.match(p.name)]
    return sorted(found, key=lambda p: int(CHECKPOINT_PATTERN.match(p.name).group(1)))


def resolve_resume(run_dir: Path, resume: str | None) -> Path | None:
    """``None`` -> None; ``latest`` -> newest checkpoint (None when the run has none); else that checkpoint path."""
    if resume is None:
        return None
    if resume == "latest":
        checkpoints = list_checkpoints(run_dir)
        return checkpoints[-1] if checkpoints else None
    path = Path(resume)
    if not (path / "trainer_state.json").exists():
        raise ValueError(f"--resume {resume!r} is not a checkpoint directory (no trainer_state.json); "
                         f"use 'latest' or a path like {Path(run_dir) / 'checkpoint-100'}")
    return path


def prepare_run_dir(run_dir: Path, resume: str | None, overwrite: bool, is_main: bool = True) -> None:
    """Create ``run_dir`` for a run, once its inputs are known to be valid. A directory that already holds a run
    (any file) is continued only with ``resume`` and replaced only with ``overwrite`` (its contents deleted);
    otherwise FileExistsError names both, so that an old and a new run are never mixed. Every process checks;
    only the main one (``is_main``) deletes and creates: the caller then waits for everyone."""
    run_dir = Path(run_dir)
    holds_run = run_dir.is_dir() and any(run_dir.iterdir())
    if holds_run and resume is None and not overwrite:
        raise FileExistsError(f"run directory {run_dir} already holds a run; pass --resume latest to continue it "
                              "or --overwrite to replace it (or choose another --name)")
    if is_main:
        if holds_run and resume is None:
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Delete all but the ``keep`` newest checkpoints (keep <= 0 keeps all)."""
    if keep > 0:
        for old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old)


def temporary_checkpoint_path(run_dir: Path, step: int) -> Path:
    """Where checkpoint ``step`` is written before ``finalize_checkpoint`` renames it."""
    return Path(run_dir) / f".checkpoint-{step}.tmp"


def temporary_checkpoint_dir(run_dir: Path, step: int) -> Path:
    """A fresh temporary directory for checkpoint ``step`` (renamed by ``finalize_checkpoint``)."""
    tmp = temporary_checkpoint_path(run_dir, step)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def finalize_checkpoint(tmp: Path, step: int) -> Path:
    """Publish a finished temporary checkpoint directory as ``checkpoint-<step>``."""
    final = tmp.parent / f"checkpoint-{step}"
    replace_dir(tmp, final)
    return final


def save_checkpoint(accelerator: Accelerator, run_dir: Path, objective: torch.nn.Module, optimizer, generator,
                    state: dict) -> Path | None:
    """Write ``checkpoint-<step>`` atomically: modules, optimizer, per-rank RNG, trainer state."""
    step = state["step"]
    tmp = None
    try:
        if accelerator.is_main_process:
            tmp = temporary_checkpoint_dir(run_dir, step)
            for name, module in objective.modules_to_save().items():
                module.save_pretrained(tmp / name)
            tensors, meta = optimizer_to_safe(optimizer)
            save_file(tensors, tmp / "optimizer.safetensors")
            write_json(tmp / "optimizer.json", meta)
        accelerator.wait_for_everyone()
        tmp = temporary_checkpoint_path(run_dir, step)  # made by the main process above
        save_rng(tmp / f"rng-{accelerator.process_index}.safetensors", generator)
        accelerator.wait_for_everyone()
        final = None
        if accelerator.is_main_process:
            write_json(tmp / "trainer_state.json", state)
            final = finalize_checkpoint(tmp, step)
    except (OSError, SafetensorError) as error:  # a full disk, a read-only directory ...
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        kept = list_checkpoints(run_dir)
        raise OSError(f"writing checkpoint-{step} in {run_dir} failed ({type(error).__name__}: {error}); nothing "
                      "half-written is kept; " + (f"the last complete checkpoint is {kept[-1]}" if kept
                                                  else "no checkpoint had been saved yet")) from error
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(checkpoint: Path, objective: torch.nn.Module, optimizer, generator, rank: int,
                    world_size: int) -> dict:
    """Restore modules, optimizer and this rank's RNG from ``checkpoint``; returns the trainer state. The optimizer
    state is whole on every process (DDP), so a checkpoint of N processes loads into M; a rank the checkpoint has no
    RNG state for (M > N) keeps the fresh stream it was given, while under the same number of processes a missing
    state is an error."""
    for name, module in objective.modules_to_save().items():
        module.load_state_dict(load_file(checkpoint / name / "diffusion_pytorch_model.safetensors"))
    optimizer_from_safe(optimizer, load_file(checkpoint / "optimizer.safetensors"),
                        json.loads((checkpoint / "optimizer.json").read_text()))
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    rng_file = checkpoint / f"rng-{rank}.safetensors"
    if rng_file.exists():
        load_rng(rng_file, generator)
    elif state["world_size"] == world_size:
        raise ValueError(f"{checkpoint} has no RNG state for process {rank} of the {world_size} it was made with")
    return state


def stream_position(state: dict) -> int:
    """The data-stream position a trainer ``state`` saved (``samples``); checkpoints written before it was saved:
    their micro-batches times the batch size and number of processes they were made with."""
    return state.get("samples", state["micro_batches"] * state["config"]["batch_size"] * state["world_size"])


def export_modules(accelerator: Accelerator, run_dir: Path, objective: torch.nn.Module) -> None:
    """Save the final modules at the top of the run directory (diffusers format, written then renamed)."""
    if not accelerator.is_main_process:
        return
    for name, module in objective.modules_to_save().items():
        tmp = run_dir / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        module.save_pretrained(tmp)
        replace_dir(tmp, run_dir / name)


def with_grad_scaler(accelerator: Accelerator, state: dict) -> dict:
    """A copy of the trainer ``state`` with fp16's gradient-scaler state (scale, growth tracker: plain numbers) when
    the run has a scaler, so that a resumed run scales its first steps as the uninterrupted one."""
    if accelerator.scaler is None:
        return dict(state)
    return {**state, "grad_scaler": accelerator.scaler.state_dict()}


def load_grad_scaler(accelerator: Accelerator, saved: dict) -> None:
    """Restore the gradient scaler saved by ``with_grad_scaler`` (nothing to do without one)."""
    if accelerator.scaler is not None and "grad_scaler" in saved:
        accelerator.scaler.load_state_dict(saved["grad_scaler"])
