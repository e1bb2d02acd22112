"""``python -m lisa_probe.analyze features/a.h5 [features/b.h5 ...] --out reports/<name>/``: dissect feature stores.

Every store is one *run* (labelled by its file stem, or ``--labels``; ``--random-reference`` adds a store of an
untrained side net as ``random-init``). Per run, site and timestep bin it measures

* **alignment** of the side features with the two likelihood-score estimates in prediction units, ``model`` =
  ``full − main`` and ``oracle`` = ``target − main``: the LISA decoder's output against each estimate (when the store
  has ``scores/decoded``), a ridge read-out and linear CKA of mean-pooled features against the estimate on a
  ``READOUT_GRID``² grid, and a spatial ridge read-out (one map shared by all positions) — each beside its shuffled-
  pairs reference (features paired with another row's estimate in the same timestep bin; in the streamed spatial
  read-out and decoder alignment always another sample's, ``shuffle_within``); a randomly initialised side net is
  the other reference;
* **disentanglement**: linear probes for every factor beside a control task (a chance baseline, see
  ``lisa_probe.analysis.probes``), carried vs not-carried summary, DCI / MIG / SAP on pooled features reduced by a PCA
  fitted on DCI's and SAP's training rows, and a 2-D embedding (UMAP, or PCA with ``--no-umap``) of one site;
* **per-site decomposition** of the score: add-one-in from the store's ``decompose/<site>`` rows, and with
  ``--attribution-samples K`` leave-one-out / add-one-in / integrated gradients / Shapley of the reloaded model
  (``lisa_probe.attribution``) at the inputs of K of the store's samples;
* **training curves** from the run directory's ``eval.csv`` and ``summary.json``.

Outputs in ``--out``: ``alignment.csv``, ``probes.csv``, ``carried_summary.csv``, ``disentanglement.csv``,
``embedding.csv``, ``decomposition.csv``, ``training.csv`` (long form), ``figures/*.png`` and ``report.md``.

Memory: one streamed pass per store reads ~16 MiB of rows at a time (``--chunk-rows``), in whole samples, at least
``MIN_CHUNK_SAMPLES`` per chunk. It fills accumulators whose size does not depend on the number of rows (the spatial
read-out's ``RidgeSufficientStats`` and the decoder alignment's sums, per site, bin, estimate and control) and per-row
summaries about 100x smaller than the rows (pooled features, the coarse estimates, the add-one-in projections); the
in-memory analyses run on those summaries. ``--max-rows`` caps the rows.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import shutil
import sys
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from itertools import product
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib import pyplot as plt
from matplotlib.figure import Figure
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from lisa_probe.analysis.alignment import (
    EPS,
    RidgeSufficientStats,
    fold_ids,
    grand_mean_r2,
    other_sample_pairing,
    readout_table,
    resample_to,
)
from lisa_probe.analysis.disentanglement import IMPORTANCES, disentanglement_table, reduce_features
from lisa_probe.analysis.embedding import embedding_table, umap_embed
from lisa_probe.analysis.plots import (
    plot_alignment_vs_t,
    plot_decomposition_bars,
    plot_decomposition_heatmap,
    plot_probe_selectivity,
    plot_training_curves,
    plot_umap_grid,
)
from lisa_probe.analysis.probes import carried_summary, probe_table
from lisa_probe.analysis.tables import long_table
from lisa_probe.config import SEED_MAX, check_number, cli_errors
from lisa_probe.models.dual_branch import middle_site
from lisa_probe.provenance import code_version, file_digest
from lisa_probe.rundir import EVAL_FILE, read_eval, read_summary, resolved_path
from lisa_probe.store import FeatureStore
from lisa_probe.store.reader import ITER_BYTES

ESTIMATES = ("model", "oracle")
CONTROLS = ("none", "shuffled_pairs")
READOUT_GRID = 4
MIN_CHUNK_SAMPLES = 2  # whole samples per streamed chunk at least: the shuffled pairs need another sample per row
RANDOM_LABEL = "random-init"
TABLES = ("alignment", "probes", "carried_summary", "disentanglement", "embedding", "decomposition", "training")
ALIGNMENT_FIGURES = (("decoder", "cosine"), ("ridge", "r2"), ("spatial_ridge", "r2"), ("cka", "cka_debiased"))
DISENTANGLEMENT_FIGURES = (("dci", "disentanglement"), ("mig", "mig"), ("sap", "sap"))
FIGURED_METHOD = {"store": "add_one_in", "model": "integrated_gradients"}
FACTOR_COLUMNS = ["method", "factor", "kind", "carried"]
EMPTY_COLUMNS = {  # columns of a table no run has rows for
    "probes": ["run", "site", "t", "t_bin", *FACTOR_COLUMNS, "score", "metric", "value"],
    "disentanglement": ["run", "site", "t", "t_bin", *FACTOR_COLUMNS, "metric", "value"],
    "embedding": ["run", "site", *FACTOR_COLUMNS, "metric", "value"],
    "decomposition": ["run", "source", "objective", "t", "t_bin", "method", "example", "site", "metric", "value"],
    "training": ["run", "step", "metric", "value"],
}


@dataclass
class AnalyzeOptions:
    """What to analyse; the command line's options (see ``main``)."""

    sites: list[str] | None = None  # None: every site of each store
    max_rows: int | None = None  # at most this many rows per store (whole samples, drawn with ``seed``)
    t_bins: int | None = None  # merge the timestep grid into this many contiguous bins (None: one per timestep)
    umap: bool = True  # False: a 2-D PCA instead of UMAP (no numba JIT)
    embedding_site: str | None = None  # default: the LISA site, else the middle site
    attribution_samples: int = 0  # K samples for the model-based decomposition (0: none)
    ig_steps: int = 32  # integrated-gradients steps of the model-based decomposition
    shapley_samples: int = 25  # Shapley-sampling permutations of the model-based decomposition
    dci_importance: str = "gbt"
    pca_components: int = 10
    n_splits: int = 5
    chunk_rows: int | None = None  # rows per streamed chunk, in whole samples (default: ~16 MiB of rows)
    seed: int = 0

    def __post_init__(self) -> None:
        for name, low in (("max_rows", 1), ("t_bins", 1), ("attribution_samples", 0), ("ig_steps", 1),
                          ("shapley_samples", 1), ("pca_components", 1), ("n_splits", 2), ("chunk_rows", 1)):
            value = getattr(self, name)
            if value is not None and value < low:
                raise ValueError(f"--{name.replace('_', '-')} must be >= {low}, got {value}")
        check_number("seed", self.seed, 0, SEED_MAX)
        if self.dci_importance not in IMPORTANCES:
            raise ValueError(f"--dci-importance must be one of {', '.join(IMPORTANCES)}, got {self.dci_importance!r}")


