"""Build, save and load main nets, side nets and dual branches.

A main-net directory uses the diffusers pipeline layout, so a local Stable Diffusion / SD3 checkpoint works as is:
``unet/`` or ``transformer/`` (``save_pretrained`` format), ``scheduler/scheduler_config.json`` (prediction type and
schedule), optional ``vae/`` (latent-space training), optional ``tokenizer/`` + ``text_encoder/`` (captions, and the
empty prompt as the null context: ``lisa_probe.text.prompts``) and optional ``null_context.safetensors`` (a fixed text
context: ``context`` (1, L, D) and, for SD3, ``pooled`` (1, P); it wins over the text encoder's empty prompt; zeros
when neither is there).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    SD3ControlNetModel,
    SD3Transformer2DModel,
    UNet2DConditionModel,
)
from safetensors.torch import load_file

from lisa_probe.diffusion.parameterization import Parameterization
from lisa_probe.diffusion.weighting import PREDICTION_TYPES
from lisa_probe.files import model_id_hint
from lisa_probe.models.dit import DiTDualBranch, dit_forward
from lisa_probe.models.dual_branch import DualBranch, vae_scale
from lisa_probe.models.presets import FAMILIES, PRESETS, dit_config, side_layers, unet_config
from lisa_probe.models.unet import UNetDualBranch, pooled_width, unet_forward
from lisa_probe.options import check_choice
from lisa_probe.rundir import SCHEDULER_CONFIG, SCHEDULER_DIR
from lisa_probe.text.prompts import has_text_encoder, prompt_encoder

MAIN_SUBFOLDER = {"unet": "unet", "dit": "transformer"}
MAIN_CLASS = {"unet": UNet2DConditionModel, "dit": SD3Transformer2DModel}
SIDE_CLASS = {"unet": ControlNetModel, "dit": SD3ControlNetModel}
MAIN_FORWARD = {"unet": unet_forward, "dit": dit_forward}
NULL_CONTEXT_FILE = "null_context.safetensors"
LATENT_DOWNSAMPLE_CHANNELS = (16, 32, 96, 256)


def default_prediction_type(family: str) -> str:
    """The prediction type a main-net directory without ``scheduler/`` implies: diffusers' epsilon for a UNet, flow
    for an SD3 transformer. (What pretraining trains by default is ``pretrain.DEFAULT_PREDICTION_TYPE``.)"""
    return "flow" if family == "dit" else "eps"


def build_main(family: str, preset: str, resolution: int, channels: int = 3, seed: int = 0) -> torch.nn.Module:
    """A randomly initialised main net (seeded) from a built-in preset."""
    check_choice("backbone", family, FAMILIES)
    check_choice("preset", preset, PRESETS)
    torch.manual_seed(seed)
    if family == "unet":
        return UNet2DConditionModel(**unet_config(preset, resolution, channels))
    return SD3Transformer2DModel(**dit_config(preset, resolution, channels))


def build_side(main: torch.nn.Module, family: str, cond_channels: int, latent: bool = False,
               seed: int = 0) -> torch.nn.Module:
    """A side net initialised from the main net (ControlNetModel.from_unet / SD3ControlNetModel.from_transformer).

    For the UNet, ``latent=False`` keeps the condition at the sample's resolution; ``latent=True`` uses diffusers'
    default conditioning embedding (x8 downsampling, condition at pixel resolution). For SD3, the ControlNet gets
    half the transformer's layers and is built from a deep copy (``from_transformer`` edits the config in place).
    """
    torch.manual_seed(seed)
    if family == "unet":
        return ControlNetModel.from_unet(
            main, conditioning_channels=cond_channels,
            conditioning_embedding_out_channels=LATENT_DOWNSAMPLE_CHANNELS if latent else (16,))
    return SD3ControlNetModel.from_transformer(
        copy.deepcopy(main), num_layers=side_layers(main.config.num_layers), num_extra_conditioning_channels=0)


def null_context_for(main: torch.nn.Module, family: str, path: Path | None = None,
                     variant: str | None = None) -> dict[str, torch.Tensor]:
    """The fixed null context: loaded from ``path/null_context.safetensors`` if present; else, for a pipeline with
    ``text_encoder/`` and ``tokenizer/`` (Stable Diffusion 1.x / 2.x, or a main net pretrained with label prompts),
    the empty prompt's embedding (an SD3-style transformer needs an encoder with a projection, for ``pooled``);
    else zeros."""
    if path is not None and (path / NULL_CONTEXT_FILE).exists():
        return load_file(path / NULL_CONTEXT_FILE)
    if path is not None and has_text_encoder(path):
        empty = prompt_encoder(path, variant).empty()  # the same encoder the run's captions use (loaded once)
        if family == "dit" and "pooled" not in empty:
            raise ValueError(f"{path / 'text_encoder'} has no projection (a CLIPTextModel): an SD3-style transformer "
                             "also reads a pooled projection (CLIPTextModelWithProjection)")
        return empty
    if family == "unet":
        zeros = {"context": torch.zeros(1, 1, main.config.cross_attention_dim)}
        if pooled_width(main) is not None:  # SDXL
            zeros["pooled"] = torch.zeros(1, pooled_width(main))
        return zeros
    return {"context": torch.zeros(1, 1, main.config.joint_attention_dim),
            "pooled": torch.zeros(1, main.config.pooled_projection_dim)}


def make_dual_branch(family: str, main, side, parameterization: Parameterization,
                     null_context: dict[str, torch.Tensor], vae: AutoencoderKL | None = None) -> DualBranch:
    """Wrap (main, side) into the family's DualBranch."""
    check_choice("backbone", family, FAMILIES)
    if family == "unet":
        if parameterization.prediction_type == "flow":
            raise ValueError("the unet backbone supports prediction types eps and v, not flow")
        model = UNetDualBranch(main, side, parameterization, null_context["context"], null_context.get("pooled"))
    else:
        if parameterization.prediction_type != "flow":
            raise ValueError(f"the dit backbone uses flow matching, not {parameterization.prediction_type!r}")
        model = DiTDualBranch(main, side, parameterization, null_context["context"], null_context["pooled"])
    model.vae = vae.requires_grad_(False).eval() if vae is not None else None
    return model


