"""VAE latents of a dataset's training images, encoded once and cached on disk (``--cache-latents``).

A latent main net (a pipeline with ``vae/``) otherwise encodes every batch's images through the frozen VAE at each
step. With the cache, ``LatentCache`` encodes the split once, in batches, before training and writes
``<cache_dir>/latents-<key>.safetensors``: the VAE posterior of each image in model space (``latents`` (N, C, h, w),
its mean, and ``std`` (N, C, h, w), both float32, scaled as ``DualBranch.encode_posterior`` returns them) and the
sample ids in the metadata. A step reads its rows from the memory-mapped file and draws ``mean + std · ε`` with the
run's generator, as an uncached run draws from the VAE (``DualBranch.encode_images``): both train on the same
distribution, and resume stays exact. The file is checked when it is opened (readable, every row finite): a
damaged one is encoded anew, and latents that the VAE itself makes non-finite are refused naming a sample. The key is a SHA-256 of the VAE's files, the dataset's identity (name, resolution, options,
a captioned table's fingerprint) and the cache format, so a changed model or dataset never reads a stale file.
Random flips change the pixels a latent encodes, so they cannot use the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch.utils.data import default_collate
from tqdm.auto import tqdm

from lisa_probe.evaluation.readback import dataset_identity
from lisa_probe.files import OutputLock
from lisa_probe.models.dual_branch import draw_latents
from lisa_probe.text.prompts import files_identity

CACHE_FORMAT = 2  # 2: the posterior's mean and std (1 held the mode alone)
CHECK_ROWS = 1024  # rows read at a time when a cache file is checked
ENCODE_BATCH = 16


class LatentCache:
    """The model-space latents of every item of ``dataset`` through ``model``'s VAE, computed once per (VAE,
    dataset) and read back by sample id (``lookup``)."""

    def __init__(self, model, dataset, vae_dir: Path, cache_dir: Path, dataset_kwargs: dict | None = None,
                 progress: bool = True, variant: str | None = None):
        if model.vae is None:
            raise ValueError("--cache-latents needs a latent main net (a pipeline with vae/); this one works in pixels")
        identity = {"format": CACHE_FORMAT, "vae": files_identity([Path(vae_dir)]),
                    "dataset": dataset_identity(dataset, dataset_kwargs), "size": len(dataset),
                    **({"variant": variant} if variant else {})}  # the VAE's weight files (--variant)
        key = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
        self.path = Path(cache_dir) / f"latents-{key[:24]}.safetensors"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with OutputLock(self.path, what="latent cache", wait=True):  # one process encodes, the others wait, read
            if self.path.exists() and not self._readable(len(dataset)):
                warnings.warn(f"latent cache {self.path} is damaged or holds non-finite values: encoding it anew",
                              stacklevel=2)
                self.path.unlink()
            if not self.path.exists():
                self._compute(model, dataset, progress)
        self._file = safe_open(str(self.path), framework="pt")
        self._mean, self._std = self._file.get_slice("latents"), self._file.get_slice("std")
        self.index = {sample_id: row for row, sample_id in enumerate(json.loads(self._file.metadata()["ids"]))}

    def _readable(self, rows: int) -> bool:
        """Whether the cache file opens, holds ``latents`` and ``std`` of ``rows`` rows and ids, and every value is
        finite (read ``CHECK_ROWS`` rows at a time)."""
        try:
            with safe_open(str(self.path), framework="pt") as handle:
                ids = json.loads((handle.metadata() or {}).get("ids", "null"))
                if set(handle.keys()) != {"latents", "std"} or not isinstance(ids, list) or len(ids) != rows:
                    return False
                for name in ("latents", "std"):
                    values = handle.get_slice(name)
                    if values.get_shape()[0] != rows:
                        return False
                    for start in range(0, rows, CHECK_ROWS):
                        if not torch.isfinite(values[start:start + CHECK_ROWS]).all():
                            return False
        except (SafetensorError, OSError, ValueError):
            return False
        return True

    def _compute(self, model, dataset, progress: bool) -> None:
        means, stds, ids = [], [], []
        for start in tqdm(range(0, len(dataset), ENCODE_BATCH), desc="encoding latents", disable=not progress):
            batch = default_collate([dataset[i] for i in range(start, min(start + ENCODE_BATCH, len(dataset)))])
            mean, std = (value.float().cpu() for value in model.encode_posterior(batch["image"]))
            bad = ~(torch.isfinite(mean) & torch.isfinite(std)).flatten(1).all(1)
            if bad.any():
                raise ValueError(f"the VAE encodes sample {batch['id'][int(bad.nonzero()[0])]!r} to non-finite "
                                 "latents; check the image and the VAE's weights")
            means.append(mean)
            stds.append(std)
            ids += list(batch["id"])
        staging = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            save_file({"latents": torch.cat(means).contiguous(), "std": torch.cat(stds).contiguous()}, staging,
                      metadata={"ids": json.dumps(ids)})
            staging.replace(self.path)  # atomic: a reader never sees half a file
        except (SafetensorError, OSError) as error:  # a full disk
            staging.unlink(missing_ok=True)
            raise OSError(f"writing the latent cache {self.path} failed: {error}") from error

    def lookup(self, sample_ids: Sequence[str], generator: torch.Generator | None = None) -> torch.Tensor:
        """The latents (B, C, h, w) of B samples by id: a draw from each posterior with ``generator``
        (``DualBranch.draw_latents``), its mean without (KeyError naming a sample that was not encoded)."""
        missing = [sample_id for sample_id in sample_ids if sample_id not in self.index]
        if missing:
            raise KeyError(f"sample {missing[0]!r} has no cached latent (not in the encoded split)")
        mean, std = (torch.cat([rows[self.index[i]:self.index[i] + 1] for i in sample_ids])
                     for rows in (self._mean, self._std))
        return mean if generator is None else draw_latents(mean, std, generator)


__all__ = ["LatentCache"]
