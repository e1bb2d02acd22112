"""Code version and config serialisation attached to every output (run dirs, HDF5 stores, reports)."""

from __future__ import annotations

import functools
import hashlib
import subprocess
from pathlib import Path

from lisa_probe import __version__

CODE_PATHS = ("lisa_probe", "pyproject.toml", "constraints.txt")  # what a run's results depend on


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """Return ``"<package version>+g<commit>[.dirty]"`` when run from a git checkout, else the package version."""
    return git_version(Path(__file__).resolve().parent.parent, __version__)


def git_version(root: Path, version: str) -> str:
    """``"<version>+g<commit>[.dirty]"`` of the git checkout at ``root`` (``version`` alone outside one).

    ``.dirty`` marks uncommitted changes to the code (``CODE_PATHS``), new untracked modules included; results,
    notebooks and docs being rewritten do not make the code dirty."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
        )
        if commit.returncode != 0:
            return version
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=all", "--", *CODE_PATHS], cwd=root,
            capture_output=True, text=True, timeout=5,
        ).stdout.strip()
        return f"{version}+g{commit.stdout.strip()}" + (".dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return version


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
