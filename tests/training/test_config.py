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


@pytest.mark.parametrize("images, prompts, pairs", [
    (["a.png"], [], [("a.png", "")]),
    (["a.png"], ["red", "blue"], [("a.png", "red"), ("a.png", "blue")]),
    (["a.png", "b.png"], ["red"], [("a.png", "red"), ("b.png", "red")]),
    (["a.png", "b.png"], ["red", "blue"], [("a.png", "red"), ("b.png", "blue")]),
])
def test_validation_images_and_prompts_pair_as_diffusers_pairs_them(images, prompts, pairs):
    config = TrainConfig(validation_image=images, validation_prompt=prompts, label_prompts=bool(prompts))
    assert config.validation_pairs == pairs


@pytest.mark.parametrize("options, message", [
    (dict(validation_prompt=["red"], label_prompts=True), "--validation-prompt needs --validation-image"),
    (dict(validation_image=["a.png"], validation_prompt=["red"]), "--validation-prompt needs captioned data"),
    (dict(validation_image=["a", "b"], validation_prompt=["r", "g", "b"], label_prompts=True),
     "2 --validation-image and 3 --validation-prompt do not pair"),
    (dict(validation_image=["a.png"], eval_samples=0), "--eval-samples 0 turns evaluation off"),
    (dict(num_train_epochs=0), "--num-train-epochs must be >= 1"),
])
def test_bad_validation_pairs_and_epochs_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**options)
