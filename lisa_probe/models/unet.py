"""``unet`` family: diffusers UNet2DConditionModel main net + ControlNetModel side net (eps or v prediction; SD 1.x /
2.x, and SDXL's ``text_time`` UNets with their pooled text embedding and time ids).

ControlNet residuals only enter the UNet's skip connections and the mid-block output, so the down path and the mid
block are run once and shared between ``pred_full`` and ``pred_main`` (``_shared_prefix``; the up path is
``_rest``).
"""

from __future__ import annotations

import torch
from diffusers import ControlNetModel, UNet2DConditionModel

from lisa_probe.models.dual_branch import DualBranch, Site, repeat_channels
from lisa_probe.models.hooks import capture_modules

UNSUPPORTED_UNET_OPTIONS = ("class_embed_type", "encoder_hid_dim_type")
SUPPORTED_ADDITIONS = (None, "text_time")  # addition_embed_type: none (SD 1.x / 2.x) or SDXL's pooled text + time ids
TIME_IDS = 6  # SDXL's added time ids: original size (h, w), crop top-left (y, x), target size (h, w)


def pooled_width(unet) -> int | None:
    """Width of SDXL's pooled text embedding (``text_embeds``) a ``text_time`` UNet or ControlNet takes; None for
    one without added conditions."""
    if unet.config.get("addition_embed_type") != "text_time":
        return None
    return unet.config.projection_class_embeddings_input_dim - TIME_IDS * unet.config.addition_time_embed_dim


def added_conditions(unet, context: dict[str, torch.Tensor], pixels: tuple[int, int],
                     batch: int) -> dict[str, torch.Tensor] | None:
    """SDXL's ``added_cond_kwargs`` for a batch of images of ``pixels`` (h, w): ``text_embeds`` (B, P) = the context's
    ``pooled`` and ``time_ids`` (B, 6) = (h, w, 0, 0, h, w), as diffusers' SDXL ControlNet trainer and pipeline make
    them (no crop, original size = target size); None for a UNet without added conditions."""
    if pooled_width(unet) is None:
        return None
    height, width = pixels
    time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=context["pooled"].dtype,
                            device=context["pooled"].device)
    return {"text_embeds": context["pooled"].expand(batch, -1), "time_ids": time_ids.expand(batch, -1)}


def unet_forward(main: UNet2DConditionModel, x_t: torch.Tensor, timesteps: torch.Tensor,
                 context: dict[str, torch.Tensor], residuals: list[torch.Tensor] | None = None,
                 pixel_scale: int = 1) -> torch.Tensor:
    """diffusers' own UNet forward (B, C, H, W) with a text context (``context`` (1 or B, L, D) and, for SDXL,
    ``pooled`` (1 or B, P); the images are ``pixel_scale`` × the sample's size) and optional ControlNet residuals."""
    kwargs = {} if residuals is None else dict(down_block_additional_residuals=residuals[:-1],
                                               mid_block_additional_residual=residuals[-1])
    pixels = (x_t.shape[-2] * pixel_scale, x_t.shape[-1] * pixel_scale)
    return main(x_t, timesteps, encoder_hidden_states=context["context"].expand(x_t.shape[0], -1, -1),
                added_cond_kwargs=added_conditions(main, context, pixels, x_t.shape[0]), return_dict=False,
                **kwargs)[0]


