import math

import numpy as np
import pytest
import torch

from lisa_probe.data import build_dataset
from lisa_probe.data.shapes import RADIUS_RANGE, SHAPE_KINDS, silhouette
from lisa_probe.evaluation.shapefit import SHAPE_FACTORS, shape_fit_per_sample


def _real(n: int = 24, resolution: int = 32) -> dict:
    dataset = build_dataset("shapes", split="val", resolution=resolution, size=n)
    return torch.utils.data.default_collate([dataset[i] for i in range(n)])


def test_real_shapes_fit_their_own_factors_and_not_a_wrong_kind():
    batch = _real()
    fit = shape_fit_per_sample(batch["image"], batch["factors"], silhouette)
    assert fit["shape_fit_iou"].shape == fit["shape_fit_f1"].shape == (24,)
    assert fit["shape_fit_iou"].mean() > 0.9 and fit["shape_fit_f1"].mean() > 0.95
    wrong = {**batch["factors"], "kind": (batch["factors"]["kind"] + 1) % len(SHAPE_KINDS)}
    misfit = shape_fit_per_sample(batch["image"], wrong, silhouette)
    assert misfit["shape_fit_iou"].mean() < fit["shape_fit_iou"].mean() - 0.1


def test_disc_against_equal_area_square_matches_the_closed_form():
    # A disc of radius r and a concentric square of half-side a = r sqrt(pi) / 2 (same area): the disc sticks out
    # over each side by a circular segment r^2 acos(a/r) - a sqrt(r^2 - a^2); rotation does not matter (up to pixel
    # discretisation, which moves the IoU by < 0.01 at 128 px and the best of 24 rotations is kept).
    resolution = 128
    half_side = RADIUS_RANGE[1] * resolution / math.sqrt(2)  # size = 1: circumradius 0.24 of the side
    r = 2 * half_side / math.sqrt(math.pi)
    segment = r * r * math.acos(half_side / r) - half_side * math.sqrt(r * r - half_side * half_side)
    intersection = math.pi * r * r - 4 * segment
    expected_iou = intersection / (2 * math.pi * r * r - intersection)
    centre = np.arange(resolution) + 0.5 - resolution / 2
    inside = centre[None, :] ** 2 + centre[:, None] ** 2 < r * r
    image = torch.full((1, 3, resolution, resolution), -0.5)
    image[0, 0][torch.from_numpy(inside)] = 1.0
    factors = {"kind": torch.tensor([SHAPE_KINDS.index("square")]), "x": torch.tensor([0.5]),
               "y": torch.tensor([0.5]), "size": torch.tensor([1.0])}
    fit = shape_fit_per_sample(image, factors, silhouette)
    assert abs(fit["shape_fit_iou"][0] - expected_iou) < 0.01
    assert fit["shape_fit_f1"][0] < 0.8


def test_missing_factor_and_bad_rotation_grid_raise():
    batch = _real(n=2)
    factors = {name: batch["factors"][name] for name in SHAPE_FACTORS if name != "size"}
    with pytest.raises(ValueError, match=r"missing \['size'\]"):
        shape_fit_per_sample(batch["image"], factors, silhouette)
    with pytest.raises(ValueError, match="n_rotations must be >= 1, got 0"):
        shape_fit_per_sample(batch["image"], batch["factors"], silhouette, n_rotations=0)
