"""Parameterisations against the closed forms of DESIGN.md, in float64, and against diffusers' schedulers."""

import json
import math

import pytest
import torch
from diffusers import DDPMScheduler

from lisa_probe.parameterization import Parameterization


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
