"""Control fidelity: does a generated image follow the condition it was generated from?

Only the generated image and its condition are needed. A foreground mask is re-extracted from the image (colour
distance to the median border colour, thresholded half-way to the foreground colour found by Otsu, small cleanup)
and compared with a reference mask derived from the condition (``mask_iou``); the boundaries of both masks are
compared with a pixel tolerance (``edge_f1``). ``edges`` conditions are outlines: the image's mask boundary is
compared with the drawn outline itself, and ``mask_iou`` compares hole-filled silhouettes (meaningful only for
closed outlines, e.g. shapes; digits' Canny edges are open). For ``canny`` conditions (user folders, no notion of
foreground) the data module's Canny extractor is re-applied to the generated image and compared with the
condition; ``mask_iou`` is NaN. A condition that does not determine the object (shapes' ``pose``: position, size
and rotation, the kind named by the prompt) is scored against the sample's true silhouette, rendered from its
factors by the caller.
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage as ndi
import torch
from skimage.filters import threshold_otsu

from lisa_probe.data.condition_kinds import CONDITION_KINDS, condition_kind
from lisa_probe.data.conditions import canny

# Condition kind -> function (C,H,W) in [0,1] -> reference foreground mask (H,W) bool. Canny conditions have none.
# Reference foreground of a condition (C,H,W) in [0,1], by its kind's ``reference`` (``condition_kinds``);
# "image_edges" kinds are scored on the generated image's own edges instead.
REFERENCE_MASKS = {
    "mask": lambda cond: cond.max(axis=0) > 0.5,
    "filled_outline": lambda cond: ndi.binary_fill_holes(cond.max(axis=0) > 0.5),
    "positive": lambda cond: cond.max(axis=0) > 0,
}

MIN_CONTRAST = 0.05  # colour-distance range (in [-1,1] units) below which an image counts as blank
FOREGROUND_QUANTILE = 90  # percentile of the above-Otsu distances taken as the foreground colour's distance
MIN_AREA = 2  # connected foreground components and holes smaller than this (pixels) are removed


def _to_numpy(array: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        array = array.detach().to("cpu", torch.float32).numpy()
    return np.asarray(array, dtype=np.float32)


def _drop_small_components(mask: np.ndarray, min_area: int) -> np.ndarray:
    """``mask`` (H,W) bool without its 4-connected components of fewer than ``min_area`` pixels."""
    labels, _ = ndi.label(mask)
    keep = np.bincount(labels.ravel()) >= min_area
    keep[0] = False
    return keep[labels]


def foreground_mask(image: np.ndarray, min_contrast: float = MIN_CONTRAST, min_area: int = MIN_AREA) -> np.ndarray:
    """Foreground of one image (3,H,W) in [-1,1] as a bool mask (H,W).

    Each pixel's Euclidean colour distance to the median border colour is split by Otsu's threshold; the
    foreground colour's distance is the ``FOREGROUND_QUANTILE``-th percentile of the distances above it, and
    pixels more than half-way there are foreground (matching the datasets' coverage > 0.5 convention for
    anti-aliased or blurred outlines). Components and holes under ``min_area`` pixels are removed. A blank image
    gives an empty mask.
    """
    border = np.concatenate([image[:, 0, :], image[:, -1, :], image[:, :, 0], image[:, :, -1]], axis=1)
    distance = np.linalg.norm(image - np.median(border, axis=1)[:, None, None], axis=0)
    if distance.max() - distance.min() < min_contrast:
        return np.zeros(distance.shape, dtype=bool)
    above = distance[distance > threshold_otsu(distance)]
    mask = distance > 0.5 * np.percentile(above, FOREGROUND_QUANTILE)
    return ~_drop_small_components(~_drop_small_components(mask, min_area), min_area)


def reference_mask(cond: np.ndarray, kind: str) -> np.ndarray:
    """Foreground mask (H,W) bool implied by one condition (C,H,W) in [0,1] of the given kind (one whose reference
    is a mask: not ``canny``)."""
    reference = condition_kind(kind).reference
    if reference not in REFERENCE_MASKS:
        masked = sorted(name for name, k in CONDITION_KINDS.items() if k.reference in REFERENCE_MASKS)
        raise ValueError(f"no reference mask for condition kind {kind!r}; kinds with masks: {masked}")
    return REFERENCE_MASKS[reference](cond)


def mask_boundary(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels (H,W) bool of a mask: the mask minus its binary erosion (pixels at the image rim count)."""
    return mask ^ ndi.binary_erosion(mask)


def canny_edges(image: np.ndarray) -> np.ndarray:
    """Canny edges (H,W) bool of one image (3,H,W) in [-1,1], by the extractor that makes ``canny`` conditions."""
    return canny(np.clip((image.transpose(1, 2, 0) + 1.0) / 2.0, 0.0, 1.0)) > 0.5


