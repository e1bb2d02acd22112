"""``dit`` family: diffusers SD3Transformer2DModel main net + SD3ControlNetModel side net (flow matching).

The SD3 ControlNet adds its residuals after the transformer blocks, the first one after block 0: the embeddings and
block 0 are run once and shared between ``pred_full`` and ``pred_main`` (``_shared_prefix``); the other blocks
(``_rest``) run for both.
"""

from __future__ import annotations

import torch
from diffusers import SD3ControlNetModel, SD3Transformer2DModel

from lisa_probe.models.dual_branch import DualBranch, Site, check_condition_channels, repeat_channels, tokens_to_map
from lisa_probe.models.hooks import capture_modules


def dit_forward(main: SD3Transformer2DModel, x_t: torch.Tensor, timesteps: torch.Tensor,
                context: dict[str, torch.Tensor], residuals: list[torch.Tensor] | None = None) -> torch.Tensor:
    """diffusers' own SD3 transformer forward (B, C, H, W) with a text context (tokens (1 or B, L, D), pooled (1 or B,
    P)) and optional block residuals."""
    batch = x_t.shape[0]
    return main(x_t, encoder_hidden_states=context["context"].expand(batch, -1, -1),
                pooled_projections=context["pooled"].expand(batch, -1), timestep=timesteps,
                block_controlnet_hidden_states=residuals, return_dict=False)[0]


def freeze_unused_context_output(side: SD3ControlNetModel) -> None:
    """Freeze the last ControlNet block's text-stream output (``attn.to_add_out``, ``ff_context``).

    Only the image tokens of each block become a residual, so the text tokens the last block writes feed nothing:
    those weights never get a gradient (the training step is unchanged by freezing them), and under DDP accelerate
    would wait for their gradients forever."""
    last = side.transformer_blocks[-1]
    for unused in (getattr(last.attn, "to_add_out", None), getattr(last, "ff_context", None)):
        if unused is not None:
            unused.requires_grad_(False)


class DiTDualBranch(DualBranch):
    """SD3Transformer2DModel + SD3ControlNetModel. Sites ``block.0 … block.K`` (the ControlNet zero-linears).

    The control image is fed through the ControlNet's ``pos_embed_input`` patch embedding, which expects the
    transformer's input channels (+ extra conditioning channels): a condition with fewer channels is repeated
    along channels to fit (a 1-channel edge map becomes 3 identical channels for a pixel-space RGB model).
    """

    family = "dit"

    def __init__(self, main: SD3Transformer2DModel, side: SD3ControlNetModel, parameterization, null_context,
                 null_pooled):
        if side.config.num_layers >= main.config.num_layers:
            raise ValueError(f"the SD3 ControlNet must have fewer layers than the transformer "
                             f"({side.config.num_layers} >= {main.config.num_layers})")
        super().__init__(main, side, parameterization, null_context, null_pooled)
        freeze_unused_context_output(side)

    @property
    def cond_channels(self) -> int:
        """Channels the side net's control embedding expects."""
        return self.side.config.in_channels + self.side.config.extra_conditioning_channels

    def check_condition(self, channels: int) -> None:
        """With a VAE the condition is an image (1 or 3 channels, encoded as RGB); else as ``DualBranch``."""
        check_condition_channels(channels, 3 if self.vae is not None else self.cond_channels)

    def _fit_cond(self, cond: torch.Tensor) -> torch.Tensor:
        """Repeat a (B, Cc, H, W) condition along channels to (B, cond_channels, H, W).

        With a VAE (latent SD3), the condition is an image: repeated to RGB, mapped to [-1, 1] and VAE-encoded,
        as diffusers' SD3 ControlNet pipeline does with its control image.
        """
        if self.vae is not None:
            return self.encode_images(cond.repeat(1, 3 // cond.shape[1], 1, 1) * 2 - 1)
        return repeat_channels(cond, self.cond_channels)

    # ----- sites -------------------------------------------------------------------------------------------------
    def _grid(self) -> tuple[int, int]:
        size = self.main.config.sample_size
        return size // self.main.config.patch_size, size // self.main.config.patch_size

    def _tokens_to_map(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens (B, h*w, D) -> (B, D, h, w) on the patch grid."""
        return tokens_to_map(tokens, *self._grid())

    def _discover_sites(self) -> list[Site]:
        paths = {f"block.{i}": f"controlnet_blocks.{i}" for i in range(len(self.side.controlnet_blocks))}
        size = self.main.config.sample_size
        x = torch.zeros(1, self.main.config.in_channels, size, size)
        modules = {name: self.side.get_submodule(path) for name, path in paths.items()}
        with torch.no_grad(), capture_modules(modules, ("feature", "residual"), detach=True) as records:
            self._side_residuals(x, torch.ones(1), torch.zeros(1, self.cond_channels, size, size),
                                 self.null_context_batch(1))
        height, width = self._grid()
        return [Site(name, paths[name], tuple(rec["feature"].shape[1:]), tuple(rec["residual"].shape[1:]),
                     (rec["feature"].shape[-1], height, width)) for name, rec in records.items()]

    def context_widths(self) -> dict[str, int]:
        """Text tokens of ``joint_attention_dim`` and a pooled projection of ``pooled_projection_dim``."""
        return {"context": self.main.config.joint_attention_dim, "pooled": self.main.config.pooled_projection_dim}

    # ----- forward pieces ----------------------------------------------------------------------------------------
    def _side_residuals(self, x_t, timesteps, cond, context):
        return list(self.side(x_t, controlnet_cond=self._fit_cond(cond), encoder_hidden_states=context["context"],
                              pooled_projections=context["pooled"], timestep=timesteps, return_dict=False)[0])

    def _main_forward(self, x_t, timesteps, residuals, context):
        return dit_forward(self.main, x_t, timesteps, context, residuals)

    def _shared_prefix(self, x_t, timesteps, context):
        """Token states after block 0, which no residual enters: image (B, N, D), text (B, L, D), temb (B, D)."""
        main = self.main
        image = main.pos_embed(x_t).contiguous()
        temb = main.time_text_embed(timesteps, context["pooled"])
        text, image = main.transformer_blocks[0](hidden_states=image, encoder_hidden_states=main.context_embedder(
            context["context"]), temb=temb)
        return image, text, temb

    def _rest(self, state, residuals) -> torch.Tensor:
        """Residual of block 0 (if any), blocks 1.., output projection and unpatchify: (B, C, H, W), as diffusers."""
        main, (image, text, temb) = self.main, state
        blocks = main.transformer_blocks
        for index, block in enumerate(blocks):
            if index:
                text, image = block(hidden_states=image, encoder_hidden_states=text, temb=temb)
            if residuals is not None and block.context_pre_only is False:
                image = image + residuals[int(index / (len(blocks) / len(residuals)))]
        image = main.proj_out(main.norm_out(image, temb))
        patch, channels = main.config.patch_size, main.out_channels
        height, width = self._grid()
        image = image.reshape(image.shape[0], height, width, patch, patch, channels)
        return torch.einsum("nhwpqc->nchpwq", image).reshape(image.shape[0], channels, height * patch, width * patch)
