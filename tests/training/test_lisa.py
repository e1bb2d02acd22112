"""LISA head: decoder shapes and zero init, sinusoidal embedding, target, distances, lambda schedules."""

import math

import pytest
import torch

from lisa_probe.training.lisa import LisaDecoder, lisa_distance, lisa_target, sinusoidal_embedding
from lisa_probe.training.lisa_schedule import lisa_rows, lisa_weight


@pytest.mark.parametrize("channels,in_size,out_size", [(16, 4, 16), (64, 8, 8), (600, 2, 16)])
def test_decoder_maps_feature_to_prediction_shape_and_starts_at_zero(channels, in_size, out_size):
    decoder = LisaDecoder(in_channels=channels, in_size=in_size, out_channels=3, out_size=out_size)
    out = decoder(torch.randn(2, channels, in_size, in_size), torch.tensor([3, 900]))
    assert out.shape == (2, 3, out_size, out_size)
    assert torch.count_nonzero(out) == 0  # zero-initialised output conv
    first = decoder.trunk[0]
    assert first.kernel_size == ((1, 1) if channels >= 512 else (3, 3))


def test_decoder_channel_halving_floor_and_time_dependence():
    decoder = LisaDecoder(in_channels=256, in_size=2, out_channels=4, out_size=16, min_channels=64)
    widths = [m.out_channels for m in decoder.trunk if isinstance(m, torch.nn.Conv2d)]
    assert widths == [128, 64, 64]
    torch.nn.init.normal_(decoder.out.weight)
    h = torch.randn(1, 256, 2, 2).repeat(2, 1, 1, 1)
    out = decoder(h, torch.tensor([10, 800]))
    assert not torch.allclose(out[0], out[1])  # same feature, different t -> different decoding


def test_decoder_rejects_non_power_of_two_upsampling():
    with pytest.raises(ValueError, match="power-of-two"):
        LisaDecoder(in_channels=8, in_size=3, out_channels=3, out_size=16)


def test_sinusoidal_embedding_against_formula():
    t = torch.tensor([0.0, 7.0, 999.0])
    emb = sinusoidal_embedding(t, 8)
    for row, value in enumerate(t.tolist()):
        for i in range(4):
            freq = math.exp(-math.log(10000.0) * i / 4)
            assert emb[row, i].item() == pytest.approx(math.cos(value * freq), abs=1e-4)
            assert emb[row, 4 + i].item() == pytest.approx(math.sin(value * freq), abs=1e-4)


def test_target_stops_gradient_and_distances():
    pred_main = torch.randn(2, 3, 4, 4, requires_grad=True)
    target = torch.randn(2, 3, 4, 4)
    aux = lisa_target(target, pred_main)
    assert not aux.requires_grad
    torch.testing.assert_close(aux, target - pred_main.detach())
    decoded = torch.randn(2, 3, 4, 4)
    assert lisa_distance(decoded, aux).item() == pytest.approx(((decoded - aux) ** 2).mean().item(), rel=1e-6)
    assert lisa_distance(aux * 3, aux, "cosine").item() == pytest.approx(0.0, abs=1e-6)
    assert lisa_distance(-aux, aux, "cosine").item() == pytest.approx(2.0, abs=1e-6)
    with pytest.raises(ValueError, match="allowed: mse, cosine"):
        lisa_distance(decoded, aux, "l1")


def test_weight_schedules_and_rows():
    assert [lisa_weight(s, 0.2) for s in (0, 100)] == [0.2, 0.2]
    assert [lisa_weight(s, 0.2, "cutoff", 10) for s in (9, 10)] == [0.2, 0.0]
    assert [lisa_weight(s, 0.2, "linear_decay", 10) for s in (0, 5, 10, 20)] == pytest.approx([0.2, 0.1, 0, 0])
    with pytest.raises(ValueError, match="allowed: constant, linear_decay, cutoff"):
        lisa_weight(0, 0.2, "cosine")
    assert [lisa_rows(16, f) for f in (1.0, 0.5, 0.01)] == [16, 8, 1]
    with pytest.raises(ValueError, match="fraction"):
        lisa_rows(16, 1.5)
