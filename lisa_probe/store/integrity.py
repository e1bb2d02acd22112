"""What makes a published feature store trustworthy: data checked before publishing (one writer per output is
``files.OutputLock``).

* ``RowDigests``: a SHA-256 per dataset over the rows in order, kept while writing; ``verify_digests`` re-reads a
  closed file and compares, so a write that failed silently (a full disk: HDF5 can lose a chunk while h5py frees
  a dataset, where errors are not raised) is found before the file gets its final name.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import h5py
import numpy as np

DIGEST_ATTR = "sha256"  # dataset attr: hex SHA-256 of the dataset's rows (``RowDigests``)


def _update(digest: hashlib._Hash, rows: np.ndarray) -> None:
    """Feed rows into ``digest``: the raw bytes of numeric rows; length-prefixed utf-8 of string rows (h5py reads
    variable-length strings back as bytes, writers pass str: both hash the same)."""
    if rows.dtype == object:
        for value in rows.reshape(-1):
            data = value.encode() if isinstance(value, str) else bytes(value)
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)
    else:
        digest.update(np.ascontiguousarray(rows).tobytes())


class RowDigests:
    """A running SHA-256 per dataset over the rows written so far, in row order."""

    def __init__(self, names: Iterable[str]) -> None:
        self._digests = {name: hashlib.sha256() for name in names}

    def update(self, name: str, rows: np.ndarray) -> None:
        _update(self._digests[name], rows)

    def read_from(self, h5: h5py.File, stop: int, chunk_rows: int) -> None:
        """Feed rows ``[0, stop)`` of every dataset of ``h5`` (a resumed file's committed rows)."""
        for name in self._digests:
            for start in range(0, stop, chunk_rows):
                self.update(name, h5[name][start:min(start + chunk_rows, stop)])

    def hexdigests(self) -> dict[str, str]:
        return {name: digest.hexdigest() for name, digest in self._digests.items()}


def verify_digests(path: Path, names: Iterable[str], chunk_rows: int) -> None:
    """Re-read every dataset ``names`` of the closed file ``path`` and compare its SHA-256 with its
    ``DIGEST_ATTR``; raises OSError naming the first dataset that differs or cannot be read."""
    names = list(names)
    try:
        with h5py.File(path, "r", rdcc_nbytes=0) as h5:
            n_rows = int(h5.attrs["n_rows"])
            found = RowDigests(names)
            found.read_from(h5, n_rows, chunk_rows)
            for name, digest in found.hexdigests().items():
                if h5[name].attrs.get(DIGEST_ATTR) != digest:
                    raise OSError(f"dataset {name} reads back different from what was written")
    except (OSError, KeyError, RuntimeError) as error:
        raise OSError(f"{path} failed its read-back check: {error}") from error