# --------------------------------------------------------------------------------------------------- runs
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
        """``{name: (y (n,), kind, carried)}`` over the rows in ``mask``, leaving out factors constant there."""
        factors = {}
        for name, spec in self.store.factors.items():
            y = self.meta[name].to_numpy()[mask]
            if len(np.unique(y)) > 1:
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
    rows = select_rows(meta["sample_id"].to_numpy(), options.max_rows, options.n_splits, options.seed)
    meta = meta.iloc[rows].reset_index(drop=True)
    t_bin, bin_t = time_bins(meta["t"].to_numpy(), options.t_bins)
    meta = meta.assign(t_bin=t_bin, fold=fold_ids(meta["sample_id"].to_numpy(), options.n_splits))
    return Run(label, store, list(sites), rows, meta, bin_t)


# --------------------------------------------------------------------------------------------------- streaming
class DecoderAlignmentSums:
    """``decoder_alignment`` over rows fed chunk by chunk: sums of per-row cosines and relative errors, the squared
    error and the first two moments of the estimate's elements (so the R²'s SST is around the grand mean of all
    elements); ``metrics()`` equals ``decoder_alignment`` of all rows at once."""

    def __init__(self) -> None:
        self.rows = self.elements = 0
        self.cosine = self.rel_error = self.sse = self.total = self.squares = 0.0

    def update(self, decoded: np.ndarray, estimate: np.ndarray) -> None:
        """Add rows: decoded and estimate (n, ...) of the same shape."""
        d = decoded.reshape(len(decoded), -1).astype(np.float64)
        e = estimate.reshape(len(estimate), -1).astype(np.float64)
        d_norm, e_norm = np.linalg.norm(d, axis=1), np.linalg.norm(e, axis=1)
        self.rows += len(d)
        self.elements += e.size
        self.cosine += float(np.sum(np.sum(d * e, axis=1) / np.maximum(d_norm * e_norm, EPS)))
        self.rel_error += float(np.sum(np.linalg.norm(d - e, axis=1) / np.maximum(e_norm, EPS)))
        self.sse += float(np.sum((d - e) ** 2))
        self.total += float(e.sum())
        self.squares += float(np.sum(e * e))

    def metrics(self) -> dict[str, float]:
        """``{"cosine", "rel_error", "r2"}`` as ``decoder_alignment`` defines them (``r2`` NaN for a constant
        estimate)."""
        sst = self.squares - self.total**2 / self.elements
        return {"cosine": self.cosine / self.rows, "rel_error": self.rel_error / self.rows,
                "r2": grand_mean_r2(self.sse, sst, self.squares)}


