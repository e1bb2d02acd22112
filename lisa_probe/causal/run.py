"""``python -m lisa_probe.intervene``'s work: one source's site maps at a few timesteps and the site × noise-window
interventions during sampling, written to one directory (published whole)."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from lisa_probe.analysis.report.inputs import RowInputs
from lisa_probe.causal.config import InterveneConfig
from lisa_probe.causal.figures import plot_intervention_effects, plot_site_maps
from lisa_probe.causal.interventions import intervention_table, noise_windows, standard_interventions
from lisa_probe.causal.maps import condition_support, site_maps, summarise, support_table
from lisa_probe.causal.patching import (
    FACTOR_MEASURES,
    decoder_directions,
    donor_index,
    one_factor_donors,
    patch_table,
    probe_directions,
    site_features,
    steer_table,
    unit_with_spread,
)
from lisa_probe.data.condition_kinds import condition_kind
from lisa_probe.data.options import DataOptions
from lisa_probe.diffusion.sampling import row_noise
from lisa_probe.evaluation.grids import to_uint8
from lisa_probe.evaluation.readback import carried_heads, load_or_train_readback, readback_per_sample
from lisa_probe.files import published_dir
from lisa_probe.generation.setup import Setup, prepare
from lisa_probe.provenance import code_version, file_digest
from lisa_probe.rundir import DECODER_DIR, cache_dir, resolved_path, stored_path
from lisa_probe.store import FeatureStore
from lisa_probe.training.loading import load_decoder

RECORD_FILE = "intervene.json"


def store_source(store_path: str | Path, **options) -> tuple[Path, InterveneConfig]:
    """What a store's side net is drawn from again: its run (or ``checkpoint-N``) directory, or for a store of
    ``extract --controlnet`` the ControlNet with the main net its config names, and the ``InterveneConfig`` of the
    store's data options and split with ``options`` (``out``, ``samples``, ``analyses`` ...). Paths in the store
    are relative to its directory."""
    with FeatureStore(store_path) as store:
        attrs = store.attrs
    base = Path(store_path).parent
    stored = attrs["config"]
    data = {f.name: stored[f.name] for f in fields(DataOptions) if f.name in stored}
    if data.get("data_root"):
        data["data_root"] = str(resolved_path(data["data_root"], base))
    side = resolved_path(attrs["checkpoint"], base)
    foreign = bool(attrs["extract_args"].get("controlnet"))
    config = InterveneConfig(main=str(resolved_path(stored["main"], base)) if foreign else None,
                             resolution=stored.get("resolution") if foreign else None,
                             variant=stored.get("variant") if foreign else None,
                             split=attrs["extract_args"]["split"], **{**data, **options})
    return (side if foreign else side.parent), config


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


def fresh_map_inputs(setup: Setup, config: InterveneConfig) -> list[RowInputs]:
    """The inputs of the fresh maps: every sample of the setup at each of ``config.map_timesteps`` evenly spaced
    timesteps, with noise ``row_noise(seed, sample index)``; one ``RowInputs`` per timestep."""
    model, batch, device = setup.models[0], setup.batch, setup.drawing.device
    parameterization = model.parameterization
    x0 = model.encode_images(batch["image"].to(device))
    noise = row_noise(tuple(x0.shape[1:]), config.seed, range(len(x0))).to(device)
    inputs = []
    for t in parameterization.evenly_spaced_timesteps(config.map_timesteps):
        steps = t.repeat(len(x0)).to(device)
        inputs.append(RowInputs(parameterization.add_noise(x0, noise, steps), steps, batch["cond"].to(device),
                                setup.drawing.context_on(device), parameterization.target(x0, noise, steps),
                                batch["image"]))
    return inputs


def map_rows(setup: Setup, config: InterveneConfig, sites: list[str], decoder, figures: Path, prefix: str = "",
             store_rows: tuple[RowInputs, list[str], np.ndarray] | None = None) -> pd.DataFrame:
    """Site maps and their support fractions as a long table, the first ``config.map_figures`` samples' maps of each
    timestep drawn to ``figures``: of every sample at ``config.map_timesteps`` timesteps (``fresh_map_inputs``), or,
    with ``store_rows`` (a store's rows rebuilt: their inputs, sample ids and row numbers), at exactly those rows (a
    ``row`` column names them)."""
    model, device = setup.models[0], setup.drawing.device
    keep = [model.site_names.index(name) for name in sites]
    if store_rows is None:
        batches = [(inputs, list(setup.batch["id"]), None) for inputs in fresh_map_inputs(setup, config)]
    else:
        batches = [store_rows]
    tables = []
    for inputs, sample_ids, rows in batches:
        context = None if inputs.context is None else {key: value.to(device) for key, value in inputs.context.items()}
        maps = site_maps(model, inputs.x_t.to(device), inputs.timesteps.to(device), inputs.cond.to(device),
                         context, decoder, decoder.config.site if decoder is not None else None,
                         inputs.target.to(device))
        maps = {name: values[:, keep] if values.ndim == 4 else values for name, values in maps.items()}
        t = inputs.timesteps.float().cpu().numpy()
        tables.append(support_table(maps, condition_support(inputs.cond.cpu().numpy()), sites, t, sample_ids,
                                    rows=rows))
        for index in range(min(config.map_figures, len(t))):
            figure = plot_site_maps(maps, index, to_uint8(inputs.images[index:index + 1])[0],
                                    inputs.cond[index].cpu().numpy(), sites, float(t[index]))
            name = f"row{rows[index]}" if rows is not None else f"sample{index}-t{t[index]:.0f}"
            save_figure(figure, figures / f"{prefix}maps-{name}.png")
    return pd.concat(tables, ignore_index=True)


def probe_rows(setup: Setup, config: InterveneConfig, sites: list[str], decoder=None) -> tuple[dict, pd.DataFrame]:
    """Probe directions of the continuous factors a measure reads (``FACTOR_MEASURES``) and a random one per site,
    fitted on the mean-pooled features of the first ``--probe-samples`` samples of the split at mid noise (with
    the null text context); with a LISA ``decoder``, also the directions it reads most and least at its site."""
    model, dataset = setup.models[0], setup.dataset
    count = min(config.probe_samples, len(dataset))
    items = [dataset[index] for index in range(count)]
    factors = {name: np.array([item["factors"][name] for item in items], dtype=np.float64)
               for name in FACTOR_MEASURES if name in getattr(dataset, "factor_specs", {})}
    device = setup.drawing.device
    t = model.parameterization.evenly_spaced_timesteps(1)
    features = site_features(model, torch.stack([item["image"] for item in items]).to(device),
                               torch.stack([item["cond"] for item in items]).to(device), t, sites, config.seed)
    directions, probes = probe_directions(features, factors, np.arange(count), config.seed)
    if decoder is not None and decoder.config.site in sites:
        positions = features[decoder.config.site][1]
        directions[decoder.config.site].update({name: unit_with_spread(direction, positions)
                                                for name, direction in decoder_directions(decoder).items()})
    return directions, probes


def factor_readback(setup: Setup, config: InterveneConfig):
    """``images -> {factor: (N,) per-sample read-back score}`` of the samples' carried factors, from the dataset's
    read-back net (trained once and cached beside the outputs, as the training's evaluation does); None for data
    without carried factors."""
    if not carried_heads(getattr(setup.dataset, "factor_specs", {})):
        return None
    net = load_or_train_readback(setup.dataset, cache_dir(Path(config.out).parent), progress=False,
                                 dataset_kwargs=setup.dataset_kwargs).net
    factors = setup.batch["factors"]
    return lambda images: readback_per_sample(net, images, factors)


def passes(config: InterveneConfig, sites: list[str], directions: dict | None) -> int:
    """Sampling passes of the chosen analyses (each draws every sample once): the full model, the interventions,
    patches and steers."""
    chosen = config.analysis_names
    count = 1
    if "interventions" in chosen:
        count += (len(sites) + 1) * (config.windows + 1) + config.windows
    if "patching" in chosen:
        count += len(sites) + 2
    if directions is not None:
        count += sum(len(by_site) for by_site in directions.values()) * len(config.alphas)
    return count


def run_analyses(setup: Setup, config: InterveneConfig, figures: Path, label: str = "", progress: bool = True,
                 store_rows: tuple[RowInputs, list[str], np.ndarray] | None = None
                 ) -> tuple[dict[str, pd.DataFrame], list[str], dict]:
    """Compute ``config.analyses`` of the setup's one source: ``({table name: long table}, summary lines, what the
    record keeps)``; figures are saved in ``figures`` (names prefixed by ``label``). The maps are taken at fresh
    inputs, or at ``store_rows`` (``map_rows``). The full model is drawn once and timed; the remaining passes are
    estimated from it before they run."""
    chosen = config.analysis_names
    model = setup.models[0]
    sites = chosen_sites(config.sites, model)
    decoder = source_decoder(setup, config)
    kind = setup.dataset.condition
    metric = condition_kind(kind, setup.dataset.cond_channels).control_metric
    if metric is None and "interventions" in chosen:
        raise ValueError(f"condition kind {kind!r} has no control metric to measure interventions with (give "
                         "--condition canny for your own edge-like conditions)")
    windows = noise_windows(model, config.steps, config.windows) if "interventions" in chosen else []
    donors = None
    if "patching" in chosen:
        donors = (one_factor_donors(setup.dataset, setup.batch["factors"], config.patch_factor)
                  if config.patch_factor else setup.batch["cond"][donor_index(len(setup.batch["cond"]))])
    directions, tables, lines = None, {}, []
    if "steering" in chosen:
        directions, tables["probes"] = probe_rows(setup, config, sites, decoder)
    prefix = f"{label}_" if label else ""
    if "maps" in chosen:
        tables["maps"] = map_rows(setup, config, sites, decoder, figures, prefix, store_rows)
        tables["maps_summary"] = summarise(tables["maps"])
        lines += map_lines(tables["maps_summary"])
    started = time.perf_counter()
    full = setup.drawing.images(model, lambda t: None)
    seconds = time.perf_counter() - started
    remaining = passes(config, sites, directions) - 1
    print(f"{label or setup.sources[0].label}: one sampling pass takes {seconds:.1f} s; {remaining} more to go, "
          f"about {remaining * seconds / 60:.1f} min", file=sys.stderr)
    with tqdm(total=remaining * len(setup.drawing.batches()), desc="sampling passes", unit="batch",
              disable=not progress) as bar:
        if "interventions" in chosen:
            table = intervention_table(model, setup.drawing, standard_interventions(sites, windows), kind, [metric],
                                       full, setup.silhouettes(), bar, factor_readback(setup, config))
            tables["interventions"] = table
            save_figure(plot_intervention_effects(table, metric), figures / f"{prefix}interventions.png")
            lines = intervention_lines(table, metric) + lines
        if "patching" in chosen:
            tables["patching"] = patch_table(model, setup.drawing, donors, sites, full, bar)
            lines += [f"patching {row.patched}: {row.measure} moved {row.value:.2f} ± {row.half:.2f} of the way to "
                      f"the donor's (n {row.n})" for row in tables["patching"].itertuples() if row.n >= 2]
        if directions is not None:
            control = None if metric is None else (kind, metric, setup.silhouettes())
            tables["steering"] = steer_table(model, setup.drawing, directions, config.alphas, full, bar, control)
    record = {"sites": sites, "windows": windows, "condition": kind, "metric": metric, "decoder": decoder is not None,
              "sample_ids": list(setup.batch["id"]), "prompts": setup.captions, "noise": setup.noise_recipe,
              "map_noise": (f"row_noise(shape, seed={config.seed}, rows=sample index)" if store_rows is None else
                            "the store rows' own inputs (its row_noise recipe)"),
              "donors": (f"each sample's scene with {config.patch_factor!r} from sample (i + N // 2) mod N"
                         if config.patch_factor else "the condition of sample (i + N // 2) mod N")}
    return tables, lines, record


def intervene(source: str, config: InterveneConfig, command: str, progress: bool = True) -> tuple[Path, list[str]]:
    """The analyses ``config.analyses`` of ``source`` (a run, a checkpoint or a ControlNet with ``--main``) written
    to ``config.out``: ``maps.csv`` (per sample) and ``maps_summary.csv`` (mean and 95 % t-interval across samples),
    ``interventions.csv``, ``patching.csv``, ``probes.csv`` and ``steering.csv``, ``figures/`` and
    ``intervene.json``, published whole. Returns the directory and summary lines."""
    out = Path(config.out)
    setup = prepare([source], None, config, progress)
    with published_dir(out) as staging:
        (staging / "figures").mkdir()
        tables, lines, record = run_analyses(setup, config, staging / "figures", progress=progress)
        for name, table in tables.items():
            table.to_csv(staging / f"{name}.csv", index=False)
        record = {"code_version": code_version(), "command": command, "config": asdict(config),
                  "source": {"label": setup.sources[0].label, "path": stored_path(setup.sources[0].path, out),
                             "side_sha256": file_digest(setup.sources[0].side_dir)}, **record}
        (staging / RECORD_FILE).write_text(json.dumps(record, indent=2, sort_keys=True))
    return out, lines


def save_figure(figure, path: Path) -> None:
    figure.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(figure)


def intervention_lines(table: pd.DataFrame, metric: str) -> list[str]:
    """The full model's control and the three largest intervention effects."""
    lines = [f"full model: {metric} {table.loc[table['intervention'] == 'full', 'value'].iloc[0]:.3f}"]
    worst = table[table["intervention"] != "full"].sort_values("effect").head(3)
    return lines + [f"{row.intervention}: {metric} {row.value:.3f} (effect {row.effect:+.3f} ± {row.half:.3f})"
                    for row in worst.itertuples()]


def map_lines(maps: pd.DataFrame) -> list[str]:
    """Each site's share of its add-one-in map inside the condition, beside the support's share of the area."""
    inside = maps[(maps["method"] == "add_one_in") & (maps["metric"] == "inside_fraction")]
    area = maps[maps["metric"] == "area_fraction"]["mean"].mean()
    return [f"{site}: {part['mean'].mean():.2f} of its add-one-in map inside the condition (area {area:.2f})"
            for site, part in inside.groupby("site", sort=False)]
