"""Tests of the scikit-learn digits dataset."""

import numpy as np
import pytest
import torch
from scipy.ndimage import binary_dilation
from skimage.transform import resize
from sklearn.datasets import load_digits
from torch.utils.data import default_collate

from lisa_probe.data import build_dataset
from lisa_probe.data import digits as D


def _image_index(sample) -> int:
    return int(sample["id"].rsplit("/", 1)[1])


def test_deterministic_across_instances_and_recorded_values():
    first = build_dataset("digits", split="val", seed=3)
    second = build_dataset("digits", split="val", seed=3)
    for i in (0, 7, -1):
        a, b = first[i], second[i]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["cond"], b["cond"])
        assert a["factors"] == b["factors"] and a["id"] == b["id"]
    # Platform-independent PCG64 draws: the same on every machine.
    assert D.split_indices("test")[:5].tolist() == [535, 243, 1730, 501, 1163]
    assert D.draw_style(0, 5)["hue"] == pytest.approx(0.38213610129812814, abs=1e-15)


def test_splits_partition_the_bundled_images():
    parts = {split: D.split_indices(split) for split in ("train", "val", "test")}
    assert [len(p) for p in parts.values()] == [1438, 179, 180]
    assert sorted(np.concatenate(list(parts.values())).tolist()) == list(range(1797))
    assert np.array_equal(build_dataset("digits", split="test", seed=5).indices, parts["test"])
    assert not np.array_equal(D.split_indices("test", split_seed=1), parts["test"])


@pytest.mark.parametrize("resolution", [16, 64])
@pytest.mark.parametrize("condition", ["stroke", "edges"])
def test_sample_shapes_and_ranges(resolution, condition):
    ds = build_dataset("digits", split="train", resolution=resolution, condition=condition, size=10)
    assert len(ds) == 10 and ds.cond_channels == 1 and ds.condition == condition
    batch = default_collate([ds[i] for i in range(len(ds))])
    assert batch["image"].shape == (10, 3, resolution, resolution) and batch["image"].dtype == torch.float32
    assert batch["cond"].shape == (10, 1, resolution, resolution) and batch["cond"].dtype == torch.float32
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1
    assert batch["cond"].min() >= 0 and batch["cond"].max() <= 1
    assert batch["factors"]["digit"].dtype == torch.int64 and set(batch["factors"]) == set(ds.factor_specs)


def test_factors_and_stroke_match_the_bundled_data():
    bunch = load_digits()
    ds = build_dataset("digits", split="val", resolution=32, size=20)
    for i in range(len(ds)):
        sample = ds[i]
        k = _image_index(sample)
        assert sample["factors"]["digit"] == bunch.target[k]
        expected = resize(bunch.images[k] / 16.0, (32, 32), order=1, mode="edge", anti_aliasing=False)
        assert np.allclose(sample["cond"][0].numpy(), expected, atol=1e-5)


def test_factor_specs():
    specs = build_dataset("digits", size=1).factor_specs
    assert specs["digit"].kind == "categorical" and specs["digit"].n_classes == 10 and specs["digit"].carried
    assert {n for n, s in specs.items() if not s.carried} == {"hue", "background"}
    assert all(specs[n].kind == "continuous" for n in ("hue", "background"))


@pytest.mark.parametrize("condition", ["stroke", "edges"])
def test_seed_changes_only_non_carried_factors(condition):
    a = build_dataset("digits", split="test", condition=condition, seed=0, size=5)
    b = build_dataset("digits", split="test", condition=condition, seed=1, size=5)
    for i in range(5):
        sa, sb = a[i], b[i]
        assert sa["factors"]["digit"] == sb["factors"]["digit"]
        assert sa["factors"]["hue"] != sb["factors"]["hue"]
        assert torch.equal(sa["cond"], sb["cond"]) and not torch.allclose(sa["image"], sb["image"], atol=1e-2)
    # A different image (a carried factor) gives a different condition.
    assert not torch.equal(a[0]["cond"], a[1]["cond"])


def test_edges_are_binary_and_follow_the_strokes():
    ds = build_dataset("digits", split="train", condition="edges", size=10)
    strokes = D.stroke_maps(32)
    for i in range(len(ds)):
        sample = ds[i]
        edges = sample["cond"][0].numpy()
        assert set(np.unique(edges)) <= {0.0, 1.0} and edges.sum() > 0
        near_ink = binary_dilation(strokes[_image_index(sample)] > 0.05, iterations=2)
        assert not (edges.astype(bool) & ~near_ink).any()


def test_bad_arguments():
    with pytest.raises(ValueError, match="'canny'.*'stroke', 'edges'"):
        build_dataset("digits", condition="canny")
    with pytest.raises(ValueError, match="size"):
        build_dataset("digits", split="val", size=500)


def test_changing_a_sample_in_place_leaves_the_dataset_unchanged():
    dataset = build_dataset("digits", split="val", resolution=16, condition="stroke")
    first = dataset[0]
    reference = first["cond"].clone()
    first["cond"].mul_(0)
    first["image"].mul_(0)
    assert torch.equal(dataset[0]["cond"], reference) and dataset[0]["image"].abs().sum() > 0
