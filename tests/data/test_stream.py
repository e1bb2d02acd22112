"""Resumable sharded batch order."""

import itertools

import pytest

from lisa_probe.data.stream import ResumableBatchSampler


def take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_resume_skips_exactly_the_batches_seen():
    full = take(ResumableBatchSampler(10, 3, seed=1), 8)
    assert take(ResumableBatchSampler(10, 3, seed=1, position=15), 3) == full[5:]


def test_epochs_are_permutations():
    flat = [i for batch in take(ResumableBatchSampler(10, 5, seed=0), 4) for i in batch]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    assert flat[:10] != flat[10:]


def test_ranks_partition_the_global_batch():
    single = take(ResumableBatchSampler(12, 4, seed=2, world_size=1), 3)
    ranks = [take(ResumableBatchSampler(12, 2, seed=2, rank=r, world_size=2), 3) for r in range(2)]
    for k in range(3):
        assert sorted(ranks[0][k] + ranks[1][k]) == sorted(single[k])


def test_draw_numbers_are_the_indices_plus_epoch_times_n():
    """With ``draws`` (random crops), index i of epoch e comes as e * N + i: the same order, told apart by epoch."""
    plain = [i for batch in take(ResumableBatchSampler(10, 5, seed=3), 6) for i in batch]
    drawn = [d for batch in take(ResumableBatchSampler(10, 5, seed=3, draws=True), 6) for d in batch]
    assert [d % 10 for d in drawn] == plain
    assert [d // 10 for d in drawn] == [0] * 10 + [1] * 10 + [2] * 10
    assert take(ResumableBatchSampler(10, 5, seed=3, position=15, draws=True), 3) == \
        take(ResumableBatchSampler(10, 5, seed=3, draws=True), 6)[3:]


def stream(sampler_args: list[tuple[int, int]], n_batches: int, position: int = 0, size: int = 10,
           seed: int = 4) -> list[int]:
    """The indices a run of ``world`` processes of batch ``b`` (``sampler_args``: one (b, world)) sees in
    ``n_batches`` global micro-batches from ``position``, rank by rank within each micro-batch (the global order)."""
    (b, world), = sampler_args
    ranks = [take(ResumableBatchSampler(size, b, seed, rank=r, world_size=world, position=position), n_batches)
             for r in range(world)]
    order = []
    for k in range(n_batches):
        global_batch = [None] * (b * world)
        for r in range(world):
            global_batch[r::world] = ranks[r][k]
        order += global_batch
    return order


def test_a_resume_under_another_number_of_processes_continues_the_stream_exactly():
    """1 process of batch 3 for 3 micro-batches (9 samples), then 2 processes of batch 3 (6 per micro-batch) from
    sample 9, then back to 1 process from sample 21: together the first 24 positions of the one stream, none
    skipped or repeated, across the epoch boundaries of a 10-sample dataset."""
    whole = stream([(3, 1)], 8)
    one = stream([(3, 1)], 3)
    two = stream([(3, 2)], 2, position=9)
    back = stream([(3, 1)], 1, position=21)
    assert one + two + back == whole


@pytest.mark.parametrize("size, batch, before, after, seed", [(10, 3, 1, 2, 4), (7, 2, 3, 1, 0), (16, 4, 2, 3, 5),
                                                               (5, 4, 2, 2, 9), (13, 1, 4, 2, 2)])
def test_any_change_of_processes_continues_the_one_stream(size, batch, before, after, seed):
    """Across dataset sizes, batch sizes, seeds and numbers of processes (more, fewer, the same), k micro-batches
    under one and then m under the other are the stream's first positions in order."""
    k, m = 3, 4
    first = stream([(batch, before)], k, size=size, seed=seed)
    then = stream([(batch, after)], m, position=k * batch * before, size=size, seed=seed)
    whole = stream([(batch, 1)], (k * before + m * after), size=size, seed=seed)
    assert first + then == whole
