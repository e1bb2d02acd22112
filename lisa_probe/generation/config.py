"""The settings of the commands that sample from side nets: ``DrawConfig`` (shared), ``SampleConfig`` (``python -m
lisa_probe.sample``). Light: no torch at import."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lisa_probe.data import SPLITS
from lisa_probe.data.options import PROMPT_MODES, DataOptions
from lisa_probe.options import SEED_MAX, ModelFiles, check_choice, check_number, number_list, option


def parse_scales(text: str) -> tuple[float, ...]:
    """``"1"`` or ``"0.5,1,1.5"`` -> the conditioning scales, each a finite number >= 0 (ValueError naming the text)."""
    example = "finite numbers >= 0: '1' or '0.5,1,1.5'"
    scales = number_list(text, float, "--conditioning-scale", example)
    if any(not 0 <= scale < float("inf") for scale in scales):
        raise ValueError(f"--conditioning-scale {text!r}: expected numbers, e.g. {example}")
    return scales


@dataclass
class DrawConfig(ModelFiles, DataOptions):
    """What every command that samples from side nets takes: the data options (which conditions and prompts: a
    run's own, with any given here, ``data_overrides``, replacing them; with ControlNets only, the options given),
    the main net, the samples and the sampler."""

    out: str = field(default="", metadata=option("output directory (required)"))
    main: str | None = field(default=None, metadata=option(
        "main-net (pipeline) directory of the ControlNet sources (default: the runs' own; they must share it)"))
    resolution: int | None = field(default=None, metadata=option(
        "ControlNet sources only: image size in pixels (default: the main net's native size; runs bring their own)"))
    prompt: str = field(default="caption", metadata=option(
        "captioned data: each sample's caption, or the empty prompt for every sample", choices=PROMPT_MODES))
    split: str = field(default="val", metadata=option("data split the conditions come from", choices=SPLITS))
    samples: int = field(default=8, metadata=option("conditions sampled"))
    steps: int = field(default=20, metadata=option("sampler steps (DDIM for eps / v, Euler for flow; train's "
                                                   "--sample-steps)"))
    seed: int = field(default=0, metadata=option(
        "noise seed: every row starts from the same noise (with a run's seed and steps: its validation grid's)"))
    batch_size: int = field(default=8, metadata=option("images per forward pass"))
    overwrite: bool = field(default=False, metadata=option("replace a non-empty --out"))

    def __post_init__(self) -> None:
        if not self.out:
            raise ValueError("--out is required (a directory)")
        self.check_data_options()
        check_choice("prompt", self.prompt, PROMPT_MODES)
        for name in ("samples", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.resolution is not None and self.resolution < 1:
            raise ValueError(f"--resolution must be >= 1, got {self.resolution}")
        check_number("seed", self.seed, 0, SEED_MAX)
        self.main = self.main_files(self.main)
        out = Path(self.out)
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {self.out} is a file; give a directory")
        if out.is_dir() and any(out.iterdir()) and not self.overwrite:
            raise ValueError(f"--out {self.out} is not empty; pass --overwrite to replace it")


@dataclass
class SampleConfig(DrawConfig):
    """``python -m lisa_probe.sample``: the sources side by side, at one or more conditioning scales."""

    labels: str | None = field(default=None, metadata=option("comma-separated labels of the sources (default: their "
                                                             "directory names)"))
    conditioning_scale: str = field(default="1", metadata=option(
        "scale of every site's residual, as diffusers' controlnet_conditioning_scale; a comma list sweeps it (a "
        "grid row per source and scale)"))

    def __post_init__(self) -> None:
        super().__post_init__()
        parse_scales(self.conditioning_scale)

    @property
    def scales(self) -> tuple[float, ...]:
        return parse_scales(self.conditioning_scale)
