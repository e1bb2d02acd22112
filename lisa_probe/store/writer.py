"""Write a feature store: crash-safe, resumable, row-ordered; plus sharding helpers and shard merging.

Storage choices (see docs/DESIGN.md, "Feature store"):

* Every dataset is created up front with its final row count ``n_rows`` (the extraction knows it:
  n_samples × n_timesteps × n_draws), so a resumed write never reshapes anything and the reader can check each
  dataset's length against ``n_rows``.
* All datasets are chunked along rows with the same ``chunk_rows``, chosen so that the widest dataset's chunk is
  ~1 MiB, and compressed with ``none`` | ``lzf`` | ``gzip`` (the writer's default lzf; ``extract`` passes its
  ``--compression``, default none; ``bench/bench_store.py`` measures them).
* One writer per output: ``files.OutputLock`` on ``<path>.lock`` is taken before any file is opened for
  writing (a second writer is refused with ``OutputBusyError`` naming the holder) and released at the end.
* The file is written at ``<path>.partial`` and renamed to ``path`` by ``close()`` once all rows are written
  (root attr ``complete`` = True) and the closed file has passed its read-back check: every dataset's SHA-256
  (dataset attr ``sha256``, kept while writing) is recomputed from disk. A write that fails, or data that reads
  back different, raises ``StoreWriteError`` and leaves the partial unpublished: resumable (``--resume``) when the
  failure came before its last commit, refused with a message otherwise.
* The partial's structure (datasets, attrs) is built at ``<path>.partial.new`` and renamed to ``<path>.partial``
  only when complete, so a kill during creation never leaves a partial that cannot be resumed.
* Crash safety: rows are buffered and written one whole chunk at a time, so no chunk is ever rewritten (rewriting
  a compressed chunk moves it, and a kill before the next flush then leaves the file's chunk index pointing at
  reused space: killed-and-resumed test writes broke that way in 22 of 30 tries). Freed file space is never reused
  (``fs_strategy="none"``), which costs nothing when chunks are written once. After each write the data is
  flushed, then the root attr ``rows_done`` is committed and flushed, so ``rows_done`` never counts rows whose
  data is not on disk; it advances by whole chunks, and a resumed writer rewrites the rows after it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from lisa_probe.files import OutputLock
from lisa_probe.store import schema
from lisa_probe.store.integrity import DIGEST_ATTR, RowDigests, verify_digests
from lisa_probe.store.reader import FeatureStore, read_header
from lisa_probe.store.schema import Field

if TYPE_CHECKING:
    from typing_extensions import Self

CHUNK_BYTES = 1 << 20
PROGRESS_ATTRS = ("rows_done", "complete")


def committed_rows(path: Path) -> int | None:
    """The ``rows_done`` of an unfinished store at ``path``; None when it cannot be read (then it is not touched)."""
    try:
        with h5py.File(path, "r") as handle:
            return int(handle.attrs["rows_done"])
    except (OSError, KeyError, ValueError, TypeError):
        return None


def partial_path(path: str | os.PathLike) -> Path:
    """``<path>.partial``: where an unfinished store lives."""
    path = Path(path)
    return path.with_name(path.name + ".partial")


class StoreWriteError(OSError):
    """Writing or checking a store's data failed (e.g. a full disk); the store was not published."""


def first_line(error: BaseException) -> str:
    """The first line of an error's message (HDF5's run over several lines with addresses and buffers), led by the
    system's reason where there is one ("File too large: ...")."""
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    errno = getattr(error, "errno", None)
    return f"{os.strerror(errno)}: {text.split(' (')[0]}" if errno else text


def shard_path(path: str | os.PathLike, rank: int, world_size: int) -> Path:
    """``<dir>/<stem>.shard-<rank>-of-<world_size>.h5`` for process ``rank`` of a multi-process extraction."""
    path = Path(path)
    return path.with_name(f"{path.stem}.shard-{rank}-of-{world_size}.h5")


