"""One place for the forward processes and prediction conversions of eps, v and flow parameterisations.

Notation (docs/DESIGN.md): ``x_t = alpha_t x0 + sigma_t eps`` for eps/v on a DDPM schedule, ``x_t = (1 - t) x0 + t eps``
for rectified flow (SD3). Training targets: eps, ``v = alpha_t eps - sigma_t x0``, ``u = eps - x0``.

Timesteps are what the network is fed: integers in ``[0, num_train_timesteps)`` for eps/v, floats
``1000 * t`` with ``t in (0, 1]`` for flow (as diffusers' FlowMatchEulerDiscreteScheduler feeds SD3).
All tensors here are (B, C, H, W) (any trailing shape works); per-sample coefficients broadcast from (B,).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import diffusers
import torch
from diffusers import DDIMScheduler, DDPMScheduler, FlowMatchEulerDiscreteScheduler
from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3

from lisa_probe.diffusion.weighting import PREDICTION_TYPES, TIMESTEP_SAMPLINGS, WeightingScheme
from lisa_probe.options import check_choice

FLOW_TIMESTEP_SCALE = 1000.0


def _expand(coef: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape per-sample coefficients (B,) to broadcast against ``like`` (B, ...)."""
    return coef.to(device=like.device, dtype=like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


@dataclass
class Parameterization:
    """Noising, targets and prediction conversions for one prediction type.

    Args:
        prediction_type: ``"eps"``, ``"v"`` or ``"flow"``.
        num_train_timesteps: length of the discrete schedule (eps/v) or of the timestep grid (flow).
        beta_schedule: diffusers beta schedule name for eps/v (ignored for flow).
        shift: flow only: the schedule's timestep shift, ``sigma = shift·s / (1 + (shift − 1)·s)`` for s on the
            uniform grid (FlowMatchEulerDiscreteScheduler's ``shift``; 3.0 in SD3 checkpoints, 1.0 = no shift),
            applied to training draws and to the sampler.
    """

    prediction_type: str = "eps"
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    beta_start: float = 0.0001
    beta_end: float = 0.02
    shift: float = 1.0

    def __post_init__(self) -> None:
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unknown prediction_type {self.prediction_type!r}; allowed: {', '.join(PREDICTION_TYPES)}")
        if not self.shift > 0 or (self.shift != 1.0 and self.prediction_type != "flow"):
            raise ValueError(f"shift must be > 0 and is for flow matching only, got {self.shift!r} for "
                             f"{self.prediction_type!r}")
        if self.prediction_type != "flow":
            self.alphas_cumprod = (1.0 - self._ddpm().betas.to(torch.float64)).cumprod(0)

    def _ddpm(self) -> DDPMScheduler:
        return DDPMScheduler(num_train_timesteps=self.num_train_timesteps, beta_schedule=self.beta_schedule,
                             beta_start=self.beta_start, beta_end=self.beta_end,
                             prediction_type="epsilon" if self.prediction_type == "eps" else "v_prediction")

    def to_scheduler(self):
        """The diffusers training scheduler describing this parameterisation (saved beside a main net)."""
        if self.prediction_type == "flow":
            return FlowMatchEulerDiscreteScheduler(num_train_timesteps=self.num_train_timesteps, shift=self.shift)
        return self._ddpm()

    @classmethod
    def from_scheduler_config(cls, config: dict) -> Parameterization:
        """Rebuild from a diffusers scheduler config (``scheduler/scheduler_config.json``); ValueError for a
        ``_class_name`` that is not one of diffusers' schedulers."""
        class_name = config.get("_class_name", "")
        if class_name and not (class_name.endswith("Scheduler") and hasattr(diffusers.schedulers, class_name)):
            raise ValueError(f"scheduler _class_name {class_name!r} is not a diffusers scheduler (e.g. "
                             "DDPMScheduler, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler)")
        if class_name.startswith("FlowMatch"):
            if config.get("use_dynamic_shifting"):
                raise ValueError("scheduler option use_dynamic_shifting=True is not supported: lisa_probe applies a "
                                 "fixed shift (the scheduler's 'shift')")
            return cls("flow", config.get("num_train_timesteps", 1000), shift=float(config.get("shift", 1.0)))
        for option in ("rescale_betas_zero_snr", "trained_betas"):
            if config.get(option):
                raise ValueError(f"scheduler option {option}={config[option]!r} is not supported: lisa_probe builds "
                                 "the noise schedule from beta_schedule, beta_start and beta_end only")
        kinds = {"epsilon": "eps", "v_prediction": "v"}
        prediction = config.get("prediction_type", "epsilon")
        if prediction not in kinds:
            raise ValueError(f"unsupported scheduler prediction_type {prediction!r}; allowed: {', '.join(kinds)}")
        return cls(kinds[prediction], config.get("num_train_timesteps", 1000), config.get("beta_schedule", "linear"),
                   config.get("beta_start", 0.0001), config.get("beta_end", 0.02))

    # ----- schedule -------------------------------------------------------------------------------------------
    def sample_timesteps(self, batch_size: int, generator: torch.Generator | None = None,
                         sampling: str = "uniform", weighting: WeightingScheme = WeightingScheme()) -> torch.Tensor:
        """Draw training timesteps (B,): integers for eps/v, ``1000 * sigma`` on the (shifted) grid for flow;
        ``sampling`` ``"uniform"`` over the schedule, or ``"cubic"`` (T2I-Adapter's ``t = (1 − u³) T``, u uniform:
        three quarters of the draws in the noisier half, where the condition decides the layout). A ``weighting``
        that shapes the density (flow only: ``logit_normal``, ``mode``) draws as diffusers' SD3 trainers do:
        ``u = compute_density_for_timestep_sampling(...)``, then the scheduler's ``timesteps[(u · T).long()]``."""
        check_choice("timestep sampling", sampling, TIMESTEP_SAMPLINGS)
        if weighting.shapes_density:
            self.check_weighting(weighting)
            u = compute_density_for_timestep_sampling(weighting.name, batch_size, weighting.logit_mean,
                                                      weighting.logit_std, weighting.mode_scale, generator=generator)
            # u < 1 always in exact arithmetic; a float sigmoid can round to 1.0 (the last index, as u -> 1)
            index = (u * self.num_train_timesteps).long().clamp(0, self.num_train_timesteps - 1)
            return self._train_timesteps[index]
        if sampling == "cubic":
            u = torch.rand(batch_size, generator=generator, dtype=torch.float64)
            steps = ((1 - u**3) * self.num_train_timesteps).long().clamp(0, self.num_train_timesteps - 1)
        else:
            steps = torch.randint(0, self.num_train_timesteps, (batch_size,), generator=generator)
        if self.prediction_type == "flow":
            return self.shifted((steps + 1).to(torch.float64) / self.num_train_timesteps).to(torch.float32) \
                * FLOW_TIMESTEP_SCALE
        return steps

    @functools.cached_property
    def _train_timesteps(self) -> torch.Tensor:
        """The training scheduler's timesteps (T,), high to low noise, float32 (built once, not at every draw)."""
        return self.to_scheduler().timesteps.to(torch.float32)

    def shifted(self, s: torch.Tensor) -> torch.Tensor:
        """Flow: the schedule's shift applied to noise levels ``s`` in (0, 1] (identity for shift 1)."""
        return self.shift * s / (1 + (self.shift - 1) * s)

    def check_weighting(self, weighting: WeightingScheme) -> None:
        """ValueError unless ``weighting`` is ``none`` or this is flow matching (diffusers' SD3 schemes)."""
        if weighting.name != "none" and self.prediction_type != "flow":
            raise ValueError(f"--weighting-scheme {weighting.name!r} is for flow matching (SD3-style main nets), "
                             f"not {self.prediction_type!r} prediction; use 'none'")

    def loss_weights(self, timesteps: torch.Tensor, weighting: WeightingScheme) -> torch.Tensor | None:
        """Per-sample loss weights (B,) float32 of an SD3 weighting scheme (``compute_loss_weighting_for_sd3`` on
        sigma = t): ``sigma_sqrt`` σ⁻², ``cosmap`` 2 / (π(1 − 2σ + 2σ²)); None for schemes that do not weight."""
        self.check_weighting(weighting)
        if weighting.name not in ("sigma_sqrt", "cosmap"):
            return None
        sigmas = timesteps.to(torch.float64) / FLOW_TIMESTEP_SCALE
        return compute_loss_weighting_for_sd3(weighting.name, sigmas).to(torch.float32)

    def evenly_spaced_timesteps(self, n: int) -> torch.Tensor:
        """``n`` timesteps evenly spread over the schedule, from low to high noise (n,)."""
        if n < 1:
            raise ValueError(f"number of timesteps must be >= 1, got {n}")
        fractions = (torch.arange(n, dtype=torch.float64) + 0.5) / n
        if self.prediction_type == "flow":
            return (fractions * FLOW_TIMESTEP_SCALE).to(torch.float32)
        return (fractions * self.num_train_timesteps).floor().long()

    def alpha_sigma(self, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Signal and noise scales (B,), float64: ``x_t = alpha x0 + sigma eps`` for every parameterisation."""
        if self.prediction_type == "flow":
            t = timesteps.to(torch.float64) / FLOW_TIMESTEP_SCALE
            return 1.0 - t, t
        alpha_bar = self.alphas_cumprod[timesteps.long().cpu()].to(timesteps.device)
        return alpha_bar.sqrt(), (1.0 - alpha_bar).sqrt()

    def min_snr_weight(self, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
        """Min-SNR-gamma loss weights (B,) float32 (Hang et al. 2023, as in diffusers' training scripts).

        They turn the plain MSE on this parameterisation's target into ``min(SNR, gamma) * |x0_hat - x0|^2`` up to
        a constant: ``min(SNR, gamma) / SNR`` for eps, ``min(SNR, gamma) / (SNR + 1)`` for v, with
        ``SNR = alpha^2 / sigma^2``. Flow matching has no such weighting here (ValueError).
        """
        if self.prediction_type == "flow":
            raise ValueError("min-SNR weighting is defined for eps and v prediction only, not for flow")
        alpha, sigma = self.alpha_sigma(timesteps)
        snr = alpha**2 / sigma**2
        clipped = snr.clamp(max=gamma)
        return (clipped / snr if self.prediction_type == "eps" else clipped / (snr + 1)).to(torch.float32)

    def noise_level(self, timesteps: torch.Tensor) -> torch.Tensor:
        """sigma_t (B,) as float32."""
        return self.alpha_sigma(timesteps)[1].to(torch.float32)

    # ----- forward process and targets --------------------------------------------------------------------
    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x_t (B, ...) = alpha_t x0 + sigma_t eps."""
        alpha, sigma = self.alpha_sigma(timesteps)
        return _expand(alpha, x0) * x0 + _expand(sigma, x0) * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Training target y (B, ...): eps, v = alpha eps - sigma x0, or u = eps - x0."""
        if self.prediction_type == "eps":
            return noise
        if self.prediction_type == "flow":
            return noise - x0
        alpha, sigma = self.alpha_sigma(timesteps)
        return _expand(alpha, x0) * noise - _expand(sigma, x0) * x0

    # ----- conversions ---------------------------------------------------------------------------------------
    def pred_to_eps(self, pred: torch.Tensor, x_t: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """eps-hat (B, ...) from a prediction: identity, alpha v + sigma x_t, or x_t + (1 - t) u."""
        if self.prediction_type == "eps":
            return pred
        alpha, sigma = self.alpha_sigma(timesteps)
        if self.prediction_type == "flow":
            return x_t + _expand(alpha, x_t) * pred
        return _expand(alpha, x_t) * pred + _expand(sigma, x_t) * x_t

    def pred_to_score(self, pred: torch.Tensor, x_t: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Score grad log p_t(x_t) (B, ...) = -eps-hat / sigma_t."""
        _, sigma = self.alpha_sigma(timesteps)
        return -self.pred_to_eps(pred, x_t, timesteps) / _expand(sigma, x_t)

    def delta_to_score_scale(self, timesteps: torch.Tensor) -> torch.Tensor:
        """Factor k_t (B,) with ``pred_full - pred_main = k_t * likelihood score``.

        -sigma for eps, -sigma/alpha for v, -t/(1-t) for flow (docs/DESIGN.md, table). For v and flow it diverges as
        alpha -> 0 (flow's t = 1, pure noise, which training draws but extraction's ``evenly_spaced_timesteps``
        never reaches).
        """
        alpha, sigma = self.alpha_sigma(timesteps)
        if self.prediction_type == "eps":
            return -sigma
        return -sigma / alpha

    # ----- sampling ---------------------------------------------------------------------------------------------
    def make_sampler(self, clip_sample: bool = True):
        """A fresh diffusers scheduler for sampling: DDIM for eps/v (x0 clipped to [-1, 1] in pixel space),
        flow-match Euler for flow."""
        if self.prediction_type == "flow":
            return FlowMatchEulerDiscreteScheduler(num_train_timesteps=self.num_train_timesteps, shift=self.shift)
        return DDIMScheduler.from_config(
            self._ddpm().config,
            clip_sample=clip_sample,
            set_alpha_to_one=True,
            timestep_spacing="trailing",
        )