@dataclass
class Streamed:
    """What one pass over a run's rows leaves: per-row summaries in the order of ``Run.rows`` and accumulators.

    Attributes:
        pooled: ``{site: (N, C)}`` mean-pooled features (tokens: mean over tokens).
        coarse: ``{estimate: (N, Cs·g·g)}`` score estimate area-averaged to the ``READOUT_GRID`` (g) grid.
        effect: (N,) ‖full − main‖, the side branch's whole contribution.
        add_one_in: ``{site: (N,)}`` ``(decompose/<site> − main) · u`` with u the unit direction of ``full − main``.
        spatial: ``{(site, t_bin, estimate, control): RidgeSufficientStats}`` of the spatial read-out.
        decoder: ``{(t_bin, estimate, control): DecoderAlignmentSums}`` (empty without ``scores/decoded``).
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
    return np.swapaxes(block, 1, 2).reshape(len(block), block.shape[2], side, side).astype(np.float32)


def pooled_rows(block: np.ndarray) -> np.ndarray:
    """(k, C, H, W) -> (k, C) spatial mean; tokens (k, N, D) -> (k, D) token mean; float32."""
    return block.astype(np.float32).mean(axis=(2, 3) if block.ndim == 4 else 1)


def _positions(maps: np.ndarray) -> np.ndarray:
    """(n, C, H, W) -> (n·H·W, C): every spatial position becomes a row."""
    return np.moveaxis(maps, 1, -1).reshape(-1, maps.shape[1])


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


def sample_chunks(samples: np.ndarray, chunk_rows: int) -> list[slice]:
    """Split rows (N,) whose equal sample ids are consecutive into consecutive chunks of whole samples: as many
    samples as fit in ``chunk_rows`` rows, but at least ``MIN_CHUNK_SAMPLES`` (a shorter remainder joins the last
    chunk), so that ``shuffle_within`` finds another sample for every row.

    Returns:
        slices of the rows, in order, covering all N rows.
    """
    starts = np.flatnonzero(np.r_[True, samples[1:] != samples[:-1]])
    ends = np.r_[starts[1:], len(samples)]
    bounds, first = [0], 0  # chunk starts; index of the current chunk's first sample
    for k in range(1, len(starts)):
        if ends[k] - bounds[-1] > chunk_rows and k - first >= MIN_CHUNK_SAMPLES:
            bounds.append(int(starts[k]))
            first = k
    if len(bounds) > 1 and len(starts) - first < MIN_CHUNK_SAMPLES:
        bounds.pop()
    return [slice(start, stop) for start, stop in zip(bounds, [*bounds[1:], len(samples)])]


def _pairings(values: np.ndarray, shuffled: np.ndarray) -> dict[str, np.ndarray]:
    """``{control: (k, ...)}``: the rows as they are and paired as ``shuffled`` says (``shuffle_within``)."""
    return {"none": values, "shuffled_pairs": values[shuffled]}


def update_spatial(stats: dict, site: str, maps: np.ndarray, estimates: Mapping[str, np.ndarray], folds: np.ndarray,
                   bins: np.ndarray, shuffled: np.ndarray, n_splits: int) -> None:
    """Add a chunk to the spatial read-out statistics of ``site``: features maps (k, C, H, W) against every estimate
    (k, Cs, Hs, Ws) resampled to (H, W), per bin and control."""
    targets = {name: _pairings(resample_to(values, maps.shape[-2:]), shuffled) for name, values in estimates.items()}
    for b in np.unique(bins):
        rows = bins == b
        x, f = _positions(maps[rows]), np.repeat(folds[rows], maps.shape[-2] * maps.shape[-1])
        for (estimate, controls), control in product(targets.items(), CONTROLS):
            key = (site, int(b), estimate, control)
            if key not in stats:
                stats[key] = RidgeSufficientStats(maps.shape[1], controls[control].shape[1], n_splits)
            stats[key].update(x, _positions(controls[control][rows]), f)


def update_decoder(sums: dict, decoded: np.ndarray, estimates: Mapping[str, np.ndarray], bins: np.ndarray,
                   shuffled: np.ndarray) -> None:
    """Add a chunk of decoder outputs (k, C, H, W) against every estimate, per bin and control."""
    for (estimate, values), b in product(estimates.items(), np.unique(bins)):
        rows = bins == b
        for control, paired in _pairings(values, shuffled).items():
            sums.setdefault((int(b), estimate, control), DecoderAlignmentSums()).update(decoded[rows], paired[rows])


def stream_names(run: Run) -> list[str]:
    """Datasets the streamed pass reads: the sites' features, the scores and the sites' ``decompose`` rows."""
    names = [f"features/{site}" for site in run.sites] + ["scores/target", "scores/main", "scores/full"]
    names += ["scores/decoded"] if run.lisa_site else []
    return names + [f"decompose/{site}" for site in run.sites if f"decompose/{site}" in run.store.layout]


def row_summaries(chunk: Mapping[str, np.ndarray], sites: Sequence[str],
                  estimates: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The per-row summaries of a chunk (k rows): ``pooled/<site>`` (k, C), ``coarse/<estimate>`` (k, Cs·g·g),
    ``effect`` (k,) and ``add_one_in/<site>`` (k,) for the chunk's ``decompose/<site>`` datasets."""
    k = len(chunk["rows"])
    summaries = {f"pooled/{site}": pooled_rows(chunk[f"features/{site}"]) for site in sites}
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


def stream_chunks(run: Run, names: Sequence[str], chunk_rows: int) -> Iterator[tuple[pd.DataFrame, dict]]:
    """``(meta rows (k,), {"rows": (k,), name: (k, *row_shape)})`` per chunk of whole samples (``sample_chunks``)."""
    for part in sample_chunks(run.groups, chunk_rows):
        rows = run.rows[part]
        yield run.meta.iloc[part], {"rows": rows, **{name: run.store.read(name, rows) for name in names}}


def stream_run(run: Run, options: AnalyzeOptions) -> Streamed:
    """One pass over the run's rows, a chunk of whole samples at a time (see the module docstring for what it
    keeps)."""
    names = stream_names(run)
    row_bytes = sum(run.store.layout[name].row_nbytes for name in names)
    chunk_rows = options.chunk_rows or ITER_BYTES // row_bytes
    parts, spatial, decoder = defaultdict(list), {}, {}
    rng = np.random.default_rng(options.seed)
    with tqdm(total=len(run.rows), unit="row", desc=f"{run.label}: stream") as progress:
        for meta, chunk in stream_chunks(run, names, chunk_rows):
            bins, folds = meta["t_bin"].to_numpy(), meta["fold"].to_numpy()
            shuffled = shuffle_within(bins, meta["sample_id"].to_numpy(), rng)
            main = chunk["scores/main"]
            estimates = {"model": chunk["scores/full"] - main, "oracle": chunk["scores/target"] - main}
            for key, values in row_summaries(chunk, run.sites, estimates).items():
                parts[key].append(values)
            for site in run.sites:
                maps = feature_maps(chunk[f"features/{site}"])
                if maps is not None:
                    update_spatial(spatial, site, maps, estimates, folds, bins, shuffled, options.n_splits)
            if run.lisa_site:
                update_decoder(decoder, chunk["scores/decoded"], estimates, bins, shuffled)
            progress.update(len(meta))
    summaries = {key: np.concatenate(values) for key, values in parts.items()}

    def group(prefix: str) -> dict[str, np.ndarray]:
        return {key.split("/", 1)[1]: values for key, values in summaries.items() if key.startswith(prefix + "/")}

    return Streamed(group("pooled"), group("coarse"), summaries["effect"], group("add_one_in"), spatial, decoder)


