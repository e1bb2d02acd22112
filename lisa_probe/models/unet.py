"""``unet`` family: diffusers UNet2DConditionModel main net + ControlNetModel side net (eps or v prediction).

ControlNet residuals only enter the UNet's skip connections and the mid-block output, so the down path and the mid
block are run once and shared between ``pred_full`` and ``pred_main`` (``_shared_prefix``; the up path is
``_rest``).
"""

from __future__ import annotations

import torch
from diffusers import ControlNetModel, UNet2DConditionModel

from lisa_probe.hooks import capture_modules
from lisa_probe.models.dual_branch import DualBranch, Site, repeat_channels

UNSUPPORTED_UNET_OPTIONS = ("class_embed_type", "addition_embed_type", "encoder_hid_dim_type")


def unet_forward(main: UNet2DConditionModel, x_t: torch.Tensor, timesteps: torch.Tensor,
                 context: dict[str, torch.Tensor], residuals: list[torch.Tensor] | None = None) -> torch.Tensor:
    """diffusers' own UNet forward (B, C, H, W) with a text context (1 or B, L, D) and optional ControlNet residuals."""
    kwargs = {} if residuals is None else dict(down_block_additional_residuals=residuals[:-1],
                                               mid_block_additional_residual=residuals[-1])
    return main(x_t, timesteps, encoder_hidden_states=context["context"].expand(x_t.shape[0], -1, -1),
                return_dict=False, **kwargs)[0]


class UNetDualBranch(DualBranch):
    """UNet2DConditionModel + ControlNetModel. Sites ``down.0 … down.N`` and ``mid`` (the ControlNet zero-convs)."""

    family = "unet"

    def __init__(self, main: UNet2DConditionModel, side: ControlNetModel, parameterization, null_context):
        for option in UNSUPPORTED_UNET_OPTIONS:
            if main.config.get(option) is not None:
                raise ValueError(f"UNet option {option}={main.config[option]!r} is not supported by the dual branch")
        if main.config.center_input_sample:
            raise ValueError("UNet option center_input_sample=True is not supported by the dual branch")
        super().__init__(main, side, parameterization, null_context)

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
            self.side(x, torch.zeros(1, dtype=torch.long), encoder_hidden_states=self.null_context,
                      controlnet_cond=cond, return_dict=False)
        return [Site(name, paths[name], tuple(rec["feature"].shape[1:]), tuple(rec["residual"].shape[1:]),
                     tuple(rec["feature"].shape[1:])) for name, rec in records.items()]

    @property
    def cond_channels(self) -> int:
        """Channels the ControlNet's conditioning embedding takes."""
        return self.side.config.conditioning_channels

    def context_widths(self) -> dict[str, int]:
        """The text context's width: the UNet's ``cross_attention_dim``."""
        return {"context": self.main.config.cross_attention_dim}

    # ----- forward pieces ----------------------------------------------------------------------------------------
    def _side_residuals(self, x_t, timesteps, cond, context):
        down, mid = self.side(x_t, timesteps, encoder_hidden_states=context["context"],
                              controlnet_cond=repeat_channels(cond, self.cond_channels), return_dict=False)
        return [*down, mid]

    def _main_forward(self, x_t, timesteps, residuals, context):
        return unet_forward(self.main, x_t, timesteps, context, residuals)

    def _down_path(self, x_t: torch.Tensor, timesteps: torch.Tensor, context: dict[str, torch.Tensor]):
        """Main-net down path: returns (sample, skip tuple, time embedding (B, E), context (B, L, D))."""
        unet = self.main
        emb = unet.time_embedding(unet.get_time_embed(sample=x_t, timestep=timesteps), None)
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
