"""Files written so that an interrupted run never leaves one half-written (a temporary name, then a rename), and
one writer per output (``OutputLock``)."""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import os
import shutil
import socket
from pathlib import Path


def replace_dir(tmp: Path, final: Path) -> None:
    """Publish the finished directory ``tmp`` as ``final``. An existing ``final`` is renamed to ``.<name>.old`` and
    deleted only once the new one is in place: an interruption leaves the old or the new directory whole, never a
    mix of the two."""
    old = final.parent / f".{final.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def published_dir(out: Path):
    """Yield an empty staging directory beside ``out`` to fill; on success it replaces ``out`` whole (an empty ``out``
    is removed first, a full one replaced by ``replace_dir``); on any error the staging directory is deleted and
    ``out`` is left as it was."""
    out = Path(out)
    staging = out.parent / f".{out.name}.{os.getpid()}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        replace_dir(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` via a temporary file in the same directory + rename (never half-written)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_json(path: Path, payload: dict) -> None:
    """Write JSON atomically (``write_text_atomic``)."""
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True))


def write_csv_atomic(path: Path, columns, rows: list[dict]) -> None:
    """Rewrite a CSV file (header ``columns``, then ``rows``) atomically."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(columns))
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, text.getvalue())


class OutputBusyError(FileExistsError):
    """Another process is writing the same output."""


def lock_path(path: str | os.PathLike) -> Path:
    """``<path>.lock``: the lock file of an output being written (removed when the writer ends)."""
    path = Path(path)
    return path.with_name(path.name + ".lock")


class OutputLock:
    """An exclusive lock on ``<path>.lock`` (``fcntl.flock``), held until ``release`` (or the end of a ``with``).

    Without ``wait`` a held lock is refused at once (``OutputBusyError`` naming the holder: one writer per output);
    with ``wait`` the caller blocks until the holder is done (caches that one process fills and the others then
    read). The lock file records the holder's host and pid. It is deleted on release, so a finished run leaves no
    ``.lock`` behind; a holder checks after locking that the file it locked is still the one at ``<path>.lock``
    (another holder may have deleted it in between) and retries otherwise. A killed holder's lock is released by the
    kernel, so a stale lock file never blocks a later run.
    """

    def __init__(self, path: str | os.PathLike, what: str = "feature store", wait: bool = False) -> None:
        self.path = lock_path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise OutputBusyError(f"{what} {Path(path)} is being written by another process ({holder}; lock "
                                      f"{self.path}); wait for it to finish, or stop it and run again with "
                                      "--resume") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        self._fd: int | None = fd

    def release(self) -> None:
        """Delete the lock file and unlock (idempotent)."""
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> OutputLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def looks_like_model_id(value: str) -> bool:
    """Whether ``value`` reads as a Hugging Face model id (``owner/name``) rather than a path."""
    return value.count("/") == 1 and not value.startswith((".", "/", "~"))


def local_model(value: str | None, revision: str | None = None) -> str | None:
    """``value`` as a local directory where it can be: itself when it exists; for a model id (``owner/name``) found in
    the local Hugging Face cache, its snapshot's directory at ``revision`` (a branch, tag or commit; default
    ``main``) (``huggingface_hub.snapshot_download(local_files_only=True)``: offline, never a download;
    ``HF_HUB_CACHE`` / ``HF_HOME`` say where the cache is), as diffusers' ``from_pretrained`` finds it; anything else
    unchanged (a directory a study makes later; the loaders name what is missing, ``model_id_hint``)."""
    if value is None or Path(value).exists() or not looks_like_model_id(value):
        return value
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(repo_id=value, revision=revision, local_files_only=True)
    except LocalEntryNotFoundError:
        return value


def model_id_hint(value: str | Path) -> str:
    """For a missing directory that reads as a model id: that it is not in the local Hugging Face cache either and how
    to fetch it ("" otherwise)."""
    value = str(value)
    if Path(value).exists() or not looks_like_model_id(value):
        return ""
    return (f"; nor is {value} a model id in the local Hugging Face cache: fetch it first (huggingface-cli download "
            f"{value}), or give its directory")