# ----- main-net directories --------------------------------------------------------------------------------------
def load_safetensors_module(cls, path: Path, variant: str | None = None):
    """``cls.from_pretrained(path, variant=variant)`` from safetensors weights only (never pickle: ``.bin`` files go
    through ``torch.load``); a directory with only ``.bin`` weights is refused with how to convert it. ``variant``:
    diffusers' weight-file variant (``fp16``: ``diffusion_pytorch_model.fp16.safetensors``)."""
    path = Path(path)
    if not any(path.glob("*.safetensors")) and any(path.glob("*.bin")):
        raise ValueError(f"{path} holds only pickle (.bin) weights, which lisa_probe does not load; convert them "
                         f"once with: python -c \"from diffusers import {cls.__name__} as M; "
                         f"M.from_pretrained('{path}').save_pretrained('{path}', safe_serialization=True)\"")
    if variant is not None and not any(path.glob(f"*.{variant}.safetensors")):
        raise ValueError(f"{path} has no {variant!r} weight files (*.{variant}.safetensors) for --variant {variant}")
    return cls.from_pretrained(path, use_safetensors=True, variant=variant)


def save_main(path: Path, family: str, main, parameterization: Parameterization) -> None:
    """Write a main net in the diffusers layout (``unet/`` or ``transformer/`` + ``scheduler/``)."""
    path = Path(path)
    main.save_pretrained(path / MAIN_SUBFOLDER[family])
    parameterization.to_scheduler().save_pretrained(path / SCHEDULER_DIR)