# --------------------------------------------------------------------------------------------------- tables
def _ids(run: Run, site: str | None, b: int, t: float, estimate: str) -> dict:
    return {"run": run.label, "site": site, "t": t, "t_bin": b, "estimate": estimate}


def alignment_table(run: Run, streamed: Streamed, options: AnalyzeOptions) -> pd.DataFrame:
    """Long table ``[run, site, t, t_bin, estimate, method, control, metric, value]``: methods ``ridge`` and ``cka``
    (debiased: few samples per bin; pooled features vs the coarse estimate, ``readout_table``), ``spatial_ridge`` and
    ``decoder`` (streamed).
    An estimate that is zero on every row (an untrained side net adds nothing: full = main) is left out, with a note.
    """
    estimates = [estimate for estimate in ESTIMATES if np.any(streamed.coarse[estimate])]
    run.notes += [f"the {estimate} estimate is zero on every row: no alignment with it"
                  for estimate in ESTIMATES if estimate not in estimates]
    tables = []
    for (b, t, rows), estimate in product(run.bins(), estimates):
        for site in run.sites:
            tables.append(readout_table(streamed.pooled[site][rows], streamed.coarse[estimate][rows],
                                        run.groups[rows], n_splits=options.n_splits, debiased=True,
                                        seed=options.seed, **_ids(run, site, b, t, estimate)))
            if (site, b, estimate, "none") in streamed.spatial:
                measured = [{"method": "spatial_ridge", "control": control, "metric": "r2",
                             "value": streamed.spatial[site, b, estimate, control].cv_r2()} for control in CONTROLS]
                tables.append(long_table(measured, **_ids(run, site, b, t, estimate)))
        if streamed.decoder:
            measured = [{"method": "decoder", "control": control, "metric": metric, "value": value}
                        for control in CONTROLS
                        for metric, value in streamed.decoder[b, estimate, control].metrics().items()]
            tables.append(long_table(measured, **_ids(run, run.lisa_site, b, t, estimate)))
    return pd.concat(tables, ignore_index=True)


