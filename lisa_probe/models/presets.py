"""Built-in main-net configurations (diffusers configs, no weights) for the pixel-space built-in data.

``tiny`` keeps a training step well under a second (tests); ``small`` is for CPU experiments. Attention only runs at
the lowest resolution: full-resolution attention costs ~5x per step on 2 CPU cores (docs/DESIGN.md, pitfalls).
"""

from __future__ import annotations

FAMILIES = ("unet", "dit")
PRESETS = ("tiny", "small")
# how pred_main's unshared part runs beside pred_full (DualBranch.forward): a no-grad pass, or in the same batch
MAIN_PASSES = ("separate", "batched")

NULL_CONTEXT_DIM = {"tiny": 8, "small": 32}


def unet_config(preset: str, resolution: int, channels: int = 3) -> dict:
    """UNet2DConditionModel kwargs for ``preset`` at ``resolution`` px with ``channels`` image channels."""
    widths = {"tiny": (8, 16), "small": (32, 64, 64)}[preset]
    down = ("DownBlock2D",) * (len(widths) - 1) + ("CrossAttnDownBlock2D",)
    up = ("CrossAttnUpBlock2D",) + ("UpBlock2D",) * (len(widths) - 1)
    return dict(
        sample_size=resolution,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=widths,
        down_block_types=down,
        up_block_types=up,
        mid_block_type="UNetMidBlock2DCrossAttn",
        layers_per_block=1,
        norm_num_groups=8,
        cross_attention_dim=NULL_CONTEXT_DIM[preset],
        attention_head_dim=8,
    )


def dit_config(preset: str, resolution: int, channels: int = 3) -> dict:
    """SD3Transformer2DModel kwargs for ``preset`` at ``resolution`` px with ``channels`` image channels."""
    layers, heads, head_dim = {"tiny": (4, 2, 8), "small": (6, 4, 16)}[preset]
    patch = 2
    return dict(
        sample_size=resolution,
        patch_size=patch,
        in_channels=channels,
        out_channels=channels,
        num_layers=layers,
        attention_head_dim=head_dim,
        num_attention_heads=heads,
        joint_attention_dim=NULL_CONTEXT_DIM[preset],
        caption_projection_dim=heads * head_dim,
        pooled_projection_dim=NULL_CONTEXT_DIM[preset],
        pos_embed_max_size=resolution // patch,
    )


def side_layers(main_layers: int) -> int:
    """SD3 ControlNet depth for a transformer of ``main_layers`` blocks: half of it (it must be fewer)."""
    return max(1, main_layers // 2)
