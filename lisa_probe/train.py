"""``python -m lisa_probe.train``: train a side net (ControlNet / SD3 ControlNet) with or without LISA.

With no arguments this is the toolkit's main job on the embedded default: the default main net (UNet,
v-prediction, shapes 32 px) is pretrained first if missing, then a ControlNet is trained with LISA on shapes with
edge conditions, evaluated, and written to ``runs/<name>/``: ``config.yaml``, ``controlnet/`` (plain diffusers ControlNetModel),
``lisa_decoder/`` (safetensors, never needed to sample), checkpoints, ``metrics.csv``, ``eval.csv``, sample grids
(condition | main alone | controlled) and ``summary.json``. ``--lisa-weight 0`` trains the baseline: identical
except that it builds no decoder and adds no LISA term.
"""

from __future__ import annotations

import json
import sys
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from lisa_probe.checkpointing import prepare_run_dir
from lisa_probe.config import check_number, cli_errors, option, parse_config
from lisa_probe.data import DATASET_NAMES, build_dataset, check_choice
from lisa_probe.engine import LoopConfig, Objective, end_processes, fit, is_main_process, process_state
from lisa_probe.evaluation import CONTROL_METRIC
from lisa_probe.hooks import capture
from lisa_probe.lisa import DISTANCES, SCHEDULES, LisaDecoder, lisa_distance, lisa_rows, lisa_target, lisa_weight
from lisa_probe.models import MAIN_PASSES, DualBranch
from lisa_probe.rundir import read_summary, write_run_config
from lisa_probe.runs import DEFAULT_MAIN_NAME, build_dual_branch, ensure_default_main
from lisa_probe.validation import ControlEvaluation, write_summary


@dataclass
class TrainConfig(LoopConfig):
    """Side-net training settings. Defaults are the embedded demo (LISA on; ~4 minutes on 2 CPU cores once the main
    net exists)."""

    main: str | None = field(default=None, metadata=option(
        f"main-net directory (diffusers layout); default: <out-dir>/{DEFAULT_MAIN_NAME}, pretrained if missing"))
    side: str | None = field(default=None, metadata=option("initialise the side net from this diffusers directory "
                                                         "instead of copying the main net"))
    dataset: str = field(default="shapes", metadata=option("training data", choices=DATASET_NAMES))
    condition: str | None = field(default=None, metadata=option("condition kind (default: the dataset's)"))
    data_root: str | None = field(default=None, metadata=option("image directory for the folder dataset"))
    skip_bad_files: bool = field(default=False, metadata=option("folder dataset: skip unreadable or tiny images "
                                                               "(listed in a warning) instead of stopping"))
    lisa_weight: float = field(default=0.2, metadata=option("LISA lambda; 0 trains the baseline (no decoder)"))
    lisa_site: str | None = field(default=None, metadata=option("hooked site (default: a middle one)"))
    lisa_schedule: str = field(default="constant", metadata=option("lambda schedule", choices=SCHEDULES))
    lisa_end_step: int | None = field(default=None, metadata=option("end step of the linear_decay/cutoff schedule"))
    lisa_distance: str = field(default="mse", metadata=option("LISA distance", choices=DISTANCES))
    lisa_fraction: float = field(default=1.0, metadata=option("fraction of each batch that gets the LISA term"))
    lisa_main_pass: str = field(default="separate", metadata=option(
        "how pred_main's unshared part runs: separate (a no-grad pass, fewest FLOPs: CPUs, large models) or batched "
        "(appended to pred_full's batch, fewest kernel launches: small models on GPUs; more activation memory)",
        choices=MAIN_PASSES))
    name: str | None = field(default=None, metadata=option("run name (default: derived from the settings)"))
    out_dir: str = field(default="runs", metadata=option("parent of run directories"))
    eval_samples: int = field(default=64, metadata=option("validation conditions sampled per evaluation (0: no "
                                                        "evaluation)"))
    sample_steps: int = field(default=20, metadata=option("sampler steps at evaluation"))
    convergence_threshold: float = field(default=0.5, metadata=option("control fidelity that counts as converged"))
    steps: int = field(default=600, metadata=option("optimizer steps"))
    lr: float = field(default=1e-3, metadata=option("AdamW learning rate (the reference uses 1e-5 for SD-scale "
                                                  "models; 1e-3 suits the small built-in presets)"))
    eval_every: int = field(default=100, metadata=option("steps between evaluations (0: only at the end)"))
    checkpoint_every: int = field(default=200, metadata=option("steps between checkpoints (0: only at the end)"))

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number("lisa_weight", self.lisa_weight, 0)
        check_number("convergence_threshold", self.convergence_threshold, 0, 1)
        if self.skip_bad_files and self.dataset != "folder":
            raise ValueError(f"--skip-bad-files applies to --dataset folder, not {self.dataset!r}")
        if self.sample_steps < 1:
            raise ValueError(f"--sample-steps must be >= 1, got {self.sample_steps}")
        lisa_rows(1, self.lisa_fraction)
        check_choice("LISA main pass", self.lisa_main_pass, MAIN_PASSES)
        lisa_weight(0, self.lisa_weight, self.lisa_schedule, self.lisa_end_step)
        if self.name is None:
            arm = f"lisa{self.lisa_weight:g}" if self.lisa_weight > 0 else "baseline"
            self.name = f"{self.dataset}-{self.condition or 'default'}-{arm}-s{self.seed}"

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name


