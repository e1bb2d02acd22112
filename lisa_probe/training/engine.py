"""The training loop shared by main-net pretraining and side-net training, on accelerate.

Gradient accumulation, autocast with fp32 trainable weights, gradient clipping, AdamW with linear warm-up, seeded
noise from a saved generator, periodic atomic checkpoints with retention, exact resume (the batches already seen
are skipped, RNG restored), ``metrics.csv`` + TensorBoard, a progress bar, and a stop on a non-finite loss.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import gather, pad_across_processes, parse_flag_from_env
from torch import nn
from tqdm.auto import tqdm

from lisa_probe.data import DataError
from lisa_probe.data.stream import batch_loader
from lisa_probe.options import config_defaults
from lisa_probe.seeds import derive_seed
from lisa_probe.training.checkpoints import (
    export_modules,
    list_checkpoints,
    load_checkpoint,
    load_grad_scaler,
    prune_checkpoints,
    resolve_resume,
    save_checkpoint,
    stream_position,
    with_grad_scaler,
)
from lisa_probe.training.config import CONSTANT_SCHEDULES, LoopConfig, eval_steps
from lisa_probe.training.metrics import MetricsLog, eval_log_rows

WEIGHT_DTYPES = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}  # frozen modules' dtype


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity; ``os.cpu_count()`` counts the host's cores, which in a
    container can be many more than the ones it is given)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cpu_only() -> bool:
    """True on a machine without CUDA or under ``accelerate launch --cpu``: several launched processes then run as
    accelerate's MULTI_CPU (gloo)."""
    return not torch.cuda.is_available() or parse_flag_from_env("ACCELERATE_USE_CPU")


def process_state() -> PartialState:
    """accelerate's process state, initialised as ``fit``'s Accelerator will be. CPU processes form a gloo group
    when launched as several (torchrun / ``accelerate launch --multi_gpu`` / mpirun); plain ``PartialState()`` would
    leave each CPU process thinking it is alone."""
    return PartialState(cpu=cpu_only())


def is_main_process() -> bool:
    """True on the one process that writes run-level files (config, summary, scheduler): rank 0 under
    ``accelerate launch``, always True in a single process."""
    return process_state().is_main_process


