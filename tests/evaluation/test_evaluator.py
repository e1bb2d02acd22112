import warnings

import numpy as np
import pytest
import torch

from lisa_probe.data import build_dataset
from lisa_probe.data.condition_kinds import condition_kind
from lisa_probe.evaluation import Evaluator
from lisa_probe.evaluation.fidelity import control_fidelity
from lisa_probe.evaluation.readback import ReadbackConfig

SMALL = ReadbackConfig(n_train=1000, n_val=200, epochs=2, batch_size=32)
N_REFERENCE = 200


def _batch(split: str = "test", n: int = 32, condition: str = "mask") -> dict:
    dataset = build_dataset("shapes", split=split, resolution=16, condition=condition, size=n)
    return torch.utils.data.default_collate([dataset[i] for i in range(n)])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    cache_dir = tmp_path_factory.mktemp("cache")
    dataset = build_dataset("shapes", split="val", resolution=16, condition="mask", size=8)
    return cache_dir, dataset, Evaluator.for_dataset(dataset, cache_dir, n_reference=N_REFERENCE, config=SMALL,
                                                     progress=False)


def test_evaluate_real_and_blank_batches(setup):
    _, _, evaluator = setup
    batch = _batch()
    real = evaluator.evaluate(batch["image"], batch["cond"], batch["factors"])
    assert set(real) == {"edge_f1", "mask_iou", "fd", "fd_real_real",
                         *(f"readback/{name}" for name in ("kind", "x", "y", "size", "rotation"))}
    assert all(isinstance(value, float) for value in real.values())
    assert real["edge_f1"] > 0.9 and real["mask_iou"] > 0.8
    assert real["readback/x"] < 0.1 and 0 <= real["readback/kind"] <= 1
    assert 0 < real["fd"] < 3 * real["fd_real_real"]
    blank = evaluator.evaluate(torch.zeros_like(batch["image"]), batch["cond"], batch["factors"])
    assert blank["edge_f1"] == 0.0 and blank["mask_iou"] == 0.0
    assert blank["fd"] > 10 * real["fd"] and blank["fd_real_real"] == real["fd_real_real"]
    assert evaluator.control_fidelity(batch["image"], batch["cond"]) == control_fidelity(
        batch["image"], batch["cond"], "mask")


def test_shape_fit_of_real_and_blank_batches(setup):
    _, _, evaluator = setup
    images = _batch(split="val", n=16)["image"]
    real = evaluator.shape_fit(images)
    assert set(real) == {"shape_fit_iou", "shape_fit_f1", "shape_fit_iou_real", "shape_fit_f1_real"}
    # the batch is the first 16 val images, which are also the real baseline
    assert real["shape_fit_iou"] == real["shape_fit_iou_real"] and real["shape_fit_f1"] == real["shape_fit_f1_real"]
    assert real["shape_fit_iou"] > 0.5 and real["shape_fit_f1"] > 0.7
    blank = evaluator.shape_fit(torch.zeros_like(images))
    assert blank["shape_fit_iou"] == 0.0 and blank["shape_fit_f1"] == 0.0
    assert blank["shape_fit_iou_real"] == real["shape_fit_iou_real"]


def test_heldout_and_cached_reference(setup):
    cache_dir, dataset, evaluator = setup
    assert evaluator.readback_heldout["kind/accuracy"] > evaluator.readback_heldout["kind/chance"]
    assert evaluator.reference.shape == (N_REFERENCE, 128)
    reference_file = evaluator.readback.path / f"reference-val-{N_REFERENCE}.safetensors"
    mtime = reference_file.stat().st_mtime_ns
    again = Evaluator.for_dataset(dataset, cache_dir, n_reference=N_REFERENCE, config=SMALL, progress=False)
    assert not again.readback.trained and reference_file.stat().st_mtime_ns == mtime
    np.testing.assert_allclose(again.reference, evaluator.reference, rtol=1e-6)


def test_control_metric_covers_dataset_conditions(setup):
    _, _, evaluator = setup
    assert evaluator.control_metric == "mask_iou"
    assert {name: condition_kind(name).control_metric for name in ("edges", "mask", "distance", "stroke", "canny",
                                                                   "sobel", "custom")} == {
        "edges": "edge_f1", "mask": "mask_iou", "distance": "mask_iou", "stroke": "mask_iou", "canny": "edge_f1",
        "sobel": None, "custom": None}
    custom = Evaluator("custom", 16, 1, None, None)
    assert custom.control_metric is None and custom.shape_fit(torch.zeros(4, 3, 16, 16)) == {}
    metrics = custom.evaluate(torch.zeros(4, 3, 16, 16), torch.zeros(4, 1, 16, 16), {})
    assert set(metrics) == {"edge_f1", "mask_iou", "fd", "fd_real_real"}
    assert all(np.isnan(value) for value in metrics.values())


def test_bad_inputs_raise_naming_shapes(setup):
    _, _, evaluator = setup
    batch = _batch(n=4)
    images, cond, factors = batch["image"], batch["cond"], batch["factors"]
    with pytest.raises(ValueError, match=r"\(N, 3, 16, 16\).*\(4, 3, 32, 32\)"):
        evaluator.evaluate(torch.zeros(4, 3, 32, 32), torch.zeros(4, 1, 32, 32), factors)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\).*\(4, 1, 16, 16\)"):
        evaluator.evaluate(images[:, :1], cond, factors)
    with pytest.raises(ValueError, match=r"cond must have shape \(N, 1, 16, 16\).*\(4, 2, 16, 16\)"):
        evaluator.evaluate(images, cond.repeat(1, 2, 1, 1), factors)
    with pytest.raises(ValueError, match=r"in \[-1, 1\]"):
        evaluator.evaluate((images + 1) * 127.5, cond, factors)
    with pytest.raises(ValueError, match="lacks"):
        evaluator.evaluate(images, cond, {"x": factors["x"]})
    with pytest.raises(ValueError, match=r"FD needs at least 2 images"):
        evaluator.frechet(images[:1])


def test_fd_of_a_batch_larger_than_half_the_reference_uses_its_first_images(setup):
    _, _, evaluator = setup
    big = _batch(n=N_REFERENCE // 2 + 3)["image"]
    with pytest.warns(UserWarning, match=rf"first {N_REFERENCE // 2} of {N_REFERENCE // 2 + 3} images"):
        capped = evaluator.frechet(big)
    assert capped == evaluator.frechet(big[: N_REFERENCE // 2])


def test_dataset_without_carried_factors_has_no_fd(tmp_path):
    dataset = build_dataset("shapes", split="val", resolution=16, condition="edges", size=4)
    dataset.factor_specs = {name: spec for name, spec in dataset.factor_specs.items() if not spec.carried}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        evaluator = Evaluator.for_dataset(dataset, tmp_path, progress=False)
    assert any("no carried factors" in str(w.message) for w in caught)
    batch = _batch(n=4, condition="edges")
    metrics = evaluator.evaluate(batch["image"], batch["cond"], batch["factors"])
    assert set(metrics) == {"edge_f1", "mask_iou", "fd", "fd_real_real"} and np.isnan(metrics["fd"])
    assert evaluator.readback_heldout == {} and not list(tmp_path.iterdir())