def disentanglement_tables(run: Run, streamed: Streamed, options: AnalyzeOptions) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(probe_table, disentanglement_table)`` rows of every site and timestep bin, on pooled features (DCI / MIG /
    SAP after a PCA to ``pca_components`` fitted on the training rows of their split)."""
    probes, codes_tables = [], []
    combos = list(product(run.sites, run.bins()))
    for site, (b, t, rows) in tqdm(combos, desc=f"{run.label}: probes, DCI", unit="site·bin"):
        ids = {"run": run.label, "site": site, "t": t, "t_bin": b}
        X, factors, groups = streamed.pooled[site][rows], run.factors(rows), run.groups[rows]
        probes.append(probe_table(X, factors, groups, options.n_splits, options.seed, **ids))
        codes_tables.append(disentanglement_table(X, factors, groups, options.dci_importance, seed=options.seed,
                                                  pca_components=options.pca_components, **ids))
    return pd.concat(probes, ignore_index=True), pd.concat(codes_tables, ignore_index=True)


def embedding_site(run: Run, options: AnalyzeOptions) -> str:
    """The site to embed: ``--embedding-site``, else the LISA site, else the middle one of the analysed sites."""
    if options.embedding_site is not None:
        return options.embedding_site
    return run.lisa_site if run.lisa_site in run.sites else middle_site(run.sites)


def embed(run: Run, streamed: Streamed, options: AnalyzeOptions) -> tuple[pd.DataFrame | None, Figure]:
    """2-D embedding (UMAP, or PCA) of one site's pooled features over all rows, scored per factor and, with several
    timestep bins, by bin (``embedding_table``; the timestep rows have no ``carried``; None with neither), plotted
    coloured by each factor and by t."""
    site = embedding_site(run, options)
    X = streamed.pooled[site]
    method = "umap" if options.umap else "pca"
    if options.umap:
        E = umap_embed(X, seed=options.seed)
    else:
        E = reduce_features(X, 2, options.seed)
    factors = run.factors()
    labels = {name: y for name, (y, _, _) in factors.items()} | {"t": run.meta["t"].to_numpy()}
    if len(run.bin_t) > 1:
        factors["timestep"] = (run.meta["t_bin"].to_numpy(), "categorical", False)
    table = None
    if factors:
        table = embedding_table(E, factors, run.groups, n_splits=options.n_splits, method=method, run=run.label,
                                site=site)
        table["carried"] = table["carried"].astype(object).where(table["factor"] != "timestep", None)
    figure = plot_umap_grid(E, labels)
    figure.suptitle(f"{run.label}: {method} of {site}", y=1.02)
    return table, figure


def _per_row(run: Run, method: str, site: str, metric: str, values: np.ndarray) -> pd.DataFrame:
    """Store-based decomposition rows of one (method, site, metric), one per analysed row."""
    return pd.DataFrame({"run": run.label, "source": "store", "objective": "likelihood_projection",
                         "t": run.meta["t"].astype(float), "t_bin": run.meta["t_bin"], "method": method,
                         "example": run.rows, "site": site, "metric": metric, "value": values})


def store_decomposition(run: Run, streamed: Streamed) -> pd.DataFrame:
    """``decompose/<site>`` rows as add-one-in attributions of ``likelihood_projection`` (``source="store"``), with the
    whole effect ‖full − main‖ as method ``all_sites``; ``example`` is the store row."""
    frames = [_per_row(run, "all_sites", "all", "effect", streamed.effect)]
    frames += [_per_row(run, "add_one_in", site, "attribution", values)
               for site, values in streamed.add_one_in.items()]
    return pd.concat(frames, ignore_index=True)


def side_net_dir(run: Run) -> Path:
    """The side-net directory the store was extracted from (attr ``checkpoint``: relative to the store's directory;
    absolute in stores written before paths were stored relative)."""
    return resolved_path(run.store.attrs["checkpoint"], run.store.paths[0].parent)


def checkpoint_dirs(run: Run) -> list[Path]:
    """Where the run's files may be: the directory holding the store's side net (``<dir>/controlnet``) and its
    parent (for ``checkpoint-N`` directories)."""
    holder = side_net_dir(run).parent
    return [holder, holder.parent]


def rebuild_inputs(run: Run, model, config, dataset_kwargs: dict, index: np.ndarray):
    """The model inputs of store rows ``run.rows[index]`` as the extraction built them: sample ``row // (n_rows /
    samples)`` of its split, noise ``row_noise(seed, row)`` and the row's timestep.

    Returns:
        x_t (n, C, H, W), timesteps (n,) (long for eps/v, float for flow), cond (n, Cc, Hc, Wc).
    """
    from lisa_probe.data import build_dataset
    from lisa_probe.extract import row_noise

    args = run.store.attrs["extract_args"]
    dataset = build_dataset(config.dataset, split=args["split"], **dataset_kwargs)
    rows = run.rows[index]
    rows_per_sample = run.store.n_rows // args["samples"]
    samples = [dataset[int(row // rows_per_sample)] for row in rows]
    stored = run.meta["sample_id"].to_numpy()[index]
    if [sample["id"] for sample in samples] != list(stored):
        raise ValueError(f"the {args['split']} split no longer yields the store's samples (e.g. {stored[0]!r})")
    x0 = model.encode_images(torch.stack([sample["image"] for sample in samples]))
    noise = row_noise(tuple(x0.shape[1:]), args["seed"], [int(row) for row in rows])
    dtype = torch.float32 if model.parameterization.prediction_type == "flow" else torch.long
    steps = torch.as_tensor(run.meta["t"].to_numpy()[index]).to(dtype)
    return model.parameterization.add_noise(x0, noise, steps), steps, torch.stack([s["cond"] for s in samples])


def model_decomposition(run: Run, options: AnalyzeOptions) -> pd.DataFrame | None:
    """``attribution_table`` (``source="model"``) of the reloaded run at all rows of ``attribution_samples`` random
    samples; None, with a note, when the store's checkpoint is not a loadable lisa_probe run (or its data changed)."""
    from lisa_probe.attribution import attribution_table
    from lisa_probe.runs import load_run

    checkpoint = side_net_dir(run)
    if Path(run.store.attrs["checkpoint"]).is_absolute():  # a store's attrs are not trusted to point anywhere
        run.notes.append(f"model-based decomposition skipped: the store records its side net by the absolute path "
                         f"{checkpoint} (written before v0.1 stored paths relative to the store); extract it again")
        return None
    print(f"{run.label}: loading the side net at {checkpoint} (recorded in {run.store.paths[0]}) for the "
          "model-based decomposition", file=sys.stderr)
    samples = pd.unique(run.groups)
    chosen = np.random.default_rng(options.seed).choice(samples, min(options.attribution_samples, len(samples)),
                                                        replace=False)
    index = np.flatnonzero(np.isin(run.groups, chosen))
    try:
        config, model, decoder, dataset_kwargs = load_run(checkpoint.parent)
        x_t, steps, cond = rebuild_inputs(run, model, config, dataset_kwargs, index)
    except (ValueError, OSError, TypeError) as error:
        run.notes.append(f"model-based decomposition skipped: cannot rebuild the model and inputs from {checkpoint} "
                         f"({error})")
        return None
    if file_digest(checkpoint) != run.store.attrs.get("checkpoint_hash"):
        run.notes.append(f"{checkpoint} changed since the extraction (hash differs): model-based attributions use "
                         "the current side net")
    model.requires_grad_(False)
    decoder = decoder.eval() if decoder is not None else None
    bins = run.meta["t_bin"].to_numpy()[index]
    table = attribution_table(model, x_t, steps, cond, decoder, run.lisa_site, t_bins=bins, n_steps=options.ig_steps,
                              n_samples=options.shapley_samples, seed=options.seed, run=run.label, source="model")
    return table.assign(example=run.rows[index][table["example"]])


def training_table(run: Run) -> pd.DataFrame | None:
    """``eval.csv`` of the run directory as ``[run, step, metric, value]`` plus ``summary.json``'s
    ``convergence_step`` and ``seconds_per_step`` (``step`` empty); None, with a note, when there is no
    ``eval.csv``."""
    run_dir = next((d for d in checkpoint_dirs(run) if (d / EVAL_FILE).exists()), None)
    if run_dir is None:
        run.notes.append(f"no training curves: no {EVAL_FILE} beside {run.store.attrs['checkpoint']}")
        return None
    table = pd.DataFrame([{"run": run.label, "step": step, "metric": metric, "value": value}
                          for step, metrics in read_eval(run_dir).items() for metric, value in metrics.items()])
    summary = read_summary(run_dir)
    extra = [{"run": run.label, "step": np.nan, "metric": key, "value": summary[key]}
             for key in ("convergence_step", "seconds_per_step") if summary.get(key) is not None]
    return pd.concat([table, pd.DataFrame(extra, columns=table.columns)], ignore_index=True)


