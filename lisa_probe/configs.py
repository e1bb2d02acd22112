"""The settings of every command in one place: dataclasses whose fields are the command-line options
(``config.parse_config``) and whose ``__post_init__`` validates them (type, range, finiteness, choices), so that
library code, the study and notebooks build the same objects the CLIs do.

``PretrainConfig`` (main nets), ``TrainConfig`` (side nets), ``ExtractConfig`` / ``ForeignRun`` (feature stores),
``AnalyzeOptions`` (analysis).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from lisa_probe.analysis.disentanglement import IMPORTANCES
from lisa_probe.config import SEED_MAX, check_number, option
from lisa_probe.data import DATASET_NAMES, check_choice
from lisa_probe.engine import LoopConfig
from lisa_probe.lisa import DISTANCES, SCHEDULES, lisa_rows, lisa_weight
from lisa_probe.models import MAIN_PASSES
from lisa_probe.models.presets import FAMILIES, PRESETS
from lisa_probe.parameterization import PREDICTION_TYPES, TIMESTEP_SAMPLINGS, WEIGHTING_SCHEMES, WeightingScheme
from lisa_probe.store.schema import COMPRESSIONS

# v for the UNet: at the default 1200 steps v-prediction reached FD 17.5 where eps reached 38.2 (docs/CONTRACTS.md).
DEFAULT_PREDICTION_TYPE = {"unet": "v", "dit": "flow"}


PROMPT_MODES = ("caption", "empty")
MODE_SCALE_MAX = 7.235  # the largest --mode-scale whose density stays in [0, 1] (tests/test_configs.py computes it)


def check_run_name(name: str) -> None:
    """ValueError unless ``name`` is one directory name: a run stays inside ``--out-dir``."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or Path(name).is_absolute():
        raise ValueError(f"--name must be one directory name inside --out-dir (no '/', '\\', '.' or '..'), "
                         f"got {name!r}")


def names_list(text: str) -> tuple[str, ...]:
    """A comma-separated option as a tuple of names ('' gives none)."""
    return tuple(name.strip() for name in text.split(",") if name.strip())


