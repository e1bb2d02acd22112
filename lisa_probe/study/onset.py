"""When a side net starts to follow its condition: a logistic fit of control fidelity against training step.

ControlNet's control appears abruptly ("sudden convergence"); its onset is the step ``t50`` at which a logistic
curve ``f(s) = low + (high − low) / (1 + exp(−(s − t50) / width))`` fitted to fidelity vs step is half way up.
A run whose curve does not rise by ``min_rise`` within its steps has no onset (``t50`` NaN): a study counts such
runs instead of dropping them. An onset is *observed* only when the evaluated steps show both plateaus around it:
the fitted curve must be within ``PLATEAU`` of its low plateau at the first step and of its high plateau at the last
(``t50`` about 1.1 widths or more inside both ends). A curve still rising at its last step is *right-censored* (the
onset lies beyond the steps: ``t50 > last step``), one already up at its first step *left-censored*; both get ``t50``
NaN and say which in ``censored``, never a number at the bound of the fit. Intervals over seeds:
``study.tables.t_interval`` (on log t50).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import curve_fit

MIN_RISE = 0.1  # fidelity a curve must gain (fitted high − low) to have an onset
PLATEAU = 0.25  # the fitted curve must be within this share of the rise of each plateau at the first / last step


@dataclass(frozen=True)
class Onset:
    """The fitted logistic of one run: ``t50`` and ``width`` in steps (NaN without an observed onset), its plateaus,
    and ``censored``: "" (observed or none), "right" (the onset lies after the last step) or "left" (before the
    first)."""

    t50: float
    width: float
    low: float
    high: float
    censored: str = ""

    @property
    def found(self) -> bool:
        return math.isfinite(self.t50)


def logistic(steps: np.ndarray, t50: float, width: float, low: float, high: float) -> np.ndarray:
    """The onset curve at ``steps`` (N,)."""
    return low + (high - low) / (1.0 + np.exp(-(np.asarray(steps, dtype=np.float64) - t50) / width))


def fit_onset(steps: np.ndarray, fidelity: np.ndarray, min_rise: float = MIN_RISE) -> Onset:
    """Least-squares logistic of fidelity (N,) against steps (N,), N >= 4.

    Returns an ``Onset``; ``t50`` is NaN when the fitted rise is below ``min_rise``, the fit fails, or the onset was
    not observed within the steps (``censored`` "right" or "left", module docstring).
    """
    steps, fidelity = np.asarray(steps, dtype=np.float64), np.asarray(fidelity, dtype=np.float64)
    keep = np.isfinite(fidelity)
    steps, fidelity = steps[keep], fidelity[keep]
    if len(steps) < 4:
        raise ValueError(f"an onset fit needs at least 4 evaluated steps, got {len(steps)}")
    span = float(steps.max() - steps.min()) or 1.0
    first, last = float(fidelity[: max(1, len(fidelity) // 4)].mean()), float(fidelity[-max(1, len(fidelity) // 4):].mean())
    start = (float(np.median(steps)), span / 10, first, last)
    bounds = ([steps.min(), span / 1000, -1.0, -1.0], [steps.max(), span, 2.0, 2.0])
    try:
        (t50, width, low, high), _ = curve_fit(logistic, steps, fidelity, p0=start, bounds=bounds, maxfev=20000)
    except RuntimeError:
        return Onset(math.nan, math.nan, first, last)
    if high - low < min_rise:
        return Onset(math.nan, math.nan, float(low), float(high))
    share = (logistic(np.array([steps.min(), steps.max()]), t50, width, low, high) - low) / (high - low)
    if share[1] < 1 - PLATEAU:
        return Onset(math.nan, float(width), float(low), float(high), "right")
    if share[0] > PLATEAU:
        return Onset(math.nan, float(width), float(low), float(high), "left")
    return Onset(float(t50), float(width), float(low), float(high))


def first_step_above(steps: np.ndarray, fidelity: np.ndarray, level: float) -> float:
    """The first evaluated step whose fidelity reaches ``level`` (NaN if none)."""
    reached = np.flatnonzero(np.asarray(fidelity, dtype=np.float64) >= level)
    return float(np.asarray(steps)[reached[0]]) if len(reached) else math.nan
