"""Fixed samplers for evaluation: DDIM (eps/v) or flow-match Euler (flow) from diffusers, fixed seeds."""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from lisa_probe.diffusion.parameterization import Parameterization
from lisa_probe.seeds import derive_seed

Predictor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def sample(predict: Predictor, parameterization: Parameterization, noise: torch.Tensor, steps: int = 25,
           clip_sample: bool = True, progress: bool = False) -> torch.Tensor:
    """Integrate the reverse process from ``noise`` (B, C, H, W) with ``predict(x_t, t (B,)) -> prediction``.

    Returns the final model-space samples (B, C, H, W).
    """
    scheduler = parameterization.make_sampler(clip_sample=clip_sample)
    scheduler.set_timesteps(steps)
    x = noise * getattr(scheduler, "init_noise_sigma", 1.0)
    for t in tqdm(scheduler.timesteps, desc="sampling", disable=not progress, leave=False):
        timesteps = t.reshape(1).expand(x.shape[0]).to(x.device)
        x = scheduler.step(predict(x, timesteps), t, x).prev_sample
    return x


ROW_NOISE_CONVENTION = "randn(shape, Generator().manual_seed(seed * 1_000_003 + row)), CPU, float32"


def row_noise(shape: tuple[int, ...], seed: int, rows: range) -> torch.Tensor:
    """Noise (len(rows), *shape) on the CPU, each row from its own generator seeded by (seed, row): the feature
    store's convention (``ROW_NOISE_CONVENTION``, recorded in each store), so any program can rebuild a row's
    input."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(derive_seed(seed, "row_noise", row)))
                        for row in rows])


def fixed_noise(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Reproducible starting noise (B, C, H, W) from a dedicated CPU generator."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))
