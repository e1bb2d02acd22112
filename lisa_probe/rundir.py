"""Run directories: what a run holds, under which names, and how to read it. The one place that knows them.

A side-net run (``train``) or main-net run (``pretrain``) directory holds::

    config.yaml          kind, code_version, paths ("relative-to-run"), config (every option)
    metrics.csv          one row per logged step          eval.csv      long form: step, metric, value
    summary.json         written when the run finished    checkpoint-N/ resumable states
    controlnet/ lisa_decoder/     (side-net runs)         unet/ or transformer/, scheduler/ (main-net runs)

**Paths inside ``config.yaml``** (``PATH_FIELDS``: the main net, an initial side net, a dataset's root, the
``--validation-image`` files) are
stored relative to the run directory, so a run works from any working directory and after the directory tree that
holds it is moved; ``paths: relative-to-run`` says so. Files written before this (no ``paths`` key) hold paths as
they were given, relative to the working directory of the run, and are read that way.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from pathlib import Path

import yaml

from lisa_probe.files import write_text_atomic
from lisa_probe.options import config_from_dict, read_config
from lisa_probe.provenance import code_version

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.csv"
EVAL_FILE = "eval.csv"
SUMMARY_FILE = "summary.json"
SIDE_DIR = "controlnet"
DECODER_DIR = "lisa_decoder"
SAMPLES_DIR = "samples"
SCHEDULER_DIR = "scheduler"
SCHEDULER_CONFIG = Path(SCHEDULER_DIR) / "scheduler_config.json"
PATH_FIELDS = ("main", "side", "data_root", "validation_image")  # a str, or a list of them
RELATIVE_TO_RUN = "relative-to-run"


def stored_path(path: str | os.PathLike, base: str | os.PathLike) -> str:
    """``path`` as it is written into a file under ``base``: relative to ``base`` (POSIX separators), so that
    nothing written names the machine's absolute directories."""
    return Path(os.path.relpath(Path(path).resolve(), Path(base).resolve())).as_posix()


def resolved_path(stored: str, base: str | os.PathLike) -> Path:
    """Inverse of ``stored_path``: a relative ``stored`` path is taken from ``base``; an absolute one as it is."""
    return Path(os.path.normpath(Path(base) / stored)) if not Path(stored).is_absolute() else Path(stored)


def is_main_net_ready(path: str | os.PathLike) -> bool:
    """Whether a main-net directory is complete (its scheduler is saved last, after the weights)."""
    return (Path(path) / SCHEDULER_CONFIG).exists()


def is_finished(run_dir: str | os.PathLike) -> bool:
    """Whether a side-net run ended (``summary.json`` is written last)."""
    return (Path(run_dir) / SUMMARY_FILE).exists()


def is_run(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a lisa_probe run directory (it has ``config.yaml``)."""
    return (Path(path) / CONFIG_FILE).exists()


def run_dir_of(checkpoint: str | os.PathLike) -> Path:
    """The run directory of a run or of one of its ``checkpoint-N`` directories."""
    checkpoint = Path(checkpoint)
    for candidate in (checkpoint, checkpoint.parent):
        if is_run(candidate):
            return candidate
    raise ValueError(f"{checkpoint} is not a lisa_probe run or checkpoint directory (no {CONFIG_FILE} beside it)")


def stored_paths(values: dict, base: str | os.PathLike) -> dict:
    """``values`` (a config as a dict) with its ``PATH_FIELDS`` (a path or a list of them; empty ones as they are)
    as ``stored_path``s under ``base``."""
    def stored(value):
        if isinstance(value, list):
            return [stored_path(entry, base) for entry in value]
        return stored_path(value, base) if value else value
    return {key: stored(value) if key in PATH_FIELDS else value for key, value in values.items()}


def write_run_config(run_dir: Path, config, kind: str) -> None:
    """Write ``config.yaml``: ``kind``, ``code_version``, ``paths`` and every config field, the ``PATH_FIELDS``
    relative to ``run_dir``."""
    values = stored_paths(dataclasses.asdict(config), run_dir)
    payload = {"kind": kind, "code_version": code_version(), "paths": RELATIVE_TO_RUN, "config": values}
    write_text_atomic(Path(run_dir) / CONFIG_FILE, yaml.safe_dump(payload, sort_keys=False))


def read_run_config(run_dir: str | os.PathLike, cls, kind: str):
    """The config dataclass ``cls`` of a ``kind`` run, its ``PATH_FIELDS`` resolved (relative to ``run_dir`` for
    files that say so); ValueError naming the file for another kind, unknown keys or wrong types."""
    path = Path(run_dir) / CONFIG_FILE
    payload = read_config(path)
    if payload.get("kind") != kind:
        raise ValueError(f"{run_dir} is a {payload.get('kind')!r} run, not a {kind!r} run")
    values = dict(payload["config"])
    base = Path(run_dir) if payload.get("paths") == RELATIVE_TO_RUN else Path.cwd()
    for name in PATH_FIELDS:
        if isinstance(values.get(name), list):
            values[name] = [str(resolved_path(value, base)) for value in values[name]]
        elif isinstance(values.get(name), str):
            values[name] = str(resolved_path(values[name], base))
    return config_from_dict(cls, values, str(path))


def read_eval(run_dir: str | os.PathLike) -> dict[int, dict[str, float]]:
    """``eval.csv`` as ``{step: {metric: value}}`` (empty when the run has not evaluated)."""
    table: dict[int, dict[str, float]] = {}
    path = Path(run_dir) / EVAL_FILE
    if path.exists():
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle):
                table.setdefault(int(row["step"]), {})[row["metric"]] = float(row["value"])
    return table


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, str]]:
    """``metrics.csv`` rows (empty when nothing was logged)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def read_summary(run_dir: str | os.PathLike) -> dict:
    """``summary.json`` of a finished run (empty for an unfinished one)."""
    path = Path(run_dir) / SUMMARY_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def sample_grid_path(run_dir: str | os.PathLike, step: int) -> Path:
    """``<run>/samples/step-<step>.png``: the validation grid drawn at an evaluation."""
    return Path(run_dir) / SAMPLES_DIR / f"step-{step}.png"


def cache_dir(out_dir: str | Path) -> Path:
    """Where caches live (read-back networks, prompt embeddings, VAE latents): ``$LISA_PROBE_CACHE`` or ``<out_dir>/cache``."""
    return Path(os.environ.get("LISA_PROBE_CACHE") or Path(out_dir) / "cache")
