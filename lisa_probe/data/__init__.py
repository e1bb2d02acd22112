"""Offline datasets: procedural shapes, scikit-learn digits, a folder of user images and a captioned ``datasets``
table (``captioned``: image, conditioning image and caption columns, as diffusers' ControlNet trainers read).

Every dataset is a ``torch.utils.data.Dataset`` whose samples are dicts::

    {"image": FloatTensor (3, H, W) in [-1, 1],
     "cond": FloatTensor (C, H, W) in [0, 1],
     "factors": {name: int | float},
     "id": str}            # captioned datasets (and shapes with label prompts) add "text": str, the caption

and which exposes ``factor_specs`` (name -> :class:`FactorSpec`), ``cond_channels`` (C) and ``condition``
(the condition kind's name). ``torch.utils.data.default_collate`` batches them. Sub-modules are imported
lazily by :func:`build_dataset`, so importing this package stays cheap.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from lisa_probe.options import check_choice

if TYPE_CHECKING:
    import torch

DATASET_NAMES = ("shapes", "digits", "folder", "captioned")
SPLITS = ("train", "val", "test")
FACTOR_KINDS = ("categorical", "continuous")

_DATASET_CLASSES = {
    "shapes": ("lisa_probe.data.shapes", "ShapesDataset"),
    "digits": ("lisa_probe.data.digits", "DigitsDataset"),
    "folder": ("lisa_probe.data.folder", "FolderDataset"),
    "captioned": ("lisa_probe.data.captioned", "CaptionedDataset"),
}


def circular_distance(a, b):
    """Elementwise distance in [0, 0.5] between values of period 1 (0.95 and 0.05 are 0.1 apart); numpy arrays and
    torch tensors alike."""
    return 0.5 - abs((a - b) % 1.0 - 0.5)


@dataclass(frozen=True)
class FactorSpec:
    """A generating factor of a dataset.

    Attributes:
        name: key of the factor in ``sample["factors"]``.
        kind: ``"categorical"`` (value is an int class index) or ``"continuous"`` (value is a float).
        carried: whether the sample's conditioning determines the factor (``True``) or not (``False``): its
            condition, and its prompt where the prompt names the factor (shapes' label prompts).
        n_classes: number of classes for a categorical factor, ``None`` for a continuous one.
        description: what the value means (range, units, class names).
        period: for a circular continuous factor (rotation, hue), the value at which it wraps back to 0; None for
            a linear one. Values ``v`` and ``v + period`` describe the same sample.
        levels: a categorical factor's class names, class i named ``levels[i]`` (stores keep them for legends and
            tables); None: the classes are named by their index.
    """

    name: str
    kind: str
    carried: bool
    n_classes: int | None = None
    description: str = ""
    period: float | None = None
    levels: tuple[str, ...] | None = None

    def __post_init__(self):
        check_choice("factor kind", self.kind, FACTOR_KINDS)
        if (self.kind == "categorical") != (self.n_classes is not None):
            raise ValueError(f"factor {self.name!r}: n_classes must be set exactly when kind is 'categorical'")
        if self.levels is not None and len(self.levels) != self.n_classes:
            raise ValueError(f"factor {self.name!r}: {len(self.levels)} level names for {self.n_classes} classes")


class DataError(ValueError):
    """An item that cannot be read (a corrupt or missing image, one too small), naming its file, row and column.
    Raised while training runs, it stops the run with a checkpoint to resume from once the data are mended
    (``engine.fit``)."""


def check_items(dataset, count: int, what: str) -> None:
    """Read the first ``count`` items of ``dataset`` (a run's first batch), so that data that cannot be read stop a
    command before it creates anything; ``DataError`` as ``__getitem__`` raises it, prefixed with ``what``."""
    for index in range(min(count, len(dataset))):
        try:
            dataset[index]
        except DataError as error:
            raise DataError(f"{what}: {error}") from error


def check_resolution(resolution: int) -> int:
    """Return ``resolution`` as an int, raising ``ValueError`` unless it is a positive integer."""
    if int(resolution) != resolution or resolution < 1:
        raise ValueError(f"resolution must be a positive integer, got {resolution!r}")
    return int(resolution)


def make_sample(image: np.ndarray, cond: np.ndarray, factors: dict, sample_id: str) -> dict:
    """Turn numpy arrays into the sample dict of the data contract.

    Args:
        image: (H, W, 3) float array in [0, 1].
        cond: (H, W) or (H, W, C) float array in [0, 1].
        factors: factor name -> python int / float.
        sample_id: stable identifier, e.g. ``"shapes/train/000123"``.

    Returns:
        ``{"image": (3, H, W) float32 tensor in [-1, 1], "cond": (C, H, W) float32 tensor in [0, 1],
        "factors": factors, "id": sample_id}``.
    """
    if cond.ndim == 2:
        cond = cond[:, :, None]
    image_chw = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32) * 2.0 - 1.0
    cond_chw = np.ascontiguousarray(cond.transpose(2, 0, 1), dtype=np.float32)
    import torch  # here, not at the top: the data options import this package, and --help must not load torch

    return {"image": torch.from_numpy(image_chw), "cond": torch.from_numpy(cond_chw), "factors": factors,
            "id": sample_id}


def check_index(index: int, length: int) -> int:
    """Return ``index`` normalised to [0, length), supporting negative indices; ``IndexError`` outside."""
    if not -length <= index < length:
        raise IndexError(f"index {index} out of range for a dataset of {length} samples")
    return int(index) % length


def build_dataset(name: str, split: str = "train", resolution: int = 32, condition: str | None = None, seed: int = 0,
                  size: int | None = None, **kwargs) -> torch.utils.data.Dataset:
    """Build one of the offline datasets.

    Args:
        name: one of :data:`DATASET_NAMES`.
        split: ``"train"``, ``"val"`` or ``"test"``.
        resolution: side H = W of images and conditions, in pixels.
        condition: condition kind (dataset specific, see each dataset); ``None`` picks the dataset's default.
        seed: seed of the procedural draws (deterministic per (seed, split, index)).
        size: number of samples; ``None`` keeps the dataset's default for the split.
        **kwargs: dataset-specific options (e.g. ``root=`` for ``"folder"``).

    Returns:
        a dataset whose items follow the data contract (see the module docstring).
    """
    check_choice("dataset name", name, DATASET_NAMES)
    check_choice("split", split, SPLITS)
    if name in ("folder", "captioned") and kwargs.get("root") is None:
        raise ValueError(f"the {name} dataset needs its location: --data-root PATH (root= in Python)")
    module_name, class_name = _DATASET_CLASSES[name]
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(split=split, resolution=resolution, condition=condition, seed=seed, size=size, **kwargs)


__all__ = ["DATASET_NAMES", "SPLITS", "DataError", "FactorSpec", "build_dataset", "check_choice", "check_index", "check_items",
           "check_resolution", "make_sample"]
