"""The long-form table shared by every analysis module.

One row per measurement. Columns: the identifying columns the caller passes through (``run``, ``site``,
``t_bin`` ...), then ``method`` (the analysis method: ``ridge``, ``cka``, ``logistic``, ``dci`` ...), then
row-specific columns (``factor``, ``carried``, ``control`` ...), then ``metric`` and ``value``.
"""

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import pandas as pd

KINDS = ("categorical", "continuous")
LAST = ("metric", "value")


def long_table(rows: Iterable[Mapping[str, Any]], **ids: Any) -> pd.DataFrame:
    """Build a long-form table from measurement rows and constant identifying columns.

    Args:
        rows: one mapping per measurement, each with ``metric`` and ``value`` and, unless ``method`` is
            passed in ``ids``, ``method``; any other keys become columns.
        **ids: columns with one value for every row (``run="lisa", site="mid", t_bin=3`` ...). A name that
            is also a key of a row is an error: the caller would silently lose one of the two.

    Returns:
        DataFrame with columns ``[*ids, method, *other row keys, metric, value]``; ``value`` is float.
    """
    rows = [dict(row) for row in rows]
    clash = sorted({key for row in rows for key in row} & set(ids))
    if clash:
        raise ValueError(f"identifying columns {clash} are also set by the analysis rows")
    records = [{**ids, **row} for row in rows]
    order = dict.fromkeys([*ids, "method", *(key for row in rows for key in row)])
    columns = [c for c in order if c not in LAST] + list(LAST)
    table = pd.DataFrame.from_records(records, columns=columns)
    missing = [c for c in ("method", *LAST) if table[c].isna().any()]
    if missing:
        raise ValueError(f"rows without {missing}")
    return table.astype({"value": float})


def iter_factors(factors: Mapping[str, tuple]) -> Iterator[tuple[str, np.ndarray, str, bool]]:
    """Validate and unpack ``{name: (y (N,), kind, carried)}`` into ``(name, y, kind, carried)`` tuples.

    ``kind`` is ``"categorical"`` or ``"continuous"``; ``carried`` says whether the condition carries the
    factor (the data module's ``FactorSpec.carried``).
    """
    for name, (y, kind, carried) in factors.items():
        if kind not in KINDS:
            raise ValueError(f"factor {name!r}: kind must be one of {KINDS}, got {kind!r}")
        yield name, np.asarray(y), kind, bool(carried)
