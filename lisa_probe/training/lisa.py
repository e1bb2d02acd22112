"""LISA head: the time-conditioned decoder, the likelihood-score target, the distance and the lambda schedule.

Reference (HKUST-LongGroup/LISA ``LightweightDecoder``, PAPER.md section 4): the side feature ``h`` entering a
site's zero module gets a per-channel time bias (256-d sinusoidal embedding -> Linear -> SiLU), then
``log2(H / h)`` stages of conv -> SiLU -> x2 nearest upsampling, halving channels (not below ``min_channels``), and a
zero-initialised 3x3 output conv to the prediction's shape. Loss: ``lambda * distance(D(h, t), y - sg[pred_main])``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from lisa_probe.training.lisa_schedule import DISTANCES


def sinusoidal_embedding(timesteps: torch.Tensor, dim: int = 256) -> torch.Tensor:
    """(B,) timesteps -> (B, dim) embedding, frequencies exp(-ln(10000) i / (dim/2)), [cos, sin] order."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    angles = timesteps.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class LisaDecoder(ModelMixin, ConfigMixin):
    """D(h, t): side feature map (B, in_channels, in_size, in_size) -> (B, out_channels, out_size, out_size).

    Zero-initialised output: at step 0 it predicts 0, so the LISA loss starts at E[target^2].
    """

    @register_to_config
    def __init__(self, in_channels: int, in_size: int, out_channels: int, out_size: int,
                 time_embed_dim: int = 256, min_channels: int = 64, site: str | None = None):
        """``site``: the hooked site it decodes, recorded in the decoder's own ``config.json`` (None in decoders
        saved before it was; the run's ``config.yaml`` holds it too)."""
        super().__init__()
        if out_size % in_size or (out_size // in_size) & (out_size // in_size - 1):
            raise ValueError(f"decoder needs a power-of-two upsampling, got {in_size} -> {out_size}")
        self.time_proj = nn.Linear(time_embed_dim, in_channels)
        stages = int(math.log2(out_size // in_size))
        layers: list[nn.Module] = []
        channels = in_channels
        for stage in range(max(stages, 1)):
            next_channels = max(channels // 2, min_channels) if channels > min_channels else channels
            kernel = 1 if stage == 0 and channels >= 512 else 3
            layers += [nn.Conv2d(channels, next_channels, kernel, padding=kernel // 2), nn.SiLU()]
            if stages:
                layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
            channels = next_channels
        self.trunk = nn.Sequential(*layers)
        self.out = nn.Conv2d(channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, feature: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """feature (B, C, h, w), timesteps (B,) -> (B, out_channels, H, W)."""
        embedding = F.silu(self.time_proj(sinusoidal_embedding(timesteps, self.config.time_embed_dim)))
        return self.out(self.trunk(feature + embedding.to(feature.dtype)[:, :, None, None]))


def lisa_target(target: torch.Tensor, pred_main: torch.Tensor) -> torch.Tensor:
    """Oracle likelihood-score estimate in prediction units: ``y - sg[pred_main]`` (R, C, H, W)."""
    return target - pred_main.detach()


def lisa_distance(decoded: torch.Tensor, target: torch.Tensor, distance: str = "mse") -> torch.Tensor:
    """Scalar distance: mean squared error, or mean over rows of 1 - cosine similarity of flattened rows."""
    if distance == "mse":
        return F.mse_loss(decoded.float(), target.float())
    if distance == "cosine":
        return (1 - F.cosine_similarity(decoded.flatten(1).float(), target.flatten(1).float(), dim=1)).mean()
    raise ValueError(f"unknown LISA distance {distance!r}; allowed: {', '.join(DISTANCES)}")
