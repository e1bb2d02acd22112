"""The option values of the noise process (prediction types, timestep samplings, diffusers' SD3 weighting schemes)
and ``WeightingScheme``. Light: no torch at import, so the settings can name them."""

from __future__ import annotations

from dataclasses import dataclass

from lisa_probe.options import check_choice

PREDICTION_TYPES = ("eps", "v", "flow")
TIMESTEP_SAMPLINGS = ("uniform", "cubic")
# diffusers' SD3 trainers' --weighting_scheme: logit_normal and mode shape the timestep density, sigma_sqrt and cosmap
# weight the loss, none does neither (flow matching only)
WEIGHTING_SCHEMES = ("none", "sigma_sqrt", "logit_normal", "mode", "cosmap")


@dataclass(frozen=True)
class WeightingScheme:
    """An SD3 weighting scheme and its parameters (diffusers' ``--weighting_scheme``, ``--logit_mean``,
    ``--logit_std``, ``--mode_scale``)."""

    name: str = "none"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29

    def __post_init__(self) -> None:
        check_choice("weighting scheme", self.name, WEIGHTING_SCHEMES)

    @property
    def shapes_density(self) -> bool:
        return self.name in ("logit_normal", "mode")