def process_share(n: int, rank: int, world: int) -> range:
    """The contiguous rows of ``n`` that process ``rank`` of ``world`` computes: the first ``n % world`` processes
    take one row more."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


def gather_rows(make: Callable[[range], torch.Tensor], n: int) -> torch.Tensor | None:
    """Rows ``0 .. n-1`` of ``make(rows) -> (len(rows), ...)`` tensor, each process computing its ``process_share``:
    the whole (n, ...) tensor (on the CPU) on the main process, None on the others. With fewer rows than processes
    every process computes them all (nothing to share)."""
    state = process_state()
    world = state.num_processes
    if world == 1 or n < world:
        whole = make(range(n))
        return whole if state.is_main_process else None
    part = make(process_share(n, state.process_index, world)).contiguous()
    padded = pad_across_processes(part.to(state.device), dim=0)  # the first shares are one row longer
    gathered = gather(padded).cpu()
    size = padded.shape[0]
    if not state.is_main_process:
        return None
    return torch.cat([gathered[r * size:r * size + len(process_share(n, r, world))] for r in range(world)])


def is_eval_step(step: int, config: LoopConfig) -> bool:
    """Whether ``step`` (1-based) evaluates: on ``eval_schedule`` when given, else every ``eval_every`` steps."""
    if config.eval_schedule is not None:
        return step in eval_steps(config.eval_schedule, config.steps)
    return bool(config.eval_every) and step % config.eval_every == 0


POLYNOMIAL_END = 1e-7  # diffusers' get_polynomial_decay_schedule_with_warmup's lr_end


def with_epoch_steps(config: LoopConfig, dataset_size: int, run_dir: Path | None = None) -> LoopConfig:
    """``config`` with ``--steps`` derived from ``--num-train-epochs`` (unchanged without it): the fewest optimizer
    steps whose samples, ``batch_size x grad_accum x processes`` each, cover ``num_train_epochs x dataset_size``
    (the stream crosses epoch boundaries without dropping a batch: ``data.stream``). A run resumed from a checkpoint
    of ``run_dir`` adds the steps still needed at today's step size to the checkpoint's (the same number as a fresh
    derivation under the same number of processes; under another one, the samples seen count as they were)."""
    if config.num_train_epochs is None:
        return config
    per_step = config.batch_size * config.grad_accum * process_state().num_processes
    wanted = config.num_train_epochs * dataset_size
    checkpoint = resolve_resume(run_dir, config.resume) if run_dir is not None else None
    if checkpoint is None:
        return dataclasses.replace(config, steps=math.ceil(wanted / per_step))
    saved = json.loads((checkpoint / "trainer_state.json").read_text())
    remaining = max(0, wanted - stream_position(saved))
    return dataclasses.replace(config, steps=saved["step"] + math.ceil(remaining / per_step))


def learning_rate(step: int, config: LoopConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based): a linear warm-up over ``lr_warmup_steps`` (reaching the full
    rate at its last step: one step ahead of diffusers', whose first step has rate 0), then ``lr_schedule``'s factor,
    the formulas of diffusers.optimization's schedules of the same names over ``progress`` = (step − warm-up) /
    (steps − warm-up) (tested against diffusers' own)."""
    if step < config.lr_warmup_steps or config.lr_schedule in CONSTANT_SCHEDULES:
        return config.lr * min(1.0, (step + 1) / max(1, config.lr_warmup_steps))
    progress = (step - config.lr_warmup_steps) / max(1, config.steps - config.lr_warmup_steps)
    if config.lr_schedule == "cosine":
        factor = 0.5 * (1 + math.cos(math.pi * progress))
    elif config.lr_schedule == "cosine_with_restarts":
        factor = 0.0 if progress >= 1 else 0.5 * (1 + math.cos(math.pi * ((config.lr_num_cycles * progress) % 1.0)))
    elif config.lr_schedule == "linear":
        factor = max(0.0, 1 - progress)
    else:  # polynomial
        end = POLYNOMIAL_END / config.lr
        factor = end if progress > 1 else (1 - end) * (1 - progress) ** config.lr_power + end
    return config.lr * max(0.0, factor)


