"""The registry of condition kinds agrees with the datasets, the extractors and the fidelity scores."""

import numpy as np
import pytest
import torch

from lisa_probe.data import build_dataset
from lisa_probe.data.condition_kinds import (
    CONDITION_KINDS,
    ConditionKind,
    check_dataset_condition,
    condition_kind,
    extractor_kinds,
    kinds_of_dataset,
)
from lisa_probe.data.conditions import EXTRACTORS
from lisa_probe.evaluation.fidelity import REFERENCE_MASKS, control_fidelity


@pytest.mark.parametrize("dataset", ["shapes", "digits"])
def test_every_kind_a_dataset_draws_is_drawn_with_its_channels(dataset):
    for name in kinds_of_dataset(dataset):
        sample = build_dataset(dataset, split="val", resolution=16, condition=name, size=2)[0]
        assert sample["cond"].shape == (CONDITION_KINDS[name].channels, 16, 16), name
    assert build_dataset(dataset, split="val", resolution=16, size=1).condition == kinds_of_dataset(dataset)[0]
    with pytest.raises(ValueError, match=f"{dataset} condition .*'sobel'"):
        check_dataset_condition(dataset, "sobel")


def test_extractors_and_references_exist_for_every_kind_that_names_them():
    assert {CONDITION_KINDS[name].extractor for name in extractor_kinds()} <= set(EXTRACTORS)
    references = {kind.reference for kind in CONDITION_KINDS.values()} - {None}
    assert references <= set(REFERENCE_MASKS) | {"image_edges", "silhouette"}


@pytest.mark.parametrize("name", [name for name, kind in CONDITION_KINDS.items() if kind.reference is not None])
def test_scored_kinds_give_perfect_fidelity_to_their_own_reference(name):
    """An image that is exactly the condition's object (a white square on black) scores 1 on its kind's metric."""
    image = -torch.ones(1, 3, 32, 32)
    image[..., 8:24, 10:22] = 1.0
    mask = (image[0, 0] > 0).numpy()
    outline = mask & ~np.pad(mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:],
                             1)
    reference = CONDITION_KINDS[name].reference
    cond = {"mask": mask, "filled_outline": outline, "positive": mask, "silhouette": np.zeros_like(mask)}.get(reference)
    if cond is None:  # scored on the image's own edges: the extractor's output is its reference
        cond = EXTRACTORS["canny"](((image[0].permute(1, 2, 0) + 1) / 2).numpy()) > 0.5
    silhouettes = mask[None] if reference == "silhouette" else None  # the object itself, not the (blank) condition
    scores = control_fidelity(image, torch.from_numpy(cond[None, None].astype(np.float32)), name,
                              silhouettes=silhouettes)
    assert scores[CONDITION_KINDS[name].control_metric] == pytest.approx(1.0)


def test_unregistered_labels_are_kinds_without_a_metric():
    assert condition_kind("depth", channels=3) == ConditionKind("depth", channels=3)
    assert condition_kind("depth").control_metric is None and condition_kind("sobel").control_metric is None
    with pytest.raises(ValueError, match="no reference to score control against"):
        control_fidelity(torch.zeros(1, 3, 8, 8), torch.zeros(1, 1, 8, 8), "sobel")
    with pytest.raises(ValueError, match="needs a control metric"):
        ConditionKind("half", reference="mask")