# --------------------------------------------------------------------------------------------------- figures
class Figures:
    """Saves figures under ``<out>/figures`` and remembers them by report section."""

    def __init__(self, out: Path) -> None:
        self.out, self.sections = out, defaultdict(list)
        (out / "figures").mkdir(parents=True, exist_ok=True)

    def save(self, section: str, name: str, figure: Figure, caption: str) -> None:
        """Write ``figures/<name>.png``, close the figure and list it under ``section`` with ``caption``."""
        path = Path("figures") / f"{name}.png"
        figure.savefig(self.out / path, dpi=90, bbox_inches="tight")
        plt.close(figure)
        self.sections[section].append((caption, path.as_posix()))


def _has(table: pd.DataFrame, **equal) -> pd.DataFrame:
    """Rows where every named column equals the given value (possibly none)."""
    mask = np.logical_and.reduce([table[column] == value for column, value in equal.items()])
    return table[mask]


def alignment_figures(figures: Figures, table: pd.DataFrame) -> None:
    """Per method (decoder cosine, pooled and spatial ridge R², CKA) and estimate: the value against t per site."""
    for (method, metric), estimate in product(ALIGNMENT_FIGURES, ESTIMATES):
        data = _has(table, method=method, metric=metric, estimate=estimate)
        if len(data):
            figures.save("alignment", f"alignment_{method}_{metric}_{estimate}",
                         plot_alignment_vs_t(data, metric, method, x="t"),
                         f"{method} {metric} against the {estimate} estimate (dashed: shuffled pairs)")


def disentanglement_figures(figures: Figures, probes: pd.DataFrame, codes: pd.DataFrame) -> None:
    """Probe selectivity of carried vs not-carried factors per site; DCI disentanglement, MIG and SAP against t."""
    figures.save("probes", "probe_selectivity", plot_probe_selectivity(probes, col="site"),
                 "probe selectivity (task − chance-level control) of carried vs not-carried factors, per site")
    overall = codes[codes["factor"] == "all"]
    for method, metric in DISENTANGLEMENT_FIGURES:
        figures.save("disentanglement", f"disentanglement_{method}_{metric}",
                     plot_alignment_vs_t(overall, metric, method, x="t"), f"{method} {metric} (all factors)")


def decomposition_figures(figures: Figures, table: pd.DataFrame) -> None:
    """Heatmap (and stacked bars) of the headline method of each source and objective: the store's add-one-in, the
    model's integrated gradients (the other methods are in the tables)."""
    for (source, objective), data in table.groupby(["source", "objective"], sort=False):
        method = FIGURED_METHOD[source]
        name = f"decomposition_{source}_{objective}_{method}"
        caption = f"{method} attributions of {objective} ({source}-based)"
        figures.save("decomposition", name, plot_decomposition_heatmap(data, method), caption + ", site × t bin")
        figures.save("decomposition", name + "_bars", plot_decomposition_bars(data, method), caption + ", stacked")


def training_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per run: each metric's last evaluation (``final <metric>``) and the ``summary.json`` rows."""
    curves = table[table["step"].notna()].sort_values("step")
    final = curves.groupby(["run", "metric"], sort=False).tail(1)
    return pd.concat([final.assign(metric="final " + final["metric"]), table[table["step"].isna()]])


def training_figure(figures: Figures, table: pd.DataFrame) -> None:
    """The evaluation curves with each run's convergence step."""
    curves = table[table["step"].notna()]
    steps = table[table["metric"] == "convergence_step"].set_index("run")["value"].to_dict()
    figures.save("training", "training_curves", plot_training_curves(curves, steps),
                 "evaluation metrics during training (dashed: convergence step)")


# --------------------------------------------------------------------------------------------------- report
def headline(table: pd.DataFrame, index: Sequence[str], runs: Sequence[str]) -> str:
    """Markdown table of the mean ``value`` over everything but ``index``, one column per run (in ``runs`` order)."""
    if table.empty:
        return "_(no rows)_"
    pivot = table.groupby([*index, "run"], dropna=False, sort=False)["value"].mean().unstack("run")
    pivot = pivot.reindex(columns=[run for run in runs if run in pivot.columns]).reset_index()
    return pivot.to_markdown(index=False, floatfmt=".3f")


def provenance(runs: Sequence[Run]) -> str:
    """Markdown table of every run's store, rows, sites, parameterisation, checkpoint, hash and code version, then
    the configs."""
    rows = []
    for run in runs:
        attrs = run.store.attrs
        rows.append({"run": run.label, "store": str(run.store.paths[0]), "rows": f"{len(run.rows)}/{run.store.n_rows}",
                     "samples": run.meta["sample_id"].nunique(), "timesteps": ", ".join(f"{t:g}" for t in
                                                                                        np.unique(run.meta["t"])),
                     "sites": ", ".join(run.sites), "parameterization": attrs["parameterization"],
                     "LISA site": run.lisa_site or "-",
                     "checkpoint (from the store)": attrs["checkpoint"],
                     "checkpoint hash": str(attrs["checkpoint_hash"])[:12], "code version": attrs["code_version"]})
    configs = "\n\n".join(f"**{run.label}**\n\n```json\n{json.dumps(run.store.attrs['config'], indent=1)}\n```"
                          for run in runs)
    return (pd.DataFrame(rows).to_markdown(index=False)
            + f"\n\n<details><summary>run configs</summary>\n\n{configs}\n\n</details>\n")