class Objective(nn.Module):
    """What the engine trains: ``draw`` makes the random inputs of a batch, ``forward`` returns losses.

    ``forward(**inputs, step=...)`` must return a dict with a scalar ``loss`` and other scalar logs.
    """

    def modules_to_save(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def draw(self, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def after_step(self, step: int) -> None:
        """Called after every optimizer step (e.g. to update an EMA); nothing by default."""

    def enable_gradient_checkpointing(self) -> list[str]:
        """Turn on diffusers' gradient checkpointing in every saved module that supports it; returns their names."""
        enabled = []
        for name, module in self.modules_to_save().items():
            if getattr(module, "_supports_gradient_checkpointing", False):
                module.enable_gradient_checkpointing()
                enabled.append(name)
        return enabled

    def networks(self) -> dict[str, nn.Module]:
        """The diffusers networks the forward runs (what ``--compile`` and ``--enable-xformers`` act on): the saved
        modules by default."""
        return self.modules_to_save()

    def speed_up(self, config: LoopConfig) -> None:
        """Apply ``--compile`` (``nn.Module.compile``: in place, state-dict keys unchanged) and
        ``--enable-xformers-memory-efficient-attention`` to ``networks``."""
        for module in self.networks().values():
            if config.enable_xformers_memory_efficient_attention:
                module.enable_xformers_memory_efficient_attention()
            if config.compile:
                module.compile()

    def param_groups(self) -> list[dict]:
        """AdamW parameter groups ``{"params": [...], "lr_scale": factor}`` (the learning rate of a group is the
        schedule's times its factor): one group of every trainable parameter by default."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr_scale": 1.0}]


class Probe:
    """Cheap measurements of the model every ``every`` steps, logged in ``metrics.csv`` and TensorBoard with the
    step's row (``training.onset_probe.OnsetProbe``): ``probe(step) -> {column: value}`` on the main process."""

    every: int

    def bind(self, objective: Objective, optimizer: torch.optim.Optimizer) -> None:
        """Called once by ``fit`` before the loop with the objective and its optimizer; nothing by default."""

    def __call__(self, step: int) -> dict[str, float]:
        raise NotImplementedError


class NonFiniteLossError(FloatingPointError):
    """Raised when a loss is NaN or inf; nothing is saved for that step."""


def _check_resume_config(state: dict, config: dict, checkpoint: Path, defaults: dict,
                         resumable: tuple[str, ...] = LoopConfig.resumable_changes) -> None:
    """Refuse a resume whose settings differ from the checkpoint's, except the ``resumable`` fields (the config
    class's ``resumable_changes``) and options the checkpoint predates (missing from its config) that are now at
    their ``defaults``: those reproduce the old run."""
    saved = {**{k: v for k, v in defaults.items() if k in config}, **state["config"]}
    differing = sorted(k for k in set(saved) | set(config)
                       if k not in resumable and saved.get(k) != config.get(k))
    if differing:
        details = "; ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {config.get(k)!r}" for k in differing)
        raise ValueError(f"cannot resume from {checkpoint}: it was made with another config ({details})")
    if config.get("lr_schedule", "constant") not in CONSTANT_SCHEDULES and saved.get("steps") != config.get("steps"):
        raise ValueError(f"cannot resume from {checkpoint} with steps={config.get('steps')}: its "
                         f"{config.get('lr_schedule')} learning-rate decay is laid out over steps={saved.get('steps')} "
                         "(a constant schedule may change steps)")


def fit(run_dir: Path, objective: Objective, dataset, config: LoopConfig,
        evaluate: Callable[[int], dict[str, float]] | None = None, probe: Probe | None = None) -> dict:
    """Train ``objective`` on ``dataset`` under ``config``; returns the final trainer state.

    ``evaluate(step)`` runs on the main process every ``eval_every`` steps and at the end; its metrics go to
    ``eval.csv`` and TensorBoard. However the loop ends (finished, a non-finite loss, an interrupt), accelerate's
    per-run state (mixed precision, accumulation) is freed, so that a later fit in the same process (the default
    main net's pretraining before a side net, a study, a notebook) may use other settings; the process group stays
    up for it and ``end_processes`` takes it down at exit (accelerate's ``end_training`` would destroy it).
    """
    try:
        return _fit_loop(Path(run_dir), objective, dataset, config, evaluate, probe)
    finally:
        AcceleratorState._reset_state()
        GradientState._reset_state()


def make_optimizer(groups: list[dict], config: LoopConfig) -> torch.optim.Optimizer:
    """AdamW over ``groups``: torch's fused implementation (one kernel over all tensors, the same update as the
    per-tensor loop torch otherwise uses on a CPU: 4x faster there, ``docs/benchmarks.md``), or bitsandbytes'
    8-bit one with ``--use-8bit-adam``."""
    if config.use_8bit_adam:
        import bitsandbytes  # optional dependency, checked by LoopConfig

        return bitsandbytes.optim.AdamW8bit(groups, lr=config.lr, weight_decay=config.weight_decay,
                                            betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_epsilon)
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay,
                             betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_epsilon, fused=True)


