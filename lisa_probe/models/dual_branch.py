"""The dual-branch object: a frozen main net plus a trainable side net, their sites and gated forward.

A *site* is one injection point of the side net: the zero-conv (UNet ControlNet) or zero-linear (SD3 ControlNet)
whose input is the side feature ``h`` and whose output is the residual added to the main net.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lisa_probe.diffusion.parameterization import Parameterization
from lisa_probe.models.presets import MAIN_PASSES


def tokens_to_map(tokens, height: int, width: int):
    """Tokens (B, height·width, D) -> maps (B, D, height, width) on their patch grid (row-major), for torch tensors
    and numpy arrays alike: how a DiT site's features become a map (``DualBranch.feature_to_map``, the analysis)."""
    return tokens.swapaxes(1, 2).reshape(tokens.shape[0], tokens.shape[2], height, width)


def middle_site(names: list[str]) -> str:
    """The middle one of ``names`` in injection order (the lower middle for an even count): the default LISA site
    and the default site of analyses that need one."""
    return names[(len(names) - 1) // 2]


@dataclass(frozen=True)
class Site:
    """One injection site.

    Attributes:
        name: stable short name (``down.3``, ``mid``, ``block.1``).
        module_path: dotted path of the zero module inside the side net (for hooks).
        feature_shape: per-sample shape of the feature entering the zero module, (C, h, w) or (N, D) for tokens.
        residual_shape: per-sample shape of the residual leaving it.
        map_shape: (C, h, w) the feature takes as a spatial map (tokens are folded back onto their patch grid).
    """

    name: str
    module_path: str
    feature_shape: tuple[int, ...]
    residual_shape: tuple[int, ...]
    map_shape: tuple[int, int, int]


@dataclass
class DualOutput:
    """Predictions of one dual-branch call, in the parameterisation's units.

    Attributes:
        pred_full: (B, C, H, W) main net with (gated) side residuals.
        pred_main: (R, C, H, W) main net alone for the first R rows of the batch (no grad), or None.
    """

    pred_full: torch.Tensor
    pred_main: torch.Tensor | None




def map_tensors(function: Callable[[torch.Tensor], torch.Tensor], state):
    """Apply ``function`` to every tensor of a (nested) tuple of tensors, keeping its structure."""
    if isinstance(state, torch.Tensor):
        return function(state)
    return tuple(map_tensors(function, item) for item in state)


def vae_scale(vae) -> int:
    """Pixels per latent cell of a VAE (1 without one)."""
    return 1 if vae is None else 2 ** (len(vae.config.block_out_channels) - 1)


def repeat_channels(cond: torch.Tensor, want: int) -> torch.Tensor:
    """A (B, C, H, W) condition as the (B, ``want``, H, W) one a ControlNet takes: as it is when C = ``want``,
    repeated along channels when ``want`` is a multiple of C (a greyscale condition becomes RGB, as PIL's
    ``convert("RGB")`` makes it for diffusers' pipelines); ValueError naming both counts otherwise."""
    check_condition_channels(cond.shape[1], want)
    return cond if cond.shape[1] == want else cond.repeat(1, want // cond.shape[1], 1, 1)


def check_condition_channels(channels: int, want: int) -> None:
    """ValueError unless a ``channels``-channel condition can feed a ControlNet taking ``want`` channels."""
    if channels < 1 or want % channels:
        raise ValueError(f"the condition has {channels} channel(s) but this ControlNet takes {want}: conditions must "
                         f"have {want} channels, or a divisor of {want} (repeated: 1 -> 3 for a greyscale image)")


def gate_residuals(residuals: list[torch.Tensor], gates: torch.Tensor | None) -> list[torch.Tensor]:
    """Scale residual k (B, ...) by ``gates[..., k]``; gates are (S,) or (B, S), None means all ones."""
    if gates is None:
        return residuals
    if gates.shape[-1] != len(residuals):
        raise ValueError(f"gates have {gates.shape[-1]} entries, the model has {len(residuals)} sites")
    scaled = []
    for k, residual in enumerate(residuals):
        gate = gates[..., k].to(residual.dtype)
        scaled.append(residual * gate.reshape(-1, *([1] * (residual.ndim - 1))) if gate.ndim else residual * gate)
    return scaled


class DualBranch(nn.Module):
    """Frozen main net + trainable side net for one backbone family.

    Subclasses implement ``_side_residuals``, ``_main_forward``, ``_shared_prefix`` and ``_rest``; this class owns
    the common API. Inputs everywhere: ``x_t`` (B, C, H, W) in model space, ``timesteps`` (B,), ``cond`` (B, Cc, Hc, Wc).
    """

    family: str = ""

    def __init__(self, main: nn.Module, side: nn.Module, parameterization: Parameterization,
                 null_context: torch.Tensor, null_pooled: torch.Tensor | None = None):
        super().__init__()
        self.main = main
        self.side = side
        self.parameterization = parameterization
        self.main.requires_grad_(False)
        self.main.eval()
        self.vae: nn.Module | None = None
        self.register_buffer("null_context", null_context, persistent=False)
        self.register_buffer("null_pooled", null_pooled, persistent=False)
        self.check_null_context()
        self.sites: list[Site] = self._discover_sites()

    # ----- sites -------------------------------------------------------------------------------------------------
    @property
    def site_names(self) -> list[str]:
        """Site names in injection order."""
        return [site.name for site in self.sites]

    def site(self, name: str) -> Site:
        """The site called ``name``; a ValueError lists the valid names otherwise."""
        for site in self.sites:
            if site.name == name:
                return site
        raise ValueError(f"unknown site {name!r}; valid sites: {', '.join(self.site_names)}")

    def default_lisa_site(self) -> str:
        """A middle site of the side net (the reference uses a middle down block): ``middle_site``."""
        return middle_site(self.site_names)

    def site_module(self, name: str) -> nn.Module:
        """The zero module of site ``name`` inside the side net."""
        return self.side.get_submodule(self.site(name).module_path)

    def feature_to_map(self, name: str, feature: torch.Tensor) -> torch.Tensor:
        """Feature (B, *feature_shape) as a spatial map (B, C, h, w)."""
        return feature.reshape(feature.shape[0], *self.site(name).map_shape) if feature.ndim == 4 else \
            self._tokens_to_map(feature)

    def _tokens_to_map(self, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def pixel_scale(self) -> int:
        """Image pixels per sample pixel: the VAE's downsampling factor (1 in pixel space)."""
        return vae_scale(self.vae)

    def cast_frozen(self, dtype: torch.dtype) -> None:
        """Hold the frozen modules (main net, VAE) in ``dtype`` (diffusers' ``weight_dtype`` under mixed precision:
        half the memory; their forwards run under autocast); the side net stays as it is. float32 changes nothing."""
        if dtype == torch.float32:
            return
        self.main.to(dtype)
        if self.vae is not None:
            self.vae.to(dtype)

    # ----- model space (pixels, or VAE latents when the main net came with a ``vae/``) --------------------------
    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> model-space samples (identity in pixel space; scaled VAE latents, on the
        VAE's device, whatever device the images come from). With ``generator`` (training, as diffusers' trainers'
        ``latent_dist.sample()``) a draw from the VAE's posterior, its noise from ``generator``; without, the
        posterior's mode (deterministic: feature stores, the evaluation, the onset probe)."""
        if self.vae is None:
            return images
        mean, std = self.encode_posterior(images)
        return mean if generator is None else draw_latents(mean, std, generator)

    @torch.no_grad()
    def encode_posterior(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE posterior of images (B, 3, H, W) in [-1, 1] in model space: its mean (= mode) and standard
        deviation, both (B, C, h, w), scaled and shifted as the latents the main net sees."""
        posterior = self.vae.encode(images.to(device=self.vae.device, dtype=self.vae.dtype)).latent_dist
        shift = self.vae.config.get("shift_factor") or 0.0
        scale = self.vae.config.scaling_factor
        return (posterior.mean - shift) * scale, posterior.std * scale

    @torch.no_grad()
    def decode_samples(self, samples: torch.Tensor) -> torch.Tensor:
        """Model-space samples -> images (B, 3, H, W) clamped to [-1, 1]."""
        if self.vae is not None:
            shift = self.vae.config.get("shift_factor") or 0.0
            samples = self.vae.decode(samples / self.vae.config.scaling_factor + shift).sample
        return samples.clamp(-1, 1)

    def _discover_sites(self) -> list[Site]:
        raise NotImplementedError

    # ----- forward -----------------------------------------------------------------------------------------------
    def train(self, mode: bool = True):
        """Train mode for the side net only; the main net always stays in eval mode."""
        super().train(mode)
        self.main.eval()
        return self

    def context_widths(self) -> dict[str, int]:
        """Width (last dimension) of each text-conditioning input the main net takes: ``context`` (and ``pooled``)."""
        raise NotImplementedError

    def check_null_context(self) -> None:
        """ValueError naming both widths unless the null context fits the main net."""
        null = {"context": self.null_context, "pooled": self.null_pooled}
        for key, width in self.context_widths().items():
            if null[key] is None or null[key].shape[-1] != width:
                got = "none" if null[key] is None else f"shape {tuple(null[key].shape)}"
                raise ValueError(f"the null context's {key!r} has {got}, but this main net takes width {width} "
                                 f"(a null_context.safetensors or text encoder made for another model?)")

    def null_context_batch(self, batch_size: int) -> dict[str, torch.Tensor]:
        """The fixed null conditioning inputs of the main net for a batch: ``null_context`` (1, L, D) expanded to
        (B, L, D) (and, for SD3, ``null_pooled`` (1, P) to (B, P))."""
        context = {"context": self.null_context.expand(batch_size, -1, -1)}
        if self.null_pooled is not None:
            context["pooled"] = self.null_pooled.expand(batch_size, -1)
        return context

    def context(self, batch_size: int, given: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The text conditioning of a batch of ``batch_size`` rows: ``given`` (per-sample prompt embeddings,
        ``{"context": (B, L, D)}`` and for SD3 ``"pooled": (B, P)``), checked against the model's widths, or the null
        context when ``given`` is None."""
        if given is None:
            return self.null_context_batch(batch_size)
        widths = self.context_widths()
        if set(given) != set(widths):
            raise ValueError(f"a context needs the keys {sorted(widths)}, got {sorted(given)}")
        for key, tensor in given.items():
            ndim = 3 if key == "context" else 2
            if tensor.ndim != ndim or tensor.shape[0] != batch_size or tensor.shape[-1] != widths[key]:
                want = f"({batch_size}, L, {widths[key]})" if ndim == 3 else f"({batch_size}, {widths[key]})"
                raise ValueError(f"context {key!r} has shape {tuple(tensor.shape)}; this model takes {want}")
        return given

    def forward(self, x_t: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor,
                gates: torch.Tensor | None = None, main_rows: int = 0, main_pass: str = "separate",
                context: dict[str, torch.Tensor] | None = None,
                main_context: dict[str, torch.Tensor] | None = None) -> DualOutput:
        """``pred_full`` with residuals scaled by ``gates`` and ``pred_main`` for the first ``main_rows`` rows.

        ``context``: per-sample text conditioning of both nets (see ``context``; None: the null context).
        ``main_rows = 0`` skips the main-alone prediction. The part of the main net that no residual enters (the
        UNet's down path and mid block, the DiT's embeddings and block 0) runs once for both; the rest runs
        ``main_pass="separate"``: a second time, without gradients, on the ``main_rows`` rows (fewest FLOPs), or
        ``"batched"``: once, on the batch with those rows appended with zero residuals (fewest kernel launches:
        faster where small models are launch-bound, as on GPUs; costs activation memory for the extra rows).
        ``main_context`` (rows ``main_rows``) gives ``pred_main`` another text conditioning than ``pred_full``'s
        (e.g. the empty prompt: the prior without text); nothing is shared then, the main net runs whole again.
        ``pred_main`` never carries gradients.
        """
        if main_pass not in MAIN_PASSES:
            raise ValueError(f"unknown main pass {main_pass!r}; allowed: {', '.join(MAIN_PASSES)}")
        context = self.context(x_t.shape[0], context)
        residuals = gate_residuals(self._side_residuals(x_t, timesteps, cond, context), gates)
        state = self._shared_prefix(x_t, timesteps, context)
        if not main_rows:
            return DualOutput(self._rest(state, residuals), None)
        if main_context is not None:
            pred_full = self._rest(state, residuals)
            with torch.no_grad():
                pred_main = self.predict_main(x_t[:main_rows], timesteps[:main_rows], main_context)
            return DualOutput(pred_full, pred_main)
        if main_pass == "batched":
            extended = map_tensors(lambda tensor: torch.cat([tensor, tensor[:main_rows]]), state)
            padded = [torch.cat([residual, residual.new_zeros(main_rows, *residual.shape[1:])])
                      for residual in residuals]
            both = self._rest(extended, padded)
            return DualOutput(both[: len(x_t)], both[len(x_t):].detach())
        pred_full = self._rest(state, residuals)
        with torch.no_grad():
            pred_main = self._rest(map_tensors(lambda tensor: tensor[:main_rows], state), None)
        return DualOutput(pred_full, pred_main)

    def gated_prediction(self, x_t: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor,
                         context: dict[str, torch.Tensor] | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
        """``gates (B, S) -> pred_full (B, C, H, W)`` at fixed inputs, for many gate settings (attributions): the
        side residuals and the main net's shared prefix do not depend on the gates, so they are computed once here
        (without gradients) and each call runs only the rest of the main net (``_rest``) on the gated residuals —
        the same operations as ``forward(..., gates=gates).pred_full``, differentiable in the gates."""
        context = self.context(x_t.shape[0], context)
        with torch.no_grad():
            residuals = self._side_residuals(x_t, timesteps, cond, context)
            state = self._shared_prefix(x_t, timesteps, context)
        return lambda gates: self._rest(state, gate_residuals(residuals, gates))

    def patched_prediction(self, x_t: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor,
                           donor_cond: torch.Tensor, patched: Sequence[str],
                           context: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """``pred_full`` (B, C, H, W) with the residuals of the sites named in ``patched`` computed from
        ``donor_cond`` (B, Cc, Hc, Wc) instead of ``cond`` at the same ``x_t``, ``t`` and context (activation
        patching of the side branch at those sites). No site patched is ``forward(...).pred_full``; every site
        patched is ``forward`` on ``donor_cond`` (the same operations: tested bit for bit)."""
        context = self.context(x_t.shape[0], context)
        chosen = {self.site_names.index(self.site(name).name) for name in patched}
        own = self._side_residuals(x_t, timesteps, cond, context)
        donor = self._side_residuals(x_t, timesteps, donor_cond, context) if chosen else own
        mixed = [donor[k] if k in chosen else residual for k, residual in enumerate(own)]
        return self._rest(self._shared_prefix(x_t, timesteps, context), mixed)

    def predict_main(self, x_t: torch.Tensor, timesteps: torch.Tensor,
                     context: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Main net alone (B, C, H, W) through diffusers' own forward (no residuals); ``context`` as in forward."""
        return self._main_forward(x_t, timesteps, None, self.context(x_t.shape[0], context))

    def predict_full_reference(self, x_t: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor,
                               gates: torch.Tensor | None = None,
                               context: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """pred_full through diffusers' own main-net forward (no sharing): the reference for tests and benchmarks."""
        context = self.context(x_t.shape[0], context)
        residuals = gate_residuals(self._side_residuals(x_t, timesteps, cond, context), gates)
        return self._main_forward(x_t, timesteps, residuals, context)

    @property
    def cond_channels(self) -> int:
        """Channels the side net's condition input takes."""
        raise NotImplementedError

    def check_condition(self, channels: int) -> None:
        """ValueError (naming both counts) unless ``channels``-channel conditions can feed this side net."""
        check_condition_channels(channels, self.cond_channels)

    def _side_residuals(self, x_t, timesteps, cond, context: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        raise NotImplementedError

    def _main_forward(self, x_t, timesteps, residuals, context: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def _shared_prefix(self, x_t: torch.Tensor, timesteps: torch.Tensor, context: dict[str, torch.Tensor]) -> tuple:
        """The main net up to the first point a residual enters: a (nested) tuple of (B, ...) tensors."""
        raise NotImplementedError

    def _rest(self, state: tuple, residuals: list[torch.Tensor] | None) -> torch.Tensor:
        """The main net from ``_shared_prefix``'s state to the prediction (B, C, H, W), adding the residuals."""
        raise NotImplementedError


def draw_latents(mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A draw ``mean + std * ε`` (B, C, h, w) from a VAE posterior in model space, ε from the CPU ``generator`` (so
    that a resumed run draws the same latents), on ``mean``'s device and dtype."""
    noise = torch.randn(mean.shape, generator=generator, dtype=torch.float32)
    return mean + std * noise.to(device=mean.device, dtype=mean.dtype)
