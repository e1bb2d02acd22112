"""VAE latents of a dataset's training images, encoded once and cached on disk (``--cache-latents``).

A latent main net (a pipeline with ``vae/``) otherwise encodes every batch's images through the frozen VAE at each
step. With the cache, ``LatentCache`` encodes the split once, in batches, before training and writes
``<cache_dir>/latents-<key>.safetensors`` (``latents`` (N, C, h, w) float32 in model space, i.e. scaled and shifted
as ``DualBranch.encode_images`` returns them, and the sample ids in the metadata); a step then reads its rows from
the memory-mapped file. The key is a SHA-256 of the VAE's files, the dataset's identity (name, resolution, options,
a captioned table's fingerprint) and the cache format, so a changed model or dataset never reads a stale file.
Random flips change the pixels a latent encodes, so they cannot use the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from filelock import FileLock
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import default_collate
from tqdm.auto import tqdm

from lisa_probe.evaluation.readback import dataset_identity
from lisa_probe.text import files_identity

CACHE_FORMAT = 1
ENCODE_BATCH = 16


class LatentCache:
    """The model-space latents of every item of ``dataset`` through ``model``'s VAE, computed once per (VAE,
    dataset) and read back by sample id (``lookup``)."""

    def __init__(self, model, dataset, vae_dir: Path, cache_dir: Path, dataset_kwargs: dict | None = None,
                 progress: bool = True):
        if model.vae is None:
            raise ValueError("--cache-latents needs a latent main net (a pipeline with vae/); this one works in pixels")
        identity = {"format": CACHE_FORMAT, "vae": files_identity([Path(vae_dir)]),
                    "dataset": dataset_identity(dataset, dataset_kwargs), "size": len(dataset)}
        key = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
        self.path = Path(cache_dir) / f"latents-{key[:24]}.safetensors"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.path) + ".lock"):  # processes of one run: one encodes, the others wait and read
            if not self.path.exists():
                self._compute(model, dataset, progress)
        self._file = safe_open(str(self.path), framework="pt")
        self._rows = self._file.get_slice("latents")
        self.index = {sample_id: row for row, sample_id in enumerate(json.loads(self._file.metadata()["ids"]))}

    def _compute(self, model, dataset, progress: bool) -> None:
        chunks, ids = [], []
        for start in tqdm(range(0, len(dataset), ENCODE_BATCH), desc="encoding latents", disable=not progress):
            batch = default_collate([dataset[i] for i in range(start, min(start + ENCODE_BATCH, len(dataset)))])
            with torch.no_grad():
                chunks.append(model.encode_images(batch["image"]).float().cpu())
            ids += list(batch["id"])
        staging = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        save_file({"latents": torch.cat(chunks).contiguous()}, staging, metadata={"ids": json.dumps(ids)})
        staging.replace(self.path)  # atomic: a reader never sees half a file

    def lookup(self, sample_ids: Sequence[str]) -> torch.Tensor:
        """The latents (B, C, h, w) of B samples by id (KeyError naming one that was not encoded)."""
        missing = [sample_id for sample_id in sample_ids if sample_id not in self.index]
        if missing:
            raise KeyError(f"sample {missing[0]!r} has no cached latent (not in the encoded split)")
        return torch.cat([self._rows[self.index[i]:self.index[i] + 1] for i in sample_ids])


__all__ = ["LatentCache"]
