"""The long-form table shared by every analysis module.

One row per measurement. Columns: the identifying columns the caller passes through (``run``, ``site``,
``t_bin`` ...), then ``method`` (the analysis method: ``ridge``, ``cka``, ``logistic``, ``dci`` ...), then
row-specific columns (``factor``, ``carried``, ``control`` ...), then ``metric`` and ``value``.
"""

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import pandas as pd

from lisa_probe.data import circular_distance

KINDS = ("categorical", "continuous", "circular")  # circular: values in turns, period 1
LAST = ("metric", "value")


def long_table(rows: Iterable[Mapping[str, Any]], **ids: Any) -> pd.DataFrame:
    """Build a long-form table from measurement rows and constant identifying columns.

    Args:
        rows: one mapping per measurement, each with ``metric`` and ``value`` and, unless ``method`` is
            passed in ``ids``, ``method``; any other keys become columns.
        **ids: columns with one value for every row (``run="lisa", site="mid", t_bin=3`` ...). A name that
            is also a key of a row is an error: the caller would silently lose one of the two.

    Returns:
        DataFrame with columns ``[*ids, method, *other row keys, metric, value]``; ``value`` is float (NaN where
        a measurement is undefined, e.g. DCI disentanglement when no factor is predicted).
    """
    rows = [dict(row) for row in rows]
    clash = sorted({key for row in rows for key in row} & set(ids))
    if clash:
        raise ValueError(f"identifying columns {clash} are also set by the analysis rows")
    records = [{**ids, **row} for row in rows]
    order = dict.fromkeys([*ids, "method", *(key for row in rows for key in row)])
    columns = [c for c in order if c not in LAST] + list(LAST)
    table = pd.DataFrame.from_records(records, columns=columns)
    missing = [c for c in ("method", "metric") if table[c].isna().any()]
    if missing or "value" not in table or any("value" not in row for row in rows):
        raise ValueError(f"rows without {missing or ['value']}")
    return table.astype({"value": float})


def iter_factors(factors: Mapping[str, tuple]) -> Iterator[tuple[str, np.ndarray, str, bool]]:
    """Validate and unpack ``{name: (y (N,), kind, carried)}`` into ``(name, y, kind, carried)`` tuples.

    ``kind`` is ``"categorical"``, ``"continuous"`` or ``"circular"`` (values in turns: a factor of period 1,
    such as rotation and hue); ``carried`` says whether the condition carries the factor (``FactorSpec.carried``).
    """
    for name, (y, kind, carried) in factors.items():
        if kind not in KINDS:
            raise ValueError(f"factor {name!r}: kind must be one of {KINDS}, got {kind!r}")
        yield name, np.asarray(y), kind, bool(carried)


def circle_points(turns: np.ndarray) -> np.ndarray:
    """Values (N,) of period 1 -> points (N, 2) ``(cos 2πv, sin 2πv)`` on the unit circle: how a circular factor
    is regressed (a linear model cannot fit the jump from 0.99 back to 0)."""
    angle = 2 * np.pi * np.asarray(turns, dtype=np.float64)
    return np.column_stack([np.cos(angle), np.sin(angle)])


def turns_of(points: np.ndarray) -> np.ndarray:
    """Inverse of ``circle_points`` for any points (N, 2) off the origin: their angle in turns, in [0, 1)."""
    points = np.asarray(points, dtype=np.float64)
    return (np.arctan2(points[:, 1], points[:, 0]) / (2 * np.pi)) % 1.0


def circular_r2(y: np.ndarray, pred: np.ndarray) -> float:
    """R² of a circular factor: 1 − Σ d(pred, y)² / Σ d(ȳ, y)², with d the distance around the circle
    (``data.circular_distance``) and ȳ the circular mean of y (values in turns). 1 for a perfect prediction, ≈ 0 for
    one no better than the mean direction; NaN when y is constant."""
    y, pred = np.asarray(y, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    mean = turns_of(circle_points(y).mean(axis=0, keepdims=True))
    sst = float(np.sum(circular_distance(mean, y) ** 2))
    return 1.0 - float(np.sum(circular_distance(pred, y) ** 2)) / sst if sst > 0 else float("nan")