def _fit_loop(run_dir: Path, objective: Objective, dataset, config: LoopConfig,
              evaluate: Callable[[int], dict[str, float]] | None, probe: Probe | None) -> dict:
    """The body of ``fit``."""
    accelerator = Accelerator(mixed_precision=config.mixed_precision, gradient_accumulation_steps=config.grad_accum,
                              cpu=cpu_only())
    if accelerator.device.type == "cpu" and accelerator.num_processes > 1:
        # several CPU processes on one machine: share the cores instead of oversubscribing them
        torch.set_num_threads(max(1, usable_cores() // accelerator.num_processes))
    config_dict = dataclasses.asdict(config)
    groups = objective.param_groups()
    params = [p for group in groups for p in group["params"]]
    optimizer = make_optimizer(groups, config)
    if config.gradient_checkpointing:
        objective.enable_gradient_checkpointing()
    if config.allow_tf32:  # diffusers' --allow_tf32: TF32 matmuls and convolutions on Ampere+ GPUs; nothing on a CPU
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    objective.speed_up(config)
    generator = torch.Generator().manual_seed(derive_seed(config.seed, "process", accelerator.process_index))
    world = accelerator.num_processes
    state = {"step": 0, "micro_batches": 0, "samples": 0, "train_seconds": 0.0, "config": config_dict,
             "world_size": world}  # samples: the position in the data stream (data.stream), across processes
    checkpoint = resolve_resume(run_dir, config.resume)
    if checkpoint is not None:
        saved = load_checkpoint(checkpoint, objective, optimizer, generator, accelerator.process_index, world)
        _check_resume_config(saved, config_dict, checkpoint, config_defaults(type(config)),
                             type(config).resumable_changes)
        samples = stream_position(saved)
        state.update(step=saved["step"], micro_batches=saved["micro_batches"], samples=samples,
                     train_seconds=saved.get("train_seconds", 0.0))
        load_grad_scaler(accelerator, saved)
        if saved["world_size"] != world and accelerator.is_main_process:
            print(f"resuming a run of {saved['world_size']} processes with {world}: a step now takes "
                  f"{config.batch_size * config.grad_accum * world} samples; the data go on at sample {samples} of "
                  "the stream, none skipped or repeated; processes without a saved RNG state start their own stream")
    model, optimizer = accelerator.prepare(objective, optimizer)
    if probe is not None:
        probe.bind(objective, optimizer)
    loader = batch_loader(dataset, config.batch_size, config.seed, accelerator.process_index, world,
                          position=state["samples"], num_workers=config.num_workers)
    if checkpoint is not None and accelerator.is_main_process:
        print(f"resuming from {checkpoint.name} (step {state['step']} of {config.steps})")
    metrics = MetricsLog(run_dir, state["step"], accelerator.is_main_process, config.report_to, config_dict)
    progress = tqdm(total=config.steps, initial=state["step"], desc=run_dir.name,
                    disable=not accelerator.is_main_process, dynamic_ncols=True)
    sums: dict[str, float] = {}
    batches = iter(loader)
    model.train()
    while state["step"] < config.steps:
        started = time.perf_counter()
        try:
            batch = next(batches)
        except DataError as error:
            kept = stop_on_data_error(accelerator, run_dir, objective, optimizer, generator, state, config)
            raise DataError(f"{error}; {kept}") from error
        state["micro_batches"] += 1
        state["samples"] += config.batch_size * world
        with accelerator.accumulate(model):
            inputs = objective.draw(batch, generator)
            outputs = model(**{k: v.to(accelerator.device) for k, v in inputs.items()}, step=state["step"])
            loss = outputs["loss"]
            if not all_finite(accelerator, loss):
                kept = list_checkpoints(run_dir)
                raise NonFiniteLossError(
                    f"non-finite loss {loss.item()} at step {state['step'] + 1} (this process or another); stopped "
                    "without saving: " + (f"the last good checkpoint is {kept[-1]} (resume with --resume latest, e.g. "
                                          "at a lower --lr)" if kept else "no checkpoint had been saved yet"))
            accelerator.backward(loss)
            for key, value in outputs.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach()) / config.grad_accum
            if accelerator.sync_gradients:
                sums["grad_norm"] = float(accelerator.clip_grad_norm_(params, config.max_grad_norm))
            lr = learning_rate(state["step"], config)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)  # checkpoints before the factors have none
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        state["train_seconds"] += time.perf_counter() - started
        if not accelerator.sync_gradients:
            continue
        state["step"] += 1
        step = state["step"]
        objective.after_step(step)
        progress.update(1)
        progress.set_postfix(progress_postfix(sums))
        probed = {}
        if probe is not None and step % probe.every == 0 and accelerator.is_main_process:
            objective.eval()
            with accelerator.autocast():  # as training runs: frozen modules may hold the mixed-precision dtype
                probed = probe(step)
            objective.train()
        if step % config.log_every == 0 or step == config.steps or probed:
            metrics.log(step, {**sums, "lr": lr, "seconds": state["train_seconds"], **probed})
        sums = {}
        if step == config.steps or (config.checkpoint_every and step % config.checkpoint_every == 0):
            # before this step's evaluation: an evaluation that fails loses no training
            saved = with_grad_scaler(accelerator, state)
            save_checkpoint(accelerator, run_dir, objective, optimizer, generator, saved)
            if accelerator.is_main_process:
                prune_checkpoints(run_dir, config.keep_checkpoints)
        if evaluate is not None and (step == config.steps or is_eval_step(step, config)):
            objective.eval()
            with accelerator.autocast():
                results = evaluate(step)  # every process samples its share; the main one gets the metrics
            objective.train()
            if accelerator.is_main_process:
                eval_log_rows(run_dir, step, results, metrics)
            accelerator.wait_for_everyone()
    progress.close()
    metrics.close()
    export_modules(accelerator, run_dir, objective)
    accelerator.wait_for_everyone()
    return state


