"""``causal.dictionary``: a TopK SAE recovers known sparse atoms, resumes to the same weights, and its latents are
ranked against a score estimate and factors with known answers."""

import numpy as np
import pytest
import torch

from lisa_probe.causal.dictionary import SaeConfig, TopKSae, latent_maps, latent_table, positions, train_sae


def sparse_rows(n: int = 20000, channels: int = 16, atoms: int = 24, active: int = 2, seed: int = 0):
    """Rows that are sums of ``active`` of ``atoms`` random unit atoms with positive weights."""
    rng = np.random.default_rng(seed)
    dictionary = rng.normal(size=(atoms, channels))
    dictionary /= np.linalg.norm(dictionary, axis=1, keepdims=True)
    rows = np.zeros((n, channels))
    for i in range(n):
        chosen = rng.choice(atoms, active, replace=False)
        rows[i] = rng.uniform(0.5, 1.5, active) @ dictionary[chosen]
    return rows.astype(np.float32), dictionary


def test_a_topk_sae_recovers_known_atoms(tmp_path):
    rows, dictionary = sparse_rows()
    sae, log = train_sae(rows, SaeConfig(latents=48, k=2, steps=1500, batch_size=512, lr=3e-3, checkpoint_every=0),
                         tmp_path)
    decoder = sae.W_dec.detach().numpy()  # unit rows, in the centred and scaled space: directions are kept
    cosine = dictionary @ decoder.T
    assert (cosine.max(axis=1) > 0.9).mean() >= 0.9  # at least 90 % of the atoms found
    assert log["fvu"].iloc[-1] < 0.1 and (tmp_path / "sae.safetensors").exists()


def test_training_resumes_to_the_same_weights(tmp_path):
    rows, _ = sparse_rows(2000)
    config = SaeConfig(latents=32, k=2, steps=60, batch_size=128, checkpoint_every=30)
    whole, _ = train_sae(rows, config, tmp_path / "whole")
    train_sae(rows, SaeConfig(**{**config.__dict__, "steps": 30}), tmp_path / "cut")
    resumed, _ = train_sae(rows, config, tmp_path / "cut", resume=True)
    for name, value in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=0, atol=0)


def test_latent_table_on_known_answers():
    rng = np.random.default_rng(0)
    n = 300
    factor = rng.integers(0, 3, n)
    estimate = rng.normal(size=(n, 2, 4, 4))
    norm = np.linalg.norm(estimate, axis=1)
    maps = np.zeros((n, 3, 4, 4))
    maps[:, 0] = norm  # fires where the estimate is large
    maps[:, 1] = factor[:, None, None] * (rng.uniform(size=(n, 4, 4)) > 0.5)  # follows the factor
    table = latent_table(maps, estimate, {"f": factor, "g": rng.normal(size=n)}, {"f": "categorical",
                         "g": "continuous"}, {"f": True, "g": False})
    assert table.loc[0, "alignment"] == pytest.approx(1.0) and np.isnan(table.loc[2, "alignment"])
    assert table.loc[1, "mi/f"] > 0.5 > table.loc[0, "mi/f"] and table.loc[2, "frequency"] == 0
    assert table.loc[1, "mi_carried"] == table.loc[1, "mi/f"]


def test_maps_keep_each_rows_positions():
    sae = TopKSae(3, 4, 1, seed=0)
    features = np.random.default_rng(0).normal(size=(2, 3, 2, 5)).astype(np.float32)
    maps = latent_maps(sae, features)
    assert maps.shape == (2, 4, 2, 5)
    expected = sae.encode_raw(torch.from_numpy(features[1, :, 1, 3][None])).detach().numpy()[0]
    np.testing.assert_allclose(maps[1, :, 1, 3], expected, rtol=1e-6)
    assert positions(features).shape == (20, 3)
    tokens = np.random.default_rng(1).normal(size=(2, 16, 3)).astype(np.float32)  # a DiT's 4 x 4 patches
    token_maps = latent_maps(sae, tokens)
    assert token_maps.shape == (2, 4, 4, 4)
    expected = sae.encode_raw(torch.from_numpy(tokens[0, 6][None])).detach().numpy()[0]  # patch (1, 2)
    np.testing.assert_allclose(token_maps[0, :, 1, 2], expected, rtol=1e-6)
