"""Which rows of which stores an analysis reads: a ``Run`` per store (its selected rows, their meta, timestep bins
and grouped cross-validation folds), run labels, and where a store's side net and run files are."""

from __future__ import annotations

import json
import os
import re
import zlib
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from lisa_probe.analysis.alignment import (
    fold_ids,
)
from lisa_probe.analysis.config import RANDOM_LABEL, AnalyzeOptions, comma_list
from lisa_probe.rundir import resolved_path
from lisa_probe.store import FeatureStore
from lisa_probe.store.reader import SCAN_ROWS
from lisa_probe.training.config import LoopConfig

RUN_ONLY_KEYS = frozenset({"seed", "name", "out_dir", *LoopConfig.resumable_changes})  # not what makes an arm


@dataclass
class Run:
    """One store under analysis. The streamed pass reads every analysed row (``stream_rows``: the store's rows, or a
    subset of whole samples); the analyses that need rows in memory read the summary sample: ``rows`` (n,
    increasing store rows, at most about ``--summary-rows``) and their ``meta`` (n rows: sample_id, t, noise_level,
    draw, one column per factor, ``t_bin`` and cross-validation ``fold``)."""

    label: str
    store: FeatureStore
    sites: list[str]
    rows: np.ndarray
    meta: pd.DataFrame
    bin_t: np.ndarray  # (n_bins,) mean timestep of each bin
    t_grid: np.ndarray  # (n_t,) the analysed rows' distinct timesteps, increasing
    t_grid_bin: np.ndarray  # (n_t,) the bin of each of them
    factor_names: list[str] = field(default_factory=list)  # the store's factors under analysis (``--factors``)
    stream_rows: np.ndarray | None = None  # (N,) the analysed store rows (None: all of them)
    n_samples: int = 0  # samples among the analysed rows
    notes: list[str] = field(default_factory=list)
    causal: dict = field(default_factory=dict)  # --causal: {"tables": {name: table}, "lines": [...], "figures": [...]}

    @property
    def n_stream_rows(self) -> int:
        return self.store.n_rows if self.stream_rows is None else len(self.stream_rows)

    def store_rows(self, part: slice) -> slice | np.ndarray:
        """The store rows at positions ``part`` of the analysed rows."""
        return part if self.stream_rows is None else self.stream_rows[part]

    def t_bins_of(self, t: np.ndarray) -> np.ndarray:
        """(k,) bin of each timestep in ``t`` (k,) (values of ``t_grid``)."""
        return self.t_grid_bin[np.searchsorted(self.t_grid, t)]

    @property
    def lisa_site(self) -> str | None:
        """The decoder's site when the store has ``scores/decoded``, else None."""
        return (self.store.attrs.get("lisa_site") or None) if "scores/decoded" in self.store.layout else None

    @property
    def groups(self) -> np.ndarray:
        """(n,) sample ids of the summary sample."""
        return self.meta["sample_id"].to_numpy()

    def bins(self) -> Iterator[tuple[int, float, np.ndarray]]:
        """``(t_bin, mean timestep, (n,) summary-row mask)`` per timestep bin."""
        for b, t in enumerate(self.bin_t):
            yield b, float(t), (self.meta["t_bin"] == b).to_numpy()

    def factors(self, mask: np.ndarray | slice = slice(None)) -> dict[str, tuple]:
        """``{name: (y (n,), kind, carried)}`` over the summary rows in ``mask``, leaving out factors constant there;
        a factor with a ``period`` is ``"circular"``, its values in turns (``y / period mod 1``)."""
        factors = {}
        for name in self.factor_names:
            spec = self.store.factors[name]
            y = self.meta[name].to_numpy()[mask]
            if len(np.unique(y)) > 1:
                if spec["period"]:
                    factors[name] = ((y / spec["period"]) % 1.0, "circular", spec["carried"])
                else:
                    factors[name] = (y, spec["kind"], spec["carried"])
        return factors


