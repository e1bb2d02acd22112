"""The settings of the analysis (``AnalyzeOptions``, ``python -m lisa_probe.analyze``) and its option values.
Light: no torch at import."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from lisa_probe.causal.config import ANALYSES
from lisa_probe.data.options import names_list
from lisa_probe.options import SEED_MAX, check_number, option

IMPORTANCES = ("gbt", "lasso")  # DCI's importance models (analysis.disentanglement.IMPORTANCE_MODELS)
RANDOM_LABEL = "random-init"  # the run label of --random-reference's store
MIN_CHUNK_SAMPLES = 2  # whole samples per streamed chunk at least


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the platform has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def comma_list(text: str) -> list[str]:
    """'a, b,c' -> ['a', 'b', 'c']."""
    return [item.strip() for item in text.split(",") if item.strip()]


@dataclass
class AnalyzeOptions:
    """What to analyse: every field is an option of ``python -m lisa_probe.analyze`` (``options.parse_config``'s
    mechanism, as for the other commands)."""

    sites: list[str] | None = field(default=None, metadata=option(
        "comma-separated sites (default: every site of each store)", parse=comma_list))
    factors: list[str] | None = field(default=None, metadata=option(
        "comma-separated generating factors to probe and score (default: every factor of each store)",
        parse=comma_list))
    max_rows: int | None = field(default=None, metadata=option(
        "at most this many rows per store (whole samples, drawn with --seed; default: all)"))
    summary_rows: int = field(default=20_000, metadata=option(
        "rows (whole samples, drawn with --seed) kept for probes, pooled read-outs, DCI/MIG/SAP, the embedding and "
        "the decomposition; the spatial and decoder read-outs stream every row"))
    t_bins: int | None = field(default=None, metadata=option(
        "merge the timestep grid into this many contiguous bins (default: one per timestep)"))
    umap: bool = field(default=True, metadata=option("embed with a 2-D PCA instead of UMAP (no numba JIT)",
                                                     off_flag="--no-umap"))
    embedding_site: str | None = field(default=None, metadata=option(
        "site to embed (default: the LISA site, else the middle site)"))
    attribution_samples: int = field(default=0, metadata=option(
        "samples for the model-based decomposition (0: none)"))
    ig_steps: int = field(default=32, metadata=option("integrated-gradients steps of the model-based decomposition"))
    shapley_samples: int = field(default=25, metadata=option("Shapley-sampling permutations of the model-based "
                                                             "decomposition"))
    causal: str = field(default="", metadata=option(
        "comma-separated causal analyses of each store's side net, drawn anew from its run or ControlNet: maps, "
        "interventions, patching, steering (python -m lisa_probe.intervene; each prints its time estimate; default: "
        "none)"))
    causal_samples: int = field(default=8, metadata=option("conditions the causal analyses sample"))
    causal_steps: int = field(default=20, metadata=option("sampler steps of the causal analyses"))
    dci_importance: str = field(default="gbt", metadata=option("DCI importance model", choices=IMPORTANCES))
    pca_components: int = field(default=10, metadata=option("PCA components before DCI/MIG/SAP"))
    n_splits: int = field(default=5, metadata=option("cross-validation folds"))
    chunk_rows: int | None = field(default=None, metadata=option(
        f"rows per streamed chunk, rounded to whole samples, at least {MIN_CHUNK_SAMPLES} (default: ~16 MiB of "
        "rows)"))
    seed: int = field(default=0, metadata=option("seed of subsets, shuffles and fits"))
    jobs: int = field(default_factory=usable_cpus, metadata=option(
        "worker processes for the probes and DCI / MIG / SAP (default: the CPUs this process may use; the numbers "
        "do not depend on it)"))

    def __post_init__(self) -> None:
        for name, low in (("max_rows", 1), ("summary_rows", 1), ("t_bins", 1), ("attribution_samples", 0), ("ig_steps", 1),
                          ("causal_samples", 1), ("causal_steps", 1),
                          ("shapley_samples", 1), ("pca_components", 1), ("n_splits", 2), ("chunk_rows", 1),
                          ("jobs", 1)):
            value = getattr(self, name)
            if value is not None and value < low:
                raise ValueError(f"--{name.replace('_', '-')} must be >= {low}, got {value}")
        check_number("seed", self.seed, 0, SEED_MAX)
        unknown = [name for name in names_list(self.causal) if name not in ANALYSES]
        if unknown:
            raise ValueError(f"--causal {self.causal!r}: choose from {', '.join(ANALYSES)}")
        if self.dci_importance not in IMPORTANCES:
            raise ValueError(f"--dci-importance must be one of {', '.join(IMPORTANCES)}, got {self.dci_importance!r}")