def detect_family(path: Path) -> str:
    """``unet`` or ``dit`` from a main-net directory's layout; a clear error if it is not one."""
    path = Path(path)
    for family, sub in MAIN_SUBFOLDER.items():
        if (path / sub / "config.json").exists():
            return family
    raise ValueError(f"{path} is not a diffusers main-net directory: expected unet/config.json or "
                     f"transformer/config.json (a pipeline layout such as Stable Diffusion or SD3, or a "
                     f"`python -m lisa_probe.pretrain` output){model_id_hint(path)}")


def load_main(path: Path, prediction_type: str | None = None, variant: str | None = None):
    """Load (family, main net, parameterisation, null context, vae or None) from a main-net directory, its weight
    files of ``variant`` (``fp16``) where given."""
    path = Path(path)
    family = detect_family(path)
    main = load_safetensors_module(MAIN_CLASS[family], path / MAIN_SUBFOLDER[family], variant)
    scheduler_file = path / SCHEDULER_CONFIG
    if scheduler_file.exists():
        parameterization = Parameterization.from_scheduler_config(json.loads(scheduler_file.read_text()))
    else:
        parameterization = Parameterization(default_prediction_type(family))
    if prediction_type is not None and prediction_type != parameterization.prediction_type:
        check_choice("prediction type", prediction_type, PREDICTION_TYPES)
        raise ValueError(f"main net at {path} was trained for {parameterization.prediction_type!r}, "
                         f"not {prediction_type!r}")
    has_vae = (path / "vae" / "config.json").exists()
    vae = load_safetensors_module(AutoencoderKL, path / "vae", variant) if has_vae else None
    return family, main, parameterization, null_context_for(main, family, path, variant), vae


def set_resolution(family: str, main, vae: AutoencoderKL | None, resolution: int) -> None:
    """Run ``main`` at ``resolution`` pixels instead of its native size (diffusers' ``--resolution``): its config's
    ``sample_size`` becomes ``resolution`` / the VAE factor, which the sites, the evaluation and an SD3 ControlNet
    built from it follow. ValueError naming the sizes a main net can take: a multiple of the VAE factor times the
    UNet's down factor from twice that factor (its deepest feature map at least 2 x 2, which its group norms need in
    training), or of the patch size up to the transformer's ``pos_embed_max_size`` patches."""
    scale = vae_scale(vae)
    if family == "unet":
        step = scale * 2 ** (len(main.config.block_out_channels) - 1)
        smallest, largest = 2 * step, None
    else:
        step, largest = scale * main.config.patch_size, scale * main.config.patch_size * main.config.pos_embed_max_size
        smallest = step
    if resolution < smallest or resolution % step or (largest is not None and resolution > largest):
        bound = f" up to {largest}" if largest is not None else ""
        raise ValueError(f"--resolution {resolution} does not fit this main net: it takes multiples of {step} from "
                         f"{smallest}{bound}")
    main.register_to_config(sample_size=resolution // scale)


def load_side(path: Path, family: str) -> torch.nn.Module:
    """Load a side net saved with ``save_pretrained`` (plain diffusers ControlNet / SD3ControlNet)."""
    return load_safetensors_module(SIDE_CLASS[family], path)


def check_side_matches(family: str, main, side) -> None:
    """Raise a clear error when a side net was not built for this main net."""
    if family == "unet":
        keys = ("block_out_channels", "in_channels", "layers_per_block", "cross_attention_dim")
    else:
        keys = ("in_channels", "num_attention_heads", "attention_head_dim", "patch_size", "joint_attention_dim")
    mismatched = [k for k in keys if tuple(_as_tuple(main.config[k])) != tuple(_as_tuple(side.config[k]))]
    if mismatched:
        details = ", ".join(f"{k}: main {main.config[k]} vs side {side.config[k]}" for k in mismatched)
        raise ValueError(f"side net does not match the main net ({details})")


def _as_tuple(value) -> tuple:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)