def mask_iou(pred: np.ndarray, ref: np.ndarray) -> float:
    """Intersection over union of two bool masks (H,W); 1 when both are empty."""
    union = np.logical_or(pred, ref).sum()
    return 1.0 if union == 0 else float(np.logical_and(pred, ref).sum() / union)


def edge_f1(pred: np.ndarray, ref: np.ndarray, tol: float = 1.0) -> float:
    """F1 of predicted vs reference edge maps (H,W) bool, matching within a Euclidean distance of ``tol`` pixels.

    Precision: fraction of predicted edge pixels within ``tol`` of a reference edge pixel; recall: fraction of
    reference edge pixels within ``tol`` of a predicted one. 1 when both maps are empty, 0 when only one is.
    """
    if not pred.any() or not ref.any():
        return float(not pred.any() and not ref.any())
    precision = float((ndi.distance_transform_edt(~ref)[pred] <= tol).mean())
    recall = float((ndi.distance_transform_edt(~pred)[ref] <= tol).mean())
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def _sample_fidelity(image: np.ndarray, cond: np.ndarray, kind: str, tol: float,
                     silhouette: np.ndarray | None) -> tuple[float, float]:
    """(edge_f1, mask_iou) for one image (3,H,W) and its condition (C,H,W) (or its factors' silhouette (H,W) bool,
    for kinds whose reference is one)."""
    reference = condition_kind(kind).reference
    if reference == "image_edges":
        return edge_f1(canny_edges(image), cond.max(axis=0) > 0.5, tol), float("nan")
    pred = foreground_mask(image)
    ref = silhouette if reference == "silhouette" else reference_mask(cond, kind)
    if reference == "filled_outline":
        return edge_f1(mask_boundary(pred), cond.max(axis=0) > 0.5, tol), mask_iou(ndi.binary_fill_holes(pred), ref)
    return edge_f1(mask_boundary(pred), mask_boundary(ref), tol), mask_iou(pred, ref)


def check_batch(images: np.ndarray | torch.Tensor, cond: np.ndarray | torch.Tensor) -> None:
    """Raise ValueError unless images is (N,3,H,W) and cond is (N,C,H,W) with the same N, H, W."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (N, 3, H, W) with values in [-1, 1], got {tuple(images.shape)}")
    if cond.ndim != 4 or cond.shape[0] != images.shape[0] or cond.shape[2:] != images.shape[2:]:
        raise ValueError(f"cond must have shape (N, C, H, W) = ({images.shape[0]}, C, {images.shape[2]}, "
                         f"{images.shape[3]}) to match images {tuple(images.shape)}, got {tuple(cond.shape)}")


def fidelity_per_sample(images: np.ndarray | torch.Tensor, cond: np.ndarray | torch.Tensor, kind: str,
                        tol: float = 1.0, silhouettes: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-sample control fidelity of images (N,3,H,W) in [-1,1] vs conditions (N,C,H,W) in [0,1].

    ``silhouettes`` (N,H,W) bool: the samples' true silhouettes, the reference of kinds whose condition does not
    determine the object (reference ``"silhouette"``: shapes' ``pose``), and required for them.
    Returns ``{"edge_f1": (N,), "mask_iou": (N,)}`` float64 arrays (``mask_iou`` is NaN for ``canny``).
    """
    reference = condition_kind(kind).reference
    if reference is None:
        scored = [name for name, k in CONDITION_KINDS.items() if k.reference is not None]
        raise ValueError(f"condition kind {kind!r} has no reference to score control against; kinds that do: {scored}")
    check_batch(images, cond)
    if reference == "silhouette" and (silhouettes is None or tuple(np.shape(silhouettes)) != (
            images.shape[0], *images.shape[2:])):
        raise ValueError(f"condition kind {kind!r} is scored against the samples' silhouettes: pass silhouettes of "
                         f"shape (N, H, W) = ({images.shape[0]}, {images.shape[2]}, {images.shape[3]}), got "
                         f"{None if silhouettes is None else tuple(np.shape(silhouettes))}")
    images, cond = _to_numpy(images), _to_numpy(cond)
    references = silhouettes if reference == "silhouette" else [None] * len(images)
    scores = np.array([_sample_fidelity(image, c, kind, tol, ref) for image, c, ref in zip(images, cond, references)],
                      dtype=np.float64)
    scores = scores.reshape(-1, 2)
    return {"edge_f1": scores[:, 0], "mask_iou": scores[:, 1]}


def fidelity_means(per_sample: dict[str, np.ndarray]) -> dict[str, float]:
    """Mean of each per-sample metric (N,), ignoring NaN; NaN when all values are NaN."""
    return {name: float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
            for name, values in per_sample.items()}


def control_fidelity(images: np.ndarray | torch.Tensor, cond: np.ndarray | torch.Tensor, kind: str,
                     tol: float = 1.0, silhouettes: np.ndarray | None = None) -> dict[str, float]:
    """Mean ``edge_f1`` and ``mask_iou`` of a batch (see :func:`fidelity_per_sample`)."""
    return fidelity_means(fidelity_per_sample(images, cond, kind, tol, silhouettes))
