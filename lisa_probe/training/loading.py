"""Rebuilding a DualBranch from a config and loading a trained run (no training code: analysis imports this)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import torch

from lisa_probe.data import build_dataset
from lisa_probe.diffusion.parameterization import Parameterization
from lisa_probe.models import DualBranch, build_side, check_side_matches, load_main, load_side, make_dual_branch
from lisa_probe.models.build import load_safetensors_module, set_resolution
from lisa_probe.models.dual_branch import vae_scale
from lisa_probe.rundir import DECODER_DIR, SIDE_DIR, read_run_config, run_dir_of
from lisa_probe.training.config import TrainConfig
from lisa_probe.training.lisa import LisaDecoder


class MainNet(NamedTuple):
    """A loaded main net and what comes with it (``models.load_main``), at the run's resolution."""

    family: str
    main: torch.nn.Module
    parameterization: Parameterization
    null_context: dict
    vae: torch.nn.Module | None


def load_main_net(config) -> tuple[MainNet, dict]:
    """The main net of a train config (or ``ForeignRun``) from ``config.main`` (its ``--variant`` weight files where
    given), at ``config.resolution`` when it has one (the one place a run's resolution is decided), and the dataset
    keyword arguments matching it (resolution, condition, seed, root and the data options)."""
    family, main, parameterization, null_context, vae = load_main(Path(config.main),
                                                                  variant=getattr(config, "variant", None))
    if config.resolution is not None:
        set_resolution(family, main, vae, config.resolution)
    return (MainNet(family, main, parameterization, null_context, vae),
            config.dataset_kwargs(main.config.sample_size * vae_scale(vae), config.seed))


def attach_side(net: MainNet, config, cond_channels: int, side_path: Path | None = None) -> DualBranch:
    """The DualBranch of ``net`` with its side net from ``side_path``, ``config.side`` or a new copy of the main net
    for a condition of ``cond_channels`` channels (an SD-style ControlNet takes RGB: 3 for a 1-channel condition)."""
    side_source = side_path or config.side
    if side_source is not None:
        side = load_side(Path(side_source), net.family)
        check_side_matches(net.family, net.main, side)
    else:
        if net.family == "unet" and net.vae is not None and cond_channels == 1:
            cond_channels = 3  # an SD-style ControlNet takes RGB control images (PIL's in diffusers' pipelines)
        side = build_side(net.main, net.family, cond_channels, latent=net.vae is not None, seed=config.seed)
    return make_dual_branch(net.family, net.main, side, net.parameterization, net.null_context, net.vae)


def build_dual_branch(config, side_path: Path | None = None) -> tuple[DualBranch, dict]:
    """``load_main_net`` then ``attach_side`` (a new side net sized for the val split's condition) in one call, for
    those that hold no dataset yet; returns the DualBranch and the dataset keyword arguments."""
    net, dataset_kwargs = load_main_net(config)
    needs_channels = (side_path or config.side) is None
    cond_channels = build_dataset(config.dataset, split="val", **dataset_kwargs).cond_channels if needs_channels else 0
    return attach_side(net, config, cond_channels, side_path), dataset_kwargs


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


def load_decoder(path: Path, model: DualBranch) -> LisaDecoder:
    """The LISA decoder saved at ``path`` (a ``lisa_decoder/`` directory, or a run or checkpoint directory holding
    one), with its site set (its own ``config.json``'s, else the side net's default LISA site, as train's) and checked
    against the model: the site's feature map and the prediction's shape. ValueError naming what does not fit."""
    if not (path / "config.json").exists() and (path / DECODER_DIR / "config.json").exists():
        path = path / DECODER_DIR
    if not (path / "config.json").exists():
        raise ValueError(f"--decoder {path} holds no LISA decoder (config.json and its safetensors, as a run's "
                         f"{DECODER_DIR}/)")
    decoder = load_safetensors_module(LisaDecoder, path)
    site = decoder.config.site or model.default_lisa_site()
    if site not in model.site_names:
        raise ValueError(f"--decoder {path} decodes site {site!r}, which this side net does not have (its sites: "
                         f"{', '.join(model.site_names)})")
    feature_map = model.site(site).map_shape
    score = (model.main.config.out_channels, model.main.config.sample_size)
    found = (decoder.config.in_channels, decoder.config.in_size, decoder.config.out_channels, decoder.config.out_size)
    wanted = (feature_map[0], feature_map[-1], *score)
    if found != wanted:
        raise ValueError(f"--decoder {path} decodes (channels, size) {found[:2]} -> {found[2:]}, but site {site} of "
                         f"this side net gives {wanted[:2]} and the prediction is {wanted[2:]}")
    decoder.register_to_config(site=site)
    return decoder
