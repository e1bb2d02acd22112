"""Drawing a comparison: every source (and the main net alone) from the same starting noise, conditions and
prompts; each image, the grid and control fidelity per row written to one directory, published whole.

Rows: the conditions, the main net alone, then each source at each conditioning scale (the scale multiplies every
site's residual: diffusers' ``controlnet_conditioning_scale``; 0 gives the main net alone exactly). The sampler is
train's evaluation sampler (DDIM for eps / v, flow-match Euler for flow; no classifier-free guidance) and the noise
is ``randn((N, C, h, w), Generator().manual_seed(seed + 12345))`` (``seeds``' ``side_eval``): with a run's seed,
``--steps`` equal to its ``--sample-steps`` and ``--samples`` its ``--eval-samples``, a run's row is its validation
grid's last ``controlled`` row.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import default_collate
from tqdm.auto import tqdm

from lisa_probe.analysis.intervals import t_interval
from lisa_probe.data import build_dataset, check_items
from lisa_probe.data.condition_kinds import condition_kind
from lisa_probe.data.options import names_list
from lisa_probe.diffusion.sampling import fixed_noise, sample
from lisa_probe.evaluation.fidelity import fidelity_per_sample
from lisa_probe.evaluation.grids import save_grid, to_uint8
from lisa_probe.files import replace_dir
from lisa_probe.generation.config import SampleConfig
from lisa_probe.generation.sources import Source, attach_sources, read_sources, shared_setting
from lisa_probe.models import DualBranch
from lisa_probe.provenance import code_version, file_digest
from lisa_probe.rundir import PATH_FIELDS, cache_dir, stored_path
from lisa_probe.seeds import derive_seed
from lisa_probe.text.prompts import batch_context, prompt_embeddings
from lisa_probe.training.engine import process_state
from lisa_probe.training.loading import load_main_net

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


class Drawing:
    """The shared inputs of every row: conditions (N, C, H, W) in [0, 1], the text context, the starting noise and
    the device, and the row's images drawn batch by batch."""

    def __init__(self, config: SampleConfig, cond: torch.Tensor, context: dict | None, noise: torch.Tensor, device):
        self.config, self.cond, self.context, self.noise, self.device = config, cond, context, noise, device

    def batches(self) -> list[slice]:
        size = self.config.batch_size
        return [slice(start, start + size) for start in range(0, len(self.cond), size)]

    @torch.no_grad()
    def images(self, model: DualBranch, scale: float | None, progress: tqdm) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1] on the CPU: the main net alone (``scale`` None) or the full model with every
        site's gate at ``scale``."""
        drawn = []
        gates = None if scale is None else torch.full((len(model.sites),), float(scale), device=self.device)
        for rows in self.batches():
            cond = self.cond[rows].to(self.device)
            context = None if self.context is None else {k: v[rows].to(self.device) for k, v in self.context.items()}
            if scale is None:
                def predict(x, t):
                    return model.predict_main(x, t, context)
            else:
                def predict(x, t):
                    return model(x, t, cond, gates=gates, context=context).pred_full
            samples = sample(predict, model.parameterization, self.noise[rows].to(self.device), self.config.steps,
                             clip_sample=model.vae is None)
            drawn.append(model.decode_samples(samples).float().cpu())
            progress.update(1)
        return torch.cat(drawn)


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
    chosen = read_sources(sources, list(names_list(config.labels)) if config.labels else None)
    setting = shared_setting(config, chosen)
    net, dataset_kwargs = load_main_net(setting)
    dataset = build_dataset(setting.dataset, split=config.split, **dataset_kwargs)
    if config.samples > len(dataset):
        raise ValueError(f"--samples {config.samples} exceeds the {config.split} split's {len(dataset)} samples")
    check_items(dataset, config.samples, "the conditions")
    models = attach_sources(net, setting, chosen, dataset.cond_channels)
    batch = default_collate([dataset[index] for index in range(config.samples)])
    prompts = (prompt_embeddings(setting, [dataset], cache_dir(out.parent), progress=progress)
               if config.prompt == "caption" else None)
    device = process_state().device
    for model in models:
        model.to(device)
    main = net.main.config
    noise = fixed_noise((config.samples, main.in_channels, main.sample_size, main.sample_size),
                        derive_seed(config.seed, "side_eval"))
    drawing = Drawing(config, batch["cond"], batch_context(prompts, batch), noise, device)
    rows = comparison_rows(chosen, config.scales)
    kind, size = dataset.condition, int(batch["cond"].shape[-1])
    reference = condition_kind(kind, dataset.cond_channels).reference
    silhouettes = None
    if reference == "silhouette":
        silhouettes = np.stack([dataset.silhouette({name: values[i].item() for name, values in
                                                    batch["factors"].items()}, size) for i in range(config.samples)])
    sample_ids, captions = list(batch["id"]), list(batch["text"]) if "text" in batch else None
    staging = out.parent / f".{out.name}.{os.getpid()}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    grid_rows, table = [("condition", to_uint8(batch["cond"], (0.0, 1.0)))], []
    try:
        save_images(staging / IMAGES_DIR / "condition", grid_rows[0][1])
        with tqdm(total=len(rows) * len(drawing.batches()), desc="sampling", unit="batch",
                  disable=not progress) as bar:
            for row in rows:
                model = models[0] if row.source is None else models[chosen.index(row.source)]
                images = drawing.images(model, row.scale, bar)
                grid_rows.append((row.label, to_uint8(images)))
                save_images(staging / IMAGES_DIR / slug(row.label), grid_rows[-1][1])
                if reference is not None:
                    table += fidelity_rows(row.label, row, images, batch["cond"], kind, sample_ids, silhouettes)
        label_width = max(64, 6 * max(len(label) for label, _ in grid_rows) + 6)
        save_grid(grid_rows, staging / GRID_FILE, scale=2 if size < 128 else 1, label_width=label_width,
                  captions=captions if prompts is not None else None)
        if table:
            with open(staging / FIDELITY_FILE, "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(table[0]))
                writer.writeheader()
                writer.writerows(table)
        record = {
            "code_version": code_version(), "command": command, "config": asdict(config),
            "setting": {key: stored_path(value, out) if key in PATH_FIELDS and value else value
                        for key, value in asdict(setting).items()},
            "sources": [{"label": source.label, "path": stored_path(source.path, out),
                         "side_sha256": file_digest(source.side_dir), "run": source.run_config is not None}
                        for source in chosen],
            "rows": [{"label": row.label, "source": None if row.source is None else row.source.label,
                      "conditioning_scale": row.scale, "images": f"{IMAGES_DIR}/{slug(row.label)}/"} for row in rows],
            "sample_ids": sample_ids, "prompts": captions if prompts is not None else None,
            "noise": f"randn(({config.samples}, {main.in_channels}, {main.sample_size}, {main.sample_size}), "
                     f"Generator().manual_seed({derive_seed(config.seed, 'side_eval')})), CPU, float32",
            "condition": kind,
        }
        (staging / RECORD_FILE).write_text(json.dumps(record, indent=2, sort_keys=True))
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        replace_dir(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out, summary_lines(table, condition_kind(kind, dataset.cond_channels).control_metric, kind)
