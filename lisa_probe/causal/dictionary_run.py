"""``python -m lisa_probe.dictionary``'s work: read one site of a store, train the SAE (resumable in ``--out``), rank
its latents and draw the top ones."""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from lisa_probe.causal.config import DictionaryConfig
from lisa_probe.causal.dictionary import SaeConfig, latent_maps, latent_table, positions, train_sae
from lisa_probe.files import write_csv_atomic, write_json
from lisa_probe.models.dual_branch import middle_site
from lisa_probe.provenance import code_version, file_digest
from lisa_probe.rundir import stored_path
from lisa_probe.store import FeatureStore


def plot_top_latents(maps: np.ndarray, estimate_norm: np.ndarray, table: pd.DataFrame, meta: pd.DataFrame,
                     top: int, columns: int = 6) -> Figure:
    """For the ``top`` latents by alignment: their ``columns`` most active rows, each the latent's activation map
    (row 1 of the pair) above the estimate's norm ‖pred_full − pred_main‖ (row 2), titled by sample id and t."""
    ranked = table.dropna(subset=["alignment"]).sort_values("alignment", ascending=False).head(top)
    if ranked.empty:
        fig, ax = plt.subplots(figsize=(4, 1))
        ax.text(0.5, 0.5, "no latent's activation varies: nothing to rank", ha="center", va="center")
        ax.set_axis_off()
        return fig
    fig, axes = plt.subplots(2 * len(ranked), columns, figsize=(1.5 * columns, 3.0 * len(ranked)), squeeze=False)
    for r, latent in enumerate(ranked["latent"]):
        strongest = np.argsort(maps[:, latent].reshape(len(maps), -1).max(axis=1))[::-1][:columns]
        for c, row in enumerate(strongest):
            axes[2 * r, c].imshow(maps[row, latent], cmap="magma")
            axes[2 * r, c].set_title(f"latent {latent}\n{meta['sample_id'].iloc[row].rsplit('/', 1)[-1]} t "
                                     f"{meta['t'].iloc[row]:.0f}", fontsize=7)
            axes[2 * r + 1, c].imshow(estimate_norm[row], cmap="viridis")
            axes[2 * r + 1, c].set_title("‖full − main‖", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("top latents by alignment with the model's score estimate: activation (magma) over ‖full − main‖",
                 fontsize=9)
    return fig


def build_dictionary(store_path: str, config: DictionaryConfig, command: str, progress: bool = True) \
        -> tuple[Path, list[str]]:
    """Train and rank; writes ``sae.safetensors``, ``sae.json``, ``checkpoint.safetensors``, ``training.csv``,
    ``latents.csv``, ``figures/top_latents.png`` and ``dictionary.json`` into ``config.out``."""
    out = Path(config.out)
    with FeatureStore(store_path) as store:
        site = config.site or store.attrs.get("lisa_site") or middle_site(store.sites)
        if site not in store.sites:
            raise ValueError(f"unknown site {site!r}; sites of {store_path}: {', '.join(store.sites)}")
        rows = slice(0, min(config.max_rows or store.n_rows, store.n_rows))
        features = store.read(f"features/{site}", rows)
        estimate = store.read("scores/full", rows) - store.read("scores/main", rows)
        meta = store.read_meta(rows)
        factors = {name: meta[name].to_numpy() for name in store.factors}
        kinds = {name: spec["kind"] for name, spec in store.factors.items()}
        carried = {name: spec["carried"] for name, spec in store.factors.items()}
        provenance = {"store": stored_path(store_path, out), "store_sha256": file_digest(store_path), "site": site,
                      "rows": rows.stop, "store_code_version": store.attrs.get("code_version")}
    if config.overwrite:
        shutil.rmtree(out, ignore_errors=True)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    channels = features.shape[1] if features.ndim == 4 else features.shape[-1]
    sae_config = SaeConfig(latents=config.expansion * channels, k=config.k, steps=config.steps,
                           batch_size=config.batch_size, lr=config.lr, seed=config.seed)
    with tqdm(total=config.steps, desc=f"SAE {site}", unit="step", disable=not progress) as bar:
        sae, log = train_sae(positions(features), sae_config, out, resume=config.resume, progress=bar)
    if config.resume and (out / "training.csv").exists() and len(log):  # the log of the steps before the resume
        earlier = pd.read_csv(out / "training.csv")
        log = pd.concat([earlier[earlier["step"] < log["step"].iloc[0]], log], ignore_index=True)
    maps = latent_maps(sae, features)
    table = latent_table(maps, estimate, factors, kinds, carried, config.seed)
    write_csv_atomic(out / "training.csv", list(log.columns), log.to_dict("records"))
    write_csv_atomic(out / "latents.csv", list(table.columns), table.to_dict("records"))
    norm = np.linalg.norm(estimate, axis=1)
    figure = plot_top_latents(maps, norm, table, meta, config.top)
    figure.savefig(out / "figures" / "top_latents.png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    write_json(out / "dictionary.json", {"code_version": code_version(), "command": command, "config": asdict(config),
                                         **provenance})
    fired = table["frequency"] > 0
    lines = [f"{site}: {len(table)} latents, {int(fired.sum())} fire, final fraction of variance unexplained "
             f"{log['fvu'].iloc[-1]:.3f}" if len(log) else f"{site}: {len(table)} latents"]
    best = table.dropna(subset=["alignment"]).sort_values("alignment", ascending=False).head(3)
    lines += [f"latent {int(row.latent)}: alignment {row.alignment:.2f}, fires on {row.frequency:.1%} of positions"
              for row in best.itertuples()]
    return out, lines
