"""The settings of training: ``LoopConfig`` (the loop's, shared by both trainers), ``PretrainConfig`` (main nets)
and ``TrainConfig`` (side nets), whose fields are the command-line options (``options.parse_config``) and whose
``__post_init__`` validates them; each config's fields that a resume may change (``resumable_changes``, beside its fields). Light: importing
it loads no torch, so ``--help`` is quick."""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from lisa_probe.data.options import PROMPT_MODES, DataOptions
from lisa_probe.diffusion.weighting import PREDICTION_TYPES, TIMESTEP_SAMPLINGS, WEIGHTING_SCHEMES, WeightingScheme
from lisa_probe.files import local_model
from lisa_probe.models.presets import FAMILIES, MAIN_PASSES, PRESETS
from lisa_probe.options import SEED_MAX, ModelFiles, check_choice, check_number, flag, option
from lisa_probe.training.lisa_schedule import DISTANCES, SCHEDULES, lisa_rows, lisa_weight

# v for the UNet: at the default 1200 steps v-prediction reached FD 17.5 where eps reached 38.2 (docs/CONTRACTS.md).
DEFAULT_PREDICTION_TYPE = {"unet": "v", "dit": "flow"}
MODE_SCALE_MAX = 7.235  # the largest --mode-scale whose density stays in [0, 1] (tests/training/test_config.py)
MIXED_PRECISION = ("no", "bf16", "fp16")


