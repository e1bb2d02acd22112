"""The settings of the analysis (``AnalyzeOptions``, ``python -m lisa_probe.analyze``) and its option values.
Light: no torch at import."""

from __future__ import annotations

from dataclasses import dataclass

from lisa_probe.options import SEED_MAX, check_number

IMPORTANCES = ("gbt", "lasso")  # DCI's importance models (analysis.disentanglement.IMPORTANCE_MODELS)
RANDOM_LABEL = "random-init"  # the run label of --random-reference's store
MIN_CHUNK_SAMPLES = 2  # whole samples per streamed chunk at least


def comma_list(text: str) -> list[str]:
    """'a, b,c' -> ['a', 'b', 'c']."""
    return [item.strip() for item in text.split(",") if item.strip()]


@dataclass
class AnalyzeOptions:
    """What to analyse; the command line's options (see ``main``)."""

    sites: list[str] | None = None  # None: every site of each store
    max_rows: int | None = None  # at most this many rows per store (whole samples, drawn with ``seed``)
    summary_rows: int = 20_000  # rows (whole samples, drawn with ``seed``) kept for the analyses that need rows
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
        for name, low in (("max_rows", 1), ("summary_rows", 1), ("t_bins", 1), ("attribution_samples", 0), ("ig_steps", 1),
                          ("shapley_samples", 1), ("pca_components", 1), ("n_splits", 2), ("chunk_rows", 1)):
            value = getattr(self, name)
            if value is not None and value < low:
                raise ValueError(f"--{name.replace('_', '-')} must be >= {low}, got {value}")
        check_number("seed", self.seed, 0, SEED_MAX)
        if self.dci_importance not in IMPORTANCES:
            raise ValueError(f"--dci-importance must be one of {', '.join(IMPORTANCES)}, got {self.dci_importance!r}")
