"""A resumable, sharded stream of batch indices: batch k of the run is the same whatever was interrupted.

Indices come from per-epoch permutations seeded by (seed, epoch); the global micro-batches cover consecutive
positions of that endless stream, ``B_global = b * world`` each, and process ``rank`` takes every ``world``-th index
of one. Resuming at stream position ``p`` (the samples already consumed) therefore skips exactly what was seen,
without replaying it, whatever the number of processes before and after.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from lisa_probe.seeds import derive_seed


class ResumableBatchSampler(Sampler[list[int]]):
    """Yields this process's index lists for the global micro-batches from stream ``position`` on (endless); with
    ``draws``, each index i of epoch e as the draw number ``e * N + i``.

    Args:
        dataset_size: number of samples N.
        batch_size: per-process micro-batch size b (the global micro-batch is b * world_size).
        seed: seed of the per-epoch permutations.
        rank, world_size: this process and the number of processes.
        position: the stream position to start at (the samples already consumed, by any number of processes).
    """

    def __init__(self, dataset_size: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 position: int = 0, draws: bool = False):
        if dataset_size < 1 or batch_size < 1:
            raise ValueError(f"need a non-empty dataset and batch size, got {dataset_size} and {batch_size}")
        self.dataset_size, self.batch_size, self.seed = dataset_size, batch_size, seed
        self.rank, self.world_size, self.position, self.draws = rank, world_size, position, draws

    def _permutation(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(derive_seed(self.seed, "data_order", epoch))
        return torch.randperm(self.dataset_size, generator=generator)

    def __iter__(self) -> Iterator[list[int]]:
        global_batch = self.batch_size * self.world_size
        epoch, offset = divmod(self.position, self.dataset_size)
        permutation = self._permutation(epoch)
        while True:
            indices = []
            while len(indices) < global_batch:
                take = min(global_batch - len(indices), self.dataset_size - offset)
                taken = permutation[offset:offset + take]
                indices += (taken + epoch * self.dataset_size if self.draws else taken).tolist()
                offset += take
                if offset == self.dataset_size:
                    epoch, offset = epoch + 1, 0
                    permutation = self._permutation(epoch)
            yield indices[self.rank::self.world_size]


def batch_loader(dataset: Dataset, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 position: int = 0, num_workers: int = 0) -> DataLoader:
    """An endless DataLoader over ``dataset`` following ``ResumableBatchSampler``; a dataset whose ``takes_draws`` is
    set (random crops) gets draw numbers ``epoch * N + index`` instead of indices."""
    sampler = ResumableBatchSampler(len(dataset), batch_size, seed, rank, world_size, position,
                                    draws=getattr(dataset, "takes_draws", False))
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, collate_fn=default_collate,
                      persistent_workers=num_workers > 0)
