"""Rebuilding a DualBranch from a config and loading a trained run (no training code: analysis imports this)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from lisa_probe.data import build_dataset
from lisa_probe.models import DualBranch, build_side, check_side_matches, load_main, load_side, make_dual_branch
from lisa_probe.models.build import load_safetensors_module, set_resolution
from lisa_probe.models.dual_branch import vae_scale
from lisa_probe.rundir import DECODER_DIR, SIDE_DIR, read_run_config, run_dir_of
from lisa_probe.training.config import TrainConfig
from lisa_probe.training.lisa import LisaDecoder


def build_dual_branch(config, side_path: Path | None = None) -> tuple[DualBranch, dict]:
    """DualBranch for a train config (main from ``config.main``, at ``config.resolution`` when it has one; side from
    ``side_path``, ``config.side`` or a copy of the main net) and the dataset keyword arguments matching it
    (resolution, condition, seed, root)."""
    family, main, parameterization, null_context, vae = load_main(Path(config.main))
    if getattr(config, "resolution", None) is not None:
        set_resolution(family, main, vae, config.resolution)
    dataset_kwargs = config.dataset_kwargs(main.config.sample_size * vae_scale(vae), config.seed)
    side_source = side_path or config.side
    if side_source is not None:
        side = load_side(Path(side_source), family)
        check_side_matches(family, main, side)
    else:
        cond_channels = build_dataset(config.dataset, split="val", **dataset_kwargs).cond_channels
        if family == "unet" and vae is not None and cond_channels == 1:
            cond_channels = 3  # an SD-style ControlNet takes RGB control images (PIL's in diffusers' pipelines)
        side = build_side(main, family, cond_channels, latent=vae is not None, seed=config.seed)
    return make_dual_branch(family, main, side, parameterization, null_context, vae), dataset_kwargs


def load_run(checkpoint: Path):
    """(train config, DualBranch with the trained side net, LISA decoder or None, dataset kwargs) of a run."""
    checkpoint = Path(checkpoint)
    config = read_run_config(run_dir_of(checkpoint), TrainConfig, "train")
    if not (checkpoint / SIDE_DIR / "config.json").exists():
        raise ValueError(f"{checkpoint} has no {SIDE_DIR}/ (is the run finished? pass a checkpoint-N directory)")
    model, dataset_kwargs = build_dual_branch(config, side_path=checkpoint / SIDE_DIR)
    decoder_dir = checkpoint / DECODER_DIR
    decoder = load_safetensors_module(LisaDecoder, decoder_dir) if (decoder_dir / "config.json").exists() else None
    if config.lisa_site is None:  # a run from before train saved the site it resolved: the same default, once
        config = replace(config, lisa_site=model.default_lisa_site())
    return config, model.eval(), decoder, dataset_kwargs
