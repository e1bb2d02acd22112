"""The settings of ``python -m lisa_probe.intervene``: ``InterveneConfig``. Light: no torch at import."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lisa_probe.generation.config import DrawConfig
from lisa_probe.options import number_list, option

ANALYSES = ("maps", "interventions", "patching", "steering")


@dataclass
class InterveneConfig(DrawConfig):
    """One source's site maps and interventions during sampling (``lisa_probe.causal``)."""

    sites: str = field(default="all", metadata=option("comma-separated sites to intervene on and map, or 'all'"))
    windows: int = field(default=4, metadata=option("noise windows the sampler's steps are cut into"))
    map_timesteps: int = field(default=3, metadata=option("evenly spaced timesteps the site maps are taken at"))
    map_figures: int = field(default=2, metadata=option("samples whose maps are drawn (per map timestep)"))
    analyses: str = field(default="maps,interventions", metadata=option(
        "comma-separated: maps, interventions, patching (each site's residuals from another sample's condition), "
        "steering (along probe directions and a random one); each costs sampling passes (docs/commands.md)"))
    patch_factor: str | None = field(default=None, metadata=option(
        "patching donors: each sample's own scene with this factor from another sample (data that draws scenes "
        "from factors: shapes); default: another sample's whole condition"))
    steer_alphas: str = field(default="-2,2", metadata=option(
        "steering strengths, in standard deviations of the features along the direction (a list starting with a "
        "minus sign as --steer-alphas=-2,2)"))
    probe_samples: int = field(default=64, metadata=option("samples the steering probes are fitted on"))
    decoder: str | None = field(default=None, metadata=option(
        "a ControlNet source's LISA decoder (a run's lisa_decoder/, or the run) for the decoder map; a run's own is "
        "used when it has one"))

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("windows", "map_timesteps"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        unknown = [name for name in self.analysis_names if name not in ANALYSES]
        if unknown or not self.analysis_names:
            raise ValueError(f"--analyses {self.analyses!r}: choose from {', '.join(ANALYSES)}")
        number_list(self.steer_alphas, float, "--steer-alphas", "'-2,2'")
        if self.probe_samples < 4:
            raise ValueError(f"--probe-samples must be >= 4, got {self.probe_samples}")
        if self.map_figures < 0:
            raise ValueError(f"--map-figures must be >= 0, got {self.map_figures}")

    @property
    def analysis_names(self) -> tuple[str, ...]:
        return tuple(name.strip() for name in self.analyses.split(",") if name.strip())

    @property
    def alphas(self) -> tuple[float, ...]:
        return number_list(self.steer_alphas, float, "--steer-alphas", "'-2,2'")


@dataclass
class DictionaryConfig:
    """``python -m lisa_probe.dictionary``: a sparse autoencoder on one site of a feature store."""

    out: str = field(default="", metadata=option("output directory (required)"))
    site: str | None = field(default=None, metadata=option("site (default: the store's LISA site, else its middle one)"))
    expansion: int = field(default=8, metadata=option("latents per feature channel (K = expansion x C)"))
    k: int = field(default=8, metadata=option("active latents per position (TopK)"))
    steps: int = field(default=2000, metadata=option("training steps"))
    batch_size: int = field(default=1024, metadata=option("positions per step"))
    lr: float = field(default=1e-3, metadata=option("Adam learning rate"))
    seed: int = field(default=0, metadata=option("seed of the initialisation and the batches"))
    max_rows: int | None = field(default=None, metadata=option("store rows used (default: all)"))
    top: int = field(default=6, metadata=option("latents drawn in figures/top_latents.png"))
    resume: bool = field(default=False, metadata=option("continue an interrupted training in --out"))
    overwrite: bool = field(default=False, metadata=option("replace a non-empty --out"))

    def __post_init__(self) -> None:
        if not self.out:
            raise ValueError("--out is required (a directory)")
        for name in ("expansion", "k", "steps", "batch_size", "top"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.max_rows is not None and self.max_rows < 1:
            raise ValueError(f"--max-rows must be >= 1, got {self.max_rows}")
        if not self.lr > 0:
            raise ValueError(f"--lr must be > 0, got {self.lr}")
        if self.resume and self.overwrite:
            raise ValueError("--resume and --overwrite exclude each other")
        out = Path(self.out)
        if out.is_dir() and any(out.iterdir()) and not (self.overwrite or self.resume):
            raise ValueError(f"--out {self.out} is not empty; pass --resume to continue it or --overwrite")
