"""The settings of ``python -m lisa_probe.intervene``: ``InterveneConfig``. Light: no torch at import."""

from __future__ import annotations

from dataclasses import dataclass, field

from lisa_probe.generation.config import DrawConfig
from lisa_probe.options import option


@dataclass
class InterveneConfig(DrawConfig):
    """One source's site maps and interventions during sampling (``lisa_probe.causal``)."""

    sites: str = field(default="all", metadata=option("comma-separated sites to intervene on and map, or 'all'"))
    windows: int = field(default=4, metadata=option("noise windows the sampler's steps are cut into"))
    map_timesteps: int = field(default=3, metadata=option("evenly spaced timesteps the site maps are taken at"))
    map_figures: int = field(default=2, metadata=option("samples whose maps are drawn (per map timestep)"))
    decoder: str | None = field(default=None, metadata=option(
        "a ControlNet source's LISA decoder (a run's lisa_decoder/, or the run) for the decoder map; a run's own is "
        "used when it has one"))

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("windows", "map_timesteps"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.map_figures < 0:
            raise ValueError(f"--map-figures must be >= 0, got {self.map_figures}")
