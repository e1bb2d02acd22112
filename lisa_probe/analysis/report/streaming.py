"""One streamed pass over a run's rows, a chunk of whole samples at a time (``store.reader.iter_whole_sample_chunks``),
in memory that does not grow with the number of rows: it fills accumulators of fixed size over every analysed row
(``RidgeSufficientStats`` of the spatial read-out and ``DecoderAlignmentSums``, per site, timestep bin, estimate and
control; both beside their in-memory versions in ``analysis.alignment``; cross-validation folds ``fold_ids(...,
"order")``, counted as the samples go by) and, for the rows of the run's summary sample only (``Run.rows``, at most
about ``--summary-rows``), per-row summaries about 100x smaller than the rows (pooled features, the coarse estimates,
the add-one-in projections), on which the in-memory analyses run."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import product

import numpy as np
from tqdm.auto import tqdm

from lisa_probe.analysis.alignment import (
    EPS,
    DecoderAlignmentSums,
    RidgeSufficientStats,
    add_spatial_rows,
    other_sample_pairing,
    resample_to,
)
from lisa_probe.analysis.config import MIN_CHUNK_SAMPLES, AnalyzeOptions
from lisa_probe.analysis.report.selection import Run
from lisa_probe.models.dual_branch import tokens_to_map
from lisa_probe.store.reader import ITER_BYTES, iter_whole_sample_chunks, pool_rows

ESTIMATES = ("model", "oracle")


CONTROLS = ("none", "shuffled_pairs")


READOUT_GRID = 4




@dataclass
class Streamed:
    """What one pass over a run's rows leaves: per-row summaries of the summary sample (n rows, in the order of
    ``Run.rows``) and accumulators over all analysed rows.

    Attributes:
        pooled: ``{site: (n, C)}`` mean-pooled features (tokens: mean over tokens).
        coarse: ``{estimate: (n, Cs·g·g)}`` score estimate area-averaged to the ``READOUT_GRID`` (g) grid.
        effect: (n,) ‖full − main‖, the side branch's whole contribution.
        add_one_in: ``{site: (n,)}`` ``(decompose/<site> − main) · u`` with u the unit direction of ``full − main``.
        spatial: ``{(site, t_bin, estimate, control): RidgeSufficientStats}`` of the spatial read-out.
        decoder: ``{(t_bin, estimate, control, fold): DecoderAlignmentSums}`` (empty without ``scores/decoded``).
    """

    pooled: dict[str, np.ndarray]
    coarse: dict[str, np.ndarray]
    effect: np.ndarray
    add_one_in: dict[str, np.ndarray]
    spatial: dict[tuple, RidgeSufficientStats]
    decoder: dict[tuple, DecoderAlignmentSums]


def feature_maps(block: np.ndarray) -> np.ndarray | None:
    """Feature rows as float32 maps (k, C, H, W); tokens (k, N, D) fold onto their √N × √N patch grid (row-major, as
    ``DualBranch.feature_to_map``) -> (k, D, √N, √N); None when N is not a square."""
    if block.ndim == 4:
        return block.astype(np.float32)
    side = math.isqrt(block.shape[1])
    if side * side != block.shape[1]:
        return None
    return tokens_to_map(block, side, side).astype(np.float32)


def shuffle_within(bins: np.ndarray, samples: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(k,) row permutation that pairs every row with a row of another sample in the same bin
    (``other_sample_pairing`` per bin): row i is paired with row ``perm[i]``.

    Args:
        bins: (k,) timestep bin of every row.
        samples: (k,) sample id of every row.

    Raises:
        ValueError: a sample holds more than half of a bin's rows (stream whole samples, several per chunk).
    """
    perm = np.arange(len(bins))
    for b in np.unique(bins):
        rows = np.flatnonzero(bins == b)
        try:
            perm[rows] = rows[other_sample_pairing(samples[rows], rng)]
        except ValueError as error:
            raise ValueError(f"t_bin {int(b)} of this chunk: {error}") from error
    return perm


