"""Drawing a comparison: every source (and the main net alone) from the same starting noise, conditions and
prompts; each image, the grid and control fidelity per row written to one directory, published whole.

Rows: the conditions, the main net alone, then each source at each conditioning scale (the scale multiplies every
site's residual: diffusers' ``controlnet_conditioning_scale``; 0 gives the main net alone exactly). The sampler and
the noise are ``setup``'s: with a run's seed, ``--steps`` equal to its ``--sample-steps`` and ``--samples`` its
``--eval-samples``, a run's row is its validation grid's last ``controlled`` row.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from lisa_probe.analysis.intervals import t_interval
from lisa_probe.data.condition_kinds import condition_kind
from lisa_probe.data.options import names_list
from lisa_probe.evaluation.fidelity import fidelity_per_sample
from lisa_probe.evaluation.grids import save_grid, to_uint8
from lisa_probe.files import published_dir
from lisa_probe.generation.config import SampleConfig
from lisa_probe.generation.setup import constant_gates, prepare
from lisa_probe.generation.sources import Source
from lisa_probe.provenance import code_version, file_digest
from lisa_probe.rundir import stored_path, stored_paths

GRID_FILE, FIDELITY_FILE, RECORD_FILE, IMAGES_DIR = "grid.png", "fidelity.csv", "sample.json", "images"


class Row(NamedTuple):
    """One row of the comparison: its ``label``, the source (None: the main net alone), the conditioning scale."""

    label: str
    source: Source | None
    scale: float | None


def comparison_rows(sources: list[Source], scales: tuple[float, ...]) -> list[Row]:
    """The main net alone, then each source at each scale (labelled ``label @ scale`` when several are swept)."""
    rows = [Row("main alone", None, None)]
    for source in sources:
        rows += [Row(source.label if len(scales) == 1 else f"{source.label} @ {scale:g}", source, scale)
                 for scale in scales]
    return rows


def slug(label: str) -> str:
    """A row label as a directory name."""
    return re.sub(r"[^A-Za-z0-9._@-]+", "_", label).strip("_") or "row"


def fidelity_rows(label: str, row: Row, images: torch.Tensor, cond: torch.Tensor, kind: str, sample_ids: list[str],
                  silhouettes: np.ndarray | None) -> list[dict]:
    """Per-sample control fidelity of one row's images, as ``fidelity.csv`` rows."""
    scores = fidelity_per_sample(images, cond, kind, silhouettes=silhouettes)
    return [{"row": label, "source": "" if row.source is None else row.source.label,
             "conditioning_scale": "" if row.scale is None else row.scale, "sample": index, "sample_id": sample_id,
             **{name: float(values[index]) for name, values in scores.items()}}
            for index, sample_id in enumerate(sample_ids)]


def summary_lines(table: list[dict], metric: str | None, kind: str) -> list[str]:
    """One line per row: the control metric's mean and 95 % t-interval across the samples."""
    if metric is None:
        return [f"no control metric for condition kind {kind!r}: fidelity not scored"]
    lines = []
    for label in dict.fromkeys(item["row"] for item in table):
        mean, half, n = t_interval(np.array([item[metric] for item in table if item["row"] == label]))
        interval = "" if math.isnan(half) else f" [{mean - half:.3f}, {mean + half:.3f}]"
        lines.append(f"{label}: {metric} {mean:.3f}{interval} (95 % t-interval over {n} samples)")
    return lines


def save_images(directory: Path, images: np.ndarray) -> None:
    """Each uint8 (H, W, 3) image as ``<directory>/<index>.png``."""
    directory.mkdir(parents=True)
    for index, image in enumerate(images):
        Image.fromarray(image).save(directory / f"{index:03d}.png")


def draw_comparison(sources: list[str], config: SampleConfig, command: str, progress: bool = True) -> tuple[Path, list[str]]:
    """Draw every row and write ``--out``: ``images/<row>/<k>.png``, ``grid.png``, ``fidelity.csv`` and
    ``sample.json`` (the config, code version, command, sources with their side nets' SHA-256, sample ids and
    prompts). Returns the directory and the summary lines. Nothing is written before the inputs are checked; the
    directory appears whole or not at all."""
    out = Path(config.out)
    setup = prepare(sources, list(names_list(config.labels)) if config.labels else None, config, progress)
    chosen, dataset, batch, models, drawing = setup.sources, setup.dataset, setup.batch, setup.models, setup.drawing
    rows = comparison_rows(chosen, config.scales)
    kind = dataset.condition
    reference = condition_kind(kind, dataset.cond_channels).reference
    silhouettes = setup.silhouettes()
    sample_ids, captions, size = list(batch["id"]), setup.captions, int(batch["cond"].shape[-1])
    grid_rows, table = [("condition", to_uint8(batch["cond"], (0.0, 1.0)))], []
    with published_dir(out) as staging:
        save_images(staging / IMAGES_DIR / "condition", grid_rows[0][1])
        with tqdm(total=len(rows) * len(drawing.batches()), desc="sampling", unit="batch",
                  disable=not progress) as bar:
            for row in rows:
                model = models[0] if row.source is None else models[chosen.index(row.source)]
                images = drawing.images(model, None if row.scale is None else constant_gates(model, row.scale), bar)
                grid_rows.append((row.label, to_uint8(images)))
                save_images(staging / IMAGES_DIR / slug(row.label), grid_rows[-1][1])
                if reference is not None:
                    table += fidelity_rows(row.label, row, images, batch["cond"], kind, sample_ids, silhouettes)
        label_width = max(64, 6 * max(len(label) for label, _ in grid_rows) + 6)
        save_grid(grid_rows, staging / GRID_FILE, scale=2 if size < 128 else 1, label_width=label_width,
                  captions=captions)
        if table:
            with open(staging / FIDELITY_FILE, "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(table[0]))
                writer.writeheader()
                writer.writerows(table)
        record = {
            "code_version": code_version(), "command": command, "config": asdict(config),
            "setting": stored_paths(asdict(setup.setting), out),
            "sources": [{"label": source.label, "path": stored_path(source.path, out),
                         "side_sha256": file_digest(source.side_dir), "run": source.run_config is not None}
                        for source in chosen],
            "rows": [{"label": row.label, "source": None if row.source is None else row.source.label,
                      "conditioning_scale": row.scale, "images": f"{IMAGES_DIR}/{slug(row.label)}/"} for row in rows],
            "sample_ids": sample_ids, "prompts": captions,
            "noise": setup.noise_recipe,
            "condition": kind,
        }
        (staging / RECORD_FILE).write_text(json.dumps(record, indent=2, sort_keys=True))
    return out, summary_lines(table, condition_kind(kind, dataset.cond_channels).control_metric, kind)
