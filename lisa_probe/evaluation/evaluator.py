"""One object that scores generated images against a dataset: control fidelity, factor read-back and FD."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from lisa_probe.data.condition_kinds import condition_kind
from lisa_probe.evaluation.fidelity import check_batch, control_fidelity
from lisa_probe.evaluation.frechet import disjoint_subsets, fd_real_real, frechet_distance
from lisa_probe.evaluation.readback import (
    CachedReadback,
    ReadbackConfig,
    build_split,
    cache_lock,
    carried_heads,
    embed,
    load_or_train_readback,
    load_samples,
    readback_scores,
)
from lisa_probe.evaluation.shapefit import Silhouette, shape_fit_per_sample

IMAGE_RANGE_SLACK = 1.5  # images with values beyond ±this are rejected as not being in [-1, 1]


def reference_features(readback: CachedReadback, n_reference: int, progress: bool = True) -> np.ndarray:
    """Read-back features (n, D) float64 of the first ``n_reference`` val-split images (fewer if the split is
    smaller), cached beside the net as ``reference-val-<n_reference>.safetensors``."""
    path = readback.path / f"reference-val-{n_reference}.safetensors"
    with cache_lock(readback.path):
        if path.exists() and not readback.trained:
            return load_file(path)["features"].double().numpy()
        images, _ = load_samples(build_split(readback.identity, "val", n_reference), "reference samples", progress)
        features = embed(readback.net, images)
        staging = path.with_name(f".{path.name}.tmp")
        save_file({"features": torch.from_numpy(features).float()}, staging)
        staging.replace(path)
    return features


class Evaluator:
    """Scores batches of generated images for one dataset (identity, condition, resolution).

    Build with :meth:`for_dataset`. Metrics (see :meth:`evaluate`): control fidelity (``edge_f1``, ``mask_iou``),
    ``readback/<factor>`` (accuracy for categorical, MAE for continuous carried factors, measured around the circle
    for circular ones such as rotation: at most 0.5, 0.25 for a uniform guess) and the Fréchet distance
    in read-back feature space, ``fd``, beside ``fd_real_real``, the same statistic between two real sets. For
    unconditional samples of a dataset that draws silhouettes, :meth:`shape_fit` says whether each image shows a
    clean, nameable shape.
    """

    def __init__(self, condition: str, resolution: int, cond_channels: int, readback: CachedReadback | None,
                 reference: np.ndarray | None, tol: float = 1.0, seed: int = 0, silhouette: Silhouette | None = None):
        self.condition, self.resolution, self.cond_channels = condition, resolution, cond_channels
        self.readback, self.reference, self.tol, self.seed = readback, reference, tol, seed
        self.silhouette = silhouette
        self._real_shape_fit: dict[int, dict[str, float]] = {}

    @classmethod
    def for_dataset(cls, dataset, cache_dir: str | Path, device: str | torch.device = "cpu", n_reference: int = 1000,
                    config: ReadbackConfig | None = None, tol: float = 1.0, progress: bool = True,
                    dataset_kwargs: dict | None = None) -> Evaluator:
        """Evaluator for ``dataset``: trains (or loads from ``cache_dir``) its read-back net and the features of
        ``n_reference`` real val-split images. Without carried factors there is no read-back net, and ``fd`` /
        ``fd_real_real`` are NaN. ``config`` defaults to ``ReadbackConfig()``; ``dataset_kwargs`` are the extra
        ``build_dataset`` options needed to rebuild the dataset's splits (see ``readback.dataset_identity``)."""
        readback = reference = None
        if carried_heads(dataset.factor_specs):
            readback = load_or_train_readback(dataset, cache_dir, config, device, progress, dataset_kwargs)
            reference = reference_features(readback, n_reference, progress)
        else:
            warnings.warn(f"dataset {dataset.name!r} has no carried factors: no read-back scores and no FD",
                          stacklevel=2)
        return cls(dataset.condition, int(dataset.resolution), int(dataset.cond_channels), readback, reference, tol,
                   silhouette=getattr(dataset, "silhouette", None))

    @property
    def readback_heldout(self) -> dict[str, float]:
        """Held-out scores of the read-back net on real val images (``<factor>/accuracy`` …; empty without one)."""
        return {} if self.readback is None else dict(self.readback.heldout)

    @property
    def control_metric(self) -> str | None:
        """Name of the headline control-fidelity metric for this dataset's condition kind (None if it has none)."""
        return condition_kind(self.condition).control_metric

    def check_inputs(self, images: torch.Tensor, cond: torch.Tensor) -> None:
        """Raise ValueError unless images is (N, 3, R, R) in [-1, 1] and cond (N, C, R, R) for this dataset."""
        check_batch(images, cond)
        expected = (3, self.resolution, self.resolution)
        if tuple(images.shape[1:]) != expected:
            raise ValueError(f"images must have shape (N, {', '.join(map(str, expected))}) for this dataset, "
                             f"got {tuple(images.shape)}")
        if cond.shape[1] != self.cond_channels:
            raise ValueError(f"cond must have shape (N, {self.cond_channels}, {self.resolution}, {self.resolution}) "
                             f"for this dataset, got {tuple(cond.shape)}")
        if float(abs(images).max()) > IMAGE_RANGE_SLACK:
            raise ValueError(f"images must be in [-1, 1], got values up to {float(abs(images).max()):.3g}")

    def control_fidelity(self, images: torch.Tensor, cond: torch.Tensor,
                         factors: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
        """Mean ``edge_f1`` and ``mask_iou`` of images (N, 3, H, W) in [-1, 1] vs conditions (N, C, H, W); both NaN
        for condition kinds the fidelity module does not know (e.g. a folder's custom conditions). A kind scored
        against the samples' silhouettes (shapes' ``pose``) needs their ``factors`` ({name: (N,)})."""
        self.check_inputs(images, cond)
        reference = condition_kind(self.condition).reference
        if reference is None:
            return {"edge_f1": float("nan"), "mask_iou": float("nan")}
        silhouettes = None
        if reference == "silhouette":
            if factors is None or self.silhouette is None:
                raise ValueError(f"condition {self.condition!r} is scored against the samples' silhouettes: pass "
                                 "their factors, for a dataset that draws silhouettes")
            silhouettes = np.stack([self.silhouette({name: values[i].item() for name, values in factors.items()},
                                                    self.resolution) for i in range(len(images))])
        return control_fidelity(images, cond, self.condition, self.tol, silhouettes)

    def frechet(self, images: torch.Tensor) -> dict[str, float]:
        """``fd`` of images (N, 3, H, W) vs N real val images, and ``fd_real_real`` of N other real val images vs
        the same N (so both share sample size and reference set); NaN without a read-back net.

        N is at most half the reference set (two disjoint real subsets); a larger batch uses its first N images,
        with a warning (the digits val split, for one, holds 179 images: N <= 89).
        """
        if self.readback is None:
            return {"fd": float("nan"), "fd_real_real": float("nan")}
        n = len(images)
        if n < 2:
            raise ValueError(f"FD needs at least 2 images, got a batch of N = {n}")
        if 2 * n > len(self.reference):
            n = len(self.reference) // 2
            warnings.warn(f"FD on the first {n} of {len(images)} images: the real reference set holds "
                          f"{len(self.reference)} images, and FD and its real-vs-real value need two disjoint "
                          f"subsets of N", stacklevel=2)
            images = images[:n]
        first, _ = disjoint_subsets(len(self.reference), n, self.seed)
        return {"fd": frechet_distance(embed(self.readback.net, torch.as_tensor(images)), self.reference[first]),
                "fd_real_real": fd_real_real(self.reference, n, self.seed)}

    def shape_fit(self, images: torch.Tensor) -> dict[str, float]:
        """Mean shape fit (module ``shapefit``) of unconditional samples (N, 3, H, W) in [-1, 1], the read-back
        net naming each image's kind, position and size: ``shape_fit_iou`` and ``shape_fit_f1``, beside
        ``shape_fit_iou_real`` and ``shape_fit_f1_real`` of the first N real val images scored the same way.
        Empty for a dataset without silhouettes or without a read-back net.
        """
        if self.silhouette is None or self.readback is None:
            return {}
        n = len(images)
        if n not in self._real_shape_fit:
            real, _ = load_samples(build_split(self.readback.identity, "val", n), "shape-fit reference", False)
            self._real_shape_fit[n] = {f"{name}_real": value for name, value in self._mean_shape_fit(real).items()}
        return {**self._mean_shape_fit(torch.as_tensor(images)), **self._real_shape_fit[n]}

    def _mean_shape_fit(self, images: torch.Tensor) -> dict[str, float]:
        per_sample = shape_fit_per_sample(images, self.readback.net.predict(images), self.silhouette, tol=self.tol)
        return {name: float(values.mean()) for name, values in per_sample.items()}

    def factor_readback(self, images: torch.Tensor, factors: dict[str, torch.Tensor]) -> dict[str, float]:
        """``readback/<factor>`` of images (N, 3, H, W) in [-1, 1] that should show ``factors`` ({name: (N,)}):
        accuracy or MAE per carried factor (``readback.readback_scores``); empty without a read-back net."""
        if self.readback is None:
            return {}
        scores = readback_scores(self.readback.net, torch.as_tensor(images), factors)
        return {f"readback/{name}": value for name, value in scores.items()}

    def evaluate(self, images: torch.Tensor, cond: torch.Tensor, factors: dict[str, torch.Tensor]) -> dict[str, float]:
        """All metrics of a generated batch as a flat dict of floats.

        images: (N, 3, H, W) in [-1, 1]; cond: (N, C, H, W) in [0, 1], the conditions they were generated from;
        factors: {name: (N,)} the factors of those conditions (at least the carried ones).
        Returns ``edge_f1``, ``mask_iou``, ``readback/<factor>`` per carried factor, ``fd``, ``fd_real_real``.
        """
        images, cond = torch.as_tensor(images), torch.as_tensor(cond)
        metrics = self.control_fidelity(images, cond, factors)
        metrics.update(self.factor_readback(images, factors))
        metrics.update(self.frechet(images))
        return metrics