class UNetDualBranch(DualBranch):
    """UNet2DConditionModel + ControlNetModel. Sites ``down.0 … down.N`` and ``mid`` (the ControlNet zero-convs)."""

    family = "unet"

    def __init__(self, main: UNet2DConditionModel, side: ControlNetModel, parameterization, null_context,
                 null_pooled=None):
        for option in UNSUPPORTED_UNET_OPTIONS:
            if main.config.get(option) is not None:
                raise ValueError(f"UNet option {option}={main.config[option]!r} is not supported by the dual branch")
        if main.config.get("addition_embed_type") not in SUPPORTED_ADDITIONS:
            raise ValueError(f"UNet option addition_embed_type={main.config.addition_embed_type!r} is not supported "
                             f"by the dual branch (supported: none, 'text_time' as SDXL)")
        if main.config.center_input_sample:
            raise ValueError("UNet option center_input_sample=True is not supported by the dual branch")
        super().__init__(main, side, parameterization, null_context, null_pooled)

    # ----- sites -------------------------------------------------------------------------------------------------
    def _discover_sites(self) -> list[Site]:
        paths = {f"down.{i}": f"controlnet_down_blocks.{i}" for i in range(len(self.side.controlnet_down_blocks))}
        paths["mid"] = "controlnet_mid_block"
        config = self.main.config
        size = config.sample_size if isinstance(config.sample_size, int) else config.sample_size[0]
        channels = self.side.config.conditioning_channels
        factor = 2 ** (len(self.side.config.conditioning_embedding_out_channels) - 1)
        x = torch.zeros(1, config.in_channels, size, size)
        cond = torch.zeros(1, channels, size * factor, size * factor)
        modules = {name: self.side.get_submodule(path) for name, path in paths.items()}
        with torch.no_grad(), capture_modules(modules, ("feature", "residual"), detach=True) as records:
            self._side_residuals(x, torch.zeros(1, dtype=torch.long), cond, self.null_context_batch(1))
        return [Site(name, paths[name], tuple(rec["feature"].shape[1:]), tuple(rec["residual"].shape[1:]),
                     tuple(rec["feature"].shape[1:])) for name, rec in records.items()]

    @property
    def cond_channels(self) -> int:
        """Channels the ControlNet's conditioning embedding takes."""
        return self.side.config.conditioning_channels

    def context_widths(self) -> dict[str, int]:
        """The text context's width: the UNet's ``cross_attention_dim``; and for SDXL (``text_time``) the pooled
        text embedding's."""
        widths = {"context": self.main.config.cross_attention_dim}
        if pooled_width(self.main) is not None:
            widths["pooled"] = pooled_width(self.main)
        return widths

    def _added(self, x_t: torch.Tensor, context: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        pixels = (x_t.shape[-2] * self.pixel_scale, x_t.shape[-1] * self.pixel_scale)
        return added_conditions(self.main, context, pixels, x_t.shape[0])

    # ----- forward pieces ----------------------------------------------------------------------------------------
    def _side_residuals(self, x_t, timesteps, cond, context):
        down, mid = self.side(x_t, timesteps, encoder_hidden_states=context["context"],
                              controlnet_cond=repeat_channels(cond, self.cond_channels),
                              added_cond_kwargs=self._added(x_t, context), return_dict=False)
        return [*down, mid]

    def _main_forward(self, x_t, timesteps, residuals, context):
        return unet_forward(self.main, x_t, timesteps, context, residuals, self.pixel_scale)

    def _down_path(self, x_t: torch.Tensor, timesteps: torch.Tensor, context: dict[str, torch.Tensor]):
        """Main-net down path: returns (sample, skip tuple, time embedding (B, E), context (B, L, D))."""
        unet = self.main
        emb = unet.time_embedding(unet.get_time_embed(sample=x_t, timestep=timesteps), None)
        added = self._added(x_t, context)
        if added is not None:  # SDXL: pooled text and time ids, added before the activation as diffusers does
            emb = emb + unet.get_aug_embed(emb=emb, encoder_hidden_states=context["context"], added_cond_kwargs=added)
        if unet.time_embed_act is not None:
            emb = unet.time_embed_act(emb)
        context = unet.process_encoder_hidden_states(context["context"], None)
        sample = unet.conv_in(x_t)
        skips = (sample,)
        for block in unet.down_blocks:
            if getattr(block, "has_cross_attention", False):
                sample, res = block(hidden_states=sample, temb=emb, encoder_hidden_states=context)
            else:
                sample, res = block(hidden_states=sample, temb=emb)
            skips += res
        return sample, skips, emb, context

    def _mid_block(self, sample, emb, context) -> torch.Tensor:
        """The main net's mid block (no residual: ControlNet adds its mid residual after it)."""
        unet = self.main
        if getattr(unet.mid_block, "has_cross_attention", False):
            return unet.mid_block(sample, emb, encoder_hidden_states=context)
        return unet.mid_block(sample, emb) if unet.mid_block is not None else sample

    def _up_path(self, sample, skips, emb, context, residuals) -> torch.Tensor:
        """Up path from the mid block's output, adding ControlNet residuals (down..., mid) when given; (B, C, H, W)."""
        unet = self.main
        if residuals is not None:
            skips = tuple(skip + res for skip, res in zip(skips, residuals[:-1]))
            sample = sample + residuals[-1]
        # as diffusers: give each upsampler its skip's size when the input (conv_in's output, skips[0]) is not a
        # multiple of the overall down factor
        forward_upsample_size = any(dim % 2 ** unet.num_upsamplers for dim in skips[0].shape[-2:])
        for i, block in enumerate(unet.up_blocks):
            res, skips = skips[-len(block.resnets):], skips[: -len(block.resnets)]
            size = skips[-1].shape[2:] if forward_upsample_size and i < len(unet.up_blocks) - 1 else None
            if getattr(block, "has_cross_attention", False):
                sample = block(hidden_states=sample, temb=emb, res_hidden_states_tuple=res,
                               encoder_hidden_states=context, upsample_size=size)
            else:
                sample = block(hidden_states=sample, temb=emb, res_hidden_states_tuple=res, upsample_size=size)
        if unet.conv_norm_out is not None:
            sample = unet.conv_act(unet.conv_norm_out(sample))
        return unet.conv_out(sample)

    def _shared_prefix(self, x_t, timesteps, context):
        """Down path and mid block (no residual enters before the mid block's output): (mid, skips, emb, context)."""
        sample, skips, emb, context = self._down_path(x_t, timesteps, context)
        return self._mid_block(sample, emb, context), skips, emb, context

    def _rest(self, state, residuals):
        return self._up_path(*state, residuals)
