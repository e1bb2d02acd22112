import numpy as np
import pytest
import torch

from lisa_probe.data import build_dataset
from lisa_probe.data.shapes import render
from lisa_probe.evaluation.fidelity import (
    canny_edges,
    control_fidelity,
    edge_f1,
    fidelity_per_sample,
    foreground_mask,
    mask_boundary,
    mask_iou,
    reference_mask,
)


def _square(size: int = 16, lo: int = 4, hi: int = 11) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[lo:hi, lo:hi] = True
    return mask


def _paint(mask: np.ndarray, fg=(0.8, -0.6, -0.2), bg=(-0.2, 0.1, 0.3)) -> np.ndarray:
    """Image (3,H,W) in [-1,1] with colour fg on the mask and bg elsewhere."""
    return np.where(mask[None], np.array(fg)[:, None, None], np.array(bg)[:, None, None]).astype(np.float32)


def test_mask_iou_hand_computed():
    pred, ref = np.zeros((4, 4), bool), np.zeros((4, 4), bool)
    pred[0:2, 0:2] = True
    ref[0:2, 0:3] = True
    assert mask_iou(pred, ref) == pytest.approx(4 / 6)
    assert mask_iou(np.zeros((4, 4), bool), np.zeros((4, 4), bool)) == 1.0
    assert mask_iou(np.zeros((4, 4), bool), ref) == 0.0


def test_edge_f1_hand_computed():
    ref = np.zeros((5, 5), bool)
    ref[:, 2] = True
    shifted = np.roll(ref, 1, axis=1)
    assert edge_f1(shifted, ref, tol=1) == 1.0
    assert edge_f1(shifted, ref, tol=0) == 0.0
    extra = ref.copy()
    extra[0, 4] = True  # precision 5/6, recall 1
    assert edge_f1(extra, ref, tol=0) == pytest.approx(10 / 11)
    dot, diagonal = np.zeros((5, 5), bool), np.zeros((5, 5), bool)
    dot[2, 2], diagonal[3, 3] = True, True  # distance sqrt(2): outside tol=1, inside tol=1.5
    assert edge_f1(diagonal, dot, tol=1) == 0.0
    assert edge_f1(diagonal, dot, tol=1.5) == 1.0
    assert edge_f1(np.zeros_like(ref), ref) == 0.0
    assert edge_f1(np.zeros_like(ref), np.zeros_like(ref)) == 1.0


def test_mask_boundary_is_inner_outline():
    boundary = mask_boundary(_square(8, 2, 6))
    assert boundary.sum() == 12 and not boundary[3:5, 3:5].any()


def test_foreground_mask_recovers_painted_square_and_blank_is_empty():
    mask = _square()
    assert (foreground_mask(_paint(mask)) == mask).all()
    noisy = _paint(mask) + np.random.default_rng(0).normal(0, 0.05, (3, 16, 16)).astype(np.float32)
    assert mask_iou(foreground_mask(noisy), mask) > 0.95
    assert not foreground_mask(np.full((3, 16, 16), 0.3, np.float32)).any()


def test_reference_masks_by_kind():
    mask = _square()
    outline = mask_boundary(mask).astype(np.float32)[None]
    assert (reference_mask(outline, "edges") == mask).all()
    assert (reference_mask(mask.astype(np.float32)[None], "mask") == mask).all()
    assert (reference_mask(mask.astype(np.float32)[None] * 0.3, "distance") == mask).all()
    assert (reference_mask(mask.astype(np.float32)[None] * 0.3, "stroke") == 0).all()
    with pytest.raises(ValueError, match="canny"):
        reference_mask(outline, "canny")


@pytest.mark.parametrize("kind", ["mask", "edges"])
def test_perfect_shifted_and_blank_batches(kind):
    mask = _square()
    cond_map = mask if kind == "mask" else mask_boundary(mask)
    cond = torch.from_numpy(cond_map.astype(np.float32))[None, None]
    perfect = torch.from_numpy(_paint(mask))[None]
    shifted = torch.from_numpy(_paint(np.roll(mask, 1, axis=1)))[None]
    blank = torch.zeros(1, 3, 16, 16)
    assert control_fidelity(perfect, cond, kind) == {"edge_f1": 1.0, "mask_iou": 1.0}
    assert control_fidelity(shifted, cond, kind, tol=1)["edge_f1"] == 1.0
    assert control_fidelity(shifted, cond, kind, tol=0)["edge_f1"] < 0.6
    assert control_fidelity(shifted, cond, kind)["mask_iou"] == pytest.approx(42 / 56)
    assert control_fidelity(blank, cond, kind) == {"edge_f1": 0.0, "mask_iou": 0.0}
    per_sample = fidelity_per_sample(torch.cat([perfect, blank]), cond.repeat(2, 1, 1, 1), kind)
    assert per_sample["mask_iou"].tolist() == [1.0, 0.0]