class SideNetObjective(Objective):
    """``L = MSE(pred_full, y) + lambda_t * distance(D(h_site, t), y - sg[pred_main])`` on a DualBranch.

    The LISA term covers the first ``lisa_rows(B, fraction)`` rows of each batch; with ``decoder=None`` (baseline)
    there is no hook, no main-alone prediction and no extra term.
    """

    def __init__(self, model: DualBranch, decoder: LisaDecoder | None, config: TrainConfig, site: str):
        super().__init__()
        self.model, self.decoder, self.config, self.site = model, decoder, config, site

    def modules_to_save(self) -> dict[str, torch.nn.Module]:
        modules = {"controlnet": self.model.side}
        if self.decoder is not None:
            modules["lisa_decoder"] = self.decoder
        return modules

    def draw(self, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        x0 = self.model.encode_images(batch["image"])
        return {"x0": x0, "cond": batch["cond"], "noise": torch.randn(x0.shape, generator=generator),
                "timesteps": self.model.parameterization.sample_timesteps(x0.shape[0], generator)}

    def forward(self, x0, cond, noise, timesteps, step):
        parameterization = self.model.parameterization
        x_t = parameterization.add_noise(x0, noise, timesteps)
        target = parameterization.target(x0, noise, timesteps)
        rows = lisa_rows(x0.shape[0], self.config.lisa_fraction) if self.decoder is not None else 0
        hook = capture(self.model, [self.site]) if rows else nullcontext({})
        with hook as records:
            out = self.model(x_t, timesteps, cond, main_rows=rows, main_pass=self.config.lisa_main_pass)
        diffusion = F.mse_loss(out.pred_full.float(), target.float())
        if not rows:
            return {"loss": diffusion, "diffusion_loss": diffusion.detach()}
        feature = self.model.feature_to_map(self.site, records[self.site]["feature"][:rows])
        decoded = self.decoder(feature, timesteps[:rows])
        aux_target = lisa_target(target[:rows], out.pred_main)
        lisa = lisa_distance(decoded, aux_target, self.config.lisa_distance)
        weight = lisa_weight(step, self.config.lisa_weight, self.config.lisa_schedule, self.config.lisa_end_step)
        return {"loss": diffusion + weight * lisa, "diffusion_loss": diffusion.detach(), "lisa_loss": lisa.detach(),
                "lisa_target_norm": aux_target.float().pow(2).mean().detach(),
                "lisa_weight": torch.tensor(weight, dtype=torch.float64)}


def build_decoder(model: DualBranch, site: str, seed: int) -> LisaDecoder:
    """A LISA decoder from ``site``'s feature map to the prediction's shape.

    Channels halve per stage down to ``min(64, C / 4)``: 64 as in the reference for SD-sized features (C >= 256),
    narrower for the small built-in presets, where 64-channel convolutions at full resolution would cost more than
    the side net itself.
    """
    channels, height, _ = model.site(site).map_shape
    out_size = model.main.config.sample_size
    torch.manual_seed(seed)
    return LisaDecoder(in_channels=channels, in_size=height, out_channels=model.main.config.out_channels,
                       out_size=out_size, min_channels=min(64, max(8, channels // 4)))


def train(config: TrainConfig) -> Path:
    """Train a side net; returns the run directory."""
    if config.main is None:
        config.main = str(ensure_default_main(Path(config.out_dir)))
    model, dataset_kwargs = build_dual_branch(config)
    site = config.lisa_site or model.default_lisa_site()
    model.site(site)
    dataset = build_dataset(config.dataset, split="train", **dataset_kwargs)
    run_dir = config.run_dir  # created once the inputs are known to be valid
    prepare_run_dir(run_dir, config.resume, config.overwrite, is_main_process())
    process_state().wait_for_everyone()
    decoder = build_decoder(model, site, config.seed) if config.lisa_weight > 0 else None
    if is_main_process():
        write_run_config(run_dir, replace(config, lisa_site=site), kind="train")  # the site resolved, saved
    objective = SideNetObjective(model, decoder, config, site)
    evaluation = ControlEvaluation(model, config, dataset_kwargs, run_dir) if config.eval_samples > 0 else None
    state = fit(run_dir, objective, dataset, config, evaluate=evaluation)
    if is_main_process():
        write_summary(run_dir, config, state, CONTROL_METRIC[dataset.condition])
    return run_dir


def main(argv: list[str] | None = None) -> int:
    prog = "python -m lisa_probe.train"
    config = parse_config(TrainConfig, argv, prog, __doc__.splitlines()[0])
    with cli_errors(prog):
        run_dir = train(config)
    if is_main_process():
        summary = read_summary(run_dir)
        print(f"side net written to {run_dir}")
        print(json.dumps(summary["final"], indent=2))
    end_processes()
    return 0


if __name__ == "__main__":
    sys.exit(main())
