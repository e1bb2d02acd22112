"""Factor values for samples by id, read from a table (CSV / parquet / jsonl / arrow) or from the columns of the
captioned dataset a store was extracted from: what ``python -m lisa_probe.add_factors`` attaches to a store.

A table row matches a store's sample when its id equals the sample id (``shapes/val/000012``) or the id's last
part (``000012``; a folder store's file name ``cat.png``; a captioned store's ``<table split>-<row>``). Columns are
typed as the folder dataset's factors CSV (``folder.column_spec``: numbers with few distinct integer values and
names are categorical, coded 0..K-1 in sorted order over the whole column so that every store of the same data
gets the same codes; other numbers continuous).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from lisa_probe.data import FactorSpec
from lisa_probe.data.captioned import load_table
from lisa_probe.data.folder import column_spec, encode_factor, read_csv_rows


class FactorTable:
    """Factor columns by row id: ``ids`` (one per row), ``cells`` (``{column: [cell text per row]}``), ``source``
    (what to record as their origin)."""

    def __init__(self, ids: Sequence[str], cells: dict[str, list[str]], source: dict):
        self.ids, self.cells, self.source = [str(i) for i in ids], cells, source
        seen: dict[str, int] = {}
        for row, row_id in enumerate(self.ids):
            if row_id in seen:
                raise ValueError(f"{source['source']}: id {row_id!r} is on two rows ({seen[row_id]} and {row}); "
                                 "ids must be unique")
            seen[row_id] = row

    def specs(self, carried: Sequence[str]) -> tuple[dict[str, FactorSpec], dict[str, list | None]]:
        """``({column: FactorSpec}, {column: levels or None})`` inferred from every row of each column."""
        specs, levels = {}, {}
        for column, cells in self.cells.items():
            specs[column], levels[column] = column_spec(column, cells, column in carried,
                                                        f"column {column!r} of {self.source['source']}")
        return specs, levels

    def values_for(self, sample_ids: Sequence[str], levels: dict[str, list | None]) -> dict[str, dict[str, float | int]]:
        """``{column: {sample id: value}}`` for the given sample ids (matched whole or by their last part); ValueError
        naming how many have no row, with an example."""
        row_of = {row_id: row for row, row_id in enumerate(self.ids)}
        rows = {}
        sample_ids = [str(sample_id) for sample_id in sample_ids]
        for sample_id in dict.fromkeys(sample_ids):
            row = row_of.get(sample_id, row_of.get(sample_id.rsplit("/", 1)[-1]))
            if row is not None:
                rows[sample_id] = row
        unmatched = [sample_id for sample_id in dict.fromkeys(sample_ids) if sample_id not in rows]
        if unmatched:
            raise ValueError(f"{len(unmatched)} of the store's {len(set(sample_ids))} samples have no row in "
                             f"{self.source['source']}, e.g. {unmatched[0]!r} (a row's id must be the sample id or "
                             f"its last part, {unmatched[0].rsplit('/', 1)[-1]!r})")
        return {column: {sample_id: encode_factor(cells[row], levels[column]) for sample_id, row in rows.items()}
                for column, cells in self.cells.items()}


def cell_text(value, column: str, row_id: str, source: str) -> str:
    """A table cell as text; ValueError naming the row for an empty or non-finite one."""
    text = "" if value is None else str(value).strip()
    try:
        finite = math.isfinite(float(text))
    except ValueError:  # a category name
        finite = True
    if not text or not finite:
        raise ValueError(f"{source}: row {row_id!r} has no finite value in column {column!r}")
    return text


def read_columns(split: Mapping[str, Sequence], columns: Sequence[str], ids: Sequence[str], source: str) \
        -> dict[str, list[str]]:
    """``{column: cell texts}`` of a table's columns (``{name: values}``), ValueError naming a missing column and
    listing those there are."""
    for column in columns:
        if column not in split:
            raise ValueError(f"column {column!r} is not in {source}; its columns: {', '.join(split)}")
    return {column: [cell_text(value, column, row_id, source) for value, row_id in zip(split[column], ids)]
            for column in columns}


def table_factors(path: str | Path, columns: Sequence[str], id_column: str = "sample_id") -> FactorTable:
    """The factor ``columns`` of a table file (CSV, parquet, jsonl, arrow; its first split), rows named by
    ``id_column``."""
    path = Path(path)
    if path.suffix == ".csv" and path.is_file():  # read as text: a type guess would turn an id '000012' into 12
        rows = read_csv_rows(path, "table")
        split = {name: [row[name] for row in rows] for name in (rows[0] if rows else {})}
    else:
        table = next(iter(load_table(path).values()))
        split = {name: table[name] if name in (*columns, id_column) else () for name in table.column_names}
    if id_column not in split:
        raise ValueError(f"id column {id_column!r} is not in {path}; its columns: {', '.join(split)} "
                         "(name one with --id-column)")
    ids = [str(value) for value in split[id_column]]
    return FactorTable(ids, read_columns(split, columns, ids, str(path)),
                       {"source": str(path), "id_column": id_column})


def dataset_factors(data_root: str | Path, table_split: str, columns: Sequence[str]) -> FactorTable:
    """The factor ``columns`` of the captioned dataset at ``data_root``: the rows of its split ``table_split``,
    named ``<table split>-<row index>`` as a captioned store's sample ids end."""
    tables = load_table(Path(data_root))
    if table_split not in tables:
        raise ValueError(f"the captioned dataset {data_root} has no split {table_split!r} (its splits: "
                         f"{', '.join(tables)})")
    table = tables[table_split]
    split = {name: table[name] if name in columns else () for name in table.column_names}  # only these are read
    ids = [f"{table_split}-{row}" for row in range(len(table))]
    where = f"{data_root} ({table_split} split)"
    return FactorTable(ids, read_columns(split, columns, ids, where), {"source": str(data_root),
                                                                       "table_split": table_split})