def update_spatial(stats: dict, site: str, maps: np.ndarray, estimates: Mapping[str, np.ndarray],
                   partners: Mapping[str, np.ndarray], folds: np.ndarray, bins: np.ndarray, n_splits: int) -> None:
    """Add a chunk to the spatial read-out statistics of ``site``: features maps (k, C, H, W) against every estimate
    (k, Cs, Hs, Ws) resampled to (H, W) (control ``none``) and against the estimate of each row's partner
    (``shuffled_pairs``, ``partner_estimates``), per bin."""
    targets = {name: {"none": resample_to(values, maps.shape[-2:]),
                      "shuffled_pairs": resample_to(partners[name], maps.shape[-2:])}
               for name, values in estimates.items()}
    for b in np.unique(bins):
        rows = bins == b
        for (estimate, controls), control in product(targets.items(), CONTROLS):
            key = (site, int(b), estimate, control)
            if key not in stats:
                stats[key] = RidgeSufficientStats(maps.shape[1], controls[control].shape[1], n_splits)
            add_spatial_rows(stats[key], maps[rows], controls[control][rows], folds[rows])


def update_decoder(sums: dict, decoded: np.ndarray, estimates: Mapping[str, np.ndarray],
                   partners: Mapping[str, np.ndarray], folds: np.ndarray, bins: np.ndarray) -> None:
    """Add a chunk of decoder outputs (k, C, H, W) against every estimate (``none``) and its rows' partners'
    (``shuffled_pairs``), per bin and fold."""
    for (estimate, values), b, k in product(estimates.items(), np.unique(bins), np.unique(folds)):
        rows = (bins == b) & (folds == k)
        if not rows.any():
            continue
        for control, paired in (("none", values), ("shuffled_pairs", partners[estimate])):
            sums.setdefault((int(b), estimate, control, int(k)), DecoderAlignmentSums()).update(decoded[rows],
                                                                                               paired[rows])


def stream_names(run: Run) -> list[str]:
    """Datasets the streamed pass reads: the sites' features, the scores and the sites' ``decompose`` rows."""
    names = [f"features/{site}" for site in run.sites] + ["scores/target", "scores/main", "scores/full"]
    names += ["scores/decoded"] if run.lisa_site else []
    return names + [f"decompose/{site}" for site in run.sites if f"decompose/{site}" in run.store.layout]


