"""The probe and disentanglement tables of one site and timestep bin, as ``analyze`` computes them in worker
processes: this module imports numpy, pandas and sklearn only (a worker starts in about a second, not torch's
several)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import sklearn

from lisa_probe.analysis.config import AnalyzeOptions
from lisa_probe.analysis.disentanglement import disentanglement_table
from lisa_probe.analysis.probes import probe_table

FAST_FITS = {"assume_finite": True, "skip_parameter_validation": True}  # sklearn settings of the fits here


def factor_tables(X: np.ndarray, factors: dict, groups: np.ndarray, options: AnalyzeOptions,
                  **ids) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(probe_table, disentanglement_table)`` of pooled features X (n, C) for ``factors = {name: (y (n,), kind,
    carried)}`` (``Run.factors``), groups (n,) sample ids, with ``options``' folds, seed, DCI importance model and
    PCA width; ``ids`` become columns. sklearn skips its input and parameter checks (``FAST_FITS``): the inputs are
    finite arrays built by the analysis, and on a few dozen rows the checks cost more than the fits (a tree
    ensemble checks each of its hundred trees); the numbers are the same."""
    with sklearn.config_context(**FAST_FITS):
        probes = probe_table(X, factors, groups, options.n_splits, options.seed, **ids)
        codes = disentanglement_table(X, factors, groups, options.dci_importance, seed=options.seed,
                                      pca_components=options.pca_components, **ids)
    return probes, codes
