"""The settings of extraction: ``ExtractConfig`` (``python -m lisa_probe.extract``) and ``ForeignRun``, the
stand-in train config of a side net lisa_probe did not train. Light: no torch at import."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from lisa_probe.data import SPLITS
from lisa_probe.data.options import PROMPT_MODES, DataOptions
from lisa_probe.files import local_model
from lisa_probe.options import SEED_MAX, ModelFiles, check_choice, check_number, number_list, option
from lisa_probe.store.schema import COMPRESSIONS


@dataclass
class ExtractConfig(ModelFiles, DataOptions):
    """What to extract and where. The data options say which data: a ``--ckpt`` run brings its own and any given here
    (``data_overrides``: those not at their defaults) replace the run's; ``--controlnet`` has only these."""

    out: str = field(default="", metadata=option("output .h5 path (required)"))
    ckpt: str | None = field(default=None, metadata=option("lisa_probe run or checkpoint directory"))
    controlnet: str | None = field(default=None, metadata=option("a plain diffusers side-net directory (with --main)"))
    main: str | None = field(default=None, metadata=option("main-net directory for --controlnet"))
    decoder: str | None = field(default=None, metadata=option(
        "--controlnet: a LISA decoder directory (a run's lisa_decoder/, or the run) whose output is stored as "
        "scores/decoded, at the site its config names"))
    resolution: int | None = field(default=None, metadata=option(
        "--controlnet: image size in pixels, as train's --resolution (default: the main net's native size; a --ckpt "
        "run brings its own)"))
    prompt: str = field(default="caption", metadata=option(
        "captioned data: each row's caption through the main net's text encoder, or the empty prompt for every row",
        choices=PROMPT_MODES))
    checkpoints: str | None = field(default=None, metadata=option(
        "--ckpt RUN: extract from several of its checkpoints into one store, 'all' or steps 'N,M,...' (rows per "
        "checkpoint in a block, meta/step says which; the same noise in every block)"))
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
        self.main, self.controlnet = self.main_files(self.main), local_model(self.controlnet)
        if self.resolution is not None and self.ckpt is not None:
            raise ValueError(f"--resolution {self.resolution} applies to --controlnet; a --ckpt run extracts at the "
                             "resolution it was trained at")
        if self.decoder is not None and self.ckpt is not None:
            raise ValueError(f"--decoder {self.decoder} applies to --controlnet; a --ckpt run's own LISA decoder is "
                             "used when it has one")
        if self.checkpoints is not None and self.ckpt is None:
            raise ValueError(f"--checkpoints {self.checkpoints} applies to --ckpt (a lisa_probe run)")
        if self.checkpoints is not None and self.checkpoints != "all":
            number_list(self.checkpoints, int, "--checkpoints", "'all' or steps such as '100,200'")
        if self.resolution is not None and self.resolution < 1:
            raise ValueError(f"--resolution must be >= 1, got {self.resolution}")
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
    resolution: int | None = None
    lisa_site: str | None = None  # the site of --decoder's LISA decoder
    variant: str | None = None  # the main net's weight-file variant (--variant)

    @classmethod
    def of(cls, config: ExtractConfig) -> ForeignRun:
        """The stand-in for ``extract --controlnet … --main …`` with its data options."""
        data = {f.name: getattr(config, f.name) for f in fields(DataOptions)}
        return cls(main=config.main, side=config.controlnet, resolution=config.resolution, variant=config.variant,
                   **data)