def progress_postfix(sums: dict[str, float]) -> dict[str, str]:
    """The progress bar's figures of a step: the loss and, when the objective logs them apart, its diffusion and LISA
    parts (so a LISA run's bar compares with a baseline's on the diffusion loss)."""
    shown = {"loss": "loss", "diffusion_loss": "diffusion", "lisa_loss": "lisa"}
    if "lisa_loss" not in sums:
        shown = {"loss": "loss"}
    return {label: f"{sums[key]:.4f}" for key, label in shown.items() if key in sums}


def stop_on_data_error(accelerator: Accelerator, run_dir: Path, objective: Objective, optimizer, generator,
                       state: dict, config: LoopConfig) -> str:
    """What a run stopped by unreadable data keeps: a checkpoint of the last finished step, written now when the
    error came before a step's first micro-batch in a single process (the state then is exactly that step's), else
    the last one saved. Returns the sentence that says which one to resume from."""
    at_step_start = state["micro_batches"] % config.grad_accum == 0 and state["step"] > 0
    if at_step_start and accelerator.num_processes == 1 and not (run_dir / f"checkpoint-{state['step']}").exists():
        save_checkpoint(accelerator, run_dir, objective, optimizer, generator, with_grad_scaler(accelerator, state))
    kept = list_checkpoints(run_dir)
    if not kept:
        return f"training stopped at step {state['step']} with no checkpoint saved: mend the data and start again"
    return f"training stopped at step {state['step']}: mend the data and continue from {kept[-1]} with --resume latest"


def all_finite(accelerator: Accelerator, loss: torch.Tensor) -> bool:
    """Whether ``loss`` is finite on every process (a collective: all stop together instead of the others waiting
    in the next gradient all-reduce for the one that stopped)."""
    bad = torch.tensor([0.0 if torch.isfinite(loss) else 1.0], device=loss.device)
    if accelerator.num_processes > 1:
        bad = accelerator.reduce(bad, reduction="sum")
    return bool(bad.item() == 0)


def end_processes() -> None:
    """Take down the process group of a launched run (the CLIs call it last; nothing to do in one process)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