@dataclass
class DataOptions:
    """Where a side net's data come from: the dataset and, for ``captioned`` (a ``datasets`` table) and ``folder``,
    its location and columns (option names as diffusers' ControlNet trainer's: ``--image-column`` ...)."""

    dataset: str = field(default="shapes", metadata=option("training data (captioned: a `datasets` table with image, "
                                                           "conditioning image and caption columns)",
                                                           choices=DATASET_NAMES))
    condition: str | None = field(default=None, metadata=option(
        "condition kind (default: the dataset's; for your own conditioning images a label, e.g. canny, which picks "
        "its control metric)"))
    data_root: str | None = field(default=None, metadata=option(
        "folder: the image directory; captioned: a load_dataset directory, a save_to_disk directory or a data file "
        "(parquet, arrow, jsonl, csv)"))
    skip_bad_files: bool = field(default=False, metadata=option("folder dataset: skip unreadable or tiny images "
                                                               "(listed in a warning) instead of stopping"))
    image_column: str = field(default="image", metadata=option("captioned: the target image column"))
    conditioning_image_column: str = field(default="conditioning_image", metadata=option(
        "captioned: the conditioning image column"))
    caption_column: str | None = field(default="text", metadata=option("captioned: the caption column (none: no "
                                                                       "captions, the empty prompt)"))
    cond_source: str = field(default="column", metadata=option(
        "captioned: conditions from the conditioning image column, or made from the image by --condition's "
        "extractor", choices=("column", "extractor")))
    cond_mode: str = field(default="RGB", metadata=option("captioned, folder with --conditioning-dir: conditioning "
                                                          "images as RGB (3 channels, what diffusers' pipelines "
                                                          "take) or L (1)", choices=("RGB", "L")))
    factor_columns: str = field(default="", metadata=option("captioned: comma-separated columns recorded as factors "
                                                            "for the analysis"))
    carried_factors: str = field(default="", metadata=option("captioned, folder: the factor columns the condition "
                                                             "carries"))
    val_fraction: float = field(default=0.1, metadata=option(
        "captioned without a validation split: the fraction of rows each for val and test (by a hash of the row)"))
    max_train_samples: int | None = field(default=None, metadata=option(
        "captioned: keep this many training rows (drawn with --seed)"))
    conditioning_dir: str | None = field(default=None, metadata=option(
        "folder: a directory of your conditioning images, each named as its image (any image extension)"))
    captions_file: str | None = field(default=None, metadata=option(
        "folder: a CSV with 'file' and 'text' columns, each image's caption"))
    factors_csv: str | None = field(default=None, metadata=option(
        "folder: a CSV with a 'file' column and factor columns, recorded as factors for the analysis"))
    label_prompts: bool = field(default=False, metadata=option(
        "shapes: each sample's caption names its colour and kind ('red square'); pretraining with it writes a "
        "label text encoder beside the main net and conditions the main net on these prompts"))

    def check_data_options(self) -> None:
        """ValueError for data options that do not fit together."""
        check_choice("dataset", self.dataset, DATASET_NAMES)
        if self.skip_bad_files and self.dataset != "folder":
            raise ValueError(f"--skip-bad-files applies to --dataset folder, not {self.dataset!r}")
        check_number("val_fraction", self.val_fraction, 0, 0.5, high_open=True)
        if self.max_train_samples is not None and self.max_train_samples < 1:
            raise ValueError(f"--max-train-samples must be >= 1, got {self.max_train_samples}")
        if self.dataset == "captioned" and self.data_root is None:
            raise ValueError("--dataset captioned needs --data-root (a load_dataset directory or a data file)")
        for name in ("conditioning_dir", "captions_file", "factors_csv"):
            if getattr(self, name) is not None and self.dataset != "folder":
                raise ValueError(f"--{name.replace('_', '-')} applies to --dataset folder, not {self.dataset!r}")
        if self.label_prompts and self.dataset != "shapes":
            raise ValueError(f"--label-prompts applies to --dataset shapes, not {self.dataset!r} (a captioned "
                             "dataset brings its own captions)")

    @property
    def has_captions(self) -> bool:
        """Whether the samples carry a caption (``"text"``): a captioned table's caption column or label prompts."""
        return (self.label_prompts or (self.dataset == "captioned" and self.caption_column is not None)
                or (self.dataset == "folder" and self.captions_file is not None))

    def dataset_kwargs(self, resolution: int, seed: int) -> dict:
        """``build_dataset`` keyword arguments (besides the name) of these options at ``resolution``."""
        kwargs = {"resolution": resolution, "condition": self.condition, "seed": seed}
        if self.data_root is not None:
            kwargs["root"] = self.data_root
        if self.skip_bad_files:
            kwargs["skip_bad"] = True
        if self.label_prompts:
            kwargs["label_prompts"] = True
        if self.dataset == "folder":
            if self.conditioning_dir is not None:
                kwargs.update(cond_dir=self.conditioning_dir, cond_mode=self.cond_mode)
            if self.captions_file is not None:
                kwargs["captions_file"] = self.captions_file
            if self.factors_csv is not None:
                kwargs.update(factors_csv=self.factors_csv, carried_factors=names_list(self.carried_factors))
        if self.dataset == "captioned":
            kwargs.update(image_column=self.image_column, conditioning_image_column=self.conditioning_image_column,
                          caption_column=self.caption_column, cond_source=self.cond_source, cond_mode=self.cond_mode,
                          factor_columns=names_list(self.factor_columns),
                          carried_factors=names_list(self.carried_factors), val_fraction=self.val_fraction,
                          max_train_samples=self.max_train_samples)
        return kwargs



# learning-rate factors of the side net's parameter groups (side_training.SideNetObjective.param_groups)
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


DEFAULT_MAIN_NAME = PretrainConfig().name
# learning-rate factors of the side net's parameter groups (side_training.SideNetObjective.param_groups)
LR_SCALES = ("lr_scale_zero_modules", "lr_scale_trunk", "lr_scale_cond_embedding", "lr_scale_decoder")


@dataclass
class TrainConfig(LoopConfig, DataOptions, PromptDropout):
    """Side-net training settings. Defaults are the embedded demo (LISA on; ~4 minutes on 2 CPU cores once the main
    net exists)."""

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

    def weighting(self) -> WeightingScheme:
        """The SD3 weighting scheme these options name."""
        return WeightingScheme(self.weighting_scheme, self.logit_mean, self.logit_std, self.mode_scale)

    def __post_init__(self) -> None:
        super().__post_init__()
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
        if self.probe_every < 0 or self.probe_samples < 1:
            raise ValueError(f"--probe-every must be >= 0 and --probe-samples >= 1, got {self.probe_every} and "
                             f"{self.probe_samples}")
        check_number("conditioning_scale", self.conditioning_scale, 0)
        check_number("zero_init_scale", self.zero_init_scale, 0)
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
        check_choice("LISA main pass", self.lisa_main_pass, MAIN_PASSES)
        lisa_weight(0, self.lisa_weight, self.lisa_schedule, self.lisa_end_step)
        if self.name is None:
            arm = f"lisa{self.lisa_weight:g}" if self.lisa_weight > 0 else "baseline"
            self.name = f"{self.dataset}-{self.condition or 'default'}-{arm}-s{self.seed}"
        check_run_name(self.name)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name


SPLITS = ("train", "val", "test")