def _figure_lines(figures: Figures, section: str) -> str:
    """The section's figures as markdown images with captions."""
    return "\n\n".join(f"![{caption}]({path})\n*{caption}*" for caption, path in figures.sections[section])


def embedding_grid(figures: Figures) -> str:
    """The per-run embedding figures side by side (one table row)."""
    shots = figures.sections["embedding"]
    if not shots:
        return ""
    header = "| " + " | ".join(caption for caption, _ in shots) + " |\n|" + " --- |" * len(shots)
    return header + "\n| " + " | ".join(f"![{caption}]({path})" for caption, path in shots) + " |"


def write_report(out: Path, runs: Sequence[Run], tables: Mapping[str, pd.DataFrame], figures: Figures,
                 command: str) -> Path:
    """``report.md``: provenance, notes, then every section's headline tables (runs side by side) and figures."""
    alignment, probes = tables["alignment"], tables["probes"]
    codes, decomposition, training = tables["disentanglement"], tables["decomposition"], tables["training"]
    labels = [run.label for run in runs]
    notes = [f"- **{run.label}**: {note}" for run in runs for note in run.notes]
    sections = [
        f"# lisa_probe analysis: {' vs '.join(run.label for run in runs)}",
        f"`{command}` (code version {code_version()})",
        "## Runs\n\n" + provenance(runs),
        "## Notes\n\n" + "\n".join(notes) if notes else "",
        "## Alignment with the likelihood score\n\nEstimates in prediction units: `model` = full − main, `oracle` = "
        "target − main. `ridge` / `cka` (debiased): mean-pooled features vs the estimate on a "
        f"{READOUT_GRID}×{READOUT_GRID} grid; `spatial_ridge`: one linear map shared by all positions; `decoder`: the "
        "LISA decoder's output. `shuffled_pairs` pairs features with another sample's estimate. Mean over timestep "
        "bins:\n\n" + headline(alignment, ["method", "metric", "estimate", "site", "control"], labels),
        _figure_lines(figures, "alignment"),
        "## Disentanglement\n\n### Probes\n\nMean selectivity (task − control task; with folds grouped by sample the "
        "control scores at chance, so selectivity is the task score above chance) over factors and timestep bins:\n\n"
        + headline(tables["carried_summary"].query("metric == 'selectivity'"), ["site", "contrast"], labels)
        + "\n\nPer factor (mean over sites and timestep bins):\n\n"
        + headline(probes, ["factor", "carried", "metric"], labels),
        _figure_lines(figures, "probes"),
        "### DCI, MIG, SAP\n\nOn pooled features reduced by a PCA fitted on the training rows of DCI's and SAP's "
        "split, all factors, mean over timestep bins:\n\n"
        + headline(codes[codes["factor"] == "all"], ["method", "metric", "site"], labels),
        _figure_lines(figures, "disentanglement"),
        "### Embedding\n\n" + headline(tables["embedding"], ["site", "method", "factor", "metric"], labels),
        embedding_grid(figures),
        "## Per-site decomposition of the likelihood score\n\nMean attribution (prediction units) over examples and "
        "timestep bins; `all_sites` is the whole effect f(all open) − f(all closed):\n\n"
        + headline(decomposition, ["source", "objective", "method", "site", "metric"], labels),
        _figure_lines(figures, "decomposition"),
        "## Training\n\nLast evaluation and `summary.json`:\n\n"
        + headline(training_summary(training), ["metric"], labels),
        _figure_lines(figures, "training"),
    ]
    path = out / "report.md"
    path.write_text("\n\n".join(section for section in sections if section) + "\n")
    return path


# --------------------------------------------------------------------------------------------------- driver
def prepare_out(out: Path, overwrite: bool) -> Path:
    """Refuse a non-empty ``out`` without ``overwrite`` (or a file there); returns the empty staging directory
    ``<parent>/.<name>.new`` the report is written to, which ``publish_out`` swaps in for ``out`` at the end: a
    failing analysis leaves a previous report whole."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not out.is_dir():
            raise FileExistsError(f"--out {out} is a file; give a directory for the report")
        if not overwrite:
            raise FileExistsError(f"--out {out} exists and is not empty; pass --overwrite to replace it")
    staging = out.parent / f".{out.name}.new"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def publish_out(staging: Path, out: Path) -> None:
    """Move the finished report in ``staging`` into ``out``, replacing a previous report's files (tables, figures,
    ``report.md``) and keeping any other file there."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / "figures", ignore_errors=True)
    for name in (*(f"{table}.csv" for table in TABLES), "report.md"):
        (out / name).unlink(missing_ok=True)
    for item in staging.iterdir():
        item.rename(out / item.name)
    staging.rmdir()


def analyze_run(run: Run, options: AnalyzeOptions, figures: Figures) -> dict[str, pd.DataFrame | None]:
    """All tables of one run (the embedding figure is saved on the way)."""
    streamed = stream_run(run, options)
    probes = codes = None
    if run.factors():
        probes, codes = disentanglement_tables(run, streamed, options)
    else:
        run.notes.append("the store has no (varying) generating factors: no probes, DCI, MIG or SAP")
    embedding, figure = embed(run, streamed, options)
    figures.save("embedding", f"embedding_{run.label}", figure, run.label)
    decomposition = [store_decomposition(run, streamed)] if streamed.add_one_in else []
    if options.attribution_samples > 0:
        decomposition.append(model_decomposition(run, options))
    decomposition = [table for table in decomposition if table is not None]
    return {"alignment": alignment_table(run, streamed, options), "probes": probes, "disentanglement": codes,
            "embedding": embedding, "training": training_table(run),
            "decomposition": pd.concat(decomposition, ignore_index=True) if decomposition else None}


