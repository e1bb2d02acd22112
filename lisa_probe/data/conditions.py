"""Condition extractors built on scikit-image.

Every extractor maps an RGB image (H, W, 3) float in [0, 1] to a condition map (H, W) float32 in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from skimage.color import rgb2gray
from skimage.feature import canny as _skimage_canny
from skimage.filters import sobel as _skimage_sobel
from skimage.filters import threshold_otsu

from lisa_probe.data.condition_kinds import CONDITION_KINDS, extractor_kinds
from lisa_probe.options import check_choice

CANNY_SIGMA = 1.0
FLAT_GRADIENT = 1e-6  # a Sobel peak below this (grey levels per pixel) is rounding noise of a flat image


def canny(image: np.ndarray) -> np.ndarray:
    """Canny edges of the grey image, (H, W) in {0, 1}."""
    return _skimage_canny(rgb2gray(image), sigma=CANNY_SIGMA).astype(np.float32)


def sobel(image: np.ndarray) -> np.ndarray:
    """Sobel gradient magnitude of the grey image divided by its maximum, (H, W) in [0, 1] (zeros if flat)."""
    magnitude = _skimage_sobel(rgb2gray(image))
    peak = magnitude.max()
    if peak < FLAT_GRADIENT:
        return np.zeros(magnitude.shape, dtype=np.float32)
    return (magnitude / peak).astype(np.float32)


def otsu_mask(image: np.ndarray) -> np.ndarray:
    """Foreground mask, (H, W) in {0, 1}, by Otsu's threshold on the grey image.

    The foreground is the side of the threshold that covers less of the image border (the background usually
    frames the object); a flat image has no foreground.
    """
    grey = rgb2gray(image)
    if np.ptp(grey) == 0:
        return np.zeros(grey.shape, dtype=np.float32)
    above = grey > threshold_otsu(grey)
    border = np.concatenate([above[0], above[-1], above[1:-1, 0], above[1:-1, -1]])
    foreground = ~above if border.mean() > 0.5 else above
    return foreground.astype(np.float32)


EXTRACTORS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"canny": canny, "sobel": sobel, "otsu_mask": otsu_mask}


def get_extractor(kind: str) -> Callable[[np.ndarray], np.ndarray]:
    """The extractor that makes condition kind ``kind`` from an image (``condition_kinds.CONDITION_KINDS``);
    ``ValueError`` listing the kinds an extractor makes otherwise."""
    check_choice("condition extractor", kind, extractor_kinds())
    return EXTRACTORS[CONDITION_KINDS[kind].extractor]
