"""Code version and config serialisation attached to every output (run dirs, HDF5 stores, reports)."""

from __future__ import annotations

import functools
import hashlib
import subprocess
from pathlib import Path

from lisa_probe import __version__


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """Return ``"<package version>+g<commit>[.dirty]"`` when run from a git checkout, else the package version."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
        )
        if commit.returncode != 0:
            return __version__
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True,
            timeout=5,
        ).stdout.strip()
        return f"{__version__}+g{commit.stdout.strip()}" + (".dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return __version__


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes, or of all files under a directory (sorted by relative path)."""
    path = Path(path)
    digest = hashlib.new(algorithm)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
