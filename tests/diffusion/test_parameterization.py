"""Parameterisations against the closed forms of DESIGN.md, in float64, and against diffusers' schedulers."""

import json
import math

import pytest
import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler
from diffusers.training_utils import compute_density_for_timestep_sampling

from lisa_probe.diffusion.parameterization import Parameterization
from lisa_probe.diffusion.weighting import WeightingScheme


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(5, 3, 4, 4, generator=generator, dtype=torch.float64)
    noise = torch.randn(5, 3, 4, 4, generator=generator, dtype=torch.float64)
    return x0, noise


def closed_form_alpha_sigma(kind: str, timesteps: torch.Tensor):
    """Independent schedule: squaredcos_cap_v2 betas rebuilt from the Nichol & Dhariwal formula."""
    if kind == "flow":
        t = timesteps.double() / 1000
        return 1 - t, t
    f = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    betas = [min(1 - f((i + 1) / 1000) / f(i / 1000), 0.999) for i in range(1000)]
    alpha_bar = torch.tensor(betas, dtype=torch.float64).neg().add(1).cumprod(0)[timesteps]
    return alpha_bar.sqrt(), (1 - alpha_bar).sqrt()


@pytest.mark.parametrize("kind", ["eps", "v", "flow"])
def test_noising_target_and_conversions_match_closed_forms(kind, batch):
    x0, noise = batch
    p = Parameterization(kind)
    timesteps = torch.tensor([0, 10, 500, 900, 999]) if kind != "flow" else torch.tensor([1.0, 10, 500, 900, 999])
    alpha, sigma = closed_form_alpha_sigma(kind, timesteps)
    a, s = alpha.view(-1, 1, 1, 1), sigma.view(-1, 1, 1, 1)
    x_t = p.add_noise(x0, noise, timesteps)
    torch.testing.assert_close(x_t, a * x0 + s * noise, rtol=1e-6, atol=1e-9)
    y = p.target(x0, noise, timesteps)
    expected_y = {"eps": noise, "v": a * noise - s * x0, "flow": noise - x0}[kind]
    torch.testing.assert_close(y, expected_y, rtol=1e-6, atol=1e-9)
    # the exact target converts back to the true noise, and the score is -eps / sigma
    torch.testing.assert_close(p.pred_to_eps(y, x_t, timesteps), noise, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(p.pred_to_score(y, x_t, timesteps), -noise / s, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("kind", ["eps", "v", "flow"])
def test_prediction_difference_is_scaled_score_difference(kind, batch):
    """pred_a - pred_b = k_t (score_a - score_b) with k_t = -sigma, -sigma/alpha, -t/(1-t)."""
    x0, noise = batch
    p = Parameterization(kind)
    timesteps = torch.tensor([5, 100, 400, 700, 950]) if kind != "flow" else torch.tensor([5.0, 100, 400, 700, 950])
    x_t = p.add_noise(x0, noise, timesteps)
    pred_a, pred_b = torch.randn_like(x0), torch.randn_like(x0)
    score_delta = p.pred_to_score(pred_a, x_t, timesteps) - p.pred_to_score(pred_b, x_t, timesteps)
    k = p.delta_to_score_scale(timesteps).view(-1, 1, 1, 1)
    torch.testing.assert_close(pred_a - pred_b, k * score_delta, rtol=1e-6, atol=1e-8)
    alpha, sigma = closed_form_alpha_sigma(kind, timesteps)
    expected_k = {"eps": -sigma, "v": -sigma / alpha, "flow": -(timesteps.double() / 1000) /
                  (1 - timesteps.double() / 1000)}[kind]
    torch.testing.assert_close(k.flatten(), expected_k, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("kind", ["eps", "v"])
def test_matches_diffusers_ddpm(kind, batch):
    x0, noise = batch
    p = Parameterization(kind)
    scheduler = DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    timesteps = torch.tensor([3, 30, 300, 600, 990])
    torch.testing.assert_close(p.add_noise(x0.float(), noise.float(), timesteps),
                               scheduler.add_noise(x0.float(), noise.float(), timesteps), rtol=1e-5, atol=1e-5)
    if kind == "v":
        torch.testing.assert_close(p.target(x0.float(), noise.float(), timesteps),
                                   scheduler.get_velocity(x0.float(), noise.float(), timesteps), rtol=1e-5, atol=1e-5)


def test_scheduler_config_round_trip():
    for kind in ("eps", "v", "flow"):
        p = Parameterization(kind)
        saved = json.loads(p.to_scheduler().to_json_string())
        assert Parameterization.from_scheduler_config(saved).prediction_type == kind


@pytest.mark.parametrize("option,value", [("rescale_betas_zero_snr", True), ("trained_betas", [0.1, 0.2])])
def test_scheduler_options_we_do_not_model_are_refused(option, value):
    saved = {**json.loads(Parameterization("v").to_scheduler().to_json_string()), option: value}
    with pytest.raises(ValueError, match=f"{option}=.* not supported"):
        Parameterization.from_scheduler_config(saved)


def test_bad_prediction_type_names_allowed():
    with pytest.raises(ValueError, match="'x0'.*eps, v, flow"):
        Parameterization("x0")


def test_timestep_sampling_ranges():
    generator = torch.Generator().manual_seed(0)
    steps = Parameterization("eps").sample_timesteps(1000, generator)
    assert steps.dtype == torch.long and steps.min() >= 0 and steps.max() <= 999
    flow = Parameterization("flow").sample_timesteps(1000, generator)
    assert flow.min() > 0 and flow.max() <= 1000
    assert Parameterization("eps").evenly_spaced_timesteps(4).tolist() == [125, 375, 625, 875]


@pytest.mark.parametrize("kind", ["eps", "v"])
def test_min_snr_weight_turns_the_loss_into_clipped_snr_times_x0_error(kind, batch):
    """w(t) |pred - y|^2 == min(SNR, gamma) |x0_hat - x0|^2 with x0_hat = (x_t - sigma eps_hat) / alpha (float64)."""
    x0, noise = batch
    p, gamma = Parameterization(kind), 5.0
    timesteps = torch.tensor([0, 10, 300, 900, 999])
    alpha, sigma = closed_form_alpha_sigma(kind, timesteps)
    a, s = alpha.view(-1, 1, 1, 1), sigma.view(-1, 1, 1, 1)
    x_t, y = p.add_noise(x0, noise, timesteps), p.target(x0, noise, timesteps)
    pred = y + 0.1 * torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x0_hat = (x_t - s * p.pred_to_eps(pred, x_t, timesteps)) / a
    snr = alpha**2 / sigma**2
    weighted = p.min_snr_weight(timesteps, gamma).double() * (pred - y).pow(2).flatten(1).mean(1)
    expected = snr.clamp(max=gamma) * (x0_hat - x0).pow(2).flatten(1).mean(1)
    torch.testing.assert_close(weighted, expected, rtol=1e-5, atol=1e-12)
    weights = p.min_snr_weight(timesteps, gamma)
    assert (weights <= 1).all() and weights[0] < 1e-3  # nearly clean steps (SNR >> gamma) are down-weighted


def test_min_snr_weight_refuses_flow():
    with pytest.raises(ValueError, match="eps and v"):
        Parameterization("flow").min_snr_weight(torch.tensor([500.0]), 5.0)


SD3_SCHEDULER = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}


def test_the_sd3_scheduler_shift_is_honoured_in_training_and_sampling(tmp_path):
    """A checkpoint's shift (3.0 in SD3) moves the training draws to diffusers' shifted grid (mean t 0.68 instead
    of 0.50) and into the sampler; it survives the round trip through the saved scheduler config."""
    shifted = Parameterization.from_scheduler_config(SD3_SCHEDULER)
    assert shifted.shift == 3.0
    shifted.to_scheduler().save_config(tmp_path)  # as save_main writes scheduler/
    saved = json.loads((tmp_path / "scheduler_config.json").read_text())
    assert Parameterization.from_scheduler_config(saved).shift == 3.0
    grid = set(FlowMatchEulerDiscreteScheduler(**{k: v for k, v in SD3_SCHEDULER.items() if k != "_class_name"})
               .timesteps.tolist())
    draws = shifted.sample_timesteps(20000, torch.Generator().manual_seed(0))
    distance = (draws[:, None] - torch.tensor(sorted(grid), dtype=torch.float32)[None]).abs().min(dim=1).values
    assert distance.max().item() < 1e-3  # every draw is a timestep of diffusers' shifted grid
    assert (draws / 1000).mean().item() == pytest.approx(0.68, abs=0.01)
    plain = Parameterization("flow").sample_timesteps(20000, torch.Generator().manual_seed(0))
    assert (plain / 1000).mean().item() == pytest.approx(0.50, abs=0.01)
    sampler = shifted.make_sampler()
    sampler.set_timesteps(10)
    reference = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    reference.set_timesteps(10)
    torch.testing.assert_close(sampler.timesteps, reference.timesteps)


@pytest.mark.parametrize("scheme", ["logit_normal", "mode"])
def test_sd3_density_schemes_draw_as_diffusers_trainer_does(scheme):
    """The same generator gives the timesteps diffusers' SD3 ControlNet trainer computes:
    ``scheduler.timesteps[(compute_density_for_timestep_sampling(...) * T).long()]``."""
    weighting = WeightingScheme(scheme, logit_mean=0.3, logit_std=0.8, mode_scale=1.29)
    parameterization = Parameterization.from_scheduler_config(SD3_SCHEDULER)
    ours = parameterization.sample_timesteps(64, torch.Generator().manual_seed(5), weighting=weighting)
    u = compute_density_for_timestep_sampling(scheme, 64, 0.3, 0.8, 1.29, generator=torch.Generator().manual_seed(5))
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    torch.testing.assert_close(ours, scheduler.timesteps[(u * 1000).long()].float())


def test_sd3_loss_weights_closed_forms_and_refusals():
    flow = Parameterization("flow")
    timesteps = torch.tensor([100.0, 500.0, 900.0])
    sigma = timesteps.double() / 1000
    torch.testing.assert_close(flow.loss_weights(timesteps, WeightingScheme("sigma_sqrt")), (1 / sigma**2).float())
    torch.testing.assert_close(flow.loss_weights(timesteps, WeightingScheme("cosmap")),
                               (2 / (math.pi * (1 - 2 * sigma + 2 * sigma**2))).float())
    for name in ("none", "logit_normal", "mode"):
        assert flow.loss_weights(timesteps, WeightingScheme(name)) is None
    with pytest.raises(ValueError, match="is for flow matching"):
        Parameterization("eps").loss_weights(timesteps.long(), WeightingScheme("cosmap"))
    with pytest.raises(ValueError, match="unknown weighting scheme 'sqrt'"):
        WeightingScheme("sqrt")
    with pytest.raises(ValueError, match="use_dynamic_shifting=True is not supported"):
        Parameterization.from_scheduler_config({**SD3_SCHEDULER, "use_dynamic_shifting": True})
    with pytest.raises(ValueError, match="shift must be > 0 and is for flow matching only"):
        Parameterization("eps", shift=3.0)
