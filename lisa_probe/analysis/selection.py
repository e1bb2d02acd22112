"""Which rows of which stores an analysis reads: a ``Run`` per store (its selected rows, their meta, timestep bins
and grouped cross-validation folds), run labels, and where a store's side net and run files are."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from lisa_probe.analysis.alignment import (
    fold_ids,
)
from lisa_probe.configs import AnalyzeOptions
from lisa_probe.rundir import resolved_path
from lisa_probe.store import FeatureStore

RANDOM_LABEL = "random-init"


@dataclass
class Run:
    """One store under analysis: its selected rows (``rows``, increasing) and their ``meta`` (N rows: sample_id, t,
    noise_level, draw, one column per factor, ``t_bin`` and cross-validation ``fold``)."""

    label: str
    store: FeatureStore
    sites: list[str]
    rows: np.ndarray
    meta: pd.DataFrame
    bin_t: np.ndarray  # (n_bins,) mean timestep of each bin
    notes: list[str] = field(default_factory=list)

    @property
    def lisa_site(self) -> str | None:
        """The decoder's site when the store has ``scores/decoded``, else None."""
        return (self.store.attrs.get("lisa_site") or None) if "scores/decoded" in self.store.layout else None

    @property
    def groups(self) -> np.ndarray:
        """(N,) sample ids."""
        return self.meta["sample_id"].to_numpy()

    def bins(self) -> Iterator[tuple[int, float, np.ndarray]]:
        """``(t_bin, mean timestep, (N,) row mask)`` per timestep bin."""
        for b, t in enumerate(self.bin_t):
            yield b, float(t), (self.meta["t_bin"] == b).to_numpy()

    def factors(self, mask: np.ndarray | slice = slice(None)) -> dict[str, tuple]:
        """``{name: (y (n,), kind, carried)}`` over the rows in ``mask``, leaving out factors constant there; a
        factor with a ``period`` is ``"circular"``, its values in turns (``y / period mod 1``)."""
        factors = {}
        for name, spec in self.store.factors.items():
            y = self.meta[name].to_numpy()[mask]
            if len(np.unique(y)) > 1:
                if spec["period"]:
                    factors[name] = ((y / spec["period"]) % 1.0, "circular", spec["carried"])
                else:
                    factors[name] = (y, spec["kind"], spec["carried"])
        return factors


def time_bins(t: np.ndarray, n_bins: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Split the sorted unique timesteps of t (N,) into ``n_bins`` contiguous groups (None: one per timestep).

    Returns:
        (N,) int64 bin of every row, (n_bins,) mean timestep of every bin.
    """
    grid = np.unique(t)
    groups = np.array_split(np.arange(len(grid)), min(n_bins or len(grid), len(grid)))
    bin_of = np.concatenate([np.full(len(g), b) for b, g in enumerate(groups)])
    return bin_of[np.searchsorted(grid, t)], np.array([grid[g].mean() for g in groups])


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


def open_run(path: str | Path, label: str, options: AnalyzeOptions) -> Run:
    """Open a store and select its rows; ValueError for a file that is not a feature store or an unknown site."""
    store = FeatureStore(path)
    sites = options.sites or store.sites
    unknown = [site for site in sites if site not in store.sites]
    if unknown:
        raise ValueError(f"unknown site(s) {unknown} in {path}; valid sites: {', '.join(store.sites)}")
    if options.embedding_site not in (None, *sites):
        raise ValueError(f"--embedding-site {options.embedding_site!r} is not among the analysed sites of {path}: "
                         f"{', '.join(sites)}")
    meta = store.meta()
    n_samples = meta["sample_id"].nunique()
    if n_samples < options.n_splits:
        raise ValueError(f"{path} holds {n_samples} sample(s); the analysis cross-validates over samples and needs at "
                         f"least --n-splits ({options.n_splits}): extract more (--samples) or lower --n-splits")
    rows = select_rows(meta["sample_id"].to_numpy(), options.max_rows, options.n_splits, options.seed)
    meta = meta.iloc[rows].reset_index(drop=True)
    t_bin, bin_t = time_bins(meta["t"].to_numpy(), options.t_bins)
    meta = meta.assign(t_bin=t_bin, fold=fold_ids(meta["sample_id"].to_numpy(), options.n_splits))
    return Run(label, store, list(sites), rows, meta, bin_t)


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


def side_net_dir(run: Run) -> Path:
    """The side-net directory the store was extracted from (attr ``checkpoint``: relative to the store's directory;
    absolute in stores written before paths were stored relative)."""
    return resolved_path(run.store.attrs["checkpoint"], run.store.paths[0].parent)


def checkpoint_dirs(run: Run) -> list[Path]:
    """Where the run's files may be: the directory holding the store's side net (``<dir>/controlnet``) and its
    parent (for ``checkpoint-N`` directories)."""
    holder = side_net_dir(run).parent
    return [holder, holder.parent]


def comma_list(text: str) -> list[str]:
    """'a, b,c' -> ['a', 'b', 'c']."""
    return [item.strip() for item in text.split(",") if item.strip()]