def check_run_name(name: str) -> None:
    """ValueError unless ``name`` is one directory name: a run stays inside ``--out-dir``."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or Path(name).is_absolute():
        raise ValueError(f"--name must be one directory name inside --out-dir (no '/', '\\', '.' or '..'), "
                         f"got {name!r}")


# Config fields that may differ between an interrupted run and its resumption.
# experiment trackers (accelerate's tracker classes): --report-to value -> the trackers, and the module each needs
REPORT_TO = {"tensorboard": ("tensorboard",), "wandb": ("wandb",), "all": ("tensorboard", "wandb"), "none": ()}
TRACKER_MODULES = {"tensorboard": "tensorboard", "wandb": "wandb"}


# after the linear warm-up, as diffusers.optimization.get_scheduler's schedules of these names (training.engine)
LR_SCHEDULES = ("constant", "constant_with_warmup", "cosine", "cosine_with_restarts", "linear", "polynomial")
CONSTANT_SCHEDULES = ("constant", "constant_with_warmup")  # the others are laid out over --steps


@functools.lru_cache(maxsize=8)
def eval_steps(schedule: str, total: int) -> frozenset[int]:
    """The steps ``schedule`` evaluates at, up to ``total``: ``"EVERY@UNTIL,...,EVERY"`` segments (see
    ``LoopConfig.eval_schedule``); ValueError naming the text for anything else."""
    steps, start = [], 0
    parts = [part.strip() for part in schedule.split(",")]
    try:
        for k, part in enumerate(parts):
            every, _, until = part.partition("@")
            every = int(every)
            stop = int(until) if until else total
            if every < 1 or stop <= start or (not until and k != len(parts) - 1) or (until and k == len(parts) - 1):
                raise ValueError
            steps += range(start + every, min(stop, total) + 1, every)
            start = stop
    except ValueError:
        raise ValueError(f"--eval-schedule {schedule!r}: expected segments EVERY@UNTIL with UNTIL increasing, then a "
                         "last EVERY, e.g. '10@200,50@1000,100'") from None
    return frozenset(steps)


@dataclass
class LoopConfig:
    """Optimisation and bookkeeping settings shared by ``pretrain`` and ``train``."""

    # fields that may differ between an interrupted run and its resumption (the engine's resume check)
    resumable_changes: ClassVar[tuple[str, ...]] = (
        "steps", "num_train_epochs", "resume", "checkpoint_every", "keep_checkpoints", "eval_every", "eval_schedule",
        "log_every", "num_workers", "eval_samples", "overwrite", "report_to", "compile", "allow_tf32",
        "enable_xformers_memory_efficient_attention")

    steps: int = field(default=1000, metadata=option("optimizer steps"))
    num_train_epochs: int | None = field(default=None, metadata=option(
        "train this many passes over the training split instead of --steps: the fewest steps that show every sample "
        "that often, ceil(epochs x N / (batch size x grad accum x processes)), saved as the run's --steps "
        "(diffusers' --num_train_epochs; here it takes precedence over --steps)"))
    batch_size: int = field(default=16, metadata=option("micro-batch size per process"))
    grad_accum: int = field(default=1, metadata=option("gradient accumulation micro-batches per step"))
    lr: float = field(default=1e-4, metadata=option("AdamW learning rate"))
    lr_warmup_steps: int = field(default=0, metadata=option("linear warm-up steps"))
    lr_schedule: str = field(default="constant", metadata=option(
        "learning rate after the warm-up, as diffusers' schedules: constant (constant_with_warmup: the same; both warm "
        "up, where diffusers' constant ignores --lr-warmup-steps), cosine or linear decay to 0, cosine_with_restarts "
        "(--lr-num-cycles), polynomial to 1e-7 (--lr-power)",
        choices=LR_SCHEDULES))
    lr_num_cycles: float = field(default=1.0, metadata=option("cosine_with_restarts: the number of cycles"))
    lr_power: float = field(default=1.0, metadata=option("polynomial: the power of the decay"))
    adam_beta1: float = field(default=0.9, metadata=option("AdamW's beta1"))
    adam_beta2: float = field(default=0.999, metadata=option("AdamW's beta2"))
    adam_epsilon: float = field(default=1e-8, metadata=option("AdamW's epsilon"))
    weight_decay: float = field(default=1e-2, metadata=option("AdamW weight decay"))
    max_grad_norm: float = field(default=1.0, metadata=option("gradient clipping norm"))
    mixed_precision: str = field(default="no", metadata=option(
        "autocast precision; bf16 / fp16 also hold the frozen modules (main net, VAE) in that dtype, as diffusers' "
        "trainers do (the trained weights stay fp32)", choices=MIXED_PRECISION))
    seed: int = field(default=0, metadata=option("seed of data order, noise and initialisation"))
    checkpoint_every: int = field(default=500, metadata=option("steps between checkpoints (0: only at the end)"))
    keep_checkpoints: int = field(default=2, metadata=option("checkpoints kept (0: all)"))
    eval_every: int = field(default=250, metadata=option("steps between evaluations (0: only at the end)"))
    eval_schedule: str | None = field(default=None, metadata=option(
        "evaluation steps dense where an onset is, replacing --eval-every: segments EVERY@UNTIL, then a last EVERY, "
        "e.g. '10@200,50@1000,100' (every 10 steps to 200, every 50 to 1000, then every 100)"))
    eval_samples: int = field(default=64, metadata=option("samples per evaluation (0: no evaluation)"))
    log_every: int = field(default=10, metadata=option("steps between metrics.csv rows"))
    num_workers: int = field(default=0, metadata=option("DataLoader worker processes"))
    resume: str | None = field(default=None, metadata=option("'latest' or a checkpoint directory to resume from"))
    overwrite: bool = field(default=False, metadata=option("replace an existing run directory of the same name"))
    gradient_checkpointing: bool = field(default=False, metadata=option(
        "recompute the trained net's activations in the backward pass instead of keeping them (less memory, more "
        "compute; diffusers' --gradient_checkpointing)"))
    compile: bool = field(default=False, metadata=option(
        "torch.compile the trained net and the frozen main net (nn.Module.compile: the saved weights are unchanged); "
        "the first steps are slow while it compiles (20-40 s for the tiny test nets on 2 CPU cores), the losses equal "
        "eager ones within float noise"))
    allow_tf32: bool = field(default=False, metadata=option(
        "TF32 matmuls and convolutions on Ampere or newer GPUs, as diffusers' --allow_tf32 (faster, 10-bit "
        "mantissa); no effect on a CPU"))
    enable_xformers_memory_efficient_attention: bool = field(default=False, metadata=option(
        "xformers' attention in the diffusers networks, as diffusers' flag (needs xformers and a GPU; without it "
        "diffusers already uses torch's memory-efficient scaled_dot_product_attention)"))
    use_8bit_adam: bool = field(default=False, metadata=option(
        "bitsandbytes' 8-bit AdamW instead of torch's (optional dependency: pip install 'lisa_probe[bnb]')"))
    report_to: str = field(default="tensorboard", metadata=option(
        "experiment trackers, as diffusers' --report_to (accelerate's trackers): tensorboard (<run>/tensorboard), "
        "wandb (optional dependency: pip install 'lisa_probe[wandb]'), all, or none; metrics.csv and eval.csv are "
        "always written", choices=tuple(REPORT_TO)))

    def __post_init__(self) -> None:
        check_choice("report_to", self.report_to, REPORT_TO)
        missing = [name for name in REPORT_TO[self.report_to] if importlib.util.find_spec(TRACKER_MODULES[name]) is None]
        if missing:
            raise ValueError(f"--report-to {self.report_to} needs {', '.join(missing)}, which is not installed: pip "
                             f"install 'lisa_probe[{missing[0]}]' (or pip install {' '.join(missing)})")
        if self.enable_xformers_memory_efficient_attention and importlib.util.find_spec("xformers") is None:
            raise ValueError("--enable-xformers-memory-efficient-attention needs xformers, which is not installed "
                             "(pip install xformers, on a CUDA machine); without it diffusers' attention already "
                             "runs through torch's scaled_dot_product_attention")
        if self.use_8bit_adam and importlib.util.find_spec("bitsandbytes") is None:
            raise ValueError("--use-8bit-adam needs bitsandbytes, which is not installed: pip install "
                             "'lisa_probe[bnb]' (or pip install bitsandbytes)")
        if self.num_train_epochs is not None and self.num_train_epochs < 1:
            raise ValueError(f"--num-train-epochs must be >= 1, got {self.num_train_epochs}")
        for name in ("steps", "batch_size", "grad_accum", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{flag(name)} must be >= 1, got {getattr(self, name)}")
        for name in ("checkpoint_every", "keep_checkpoints", "eval_every", "eval_samples", "num_workers",
                     "lr_warmup_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{flag(name)} must be >= 0, got {getattr(self, name)}")
        check_number("lr", self.lr, 0, low_open=True)
        check_number("weight_decay", self.weight_decay, 0)
        check_number("max_grad_norm", self.max_grad_norm, 0, low_open=True)
        check_number("seed", self.seed, 0, SEED_MAX)
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"--mixed-precision {self.mixed_precision!r} is not one of: {', '.join(MIXED_PRECISION)}")
        if self.eval_schedule is not None:
            eval_steps(self.eval_schedule, self.steps)
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"--lr-schedule {self.lr_schedule!r} is not one of: {', '.join(LR_SCHEDULES)}")
        check_number("lr_num_cycles", self.lr_num_cycles, 0, low_open=True)
        check_number("lr_power", self.lr_power, 0, low_open=True)
        check_number("adam_beta1", self.adam_beta1, 0, 1, high_open=True)
        check_number("adam_beta2", self.adam_beta2, 0, 1, high_open=True)
        check_number("adam_epsilon", self.adam_epsilon, 0, low_open=True)


# learning-rate factors of the side net's parameter groups (side_net.SideNetObjective.param_groups)
LR_SCALES = ("lr_scale_zero_modules", "lr_scale_trunk", "lr_scale_cond_embedding", "lr_scale_decoder")


@dataclass
class PromptDropout:
    """Caption dropout, for the trainers of main nets and side nets alike."""

    proportion_empty_prompts: float = field(default=0.0, metadata=option(
        "captions replaced by the empty prompt, at random, in training (diffusers' caption dropout)"))

    def check_prompt_dropout(self) -> None:
        """The proportion in [0, 1], and above 0 only for data with captions (``DataOptions.has_captions``)."""
        check_number("proportion_empty_prompts", self.proportion_empty_prompts, 0, 1)
        if self.proportion_empty_prompts > 0 and not self.has_captions:
            raise ValueError(f"--proportion-empty-prompts {self.proportion_empty_prompts:g} needs captions; "
                             f"--dataset {self.dataset} has none here (a captioned table with a caption column, "
                             "--captions-file, or --label-prompts)")


@dataclass
class PretrainConfig(LoopConfig, DataOptions, PromptDropout):
    """Main-net pretraining settings (defaults: the demo's main net, <= 10 minutes on 2 CPU cores)."""

    resumable_changes: ClassVar[tuple[str, ...]] = (*LoopConfig.resumable_changes, "name", "out_dir")

    backbone: str = field(default="unet", metadata={"help": "main-net family", "choices": FAMILIES})
    preset: str = field(default="small", metadata={"help": "built-in size", "choices": PRESETS})
    prediction_type: str | None = field(default=None, metadata={"help": "eps | v | flow (default: v for unet, "
                                                                         "flow for dit)"})
    resolution: int = field(default=32, metadata={"help": "image size in pixels"})
    name: str | None = field(default=None, metadata={
        "help": "run name (default: main-<backbone>-<type>-<data><resolution>)"})
    out_dir: str = field(default="runs", metadata={"help": "parent of run directories"})
    eval_samples: int = field(default=256, metadata={"help": "generated images per evaluation (0: no "
                                                                           "evaluation)"})
    sample_steps: int = field(default=25, metadata={"help": "sampler steps at evaluation"})
    lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate"})
    steps: int = field(default=1200, metadata={"help": "optimizer steps"})
    batch_size: int = field(default=16, metadata={"help": "micro-batch size per process"})
    eval_every: int = field(default=600, metadata={"help": "steps between evaluations (0: only at the end)"})
    ema_decay: float = field(default=0.999, metadata={"help": "decay of the weight EMA saved as the main net"})
    min_snr_gamma: float | None = field(default=None, metadata={
        "help": "min-SNR-gamma loss weighting (default: 5 for eps and v, off for flow; 0 turns it off)"})
    lr_warmup_steps: int = field(default=50, metadata={"help": "linear warm-up steps"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("backbone", self.backbone, FAMILIES)
        check_choice("preset", self.preset, PRESETS)
        self.check_data_options()
        self.check_prompt_dropout()
        if self.prediction_type is None:
            self.prediction_type = DEFAULT_PREDICTION_TYPE[self.backbone]
        check_choice("prediction type", self.prediction_type, PREDICTION_TYPES)
        if (self.backbone == "dit") != (self.prediction_type == "flow"):
            raise ValueError(f"prediction type {self.prediction_type!r} does not fit backbone {self.backbone!r}: "
                             f"dit uses flow, unet uses eps or v")
        check_number("ema_decay", self.ema_decay, 0, 1, high_open=True)
        for name in ("sample_steps", "resolution"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.min_snr_gamma is None:
            self.min_snr_gamma = 0.0 if self.prediction_type == "flow" else 5.0
        check_number("min_snr_gamma", self.min_snr_gamma, 0)
        if (self.min_snr_gamma > 0 and self.prediction_type == "flow"):
            raise ValueError(f"min_snr_gamma={self.min_snr_gamma} is not allowed for {self.prediction_type!r}: "
                             "use a value > 0 for eps or v, 0 (off) for any prediction type")
        if self.name is None:
            self.name = f"main-{self.backbone}-{self.prediction_type}-{self.dataset}{self.resolution}"
        check_run_name(self.name)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name


DEFAULT_MAIN_NAME = "main-unet-v-shapes32"  # PretrainConfig()'s name: the default main net under --out-dir


# diffusers' examples/controlnet/train_controlnet*.py option names, accepted beside ours with the same meaning
DIFFUSERS_ALIASES = {
    "main": ("--pretrained_model_name_or_path",), "side": ("--controlnet_model_name_or_path",),
    "out_dir": ("--output_dir",), "steps": ("--max_train_steps",), "num_train_epochs": ("--num_train_epochs",),
    "batch_size": ("--train_batch_size",),
    "grad_accum": ("--gradient_accumulation_steps",), "lr": ("--learning_rate",),
    "lr_warmup_steps": ("--lr_warmup_steps",), "lr_schedule": ("--lr_scheduler",),
    "lr_num_cycles": ("--lr_num_cycles",), "lr_power": ("--lr_power",), "adam_beta1": ("--adam_beta1",),
    "adam_beta2": ("--adam_beta2",), "adam_epsilon": ("--adam_epsilon",),
    "weight_decay": ("--adam_weight_decay",), "max_grad_norm": ("--max_grad_norm",),
    "mixed_precision": ("--mixed_precision",), "checkpoint_every": ("--checkpointing_steps",),
    "keep_checkpoints": ("--checkpoints_total_limit",), "resume": ("--resume_from_checkpoint",),
    "eval_every": ("--validation_steps",), "num_workers": ("--dataloader_num_workers",),
    "gradient_checkpointing": ("--gradient_checkpointing",), "use_8bit_adam": ("--use_8bit_adam",),
    "allow_tf32": ("--allow_tf32",),
    "enable_xformers_memory_efficient_attention": ("--enable_xformers_memory_efficient_attention",),
    "report_to": ("--report_to",), "proportion_empty_prompts": ("--proportion_empty_prompts",),
    "data_root": ("--train_data_dir", "--dataset_name"), "image_column": ("--image_column",),
    "conditioning_image_column": ("--conditioning_image_column",), "caption_column": ("--caption_column",),
    "max_train_samples": ("--max_train_samples",), "cache_latents": ("--cache_latents",),
    "random_flip": ("--random_flip",), "validation_image": ("--validation_image",),
    "validation_prompt": ("--validation_prompt",),
}


@dataclass
class TrainConfig(ModelFiles, LoopConfig, DataOptions, PromptDropout):
    """Side-net training settings. Defaults are the embedded demo (LISA on; ~4 minutes on 2 CPU cores once the main
    net exists)."""

    option_aliases: ClassVar[dict[str, tuple[str, ...]]] = DIFFUSERS_ALIASES
    alias_implies: ClassVar[dict[str, dict]] = {  # a datasets folder, or a dataset's local directory or file
        "--train_data_dir": {"dataset": "captioned"}, "--dataset_name": {"dataset": "captioned"}}
    resumable_changes: ClassVar[tuple[str, ...]] = (*LoopConfig.resumable_changes, "probe_every", "probe_samples",
                                                    "probe_grad_split", "name", "out_dir")

    main: str | None = field(default=None, metadata=option(
        f"main-net directory (diffusers layout); default: <out-dir>/{DEFAULT_MAIN_NAME}, pretrained if missing"))
    side: str | None = field(default=None, metadata=option("initialise the side net from this diffusers directory "
                                                         "instead of copying the main net"))
    resolution: int | None = field(default=None, metadata=option(
        "image size in pixels (diffusers' --resolution: images resized on their shorter side and centre-cropped); "
        "default: the main net's native size"))
    random_flip: bool = field(default=False, metadata=option(
        "flip each training pair (image and condition together) left-right with probability 1/2"))
    random_crop: bool = field(default=False, metadata=option(
        "captioned: crop the training images (and their conditions alike) at a random place after resizing the "
        "shorter side, anew each epoch (diffusers' --random_crop; default: centre crop, also for validation)"))
    cache_latents: bool = field(default=False, metadata=option(
        "encode the training images through the VAE once, before training, and cache the latents on disk (a latent "
        "main net; not with --random-flip)"))
    lisa_main_prompt: str = field(default="caption", metadata=option(
        "pred_main in LISA's target gets the caption (the reference: estimates p(c | x_t, text)) or the empty prompt "
        "(the prior without text: another estimand)", choices=PROMPT_MODES))
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
    timestep_sampling: str = field(default="uniform", metadata=option(
        "training timesteps: uniform, or cubic (T2I-Adapter's t = (1 - u^3) T: favours high noise)",
        choices=TIMESTEP_SAMPLINGS))
    weighting_scheme: str = field(default="none", metadata=option(
        "flow matching (SD3): diffusers' --weighting_scheme; logit_normal / mode draw the timesteps from that density "
        "(with --timestep-sampling uniform), sigma_sqrt / cosmap weight the loss per sample", choices=WEIGHTING_SCHEMES))
    logit_mean: float = field(default=0.0, metadata=option("mean of the logit_normal weighting scheme"))
    logit_std: float = field(default=1.0, metadata=option("std of the logit_normal weighting scheme"))
    mode_scale: float = field(default=1.29, metadata=option("scale of the mode weighting scheme"))
    conditioning_scale: float = field(default=1.0, metadata=option(
        "scale of the side net's residuals in training (diffusers' controlnet_conditioning_scale; 1: as at inference)"))
    train_size: int | None = field(default=None, metadata=option(
        "shapes, digits: train on this fixed subset of the training split (its first N samples), for many epochs: the "
        "regime where a regulariser can act (default: the whole split)"))
    lisa_decoder_channels: int | None = field(default=None, metadata=option(
        "the LISA decoder's narrowest channel count (its size relative to the side net; default: min(64, max(8, "
        "C / 4)) for a site of C channels, 64 as the reference's for SD-sized features)"))
    cond_embedding_init_scale: float = field(default=0.0, metadata=option(
        "initial weights of the condition embedding's zero-initialised output (ControlNet's "
        "controlnet_cond_embedding.conv_out, the SD3 ControlNet's pos_embed_input) ~ N(0, (scale / sqrt(fan_in))^2) "
        "instead of zeros: the gate opened slightly from step 1"))
    zero_init_scale: float = field(default=0.0, metadata=option(
        "initial weights of a new side net's zero modules ~ N(0, (scale / sqrt(fan_in))^2) instead of zeros"))
    lr_scale_zero_modules: float = field(default=1.0, metadata=option("learning-rate factor of the zero modules "
                                                                      "(zero-convs / zero-linears)"))
    lr_scale_trunk: float = field(default=1.0, metadata=option("learning-rate factor of the side net's trainable "
                                                               "copy of the main net"))
    lr_scale_cond_embedding: float = field(default=1.0, metadata=option("learning-rate factor of the condition "
                                                                        "embedding"))
    lr_scale_decoder: float = field(default=1.0, metadata=option("learning-rate factor of the LISA decoder"))
    probe_every: int = field(default=0, metadata=option(
        "steps between onset-signal measurements on a fixed probe batch, logged in metrics.csv (0: none)"))
    probe_samples: int = field(default=32, metadata=option("validation samples in the onset probe batch"))
    probe_grad_split: bool = field(default=False, metadata=option(
        "with the onset probe and LISA: also log, per parameter group (trunk up to the LISA site, rest of the trunk, "
        "condition embedding, zero modules, decoder), the norms of the diffusion and weighted LISA gradients, their "
        "cosine and the relative change LISA makes to AdamW's step (grad/<group>/* in metrics.csv)"))
    name: str | None = field(default=None, metadata=option("run name (default: derived from the settings)"))
    out_dir: str = field(default="runs", metadata=option("parent of run directories"))
    eval_samples: int = field(default=64, metadata=option("validation conditions sampled per evaluation (0: no "
                                                        "evaluation)"))
    sample_steps: int = field(default=20, metadata=option("sampler steps at evaluation"))
    validation_image: list[str] = field(default_factory=list, metadata=option(
        "conditioning images of your own, sampled at each evaluation beside the validation split's and drawn in its "
        "grid (columns after the split's), their control fidelity logged as validation_pairs/<metric>; one image "
        "for all prompts, one per prompt, or any number without prompts (default: none)", nargs="+", parse=str,
        metavar="PATH"))
    validation_prompt: list[str] = field(default_factory=list, metadata=option(
        "the prompts of --validation-image (captioned data): one for all images or one per image (default: the "
        "empty prompt)", nargs="+", parse=str, metavar="PROMPT"))
    convergence_threshold: float = field(default=0.5, metadata=option("control fidelity that counts as converged"))
    steps: int = field(default=600, metadata=option("optimizer steps"))
    lr: float = field(default=1e-3, metadata=option("AdamW learning rate (the reference uses 1e-5 for SD-scale "
                                                  "models; 1e-3 suits the small built-in presets)"))
    eval_every: int = field(default=100, metadata=option("steps between evaluations (0: only at the end)"))
    checkpoint_every: int = field(default=200, metadata=option("steps between checkpoints (0: only at the end)"))

    def check_validation_pairs(self) -> None:
        """ValueError for ``--validation-prompt`` without images or captions, counts that do not pair (diffusers'
        rule: 1 and N, N and 1, or N and N), or pairs with evaluation off (the images are read, and a missing one
        refused, when a run starts: ``ControlEvaluation``)."""
        images, prompts = self.validation_image, self.validation_prompt
        if prompts and not images:
            raise ValueError("--validation-prompt needs --validation-image (the conditioning images it goes with)")
        if prompts and not self.has_captions:
            raise ValueError(f"--validation-prompt needs captioned data (a main net with a text encoder); --dataset "
                             f"{self.dataset} has no captions here: give --validation-image alone")
        if len(images) > 1 and len(prompts) > 1 and len(images) != len(prompts):
            raise ValueError(f"{len(images)} --validation-image and {len(prompts)} --validation-prompt do not pair: "
                             "give one of either, or as many of both")
        if images and self.eval_samples == 0:
            raise ValueError("--validation-image is sampled at each evaluation; --eval-samples 0 turns evaluation off")

    @property
    def validation_pairs(self) -> list[tuple[str, str]]:
        """``[(conditioning image path, prompt)]`` of ``--validation-image`` / ``--validation-prompt`` (diffusers'
        pairing: a single one of either goes with each of the other; no prompt: the empty prompt)."""
        images, prompts = self.validation_image, self.validation_prompt or [""]
        count = max(len(images), len(prompts)) if images else 0
        return [(images[i % len(images)], prompts[i % len(prompts)]) for i in range(count)]

    def weighting(self) -> WeightingScheme:
        """The SD3 weighting scheme these options name."""
        return WeightingScheme(self.weighting_scheme, self.logit_mean, self.logit_std, self.mode_scale)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.main, self.side = self.main_files(self.main), local_model(self.side)
        check_number("lisa_weight", self.lisa_weight, 0)
        check_number("convergence_threshold", self.convergence_threshold, 0, 1)
        check_choice("timestep sampling", self.timestep_sampling, TIMESTEP_SAMPLINGS)
        if self.weighting().shapes_density and self.timestep_sampling != "uniform":
            raise ValueError(f"--weighting-scheme {self.weighting_scheme!r} draws the timesteps itself; it needs "
                             f"--timestep-sampling uniform, got {self.timestep_sampling!r}")
        check_number("logit_std", self.logit_std, 0, low_open=True)
        check_number("logit_mean", self.logit_mean)
        # diffusers' mode density u' = 1 - u - s (cos^2(pi u / 2) - 1 + u) stays in [0, 1] for s in [-1, 7.235]
        check_number("mode_scale", self.mode_scale, -1, MODE_SCALE_MAX)
        if not self.has_captions and self.lisa_main_prompt != "caption":
            raise ValueError(f"--lisa-main-prompt {self.lisa_main_prompt} needs captions; --dataset {self.dataset} "
                             "has none here (without captions pred_main gets the empty prompt anyway)")
        if self.probe_grad_split and (self.probe_every == 0 or self.lisa_weight == 0):
            raise ValueError("--probe-grad-split needs the onset probe (--probe-every > 0) and LISA (--lisa-weight > "
                             f"0), got --probe-every {self.probe_every} and --lisa-weight {self.lisa_weight:g}")
        if self.probe_every < 0 or self.probe_samples < 1:
            raise ValueError(f"--probe-every must be >= 0 and --probe-samples >= 1, got {self.probe_every} and "
                             f"{self.probe_samples}")
        check_number("conditioning_scale", self.conditioning_scale, 0)
        check_number("zero_init_scale", self.zero_init_scale, 0)
        check_number("cond_embedding_init_scale", self.cond_embedding_init_scale, 0)
        if self.train_size is not None:
            if self.dataset not in ("shapes", "digits"):
                raise ValueError(f"--train-size applies to the built-in datasets (shapes, digits), not "
                                 f"{self.dataset!r}; a captioned table takes --max-train-samples")
            if self.train_size < 1:
                raise ValueError(f"--train-size must be >= 1, got {self.train_size}")
        if self.lisa_decoder_channels is not None and self.lisa_decoder_channels < 1:
            raise ValueError(f"--lisa-decoder-channels must be >= 1, got {self.lisa_decoder_channels}")
        for name in LR_SCALES:
            check_number(name, getattr(self, name), 0)
        self.check_data_options()
        self.check_prompt_dropout()
        for augmentation in ("random_flip", "random_crop"):
            if self.cache_latents and getattr(self, augmentation):
                raise ValueError(f"--cache-latents cannot be used with --{augmentation.replace('_', '-')}: an "
                                 "augmented image has another latent")
        if self.random_crop and self.dataset != "captioned":
            raise ValueError(f"--random-crop applies to --dataset captioned, not {self.dataset!r}")
        if self.resolution is not None and self.resolution < 1:
            raise ValueError(f"--resolution must be >= 1, got {self.resolution}")
        check_choice("LISA main prompt", self.lisa_main_prompt, PROMPT_MODES)
        if self.sample_steps < 1:
            raise ValueError(f"--sample-steps must be >= 1, got {self.sample_steps}")
        lisa_rows(1, self.lisa_fraction)
        self.check_validation_pairs()
        check_choice("LISA main pass", self.lisa_main_pass, MAIN_PASSES)
        lisa_weight(0, self.lisa_weight, self.lisa_schedule, self.lisa_end_step)
        if self.name is None:
            arm = f"lisa{self.lisa_weight:g}" if self.lisa_weight > 0 else "baseline"
            self.name = f"{self.dataset}-{self.condition or 'default'}-{arm}-s{self.seed}"
        check_run_name(self.name)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name
