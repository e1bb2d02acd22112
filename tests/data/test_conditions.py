"""Tests of the scikit-image condition extractors."""

import numpy as np
import pytest

from lisa_probe.data import shapes
from lisa_probe.data.condition_kinds import extractor_kinds
from lisa_probe.data.conditions import get_extractor


def _square_image(foreground: float, background: float, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) image of a centred square and its (H, W) boolean mask."""
    mask = np.zeros((size, size), bool)
    mask[8:24, 10:22] = True
    image = np.where(mask[:, :, None], foreground, background) * np.ones(3)
    return image, mask


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return (a & b).sum() / (a | b).sum()


@pytest.mark.parametrize("name", extractor_kinds())
def test_extractors_return_hw_maps_in_unit_range(name):
    image = np.random.default_rng(0).random((20, 24, 3))
    out = get_extractor(name)(image)
    assert out.shape == (20, 24) and out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("name", extractor_kinds())
def test_flat_image_gives_an_empty_map(name):
    assert not get_extractor(name)(np.full((16, 16, 3), 0.4)).any()


def test_canny_and_sobel_follow_the_square_outline():
    image, mask = _square_image(0.9, 0.1)
    near_outline = np.zeros_like(mask)
    near_outline[6:26, 8:24] = True
    near_outline[11:21, 13:19] = False
    edges = get_extractor("canny")(image).astype(bool)
    assert edges.any() and not (edges & ~near_outline).any()
    sobel = get_extractor("sobel")(image)
    assert sobel.max() == pytest.approx(1.0) and sobel[~near_outline].max() < 1e-6


@pytest.mark.parametrize("foreground, background", [(0.9, 0.1), (0.1, 0.9)])
def test_otsu_mask_finds_the_object_on_either_background(foreground, background):
    image, mask = _square_image(foreground, background)
    assert np.array_equal(get_extractor("otsu_mask")(image).astype(bool), mask)


def test_otsu_mask_recovers_rendered_shapes():
    for kind in range(len(shapes.SHAPE_KINDS)):
        factors = {"kind": kind, "x": 0.4, "y": 0.6, "size": 0.8, "rotation": 0.1, "hue": 0.15, "background": 0.2,
                   "texture": 0}
        maps = shapes.render(factors, 32)
        found = get_extractor("otsu_mask")(maps["image"]).astype(bool)
        assert _iou(found, maps["mask"] > 0.5) > 0.85


def test_unknown_extractor_lists_the_registered_ones():
    with pytest.raises(ValueError, match="'hed'; allowed: 'canny', 'otsu_mask', 'sobel'"):
        get_extractor("hed")
