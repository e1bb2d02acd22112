"""Files written so that an interrupted run never leaves one half-written: a temporary name, then a rename."""

from __future__ import annotations

import csv
import io
import json
import shutil
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
