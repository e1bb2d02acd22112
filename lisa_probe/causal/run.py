"""``python -m lisa_probe.intervene``'s work: one source's site maps at a few timesteps and the site × noise-window
interventions during sampling, written to one directory (published whole)."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from lisa_probe.causal.config import InterveneConfig
from lisa_probe.causal.figures import plot_intervention_effects, plot_site_maps
from lisa_probe.causal.interventions import intervention_table, noise_windows, standard_interventions
from lisa_probe.causal.maps import condition_support, site_maps, summarise, support_table
from lisa_probe.data.condition_kinds import condition_kind
from lisa_probe.diffusion.sampling import row_noise
from lisa_probe.evaluation.grids import to_uint8
from lisa_probe.extraction.extractor import load_decoder
from lisa_probe.files import replace_dir
from lisa_probe.generation.setup import Setup, prepare
from lisa_probe.provenance import code_version, file_digest
from lisa_probe.rundir import DECODER_DIR, stored_path

RECORD_FILE = "intervene.json"


def chosen_sites(text: str, model) -> list[str]:
    """'all' or a comma list of site names (an unknown name lists the valid ones)."""
    if text == "all":
        return model.site_names
    names = [name.strip() for name in text.split(",") if name.strip()]
    for name in names:
        model.site(name)
    return names


def source_decoder(setup: Setup, config: InterveneConfig):
    """The LISA decoder for the decoder map: a run's own (its ``lisa_decoder/``), or ``--decoder``; None without."""
    source, model = setup.sources[0], setup.models[0]
    path = Path(config.decoder) if config.decoder else source.path / DECODER_DIR
    if not config.decoder and not (path / "config.json").exists():
        return None
    return load_decoder(path, model).to(setup.drawing.device).eval()


def map_rows(setup: Setup, config: InterveneConfig, sites: list[str], decoder, out: Path) -> pd.DataFrame:
    """Site maps of every sample at ``config.map_timesteps`` timesteps (noise ``row_noise(seed, sample)``), their
    support fractions as a long table, and the first ``config.map_figures`` samples' maps drawn to ``out``."""
    model, batch, device = setup.models[0], setup.batch, setup.drawing.device
    images = batch["image"]
    x0 = model.encode_images(images.to(device))
    noise = row_noise(tuple(x0.shape[1:]), config.seed, range(len(x0))).to(device)
    support = condition_support(batch["cond"].numpy())
    keep = [model.site_names.index(name) for name in sites]
    tables = []
    for t in model.parameterization.evenly_spaced_timesteps(config.map_timesteps):
        steps = t.repeat(len(x0)).to(device)
        x_t = model.parameterization.add_noise(x0, noise, steps)
        target = model.parameterization.target(x0, noise, steps)
        maps = site_maps(model, x_t, steps, batch["cond"].to(device), setup.drawing.context_on(device), decoder,
                         decoder.config.site if decoder is not None else None, target)
        maps = {name: values[:, keep] if values.ndim == 4 else values for name, values in maps.items()}
        tables.append(support_table(maps, support, sites, np.full(len(x0), float(t)), list(batch["id"])))
        for index in range(min(config.map_figures, len(x0))):
            figure = plot_site_maps(maps, index, to_uint8(images[index:index + 1])[0], batch["cond"][index].numpy(),
                                    sites, float(t))
            figure.savefig(out / "figures" / f"maps-sample{index}-t{float(t):.0f}.png", dpi=90, bbox_inches="tight")
            plt.close(figure)
    return pd.concat(tables, ignore_index=True)


def intervene(source: str, config: InterveneConfig, command: str, progress: bool = True) -> tuple[Path, list[str]]:
    """Maps and interventions of ``source`` (a run, a checkpoint or a ControlNet with ``--main``) written to
    ``config.out``: ``maps.csv`` (per sample), ``maps_summary.csv`` (mean and 95 % t-interval across samples),
    ``interventions.csv``, ``figures/`` and ``intervene.json``. Returns the directory and summary lines."""
    out = Path(config.out)
    setup = prepare([source], None, config, progress)
    model = setup.models[0]
    sites = chosen_sites(config.sites, model)
    decoder = source_decoder(setup, config)
    kind = setup.dataset.condition
    metric = condition_kind(kind, setup.dataset.cond_channels).control_metric
    if metric is None:
        raise ValueError(f"condition kind {kind!r} has no control metric to measure interventions with (give "
                         "--condition canny for your own edge-like conditions)")
    windows = noise_windows(model, config.steps, config.windows)
    interventions = standard_interventions(sites, windows)
    staging = out.parent / f".{out.name}.{os.getpid()}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "figures").mkdir(parents=True)
    try:
        maps = map_rows(setup, config, sites, decoder, staging)
        maps.to_csv(staging / "maps.csv", index=False)
        summary = summarise(maps)
        summary.to_csv(staging / "maps_summary.csv", index=False)
        total = (len(interventions) + 1) * len(setup.drawing.batches())
        with tqdm(total=total, desc="interventions", unit="batch", disable=not progress) as bar:
            table = intervention_table(model, setup.drawing, interventions, kind, [metric], setup.silhouettes(), bar)
        table.to_csv(staging / "interventions.csv", index=False)
        figure = plot_intervention_effects(table, metric)
        figure.savefig(staging / "figures" / "interventions.png", dpi=90, bbox_inches="tight")
        plt.close(figure)
        record = {"code_version": code_version(), "command": command, "config": asdict(config),
                  "source": {"label": setup.sources[0].label, "path": stored_path(setup.sources[0].path, out),
                             "side_sha256": file_digest(setup.sources[0].side_dir)},
                  "sites": sites, "windows": windows, "condition": kind, "metric": metric,
                  "sample_ids": list(setup.batch["id"]), "prompts": setup.captions, "noise": setup.noise_recipe,
                  "map_noise": f"row_noise(shape, seed={config.seed}, rows=sample index)",
                  "decoder": decoder is not None}
        (staging / RECORD_FILE).write_text(json.dumps(record, indent=2, sort_keys=True))
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        replace_dir(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out, summary_lines(table, summary, metric)


def summary_lines(table: pd.DataFrame, maps: pd.DataFrame, metric: str) -> list[str]:
    """The largest intervention effects and each site's share of its add-one-in map inside the condition."""
    lines = [f"full model: {metric} {table.loc[table['intervention'] == 'full', 'value'].iloc[0]:.3f}"]
    worst = table[table["intervention"] != "full"].sort_values("effect").head(3)
    lines += [f"{row.intervention}: {metric} {row.value:.3f} (effect {row.effect:+.3f} ± {row.half:.3f})"
              for row in worst.itertuples()]
    inside = maps[(maps["method"] == "add_one_in") & (maps["metric"] == "inside_fraction")]
    area = maps[maps["metric"] == "area_fraction"]["mean"].mean()
    for site, part in inside.groupby("site", sort=False):
        lines.append(f"{site}: {part['mean'].mean():.2f} of its add-one-in map inside the condition (area "
                     f"{area:.2f})")
    return lines