def test_canny_compares_edges_directly():
    image = _paint(_square())
    cond = canny_edges(image).astype(np.float32)[None, None]
    result = control_fidelity(image[None], cond, "canny")
    assert result["edge_f1"] == 1.0 and np.isnan(result["mask_iou"])
    assert control_fidelity(np.zeros((1, 3, 16, 16), np.float32), cond, "canny")["edge_f1"] == 0.0


def test_bad_inputs_raise():
    images, cond = torch.zeros(2, 3, 16, 16), torch.zeros(2, 1, 16, 16)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\).*\(2, 1, 16, 16\)"):
        control_fidelity(cond, cond, "mask")
    with pytest.raises(ValueError, match=r"cond must have shape.*\(3, 1, 16, 16\)"):
        control_fidelity(images, torch.zeros(3, 1, 16, 16), "mask")
    with pytest.raises(ValueError, match="condition kind 'depth' has no reference to score control against"):
        control_fidelity(images, cond, "depth")


def _rendered_batch(resolution: int, condition: str, shift: int = 0, n: int = 16):
    """Images re-rendered by ``shapes.render`` from the factors of n val samples (optionally shifted right by
    ``shift`` px), with the conditions of those samples."""
    dataset = build_dataset("shapes", split="val", resolution=resolution, condition=condition, size=n)
    samples = [dataset[i] for i in range(n)]
    images = [render({**s["factors"], "size": max(s["factors"]["size"], 0.5)}, resolution) for s in samples]
    image = torch.from_numpy(np.stack([r["image"].transpose(2, 0, 1) for r in images]) * 2 - 1)
    cond = torch.from_numpy(np.stack([r[condition][None] for r in images]))
    return torch.roll(image, shift, dims=3), cond


@pytest.mark.parametrize("condition", ["mask", "edges", "distance"])
def test_shapes_perfect_rendering_shifted_and_blank(condition):
    images, cond = _rendered_batch(32, condition)
    perfect = control_fidelity(images, cond, condition)
    assert perfect["edge_f1"] > 0.95
    assert perfect["mask_iou"] > (0.65 if condition == "edges" else 0.9)  # edges: the drawn outline counts as inside
    shifted, _ = _rendered_batch(32, condition, shift=1)
    tolerant = control_fidelity(shifted, cond, condition, tol=1)["edge_f1"]
    assert tolerant > 0.75  # edges: the image's boundary is up to ~1.5 px from a 1-px outline shifted by 1 px
    assert control_fidelity(shifted, cond, condition, tol=0)["edge_f1"] < tolerant - 0.3
    assert control_fidelity(torch.zeros_like(images), cond, condition) == {"edge_f1": 0.0, "mask_iou": 0.0}


def test_digits_stroke_perfect_and_mismatched():
    dataset = build_dataset("digits", split="val", resolution=32, condition="stroke", size=32)
    batch = torch.utils.data.default_collate([dataset[i] for i in range(32)])
    matched = control_fidelity(batch["image"], batch["cond"], "stroke")
    mismatched = control_fidelity(batch["image"].roll(1, dims=0), batch["cond"], "stroke")
    assert matched["edge_f1"] > 0.95 and matched["mask_iou"] > 0.85
    assert mismatched["mask_iou"] < matched["mask_iou"] - 0.3


def test_pose_is_scored_against_the_true_silhouette_which_needs_the_kind():
    """A pose condition does not say the kind: the reference is the sample's silhouette. The true rendering scores
    high, the same pose drawn as the next kind lower, and without silhouettes the score is refused."""
    from lisa_probe.data.shapes import SHAPE_KINDS, silhouette
    from lisa_probe.evaluation import Evaluator

    dataset = build_dataset("shapes", split="val", resolution=32, condition="pose", size=12)
    factors = [{**dataset[i]["factors"], "size": max(dataset[i]["factors"]["size"], 0.5)} for i in range(12)]
    cond = torch.from_numpy(np.stack([render(f, 32)["pose"][None] for f in factors]))
    silhouettes = np.stack([silhouette(f, 32) for f in factors])

    def images(kind_shift):
        shifted = [{**f, "kind": (f["kind"] + kind_shift) % len(SHAPE_KINDS)} for f in factors]
        return torch.from_numpy(np.stack([render(f, 32)["image"].transpose(2, 0, 1) for f in shifted]) * 2 - 1)

    true_kind = control_fidelity(images(0), cond, "pose", silhouettes=silhouettes)["mask_iou"]
    other_kind = control_fidelity(images(1), cond, "pose", silhouettes=silhouettes)["mask_iou"]
    assert true_kind > 0.9 and other_kind < true_kind - 0.15
    with pytest.raises(ValueError, match="scored against the samples' silhouettes"):
        control_fidelity(images(0), cond, "pose")
    evaluator = Evaluator("pose", 32, 1, None, None, silhouette=silhouette)  # renders them from the factors
    batch = {name: torch.tensor([f[name] for f in factors]) for name in factors[0]}
    assert evaluator.control_fidelity(images(0), cond, batch)["mask_iou"] == pytest.approx(true_kind)
    with pytest.raises(ValueError, match="pass their factors"):
        evaluator.control_fidelity(images(0), cond)