def run_tables(runs: Sequence[Run], options: AnalyzeOptions, figures: Figures) -> dict[str, pd.DataFrame]:
    """Every table of ``TABLES``, the runs' rows concatenated (a run without rows for a table adds none)."""
    per_run = [analyze_run(run, options, figures) for run in runs]
    tables = {}
    for name in per_run[0]:
        parts = [tables_of_run[name] for tables_of_run in per_run if tables_of_run[name] is not None]
        tables[name] = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=EMPTY_COLUMNS[name])
    return {**tables, "carried_summary": carried_summary(tables["probes"])}


def analyze(runs: Sequence[Run], out: Path, options: AnalyzeOptions, command: str = "") -> Path:
    """Analyse opened runs into ``out`` (prepared by ``prepare_out``): CSV tables, figures, report; returns the
    report's path.

    BLAS runs on one thread: the matrices here are small (features up to ~10³ wide), where threads cost more than
    they give, and on a busy 2-core machine they thrash (a 64×64 ``eigh``: 0.4 ms on one thread, 46 ms on two).
    """
    with threadpool_limits(limits=1, user_api="blas"):
        figures = Figures(out)
        tables = run_tables(runs, options, figures)
        for name in TABLES:
            tables[name].to_csv(out / f"{name}.csv", index=False)
        alignment_figures(figures, tables["alignment"])
        if len(tables["probes"]):
            disentanglement_figures(figures, tables["probes"], tables["disentanglement"])
        if len(tables["decomposition"]):
            decomposition_figures(figures, tables["decomposition"])
        if len(tables["training"]):
            training_figure(figures, tables["training"])
        return write_report(out, runs, tables, figures, command)


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


def comma_list(text: str) -> list[str]:
    """'a, b,c' -> ['a', 'b', 'c']."""
    return [item.strip() for item in text.split(",") if item.strip()]


def parser() -> argparse.ArgumentParser:
    """The command line: the stores, ``--out`` and friends, and one option per ``AnalyzeOptions`` field."""
    default = AnalyzeOptions()
    p = argparse.ArgumentParser(prog="python -m lisa_probe.analyze", description=__doc__.splitlines()[0])
    p.add_argument("stores", nargs="+", help="feature stores (.h5) written by lisa_probe.extract")
    p.add_argument("--out", required=True, help="report directory (e.g. reports/<name>/)")
    p.add_argument("--labels", help="comma-separated run labels (default: the stores' file stems)")
    p.add_argument("--random-reference", help=f"store of an untrained side net, analysed as {RANDOM_LABEL!r}")
    p.add_argument("--overwrite", action="store_true", help="replace the report in a non-empty --out")
    p.add_argument("--sites", type=comma_list, help="comma-separated sites (default: every site of each store)")
    p.add_argument("--max-rows", type=int, help="at most this many rows per store (whole samples)")
    p.add_argument("--t-bins", type=int, help="merge the timestep grid into this many bins (default: one per t)")
    p.add_argument("--no-umap", dest="umap", action="store_false", help="embed with PCA instead of UMAP")
    p.add_argument("--embedding-site", help="site to embed (default: the LISA site, else the middle site)")
    p.add_argument("--attribution-samples", type=int, default=default.attribution_samples,
                   help="samples for the model-based decomposition (default: %(default)s)")
    p.add_argument("--ig-steps", type=int, default=default.ig_steps, help="integrated-gradients steps (%(default)s)")
    p.add_argument("--shapley-samples", type=int, default=default.shapley_samples,
                   help="Shapley-sampling permutations (%(default)s)")
    p.add_argument("--dci-importance", choices=IMPORTANCES, default=default.dci_importance,
                   help="DCI importance model (%(default)s)")
    p.add_argument("--pca-components", type=int, default=default.pca_components,
                   help="PCA components before DCI/MIG/SAP (%(default)s)")
    p.add_argument("--n-splits", type=int, default=default.n_splits, help="cross-validation folds (%(default)s)")
    p.add_argument("--chunk-rows", type=int, help="rows per streamed chunk, rounded to whole samples, at least "
                   f"{MIN_CHUNK_SAMPLES} (default: ~16 MiB of rows)")
    p.add_argument("--seed", type=int, default=default.seed, help="seed of subsets, shuffles and fits (%(default)s)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    cli = parser()
    args = cli.parse_args(argv)
    try:
        options = AnalyzeOptions(**{option.name: getattr(args, option.name) for option in fields(AnalyzeOptions)})
    except ValueError as error:
        cli.error(str(error))
    out = Path(args.out)
    try:
        runs = [open_run(path, label, options)
                for path, label in run_labels(args.stores, args.labels, args.random_reference)]
        staging = prepare_out(out, args.overwrite)
    except (ValueError, OSError) as error:
        cli.error(str(error))
    command = shlex.join(["python", "-m", "lisa_probe.analyze", *(sys.argv[1:] if argv is None else argv)])
    try:
        with cli_errors(cli.prog):
            analyze(runs, staging, options, command)
        publish_out(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"report written to {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
