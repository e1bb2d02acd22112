"""Confidence intervals shared by the analysis, its figures and the side-by-side samples: the 95 % Student-t interval
of a mean."""

from __future__ import annotations

import numpy as np
import scipy.stats


def t_interval(values: np.ndarray) -> tuple[float, float, int]:
    """(mean, half-width of the 95 % t-interval, n) of the finite ``values`` (half-width NaN below two)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    n = len(values)
    if n == 0:
        return float("nan"), float("nan"), 0
    if n < 2:
        return float(values[0]), float("nan"), 1
    half = scipy.stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / np.sqrt(n)
    return float(values.mean()), float(half), n
