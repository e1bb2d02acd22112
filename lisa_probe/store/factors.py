"""Giving a finished feature store factor columns it lacks (``python -m lisa_probe.add_factors`` is the command line).

The store is rewritten row by row into ``<path>.partial`` by a ``FeatureStoreWriter`` with its layout plus the new
``meta/factors/<name>`` datasets, checked by the writer's read-back of every dataset's SHA-256 and moved over the old
file only then: an interrupted or failed run leaves the store as it was. Every other dataset, attr and the
compression are kept; the root attr ``FACTOR_SOURCES_ATTR`` records where each added factor came from.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from lisa_probe.store import schema
from lisa_probe.store.reader import FeatureStore
from lisa_probe.store.writer import FeatureStoreWriter

FACTOR_SOURCES_ATTR = "factor_sources"  # root attr, JSON: {factor: {"source": ..., ...}} of factors added later


def factor_fields(specs: Mapping[str, Mapping[str, Any]]) -> dict[str, schema.Field]:
    """``{"meta/factors/<name>": Field}`` of factor specs ``{name: {"kind", "carried"[, "period"][, "levels"]}}``, as
    ``schema.make_layout`` makes them."""
    fields = schema.make_layout({"x": (1,)}, (1, 1, 1), specs)
    return {name: fld for name, fld in fields.items() if name.startswith("meta/factors/")}


def add_factors(path: str | Path, specs: Mapping[str, Mapping[str, Any]], values: Mapping[str, Mapping[str, Any]],
                source: Mapping[str, Any], replace: bool = False, progress: bool = True) -> Path:
    """Add factors to the store at ``path``; returns ``path``.

    ``specs``: ``{name: {"kind": "categorical"|"continuous", "carried": bool[, "levels": [str]]}}``; ``values``:
    ``{name: {sample id: value}}`` covering every sample id of the store (a categorical value is its class code);
    ``source``: what the factors came from, recorded per factor in the ``FACTOR_SOURCES_ATTR`` attr; ``replace``:
    factors the store already has are replaced instead of refused.

    Raises ValueError (the store untouched) for a factor the store has (without ``replace``), a sample id without a
    value, a value the factor's dtype cannot hold; the writer's errors for a busy output or a failed write.
    """
    path = Path(path)
    new_fields = factor_fields(specs)
    with FeatureStore(path) as store:
        have = [name for name in specs if f"meta/factors/{name}" in store.layout]
        if have and not replace:
            raise ValueError(f"{path} already has factor(s) {', '.join(have)}; pass --replace to replace them")
        sample_ids = store.read("meta/sample_id").astype(str)
        columns = {f"meta/factors/{name}": row_values(name, values[name], sample_ids, new_fields[
            f"meta/factors/{name}"]) for name in specs}
        kept = {name: fld for name, fld in store.layout.items() if name not in new_fields}
        meta = {name: fld for name, fld in kept.items() if name.startswith("meta/")}
        layout = {**meta, **new_fields, **{name: fld for name, fld in kept.items() if name not in meta}}
        attrs = {key: value for key, value in store.attrs.items() if key not in schema.BOOKKEEPING_ATTRS}
        sources = json.loads(attrs.get(FACTOR_SOURCES_ATTR, "{}"))
        attrs[FACTOR_SOURCES_ATTR] = json.dumps({**sources, **{name: dict(source) for name in specs}}, sort_keys=True)
        copied = [name for name in layout if name not in new_fields]
        with FeatureStoreWriter(path, layout, store.n_rows, attrs, compression=store.compression,
                                overwrite=True) as writer, \
                tqdm(total=store.n_rows, unit="row", desc=path.name, disable=not progress) as bar:
            for chunk in store.iter_chunks(copied):
                rows = chunk["rows"]
                writer.write_rows(int(rows[0]), {**{name: chunk[name] for name in copied},
                                                 **{name: column[rows] for name, column in columns.items()}})
                bar.update(len(rows))
    return path


def row_values(name: str, by_sample: Mapping[str, Any], sample_ids: np.ndarray, fld: schema.Field) -> np.ndarray:
    """The ``(n_rows,)`` column of factor ``name`` from its values by sample id, in the field's dtype; ValueError
    naming a sample id without a value or a value the dtype cannot hold."""
    missing = sorted(str(sample_id) for sample_id in set(sample_ids) - set(by_sample))
    if missing:
        raise ValueError(f"factor {name!r}: {len(missing)} of the store's sample ids have no value, e.g. {missing[0]!r}")
    column = np.asarray([by_sample[sample_id] for sample_id in sample_ids])
    if fld.dtype == "int64" and not np.issubdtype(column.dtype, np.integer):
        raise ValueError(f"factor {name!r} is categorical: its values must be class codes (integers), got "
                         f"{column.dtype} values such as {column[0]!r}")
    if not np.all(np.isfinite(column.astype(np.float64))):
        raise ValueError(f"factor {name!r} has non-finite values")
    return column.astype(fld.dtype)
