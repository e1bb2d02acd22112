"""The training settings: derived constants checked against what they stand for."""

import numpy as np
import pytest

from lisa_probe.training.config import DEFAULT_MAIN_NAME, MODE_SCALE_MAX, PretrainConfig, TrainConfig


def test_the_default_main_name_is_what_pretraining_with_no_options_names_its_run():
    assert DEFAULT_MAIN_NAME == PretrainConfig().name


def test_the_largest_mode_scale_keeps_diffusers_mode_density_inside_0_1():
    """u' = 1 - u - s (cos²(πu/2) - 1 + u) must stay in [0, 1] for u in [0, 1]; the bound is computed here on a
    fine grid (the tightest s is at the interior maximum of the bracket) and MODE_SCALE_MAX sits just inside it."""
    u = np.linspace(0, 1, 400_001)
    bracket = np.cos(np.pi * u / 2) ** 2 - 1 + u
    positive = bracket > 1e-12
    largest = np.min((1 - u[positive]) / bracket[positive])
    assert largest - 1e-3 < MODE_SCALE_MAX <= largest
    for scale in (-1.0, MODE_SCALE_MAX):
        density = 1 - u - scale * bracket
        assert density.min() >= -1e-12 and density.max() <= 1 + 1e-12
    with pytest.raises(ValueError, match="--mode-scale must be a finite number in"):
        TrainConfig(weighting_scheme="mode", mode_scale=MODE_SCALE_MAX + 0.01)