def grid_bins(grid: np.ndarray, n_bins: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Split the increasing distinct timesteps ``grid`` (n_t,) into ``n_bins`` contiguous groups (None: one per
    timestep) -> ((n_t,) bin of each, (n_bins,) mean timestep of each bin)."""
    groups = np.array_split(np.arange(len(grid)), min(n_bins or len(grid), len(grid)))
    bin_of = np.concatenate([np.full(len(g), b) for b, g in enumerate(groups)])
    return bin_of, np.array([grid[g].mean() for g in groups])


def select_rows(sample_ids: np.ndarray, max_rows: int | None, min_samples: int, seed: int) -> np.ndarray:
    """Increasing row indices of a random subset of whole samples with at most ``max_rows`` rows (None: all rows)."""
    if max_rows is None or max_rows >= len(sample_ids):
        return np.arange(len(sample_ids))
    unique = pd.unique(sample_ids)
    keep = int(max_rows // (len(sample_ids) / len(unique)))
    if keep < min_samples:
        raise ValueError(f"--max-rows {max_rows} keeps {keep} samples; cross-validation needs at least {min_samples}")
    chosen = np.random.default_rng(seed).choice(unique, keep, replace=False)
    return np.flatnonzero(np.isin(sample_ids, chosen))


def in_sample(sample_ids: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """(k,) bool: whether each row's sample belongs to the seeded summary sample, a share ``fraction`` of all
    samples decided from the id alone (CRC32 of ``"<seed>:<id>"``), so a stream decides it row by row."""
    if fraction >= 1:
        return np.ones(len(sample_ids), dtype=bool)
    unique, inverse = np.unique(sample_ids, return_inverse=True)
    chosen = np.array([zlib.crc32(f"{seed}:{s}".encode()) < fraction * 2**32 for s in unique], dtype=bool)
    return chosen[inverse.reshape(-1)]


@dataclass
class RowScan:
    """What one pass over an analysed store's sample ids and timesteps finds."""

    t_grid: np.ndarray  # (n_t,) distinct timesteps, increasing
    n_samples: int
    summary_positions: np.ndarray  # (n,) positions (into the analysed rows) of the summary sample's rows


def scan_rows(store: FeatureStore, stream_rows: np.ndarray | None, summary_rows: int, seed: int) -> RowScan:
    """Read the analysed rows' sample ids and timesteps a block at a time (memory independent of their number):
    their timestep grid, how many samples they hold and which rows form the summary sample (whole samples, about
    ``summary_rows`` rows, drawn with ``seed``)."""
    n_rows = store.n_rows if stream_rows is None else len(stream_rows)
    fraction = summary_rows / max(n_rows, 1)
    grid, n_samples, positions, last = np.empty(0, dtype=np.float32), 0, [], None
    for start in range(0, n_rows, SCAN_ROWS):
        part = slice(start, min(start + SCAN_ROWS, n_rows))
        rows = part if stream_rows is None else stream_rows[part]
        samples = store.read("meta/sample_id", rows)
        grid = np.union1d(grid, store.read("meta/t", rows))
        n_samples += int(np.sum(np.r_[samples[0] != last, samples[1:] != samples[:-1]]))
        last = samples[-1]
        positions.append(start + np.flatnonzero(in_sample(samples, fraction, seed)))
    return RowScan(grid, n_samples, np.concatenate(positions) if positions else np.empty(0, dtype=np.int64))


def open_run(path: str | Path, label: str, options: AnalyzeOptions) -> Run:
    """Open a store, select its rows (``--max-rows``) and draw its summary sample (``--summary-rows``); ValueError for
    a file that is not a feature store, an unknown site or too few samples."""
    store = FeatureStore(path)
    sites = options.sites or store.sites
    unknown = [site for site in sites if site not in store.sites]
    if unknown:
        raise ValueError(f"unknown site(s) {unknown} in {path}; valid sites: {', '.join(store.sites)}")
    factor_names = list(store.factors) if options.factors is None else options.factors
    unknown = [name for name in factor_names if name not in store.factors]
    if unknown:
        raise ValueError(f"unknown factor(s) {unknown} in {path}; its factors: {', '.join(store.factors) or 'none'}")
    if options.embedding_site not in (None, *sites):
        raise ValueError(f"--embedding-site {options.embedding_site!r} is not among the analysed sites of {path}: "
                         f"{', '.join(sites)}")
    candidates = last_checkpoint_rows(store)
    sample_ids = store.read("meta/sample_id", candidates)
    stream_rows = candidates if options.max_rows is None else \
        (np.arange(len(sample_ids)) if candidates is None else candidates)[
            select_rows(sample_ids, options.max_rows, options.n_splits, options.seed)]
    scan = scan_rows(store, stream_rows, options.summary_rows, options.seed)
    if scan.n_samples < options.n_splits:
        raise ValueError(f"{path} holds {scan.n_samples} sample(s); the analysis cross-validates over samples and "
                         f"needs at least --n-splits ({options.n_splits}): extract more (--samples) or lower --n-splits")
    rows = scan.summary_positions if stream_rows is None else stream_rows[scan.summary_positions]
    meta = store.read_meta(rows)
    n_summary = meta["sample_id"].nunique()
    if n_summary < options.n_splits:
        raise ValueError(f"--summary-rows {options.summary_rows} keeps {n_summary} of {path}'s {scan.n_samples} "
                         f"samples; cross-validation needs at least --n-splits ({options.n_splits})")
    t_grid_bin, bin_t = grid_bins(scan.t_grid, options.t_bins)
    run = Run(label, store, list(sites), rows, meta, bin_t, scan.t_grid, t_grid_bin, factor_names, stream_rows,
              scan.n_samples)
    run.meta = meta.assign(t_bin=run.t_bins_of(meta["t"].to_numpy()),
                           fold=fold_ids(meta["sample_id"].to_numpy(), options.n_splits))
    if candidates is not None:
        run.notes.append(f"{Path(path).name} holds the rows of several checkpoints: analysed at the last (step "
                         f"{int(store.read('meta/step', candidates[:1])[0])}); python -m lisa_probe.over_training "
                         "draws them over training")
    return run


def last_checkpoint_rows(store: FeatureStore) -> np.ndarray | None:
    """The rows of the last checkpoint of a store extracted from several (``meta/step``), else None (all rows)."""
    if "meta/step" not in store.layout:
        return None
    steps = store.read("meta/step")
    return np.flatnonzero(steps == steps.max())


def run_labels(stores: Sequence[str], labels: str | None, random_reference: str | None) -> list[tuple[str, str]]:
    """``[(path, label)]``: labels from ``--labels`` or the file stems, plus the random reference."""
    names = [Path(path).stem for path in stores] if labels is None else comma_list(labels)
    if len(names) != len(stores):
        raise ValueError(f"--labels names {len(names)} runs for {len(stores)} stores")
    pairs = list(zip(stores, names)) + ([(random_reference, RANDOM_LABEL)] if random_reference else [])
    labels_seen = [label for _, label in pairs]
    if len(set(labels_seen)) != len(labels_seen):
        raise ValueError(f"run labels must be unique, got {labels_seen}; name them with --labels")
    return pairs


def arm_names(runs: Sequence[Run]) -> dict[str, str]:
    """``{run label: arm}``: runs whose stores' configs agree but for ``RUN_ONLY_KEYS`` (seed, name, output and
    schedule options) form one arm, named by their labels' common prefix less a trailing seed part
    (``lisa-s0``, ``lisa-s1`` -> ``lisa``; the labels joined with ``+`` when that leaves nothing or a name taken);
    a run alone is its own arm."""
    groups = defaultdict(list)
    for run in runs:
        config = {key: value for key, value in run.store.attrs["config"].items() if key not in RUN_ONLY_KEYS}
        groups[json.dumps(config, sort_keys=True, default=str)].append(run.label)
    names, taken = {}, {run.label for run in runs}
    for labels in groups.values():
        arm = labels[0]
        if len(labels) > 1:
            arm = re.sub(r"[-_.]+(s|seed)?$", "", os.path.commonprefix(labels))
            arm = arm if arm and arm not in taken else "+".join(labels)
        taken.add(arm)
        names.update(dict.fromkeys(labels, arm))
    return names


def side_net_dir(run: Run) -> Path:
    """The side-net directory the store was extracted from (attr ``checkpoint``: relative to the store's directory;
    absolute in stores written before paths were stored relative)."""
    return resolved_path(run.store.attrs["checkpoint"], run.store.paths[0].parent)


def checkpoint_dirs(run: Run) -> list[Path]:
    """Where the run's files may be: the directory holding the store's side net (``<dir>/controlnet``) and its
    parent (for ``checkpoint-N`` directories)."""
    holder = side_net_dir(run).parent
    return [holder, holder.parent]


