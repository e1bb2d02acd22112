"""The one registry of condition kinds: what each condition is, who makes it, and how its control is scored.

Data (which datasets draw a kind, how many channels, which extractor re-makes it from an image), evaluation (the
reference a generated image is compared with) and training (the headline control metric in ``summary.json``) all
read ``CONDITION_KINDS``. A condition of the user's own (a folder of conditioning images under any label) is not
registered: ``condition_kind`` describes it as a kind with no known reference, so runs on it train, evaluate image
quality and write their summary without a control metric.
"""

from __future__ import annotations

from dataclasses import dataclass

from lisa_probe.options import check_choice

# How fidelity reads a condition's reference (``evaluation.fidelity.REFERENCE_MASKS``):
#   "filled_outline": an outline whose filled inside is the object; "mask": a foreground mask;
#   "positive": non-zero pixels are the object; "image_edges": compare edges of the generated image;
#   "silhouette": the condition does not determine the object (shapes' pose: no kind), so the reference is the
#   silhouette of the sample's factors (the evaluator renders it; the prompt names the kind).
REFERENCES = ("filled_outline", "mask", "positive", "image_edges", "silhouette")
CONTROL_METRICS = ("edge_f1", "mask_iou")


@dataclass(frozen=True)
class ConditionKind:
    """One condition kind.

    Attributes:
        name: the ``--condition`` value.
        channels: channels of the condition map (C of (C, H, W)).
        datasets: built-in datasets that draw it (``()`` for extractor-only kinds).
        extractor: name in ``data.conditions.EXTRACTORS`` that makes it from an RGB image (None: drawn only).
        reference: how fidelity reads its reference (``REFERENCES``), None when there is none (no fidelity).
        control_metric: the headline control-fidelity metric (``CONTROL_METRICS``), None without a reference.
    """

    name: str
    channels: int = 1
    datasets: tuple[str, ...] = ()
    extractor: str | None = None
    reference: str | None = None
    control_metric: str | None = None

    def __post_init__(self) -> None:
        if (self.reference is None) != (self.control_metric is None):
            raise ValueError(f"condition kind {self.name!r}: a reference needs a control metric and vice versa")


CONDITION_KINDS: dict[str, ConditionKind] = {kind.name: kind for kind in (
    ConditionKind("edges", datasets=("shapes", "digits"), reference="filled_outline", control_metric="edge_f1"),
    ConditionKind("mask", datasets=("shapes",), reference="mask", control_metric="mask_iou"),
    ConditionKind("distance", datasets=("shapes",), reference="positive", control_metric="mask_iou"),
    ConditionKind("pose", datasets=("shapes",), reference="silhouette", control_metric="mask_iou"),
    ConditionKind("stroke", datasets=("digits",), reference="mask", control_metric="mask_iou"),
    ConditionKind("canny", extractor="canny", reference="image_edges", control_metric="edge_f1"),
    ConditionKind("otsu_mask", extractor="otsu_mask", reference="mask", control_metric="mask_iou"),
    ConditionKind("sobel", extractor="sobel"),  # a gradient magnitude: no binary reference to score against
)}


DEFAULT_CONDITION = {"shapes": "edges", "digits": "stroke", "folder": "canny"}  # folder: without conditioning images


def kinds_of_dataset(dataset: str) -> tuple[str, ...]:
    """The kinds a built-in dataset draws, its default (``DEFAULT_CONDITION``) first."""
    drawn = [name for name, kind in CONDITION_KINDS.items() if dataset in kind.datasets]
    return tuple(sorted(drawn, key=lambda name: name != DEFAULT_CONDITION.get(dataset)))


def extractor_kinds() -> tuple[str, ...]:
    """The kinds an extractor makes from any image (the folder dataset's choices without conditioning images)."""
    return tuple(name for name, kind in CONDITION_KINDS.items() if kind.extractor is not None)


def check_dataset_condition(dataset: str, condition: str) -> None:
    """ValueError naming the kinds a built-in dataset draws when it does not draw ``condition``."""
    check_choice(f"{dataset} condition", condition, kinds_of_dataset(dataset))


def condition_kind(name: str, channels: int = 1) -> ConditionKind:
    """The registered kind ``name``, or, for a label of the user's own conditions, an unregistered kind of
    ``channels`` channels with no reference and no control metric."""
    return CONDITION_KINDS.get(name) or ConditionKind(name, channels=channels)