@dataclass
class ExtractConfig(DataOptions):
    """What to extract and where (the data options are for --controlnet; a --ckpt run brings its own)."""

    out: str = field(default="", metadata=option("output .h5 path (required)"))
    ckpt: str | None = field(default=None, metadata=option("lisa_probe run or checkpoint directory"))
    controlnet: str | None = field(default=None, metadata=option("a plain diffusers side-net directory (with --main)"))
    main: str | None = field(default=None, metadata=option("main-net directory for --controlnet"))
    prompt: str = field(default="caption", metadata=option(
        "captioned data: each row's caption through the main net's text encoder, or the empty prompt for every row",
        choices=PROMPT_MODES))
    sites: str = field(default="all", metadata=option("comma-separated site names, or 'all'"))
    timesteps: str = field(default="8", metadata=option("a number of evenly spaced timesteps, or a comma list of "
                                                      "timesteps as fed to the model ('500,' for one)"))
    samples: int = field(default=256, metadata=option("number of samples"))
    draws: int = field(default=1, metadata=option("noise draws per (sample, timestep)"))
    split: str = field(default="val", metadata=option("data split", choices=SPLITS))
    batch_size: int = field(default=32, metadata=option("rows per forward pass"))
    seed: int = field(default=0, metadata=option("noise seed"))
    residuals: bool = field(default=False, metadata=option("also store the residual leaving each site"))
    decompose: bool = field(default=False, metadata=option("also store the prediction with only one site's gate "
                                                         "open, per extracted site"))
    feature_dtype: str = field(default="float16", metadata=option("feature dtype", choices=("float16", "float32")))
    compression: str = field(default="none", metadata=option("HDF5 compression (none: dense float16 features do not "
                                                            "compress; see bench/bench_extract.py)", choices=COMPRESSIONS))
    resume: bool = field(default=False, metadata=option("continue an interrupted extraction"))
    overwrite: bool = field(default=False, metadata=option("replace an existing output"))

    def __post_init__(self) -> None:
        if not self.out:
            raise ValueError("--out is required (e.g. features/<run>.h5)")
        self.check_data_options()
        check_choice("prompt", self.prompt, PROMPT_MODES)
        if (self.ckpt is None) == (self.controlnet is None):
            raise ValueError("give either --ckpt (a lisa_probe run) or --controlnet with --main (a diffusers side net)")
        if self.controlnet is not None and self.main is None:
            raise ValueError("--controlnet needs --main (the main-net directory it was trained for)")
        for name in ("samples", "draws", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        check_number("seed", self.seed, 0, SEED_MAX)
        if Path(self.out).is_dir():
            raise ValueError(f"--out {self.out} is a directory; give the path of an .h5 file, e.g. {self.out}/x.h5")
        if self.resume and self.overwrite:
            raise ValueError("--resume and --overwrite exclude each other: continue the unfinished store, or start over")


@dataclass
class ForeignRun(DataOptions):
    """Stand-in train config for a side net that lisa_probe did not train."""

    main: str = ""
    side: str = ""
    seed: int = 0

    @classmethod
    def of(cls, config: ExtractConfig) -> ForeignRun:
        """The stand-in for ``extract --controlnet … --main …`` with its data options."""
        data = {f.name: getattr(config, f.name) for f in fields(DataOptions)}
        return cls(main=config.main, side=config.controlnet, **data)


@dataclass
class AnalyzeOptions:
    """What to analyse; the command line's options (see ``main``)."""

    sites: list[str] | None = None  # None: every site of each store
    max_rows: int | None = None  # at most this many rows per store (whole samples, drawn with ``seed``)
    summary_rows: int = 20_000  # rows (whole samples, drawn with ``seed``) kept for the analyses that need rows
    t_bins: int | None = None  # merge the timestep grid into this many contiguous bins (None: one per timestep)
    umap: bool = True  # False: a 2-D PCA instead of UMAP (no numba JIT)
    embedding_site: str | None = None  # default: the LISA site, else the middle site
    attribution_samples: int = 0  # K samples for the model-based decomposition (0: none)
    ig_steps: int = 32  # integrated-gradients steps of the model-based decomposition
    shapley_samples: int = 25  # Shapley-sampling permutations of the model-based decomposition
    dci_importance: str = "gbt"
    pca_components: int = 10
    n_splits: int = 5
    chunk_rows: int | None = None  # rows per streamed chunk, in whole samples (default: ~16 MiB of rows)
    seed: int = 0

    def __post_init__(self) -> None:
        for name, low in (("max_rows", 1), ("summary_rows", 1), ("t_bins", 1), ("attribution_samples", 0), ("ig_steps", 1),
                          ("shapley_samples", 1), ("pca_components", 1), ("n_splits", 2), ("chunk_rows", 1)):
            value = getattr(self, name)
            if value is not None and value < low:
                raise ValueError(f"--{name.replace('_', '-')} must be >= {low}, got {value}")
        check_number("seed", self.seed, 0, SEED_MAX)
        if self.dci_importance not in IMPORTANCES:
            raise ValueError(f"--dci-importance must be one of {', '.join(IMPORTANCES)}, got {self.dci_importance!r}")
