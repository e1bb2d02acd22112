"""scikit-learn's bundled 8x8 handwritten digits (no download), upsampled and tinted.

The 1797 images are split by a fixed shuffled partition (80 / 10 / 10 %, drawn with ``split_seed``, so the test
set does not move when the training seed changes). Strokes are upsampled bilinearly to ``resolution`` and painted
with a tint over a grey background; tint hue and background brightness are drawn from
``np.random.default_rng([seed, image_index])``, so they do not depend on the split.

Factors: ``digit`` (categorical, 10 classes, carried), ``hue`` and ``background`` (continuous in [0, 1], not
carried). Conditions, each (1, H, W) in [0, 1]: ``stroke`` (the upsampled stroke intensity, 16 -> 1) and ``edges``
(``skimage.feature.canny`` of the stroke map).
"""

from __future__ import annotations

import colorsys
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from skimage.feature import canny
from sklearn.datasets import load_digits

from lisa_probe.data import SPLITS, FactorSpec, check_index, check_resolution, make_sample
from lisa_probe.data.condition_kinds import check_dataset_condition, kinds_of_dataset
from lisa_probe.options import check_choice

CONDITIONS = kinds_of_dataset("digits")  # ("stroke", "edges"), from the registry
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
BACKGROUND_RANGE = (0.05, 0.45)  # grey level for background = 0 .. 1
CANNY_SIGMA = 1.0

FACTOR_SPECS = {
    "digit": FactorSpec("digit", "categorical", True, 10, "digit class 0-9"),
    "hue": FactorSpec("hue", "continuous", False, None, "hue of the stroke tint in [0, 1)", period=1.0),
    "background": FactorSpec("background", "continuous", False, None,
                             f"background brightness in [0, 1]: grey level in {BACKGROUND_RANGE}"),
}


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """The bundled digits: images (1797, 8, 8) float32 in [0, 16] and labels (1797,) int64."""
    bunch = load_digits()
    return bunch.images.astype(np.float32), bunch.target.astype(np.int64)


@lru_cache(maxsize=4)
def stroke_maps(resolution: int) -> np.ndarray:
    """All stroke maps upsampled to ``resolution``, (1797, H, W) float32 in [0, 1]."""
    images = torch.from_numpy(_digits()[0] / 16.0)[:, None]
    upsampled = F.interpolate(images, size=(resolution, resolution), mode="bilinear", align_corners=False)
    return upsampled[:, 0].clamp(0.0, 1.0).numpy()


@lru_cache(maxsize=4)
def split_indices(split: str, split_seed: int = 0) -> np.ndarray:
    """Indices into the 1797 bundled images that form ``split`` (a fixed shuffled 80 / 10 / 10 partition)."""
    check_choice("split", split, SPLITS)
    n = len(_digits()[1])
    order = np.random.default_rng(split_seed).permutation(n)
    bounds = np.round(np.cumsum((0.0,) + SPLIT_FRACTIONS) * n).astype(int)
    position = SPLITS.index(split)
    return order[bounds[position]:bounds[position + 1]]


def draw_style(seed: int, image_index: int) -> dict:
    """Draw the non-carried factors (``hue``, ``background``) of bundled image ``image_index``."""
    hue, background = np.random.default_rng([seed, image_index]).random(2)
    return {"hue": float(hue), "background": float(background)}


def paint(stroke: np.ndarray, factors: dict) -> np.ndarray:
    """Tinted digit (H, W, 3) in [0, 1] from a stroke map (H, W) in [0, 1] and the ``hue`` / ``background``."""
    tint = np.array(colorsys.hsv_to_rgb(factors["hue"], 0.8, 1.0), dtype=np.float32)
    lo, hi = BACKGROUND_RANGE
    grey = lo + (hi - lo) * factors["background"]
    return grey + stroke[:, :, None] * (tint - grey)


def stroke_edges(stroke: np.ndarray) -> np.ndarray:
    """Canny edges (H, W) in {0, 1} of a stroke map (H, W) in [0, 1]."""
    return canny(stroke, sigma=CANNY_SIGMA).astype(np.float32)


class DigitsDataset(torch.utils.data.Dataset):
    """Upsampled, tinted scikit-learn digits; see the module docstring.

    Items: ``{"image": (3, H, W) in [-1, 1], "cond": (1, H, W) in [0, 1], "factors": dict, "id":
    "digits/<split>/<bundled image index:06d>"}``.
    """

    name = "digits"
    factor_specs = FACTOR_SPECS
    cond_channels = 1

    def __init__(self, split: str = "train", resolution: int = 32, condition: str | None = None, seed: int = 0,
                 size: int | None = None, split_seed: int = 0):
        check_choice("split", split, SPLITS)
        condition = CONDITIONS[0] if condition is None else condition
        check_dataset_condition("digits", condition)
        self.split, self.condition, self.seed = split, condition, int(seed)
        self.resolution = check_resolution(resolution)
        self.indices = split_indices(split, int(split_seed))
        if size is not None:
            if not 0 <= size <= len(self.indices):
                raise ValueError(f"size must be in [0, {len(self.indices)}] for digits/{split}, got {size!r}")
            self.indices = self.indices[:size]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict:
        image_index = int(self.indices[check_index(index, len(self.indices))])
        stroke = stroke_maps(self.resolution)[image_index].copy()  # a sample must not alias the cached maps
        factors = {"digit": int(_digits()[1][image_index]), **draw_style(self.seed, image_index)}
        cond = stroke if self.condition == "stroke" else stroke_edges(stroke)
        return make_sample(paint(stroke, factors), cond, factors, f"digits/{self.split}/{image_index:06d}")