def row_summaries(chunk: Mapping[str, np.ndarray], sites: Sequence[str],
                  estimates: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The per-row summaries of a chunk (k rows): ``pooled/<site>`` (k, C), ``coarse/<estimate>`` (k, Cs·g·g),
    ``effect`` (k,) and ``add_one_in/<site>`` (k,) for the chunk's ``decompose/<site>`` datasets."""
    k = len(estimates["model"])
    summaries = {f"pooled/{site}": pool_rows(chunk[f"features/{site}"], "mean") for site in sites}
    for name, values in estimates.items():
        coarse = resample_to(values, (READOUT_GRID, READOUT_GRID))
        summaries[f"coarse/{name}"] = coarse.reshape(k, -1).astype(np.float32)
    delta = estimates["model"].reshape(k, -1).astype(np.float64)
    summaries["effect"] = np.linalg.norm(delta, axis=1)
    direction = delta / np.maximum(summaries["effect"], EPS)[:, None]
    for name in chunk:
        if name.startswith("decompose/"):
            alone = (chunk[name] - chunk["scores/main"]).reshape(k, -1)
            summaries[f"add_one_in/{name.split('/', 1)[1]}"] = np.sum(alone * direction, axis=1)
    return summaries


@dataclass
class StreamChunk:
    """One chunk of whole samples (k rows): its ``positions`` among the analysed rows, store ``rows`` (k,), their
    timestep ``bins``, ``folds`` and
    ``samples`` (k,), ``in_summary`` (k,) bool, and ``data`` ``{dataset: (k, *row_shape)}``."""

    positions: slice
    rows: np.ndarray
    bins: np.ndarray
    folds: np.ndarray
    samples: np.ndarray
    in_summary: np.ndarray
    data: dict[str, np.ndarray]


def stream_chunks(run: Run, names: Sequence[str], chunk_rows: int, n_splits: int) -> Iterator[StreamChunk]:
    """The run's analysed rows as ``StreamChunk``s of whole samples (``iter_whole_sample_chunks``), reading only the
    chunk's meta; fold of a row: the rank of its sample in the stream mod ``n_splits`` (``fold_ids(..., "order")``)."""
    def read_samples(part: slice) -> np.ndarray:
        return run.store.read("meta/sample_id", run.store_rows(part))

    seen = 0  # samples in earlier chunks
    for part, samples in iter_whole_sample_chunks(read_samples, run.n_stream_rows, chunk_rows, MIN_CHUNK_SAMPLES):
        rows = np.arange(part.start, part.stop) if run.stream_rows is None else run.stream_rows[part]
        rank = seen + np.cumsum(np.r_[True, samples[1:] != samples[:-1]]) - 1
        seen = int(rank[-1]) + 1
        position = np.minimum(np.searchsorted(run.rows, rows), max(len(run.rows) - 1, 0))
        in_summary = run.rows[position] == rows if len(run.rows) else np.zeros(len(rows), dtype=bool)
        yield StreamChunk(part, rows, run.t_bins_of(run.store.read("meta/t", rows)), rank % n_splits, samples, in_summary,
                          {name: run.store.read(name, rows) for name in names})


SCORE_NAMES = ("scores/target", "scores/main", "scores/full")


def score_estimates(scores: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The two likelihood-score estimates of rows (k, ...) from their ``scores/*``: ``model`` = full − main,
    ``oracle`` = target − main."""
    main = scores["scores/main"]
    return {"model": scores["scores/full"] - main, "oracle": scores["scores/target"] - main}


def stream_pairing(run: Run, seed: int) -> np.ndarray:
    """(n,) the partner of every analysed row for the ``shuffled_pairs`` control, as a position among the analysed
    rows: a row of another sample in the same timestep bin (``shuffle_within`` over all of them, from ``seed``). It
    is drawn once from the rows' sample ids and timesteps, so the control does not depend on how the pass is
    chunked (``--chunk-rows``)."""
    rows = run.store_rows(slice(0, run.n_stream_rows))
    samples, bins = run.store.read("meta/sample_id", rows), run.t_bins_of(run.store.read("meta/t", rows))
    return shuffle_within(bins, samples, np.random.default_rng(seed))


def stream_run(run: Run, options: AnalyzeOptions) -> Streamed:
    """One pass over the run's rows, a chunk of whole samples at a time (see the module docstring for what it
    keeps)."""
    names = stream_names(run)
    row_bytes = sum(run.store.layout[name].row_nbytes for name in names)
    chunk_rows = options.chunk_rows or ITER_BYTES // row_bytes
    parts, spatial, decoder = defaultdict(list), {}, {}
    partner = stream_pairing(run, options.seed)
    with tqdm(total=run.n_stream_rows, unit="row", desc=f"{run.label}: stream") as progress:
        for chunk in stream_chunks(run, names, chunk_rows, options.n_splits):
            estimates = score_estimates(chunk.data)
            partners = score_estimates({name: run.store.read(name, run.store_rows(partner[chunk.positions]))
                                        for name in SCORE_NAMES})
            kept = chunk.in_summary
            if kept.any():
                summaries = row_summaries({name: values[kept] for name, values in chunk.data.items()}, run.sites,
                                          {name: values[kept] for name, values in estimates.items()})
                for key, values in summaries.items():
                    parts[key].append(values)
            for site in run.sites:
                maps = feature_maps(chunk.data[f"features/{site}"])
                if maps is not None:
                    update_spatial(spatial, site, maps, estimates, partners, chunk.folds, chunk.bins, options.n_splits)
            if run.lisa_site:
                update_decoder(decoder, chunk.data["scores/decoded"], estimates, partners, chunk.folds, chunk.bins)
            progress.update(len(chunk.rows))
    summaries = {key: np.concatenate(values) for key, values in parts.items()}

    def group(prefix: str) -> dict[str, np.ndarray]:
        return {key.split("/", 1)[1]: values for key, values in summaries.items() if key.startswith(prefix + "/")}

    return Streamed(group("pooled"), group("coarse"), summaries["effect"], group("add_one_in"), spatial, decoder)