def shard_range(n_items: int, rank: int, world_size: int) -> range:
    """Contiguous, balanced slice of ``range(n_items)`` for ``rank``; concatenating ranks 0..world_size-1 in order
    gives ``range(n_items)``, so merged shards have the row order of a single-process extraction."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
    return range(n_items * rank // world_size, n_items * (rank + 1) // world_size)


def rows_per_chunk(fields: Mapping[str, Field], n_rows: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Rows per HDF5 chunk, the same for every dataset: the widest dataset's chunk is at most ``chunk_bytes``
    (at least 1 row, at most ``n_rows``)."""
    return max(1, min(n_rows, chunk_bytes // max(fld.row_nbytes for fld in fields.values())))


def _compression_kwargs(compression: str) -> dict[str, Any]:
    """h5py ``create_dataset`` keywords for a compression name."""
    if compression not in schema.COMPRESSIONS:
        raise ValueError(f"compression must be one of {schema.COMPRESSIONS}, got {compression!r}")
    return {} if compression == "none" else {"compression": compression}


def root_attrs(fields: Mapping[str, Field], n_rows: int, attrs: Mapping[str, Any],
               shard: tuple[int, int] | None = None) -> dict[str, Any]:
    """The root attrs a writer of ``n_rows`` rows of ``fields`` gives a store, all but the progress ones
    (``rows_done``, ``complete``): schema version, the caller's ``attrs``, ``n_rows``, ``layout`` and the shard's
    ``(rank, world_size)``."""
    root = {"schema_version": schema.SCHEMA_VERSION, **schema.user_attrs(attrs), "n_rows": int(n_rows),
            "layout": schema.layout_to_json(fields)}
    if shard is not None:
        rank, world_size = shard
        if not 0 <= rank < world_size:
            raise ValueError(f"shard rank {rank} outside 0..{world_size - 1}")
        root.update(shard_rank=int(rank), shard_world_size=int(world_size))
    return root


def attr_differences(found: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    """One description per root attr whose value in a file (``found``) differs from ``expected``: the differing
    top-level keys of a JSON attr, else both values (cut to 200 characters)."""
    differences = []
    for key in {**expected, **found}:
        have, want = found.get(key), expected.get(key)
        if have != want:
            keys = schema.json_diff_keys(have, want) if key in schema.JSON_ATTRS and have and want else []
            detail = f" (keys {keys})" if keys else f": file has {str(have)[:200]!r}, now {str(want)[:200]!r}"
            differences.append(f"attr {key!r} differs{detail}")
    return differences


def check_finished_store(path: str | os.PathLike, layout: Mapping[str, Field | Sequence[Any]], n_rows: int,
                         attrs: Mapping[str, Any], shard: tuple[int, int] | None = None) -> None:
    """Check that the complete store (or shard) at ``path`` is what a ``FeatureStoreWriter(path, layout, n_rows,
    attrs, shard=shard)`` would write, e.g. before reusing a finished shard on resume.

    Raises:
        ValueError: not a complete feature store, or some root attrs differ (all named, see ``attr_differences``).
    """
    found = {key: value for key, value in read_header(Path(path)).items()
             if key not in (*PROGRESS_ATTRS, "compression")}
    differences = attr_differences(found, root_attrs(schema.validate_layout(layout), n_rows, attrs, shard))
    if differences:
        raise ValueError(f"finished store {path} was made by another extraction: {'; '.join(differences)}")


def _as_rows(fld: Field, name: str, values: Any, n: int) -> np.ndarray:
    """Convert one batch entry to an array of shape ``(n, *fld.shape)`` in the field's dtype (same-kind casts only:
    float32 -> float16 is fine, float -> int is refused; strings are utf-8 encoded for fixed-bytes fields)."""
    if fld.dtype == schema.STRING:
        array = np.asarray(values, dtype=object)
    elif fld.is_string:
        array = np.char.encode(np.asarray(values, dtype=str), "utf-8")
        if array.dtype.itemsize > np.dtype(fld.dtype).itemsize:
            raise ValueError(f"{name}: a value needs {array.dtype.itemsize} bytes, the field holds {fld.dtype}")
        array = array.astype(fld.dtype)
    else:
        array = np.asarray(values).astype(fld.dtype, casting="same_kind", copy=False)
    if array.shape != (n, *fld.shape):
        raise ValueError(f"{name}: batch shape {array.shape}, expected {(n, *fld.shape)}")
    return array


class FeatureStoreWriter:
    """Context manager writing a schema-1 feature store of ``n_rows`` rows, in order, batch by batch.

    ``layout``: ``{dataset name: (row_shape, dtype[, dataset attrs])}`` or ``schema.make_layout(...)``;
    ``attrs``: root attrs (``schema.REQUIRED_ATTRS``; ``config``/``extract_args`` as dicts or JSON strings);
    ``shard``: ``(rank, world_size)`` when this file is one shard of a multi-process extraction;
    ``chunk_bytes``: target bytes of the widest dataset's chunk (a resumed file keeps its chunking).

    A final ``path`` that exists raises FileExistsError unless ``overwrite`` (it is replaced only on a successful
    ``close()``). An existing ``<path>.partial`` is continued with ``resume`` (attrs and layout must match;
    ``rows_done`` says where to restart), discarded with ``overwrite``, else FileExistsError. ``resume`` without a
    partial file starts afresh.

    Attributes: ``rows_done`` (rows on disk and committed), ``next_row`` (the ``start_row`` the next
    ``write_rows`` must use; rows in between are buffered), ``chunk_rows``, ``path``, ``partial_path``.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        layout: Mapping[str, Field | Sequence[Any]],
        n_rows: int,
        attrs: Mapping[str, Any],
        compression: str = "lzf",
        overwrite: bool = False,
        resume: bool = False,
        shard: tuple[int, int] | None = None,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> None:
        if n_rows < 1:
            raise ValueError(f"n_rows must be >= 1, got {n_rows}")
        self.path = Path(path)
        self.partial_path = partial_path(self.path)
        self.fields = schema.validate_layout(layout)
        self.n_rows = int(n_rows)
        create_kwargs = _compression_kwargs(compression)
        self._root_attrs = root_attrs(self.fields, self.n_rows, attrs, shard)
        self._file: h5py.File | None = None
        self._lock = OutputLock(self.path)
        try:
            if self.path.exists() and not overwrite:
                raise FileExistsError(f"feature store {self.path} already exists; pass --overwrite to replace it")
            self._digests = RowDigests(self.fields)
            if self.partial_path.exists() and not resume and committed_rows(self.partial_path) == 0:
                self.partial_path.unlink()  # a partial with nothing committed (killed as it was made): nothing lost
            if self.partial_path.exists() and resume:
                self._file = self._resume(create_kwargs)
            elif self.partial_path.exists() and not overwrite:
                raise FileExistsError(f"unfinished feature store {self.partial_path} exists (an interrupted "
                                      "extraction); pass --resume to continue it or --overwrite to start over")
            else:
                self._file = self._create(rows_per_chunk(self.fields, self.n_rows, chunk_bytes), create_kwargs)
            self.chunk_rows: int = self._file["meta/t"].chunks[0]
            self._rows_done = int(self._file.attrs["rows_done"])
        except BaseException:
            self._abandon()
            raise
        self._pending: list[dict[str, np.ndarray]] = []  # accepted rows [rows_done, next_row), not yet written
        self.next_row = self._rows_done

    def _create(self, chunk_rows: int, kwargs: dict[str, Any], source: h5py.File | None = None) -> h5py.File:
        """Create ``<path>.partial`` with every dataset allocated for ``n_rows`` rows, chunked by ``chunk_rows``
        (``kwargs``: compression keywords for ``create_dataset``), built at ``<path>.partial.new`` and renamed once
        whole; with ``source`` (an unfinished store being resumed), its committed rows are copied in, chunk by
        chunk in the order a writer writes them."""
        self.partial_path.parent.mkdir(parents=True, exist_ok=True)
        staging = self.partial_path.with_name(self.partial_path.name + ".new")
        done = int(source.attrs["rows_done"]) if source is not None else 0
        with h5py.File(staging, "w", fs_strategy="none") as h5:
            h5.attrs.update(self._root_attrs)
            h5.attrs.update(rows_done=0, complete=False)
            for name, fld in self.fields.items():
                dset = h5.create_dataset(name, shape=(self.n_rows, *fld.shape), dtype=fld.h5_dtype,
                                         chunks=(chunk_rows, *fld.shape), **kwargs)
                dset.attrs.update(fld.attrs)
            for start in range(0, done, chunk_rows):
                stop = min(start + chunk_rows, done)
                for name in self.fields:
                    rows = source[name][start:stop]
                    h5[name][start:stop] = rows
                    self._digests.update(name, rows)
            h5.attrs["rows_done"] = done
        os.replace(staging, self.partial_path)
        return h5py.File(self.partial_path, "r+", rdcc_nbytes=0)  # no chunk cache: see the module docstring

    def _resume(self, kwargs: dict[str, Any]) -> h5py.File:
        """Continue ``<path>.partial``: after a read-only check that it was started with the same attrs/layout (a
        refused resume leaves it untouched), its committed rows go into a freshly built partial (``_create``), so
        damage after its last commit (a write that failed half-way on a full disk) is not carried on."""
        corrupt = f"cannot resume the unfinished feature store {self.partial_path}: it is corrupt"
        try:
            old = h5py.File(self.partial_path, "r")
        except OSError as err:
            raise StoreWriteError(f"{corrupt} ({first_line(err)}); pass --overwrite to start over") from err
        with old:
            try:
                self._check_resumable(old)
            except (OSError, KeyError) as err:
                raise StoreWriteError(f"{corrupt} ({first_line(err)}); pass --overwrite to start over") from err
            try:
                return self._create(old["meta/t"].chunks[0], kwargs, source=old)
            except (OSError, RuntimeError, KeyError) as err:
                raise StoreWriteError(f"cannot resume {self.partial_path}: copying its committed rows failed "
                                      f"({first_line(err)}; is the disk full, or the file damaged?); pass "
                                      "--overwrite to start over") from err

    def _check_resumable(self, h5: h5py.File) -> None:
        """Raise ValueError naming every root attr (and config key) that differs from this writer's, OSError for a
        missing or misshaped dataset or a file that failed its read-back check."""
        stored = {key: value for key, value in h5.attrs.items() if key not in PROGRESS_ATTRS}
        differences = attr_differences(stored, self._root_attrs)
        if differences:
            raise ValueError(f"cannot resume {self.partial_path}: {'; '.join(differences)}; pass --overwrite to "
                             "start over")
        if h5.attrs.get("complete"):
            raise OSError("it is marked complete but failed its read-back check when it was closed")
        for name, fld in self.fields.items():
            expected = (self.n_rows, *fld.shape)
            found = h5[name].shape if name in h5 else "missing"
            if found != expected:
                raise OSError(f"dataset {name}: shape {found}, expected {expected}")

    @property
    def rows_done(self) -> int:
        """Rows committed (on disk, counted in the file's ``rows_done``); a resumed writer restarts here."""
        return self._rows_done

    def write_rows(self, start_row: int, batch: Mapping[str, Any]) -> None:
        """Accept rows ``[start_row, start_row + n)`` of every dataset; write and commit all complete chunks.

        ``batch``: ``{dataset name: array (n, *row_shape)}`` with exactly the layout's names (strings as a
        sequence of str). ``start_row`` must equal ``next_row`` (rows are written in order). Rows are buffered
        until they fill whole chunks (``chunk_rows``; the last chunk when ``n_rows`` is reached), so every chunk is
        written once; ``rows_done`` then advances by whole chunks.
        """
        if start_row != self.next_row:
            raise ValueError(f"rows must be written in order: next row is {self.next_row}, got {start_row}")
        if set(batch) != set(self.fields):
            raise ValueError(f"batch names differ from the layout: missing {sorted(set(self.fields) - set(batch))}, "
                             f"unexpected {sorted(set(batch) - set(self.fields))}")
        n = len(batch["meta/t"])
        if start_row + n > self.n_rows:
            raise ValueError(f"rows {start_row}..{start_row + n} exceed the store's {self.n_rows} rows")
        self._pending.append({name: _as_rows(fld, name, batch[name], n) for name, fld in self.fields.items()})
        self.next_row += n
        stop = self.n_rows if self.next_row == self.n_rows else self.next_row // self.chunk_rows * self.chunk_rows
        if stop > self._rows_done:
            self._write_pending(stop)

    def _write_pending(self, stop: int) -> None:
        """Write buffered rows ``[rows_done, stop)``, flush, then commit ``rows_done = stop``; keep the rest."""
        pending = {name: np.concatenate([part[name] for part in self._pending]) for name in self.fields}
        count = stop - self._rows_done
        try:
            for name, array in pending.items():
                self._file[name][self._rows_done:stop] = array[:count]
            self._file.flush()
            self._commit(stop)
        except (OSError, RuntimeError) as error:
            raise StoreWriteError(f"writing rows {self._rows_done}..{stop} of {self.partial_path} failed "
                                  f"({first_line(error)}; is the disk full?); the store was not published and its "
                                  f"first {self._rows_done} rows are committed: free space, then continue with "
                                  "--resume (or start over with --overwrite)") from error
        for name, array in pending.items():
            self._digests.update(name, array[:count])
        rest = {name: array[count:] for name, array in pending.items()}
        self._pending = [rest] if stop < self.next_row else []

    def _commit(self, rows_done: int) -> None:
        """Record progress; called only after the rows' data is flushed."""
        self._file.attrs["rows_done"] = rows_done
        self._file.flush()
        self._rows_done = rows_done

    def close(self) -> Path:
        """Mark the store complete and move it to ``path``; returns ``path``.

        Raises RuntimeError (keeping ``<path>.partial`` for ``resume``) when fewer than ``n_rows`` rows were written.
        """
        if self._file is None:
            return self.path
        rows_done = self.rows_done
        if rows_done < self.n_rows:
            self._abandon()
            raise RuntimeError(f"only {rows_done}/{self.n_rows} rows written; the unfinished store stays at "
                               f"{self.partial_path} (continue it with --resume)")
        try:
            for name, digest in self._digests.hexdigests().items():
                self._file[name].attrs[DIGEST_ATTR] = digest
            self._file.attrs["complete"] = True
            self._file.close()
            self._file = None
            verify_digests(self.partial_path, self.fields, self.chunk_rows)
        except (OSError, RuntimeError) as error:
            self._abandon()
            raise StoreWriteError(f"finishing {self.partial_path} failed ({first_line(error)}; is the disk full?); the "
                                  "store was not published: free space and start over with --overwrite") from error
        os.replace(self.partial_path, self.path)
        self._abandon()
        return self.path

    def _abandon(self) -> None:
        """Close the HDF5 file (errors of a file whose writes failed are dropped), leaving ``<path>.partial`` in
        place, and release the output's lock."""
        if self._file is not None:
            try:
                self._file.close()
            except (OSError, RuntimeError):
                pass
            self._file = None
        self._lock.release()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self._abandon()


def merge_shards(
    paths: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    compression: str | None = None,
    overwrite: bool = False,
    chunk_rows: int | None = None,
) -> Path:
    """Concatenate complete shards (rows in rank order) into one store at ``out``; returns ``out``.

    Shards must share every attr except ``shard_rank``/``shard_world_size`` (and ``n_rows``) and cover ranks
    0..world_size-1. Streams ``chunk_rows`` rows at a time (default: ~16 MiB of rows), so memory stays bounded.
    ``compression`` defaults to the shards'.
    """
    source = FeatureStore(paths)
    attrs = {key: value for key, value in source.attrs.items() if key not in schema.BOOKKEEPING_ATTRS}
    with FeatureStoreWriter(out, source.layout, source.n_rows, attrs, compression=compression or source.compression,
                            overwrite=overwrite) as writer:
        for chunk in source.iter_chunks(list(source.layout), chunk_rows=chunk_rows):
            writer.write_rows(int(chunk["rows"][0]), {name: chunk[name] for name in source.layout})
    source.close()
    return Path(out)
