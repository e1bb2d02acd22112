"""LISA's weight over training (``lisa_weight``), the rows of a batch that get the term (``lisa_rows``) and their
option values: light (no torch), so that the settings can check them."""

from __future__ import annotations

import math

DISTANCES = ("mse", "cosine")
SCHEDULES = ("constant", "linear_decay", "cutoff")


def lisa_weight(step: int, weight: float, schedule: str = "constant", end_step: int | None = None) -> float:
    """lambda at optimisation ``step``: constant; linear decay to 0 at ``end_step``; or cut to 0 from ``end_step``."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown LISA schedule {schedule!r}; allowed: {', '.join(SCHEDULES)}")
    if schedule == "constant":
        return weight
    if end_step is None or end_step <= 0:
        raise ValueError(f"LISA schedule {schedule!r} needs a positive end step, got {end_step}")
    if schedule == "cutoff":
        return weight if step < end_step else 0.0
    return weight * max(0.0, 1.0 - step / end_step)


def lisa_rows(batch_size: int, fraction: float) -> int:
    """Number of leading batch rows that get the LISA term (at least one when fraction > 0)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"LISA batch fraction must be in (0, 1], got {fraction}")
    return max(1, math.ceil(batch_size * fraction))
