"""Read a feature store (one file, or the shards of one extraction as a single store), lazily and streamed.

HDF5 handles are opened on first data access and re-opened in every process (pid check), so a ``FeatureStore``
can be handed to torch DataLoader workers (fork or spawn). Reads go block by block: memory holds the result plus
one block of at most ``SPAN_BYTES`` (4 MiB).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from lisa_probe.store import schema
from lisa_probe.store.schema import Field

if TYPE_CHECKING:
    from typing_extensions import Self

ITER_BYTES = 16 << 20  # default bytes of rows per ``iter_chunks`` chunk
SCAN_ROWS = 1 << 16  # rows of sample ids read per block by ``iter_whole_sample_chunks``
SPAN_BYTES = 4 << 20  # most bytes of one dataset read in one HDF5 call
STRING_ROW_BYTES = 128  # what a string row costs once read (a Python str and its pointer), for SPAN_BYTES
POOLS = ("mean", "max")


def _not_a_store(path: Path, why: str) -> ValueError:
    return ValueError(f"not a lisa_probe feature store: {path} ({why})")


def read_header(path: Path) -> dict[str, Any]:
    """Root attrs of one store file (python values, plus its ``compression``), after checking it is a complete
    schema-1 store (ValueError otherwise)."""
    if not path.is_file():
        raise _not_a_store(path, "no such file")
    try:
        h5 = h5py.File(path, "r")
    except OSError as err:
        raise _not_a_store(path, f"cannot be opened as HDF5, truncated or corrupt? {err}") from err
    try:
        return _checked_header(path, h5)
    except (KeyError, TypeError, OSError, RuntimeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is a corrupt feature store ({type(err).__name__}: {err}); extract it again") from err
    finally:
        h5.close()


def _checked_header(path: Path, h5: h5py.File) -> dict[str, Any]:
    """The body of ``read_header`` on an open file (KeyError, TypeError, JSON errors for a damaged one)."""
    attrs = {key: value.item() if isinstance(value, np.generic) else value for key, value in h5.attrs.items()}
    missing = [key for key in ("schema_version", "n_rows", "layout") if key not in attrs]
    if missing:
        raise _not_a_store(path, f"no {missing} attributes")
    if attrs["schema_version"] != schema.SCHEMA_VERSION:
        raise ValueError(f"{path}: feature store schema {attrs['schema_version']!r} is not supported "
                         f"(this code reads {schema.SCHEMA_VERSION!r})")
    if not attrs.get("complete") or attrs.get("rows_done", 0) < attrs["n_rows"]:
        raise ValueError(f"{path} is an incomplete (truncated) feature store: {attrs.get('rows_done')}/"
                         f"{attrs['n_rows']} rows written; finish the extraction (--resume) first")
    for name in json.loads(attrs["layout"]):
        if name not in h5:
            raise ValueError(f"{path} is truncated or corrupt: dataset {name} is missing")
        if h5[name].shape[0] != attrs["n_rows"]:
            raise ValueError(f"{path} is truncated or corrupt: dataset {name} has {h5[name].shape[0]} rows, "
                             f"n_rows is {attrs['n_rows']}")
    attrs["compression"] = h5[next(iter(json.loads(attrs["layout"])))].compression or "none"
    schema.validate_layout(schema.layout_from_json(attrs["layout"]))  # a layout this code reads
    for key in schema.JSON_ATTRS:
        if key in attrs:
            json.loads(attrs[key])
    return attrs


def _order_shards(paths: list[Path], headers: list[dict[str, Any]]) -> list[int]:
    """Indices of ``paths`` in rank order; checks shards share attrs (but shard info / n_rows) and cover all ranks."""
    ignore = (*schema.SHARD_ATTRS, "n_rows", "rows_done", "compression")
    first = {key: value for key, value in headers[0].items() if key not in ignore}
    for path, header in zip(paths[1:], headers[1:], strict=True):
        for key in (first.keys() | header.keys()) - set(ignore):
            if header.get(key) != first.get(key):
                raise ValueError(f"shards {paths[0]} and {path} differ in attr {key!r}")
    ranks = [header.get("shard_rank") for header in headers]
    world = headers[0].get("shard_world_size")
    if None in ranks or sorted(ranks) != list(range(len(paths))) or world != len(paths):
        raise ValueError(f"shards must cover ranks 0..{len(paths) - 1} of one extraction; got ranks {ranks} "
                         f"of world size {world}")
    return sorted(range(len(paths)), key=lambda i: ranks[i])


def pool_rows(block: np.ndarray, pool: str | None) -> np.ndarray:
    """Pool ``(n, C, H, W)`` over H, W -> ``(n, C)``, or tokens ``(n, N, D)`` over N -> ``(n, D)`` (float32).
    Blocks with rows of shape ``()`` or ``(D,)`` are returned unchanged."""
    if pool is None or block.ndim < 3:
        return block
    axes = tuple(range(1, block.ndim - 1)) if block.ndim == 3 else tuple(range(2, block.ndim))
    block = block.astype(np.float32, copy=False)
    return block.mean(axis=axes) if pool == "mean" else block.max(axis=axes)


def whole_sample_chunks(samples: np.ndarray, chunk_rows: int, min_samples: int = 1) -> list[slice]:
    """Split rows (N,) whose equal sample ids are consecutive into consecutive chunks of whole samples: as many
    samples as fit in ``chunk_rows`` rows, but at least ``min_samples`` (a shorter remainder joins the last chunk;
    the analysis asks for two, so that every row finds another sample to be paired with in its chunk).

    Returns:
        slices of the rows, in order, covering all N rows.
    """
    starts = np.flatnonzero(np.r_[True, samples[1:] != samples[:-1]])
    ends = np.r_[starts[1:], len(samples)]
    bounds, first = [0], 0  # chunk starts; index of the current chunk's first sample
    for k in range(1, len(starts)):
        if ends[k] - bounds[-1] > chunk_rows and k - first >= min_samples:
            bounds.append(int(starts[k]))
            first = k
    if len(bounds) > 1 and len(starts) - first < min_samples:
        bounds.pop()
    return [slice(start, stop) for start, stop in zip(bounds, [*bounds[1:], len(samples)])]


def iter_whole_sample_chunks(read_samples: Callable[[slice], np.ndarray], n_rows: int, chunk_rows: int,
                             min_samples: int = 1, block_rows: int = SCAN_ROWS) -> Iterator[tuple[slice, np.ndarray]]:
    """``whole_sample_chunks`` over N rows whose sample ids are read a block at a time, so that memory does not grow
    with N: ``read_samples(slice)`` returns the ids of those rows; no chunk spans two blocks (a block ends before its
    last ``min_samples`` samples, which start the next one).

    Yields:
        ``(slice of the rows, (k,) their sample ids)``, in order, covering all N rows.
    """
    start, block = 0, max(block_rows, chunk_rows)
    while start < n_rows:
        stop = min(n_rows, start + block)
        samples = read_samples(slice(start, stop))
        cut = len(samples)
        if stop < n_rows:
            starts = np.flatnonzero(np.r_[True, samples[1:] != samples[:-1]])
            if len(starts) <= 2 * min_samples:  # too few whole samples in this block: read a longer one
                block *= 2
                continue
            cut = int(starts[-min_samples])
        for part in whole_sample_chunks(samples[:cut], chunk_rows, min_samples):
            yield slice(start + part.start, start + part.stop), samples[part]
        start += cut


class FeatureStore:
    """A complete feature store (``path``) or the complete shards of one extraction (a list of paths, any order).

    Raises ValueError for a missing or foreign file ("not a lisa_probe feature store: <path>"), an unfinished or
    truncated store, or shards that do not belong together.
    """

    def __init__(self, path_or_paths: str | os.PathLike | Sequence[str | os.PathLike]) -> None:
        single = isinstance(path_or_paths, (str, os.PathLike))
        paths = [Path(path_or_paths)] if single else [Path(p) for p in path_or_paths]
        if not paths:
            raise ValueError("FeatureStore needs at least one path")
        headers = [read_header(path) for path in paths]
        order = _order_shards(paths, headers) if len(paths) > 1 else [0]
        self.paths = [paths[i] for i in order]
        self._offsets = np.cumsum([0] + [headers[i]["n_rows"] for i in order])
        header = headers[order[0]]
        self.layout: dict[str, Field] = schema.layout_from_json(header["layout"])
        self.compression: str = header["compression"]
        hidden = {*schema.BOOKKEEPING_ATTRS, "compression"} - {"schema_version"}
        self._attrs = {key: json.loads(value) if key in schema.JSON_ATTRS else value for key, value in header.items()
                       if key not in hidden}
        self._handles: dict[int, h5py.File] = {}
        self._pid = os.getpid()
        self._meta: dict[str, np.ndarray] | None = None

    # ----------------------------------------------------------------- description
    @property
    def n_rows(self) -> int:
        """Total rows (over all shards)."""
        return int(self._offsets[-1])

    @property
    def attrs(self) -> dict[str, Any]:
        """Root attrs: ``schema_version`` and the extraction's attrs, ``config``/``extract_args`` parsed from JSON."""
        return dict(self._attrs)

    @property
    def sites(self) -> list[str]:
        """Feature site names, in extraction order (``features/<site>``)."""
        return [name.split("/", 1)[1] for name in self.layout if name.startswith("features/")]

    @property
    def factors(self) -> dict[str, dict[str, Any]]:
        """``{factor name: {"kind": "categorical"|"continuous", "carried": bool, "period": float | None, "levels":
        tuple[str, ...] | None}}`` (``period``: where a circular factor wraps; None for linear ones and in stores
        written before it; ``levels``: a categorical factor's class names, class i named ``levels[i]``; None where
        the data named none)."""
        return {name.rsplit("/", 1)[1]: {"kind": fld.attrs["kind"], "carried": bool(fld.attrs["carried"]),
                                         "period": fld.attrs.get("period"),
                                         "levels": tuple(fld.attrs["levels"]) if "levels" in fld.attrs else None}
                for name, fld in self.layout.items() if name.startswith("meta/factors/")}

    @property
    def timesteps(self) -> np.ndarray:
        """Sorted unique ``meta/t`` values, float32 ``(n_t,)``."""
        return np.unique(self._meta_arrays()["t"])

    # ----------------------------------------------------------------- handles
    def _handle(self, shard: int) -> h5py.File:
        """The HDF5 file of ``shard`` opened by this process (handles from a parent process are dropped)."""
        if self._pid != os.getpid():
            self._handles, self._pid = {}, os.getpid()
        if shard not in self._handles:
            self._handles[shard] = h5py.File(self.paths[shard], "r")
        return self._handles[shard]

    def close(self) -> None:
        """Close this process's HDF5 handles (they reopen on the next access)."""
        if self._pid == os.getpid():
            for handle in self._handles.values():
                handle.close()
        self._handles = {}

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_handles": {}}

    # ----------------------------------------------------------------- reading
    def _field(self, name: str) -> Field:
        if name not in self.layout:
            raise KeyError(f"no dataset {name!r} in the store; it has {list(self.layout)}")
        return self.layout[name]

    def _rows(self, rows: Any) -> np.ndarray:
        """Row selection (None = all, slice, bool mask or int indices) as int64 indices ``(n,)``."""
        if rows is None:
            return np.arange(self.n_rows)
        if isinstance(rows, slice):
            return np.arange(*rows.indices(self.n_rows))
        rows = np.asarray(rows)
        if rows.size == 0:
            return np.empty(0, dtype=np.int64)
        if rows.dtype == bool:
            if rows.shape != (self.n_rows,):
                raise ValueError(f"row mask must have shape ({self.n_rows},), got {rows.shape}")
            return np.flatnonzero(rows)
        rows = rows.astype(np.int64, casting="safe").reshape(-1)
        if rows.min() < 0 or rows.max() >= self.n_rows:
            raise IndexError(f"row indices must lie in 0..{self.n_rows - 1}, got min {rows.min()} and max "
                             f"{rows.max()}")
        return rows

    def _read_block(self, shard: int, name: str, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` of ``name`` in ``shard``; strings come back as an object array of str."""
        dset = self._handle(shard)[name]
        if self.layout[name].dtype == schema.STRING:
            return dset.asstr()[start:stop]
        block = dset[start:stop]
        return np.char.decode(block, "utf-8").astype(object) if block.dtype.kind == "S" else block

    def _read_sorted(self, name: str, rows: np.ndarray, pool: str | None) -> np.ndarray:
        """Rows (sorted, unique, global) of ``name``, pooled per block. Each block read spans the wanted rows of
        neighbouring storage chunks inside one ``SPAN_BYTES`` window, so it holds at most ~``SPAN_BYTES``."""
        pieces = []
        shards = np.searchsorted(self._offsets, rows, side="right") - 1
        fld = self.layout[name]
        span = max(1, SPAN_BYTES // max(1, STRING_ROW_BYTES if fld.is_string else fld.row_nbytes))
        for shard in np.unique(shards):
            local = rows[shards == shard] - self._offsets[shard]
            per_chunk = self._handle(shard)[name].chunks[0]
            breaks = (np.diff(local // span) != 0) | (np.diff(local // per_chunk) > 1)
            for group in np.split(local, np.flatnonzero(breaks) + 1):
                block = self._read_block(shard, name, int(group[0]), int(group[-1]) + 1)
                pieces.append(pool_rows(block if len(block) == len(group) else block[group - group[0]], pool))
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def read(self, name: str, rows: Any = None, pool: str | None = None) -> np.ndarray:
        """Read dataset ``name`` (e.g. "features/mid", "meta/t") at ``rows`` -> ``(n, *row_shape)``.

        ``rows``: None (all), a slice, a bool mask ``(n_rows,)`` or int indices in any order (duplicates allowed;
        read sorted, returned in the given order). ``pool``: None, "mean" or "max" over the spatial dims of
        ``(C, H, W)`` rows -> ``(n, C)``, or over the tokens of ``(N, D)`` rows -> ``(n, D)``, in float32.
        Strings are returned as an object array of str.
        """
        fld = self._field(name)
        if pool not in (None, *POOLS):
            raise ValueError(f"pool must be None or one of {POOLS}, got {pool!r}")
        rows = self._rows(rows)
        if rows.size == 0:
            return pool_rows(np.empty((0, *fld.shape), dtype=object if fld.is_string else fld.dtype), pool)
        if np.all(rows[1:] > rows[:-1]):
            return self._read_sorted(name, rows, pool)
        unique, inverse = np.unique(rows, return_inverse=True)
        return self._read_sorted(name, unique, pool)[inverse]

    def _meta_arrays(self) -> dict[str, np.ndarray]:
        """Cached meta columns: sample_id, t, noise_level, draw and one per factor, each ``(n_rows,)``."""
        if self._meta is None:
            self._meta = {column: self.read(name) for column, name in self._meta_names().items()}
        return self._meta

    def _meta_names(self) -> dict[str, str]:
        """``{meta column: dataset}``: sample_id, t, noise_level, draw, prompt (stores of captioned data), then one
        per factor."""
        return {**{column: f"meta/{column}" for column in schema.META_COLUMNS if f"meta/{column}" in self.layout},
                **{factor: f"meta/factors/{factor}" for factor in self.factors}}

    def meta(self) -> Any:
        """pandas DataFrame ``(n_rows, 4 + n_factors)``: sample_id, t, noise_level, draw, then one column per
        factor; the index is the row number."""
        import pandas as pd

        return pd.DataFrame(self._meta_arrays())

    def read_meta(self, rows: Any = None) -> Any:
        """The meta columns of ``rows`` (as ``read``) as a DataFrame ``(n, 4 + n_factors)``, read from the file
        without caching (``meta`` keeps all rows' columns in memory)."""
        import pandas as pd

        return pd.DataFrame({column: self.read(name, rows) for column, name in self._meta_names().items()})

    def select(self, t: Any = None, sample_ids: Any = None, **factor_equals: Any) -> np.ndarray:
        """Sorted int64 row indices whose t is in ``t``, sample id in ``sample_ids`` and each named factor equals
        (or is in) the given value(s); None means no constraint."""
        unknown = sorted(set(factor_equals) - set(self.factors))
        if unknown:
            raise KeyError(f"unknown factors {unknown}; the store has {sorted(self.factors)}")
        meta = self._meta_arrays()
        mask = np.ones(self.n_rows, dtype=bool)
        if t is not None:
            mask &= np.isin(meta["t"], np.asarray(t, dtype=np.float32))
        if sample_ids is not None:
            mask &= np.isin(meta["sample_id"], np.asarray(list(sample_ids), dtype=object))
        for name, value in factor_equals.items():
            value = np.asarray(value)
            mask &= np.isin(meta[name], value.astype(np.float32) if meta[name].dtype.kind == "f" else value)
        return np.flatnonzero(mask)

    def iter_chunks(
        self, names: Sequence[str], rows: Any = None, chunk_rows: int | None = None, pool: str | None = None,
    ) -> Iterator[dict[str, np.ndarray]]:
        """Yield ``{"rows": (k,) int64 row indices, name: (k, *row_shape) or pooled (k, C)}`` for consecutive
        pieces of ``rows`` (given order kept), ``k <= chunk_rows``. Default ``chunk_rows``: ~16 MiB of the named
        datasets' rows. Memory holds one piece plus one read block (at most ~``SPAN_BYTES``)."""
        names = list(names)
        if chunk_rows is None:
            chunk_rows = max(1, ITER_BYTES // max(1, sum(self._field(name).row_nbytes for name in names)))
        rows = self._rows(rows)
        for start in range(0, rows.size, chunk_rows):
            piece = rows[start:start + chunk_rows]
            yield {"rows": piece, **{name: self.read(name, piece, pool) for name in names}}

    def as_torch_dataset(self, names: Sequence[str], rows: Any = None, pool: str | None = None) -> FeatureDataset:
        """Map-style torch dataset over ``rows``; see ``FeatureDataset``."""
        return FeatureDataset(self, names, self._rows(rows), pool)


class FeatureDataset:
    """Map-style dataset for ``torch.utils.data.DataLoader``: item ``i`` is ``{"row": int, name: tensor of shape
    row_shape (pooled: (C,)) or str}`` for store row ``rows[i]``.

    Duck-typed (no torch import until an item is read) and picklable; DataLoader batches are fetched with one
    chunked read per dataset through ``__getitems__``. Each worker process opens its own HDF5 handles.
    """

    def __init__(self, store: FeatureStore, names: Sequence[str], rows: np.ndarray, pool: str | None = None) -> None:
        self.store, self.names, self.rows, self.pool = store, list(names), rows, pool

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        import torch

        rows = self.rows[np.asarray(indices, dtype=np.int64)]
        columns = {name: self.store.read(name, rows, self.pool) for name in self.names}
        columns = {name: values if values.dtype == object else torch.from_numpy(values)
                   for name, values in columns.items()}
        return [{"row": int(row), **{name: values[i] for name, values in columns.items()}}
                for i, row in enumerate(rows)]
