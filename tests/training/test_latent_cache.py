"""The VAE-latent cache: equal to encoding each batch (the posterior's mean, std and a draw from it), read back
without encoding, training as without it, and checked when opened (damaged or non-finite files are encoded anew)."""

import math
import warnings

import pytest
import torch
from safetensors.torch import save_file
from torch.utils.data import default_collate

from lisa_probe.data import build_dataset
from lisa_probe.training.latent_cache import LatentCache
from lisa_probe.training.loading import build_dual_branch
from lisa_probe.training.side_net import SideNetObjective, train
from tests.training.test_side_net import read_metrics
from tests.training.test_side_net_captioned import captioned_config


def test_cached_latents_equal_encoded_ones_and_train_as_without_the_cache(tmp_path, sd_pipeline, captioned_data,
                                                                          monkeypatch):
    config = captioned_config(tmp_path, sd_pipeline, captioned_data)
    model, kwargs = build_dual_branch(config)
    dataset = build_dataset("captioned", split="train", **kwargs)
    cache = LatentCache(model, dataset, sd_pipeline / "vae", tmp_path / "latents", kwargs, progress=False)
    batch = default_collate([dataset[i] for i in (3, 0, 7)])
    with torch.no_grad():
        encoded = model.encode_images(batch["image"])
    # encoded in other batches: CPU kernels may differ in the last bits
    torch.testing.assert_close(cache.lookup(batch["id"]), encoded, rtol=1e-4, atol=1e-5)

    # a training draw: mean + std * eps from the run's generator, the same numbers as drawing through the VAE
    drawn = cache.lookup(batch["id"], torch.Generator().manual_seed(5))
    through_vae = model.encode_images(batch["image"], torch.Generator().manual_seed(5))
    torch.testing.assert_close(drawn, through_vae, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(drawn, encoded, atol=1e-3)  # a draw, not the mode

    def no_encoding(images):
        raise AssertionError("the latents were encoded again")

    monkeypatch.setattr(model, "encode_posterior", no_encoding)
    again = LatentCache(model, dataset, sd_pipeline / "vae", tmp_path / "latents", kwargs, progress=False)
    assert again.path == cache.path and torch.equal(again.lookup(batch["id"]), cache.lookup(batch["id"]))
    monkeypatch.undo()
    with_cache = read_metrics(train(captioned_config(tmp_path, sd_pipeline, captioned_data, name="cached",
                                                     cache_latents=True)))
    without = read_metrics(train(captioned_config(tmp_path, sd_pipeline, captioned_data, name="encoded")))
    assert [float(r["loss"]) for r in with_cache] == pytest.approx([float(r["loss"]) for r in without], rel=1e-4)


@pytest.mark.parametrize("damage", ["zero-bytes", "truncated", "all-nan"])
def test_a_damaged_or_non_finite_cache_is_encoded_anew(tmp_path, sd_pipeline, captioned_data, damage):
    config = captioned_config(tmp_path, sd_pipeline, captioned_data)
    model, kwargs = build_dual_branch(config)
    dataset = build_dataset("captioned", split="train", **kwargs)
    cache = LatentCache(model, dataset, sd_pipeline / "vae", tmp_path / "latents", kwargs, progress=False)
    ids = [dataset[i]["id"] for i in range(3)]
    good = cache.lookup(ids)
    if damage == "zero-bytes":
        cache.path.write_bytes(b"")
    elif damage == "truncated":
        cache.path.write_bytes(cache.path.read_bytes()[: cache.path.stat().st_size // 2])
    else:
        ids_metadata = cache._file.metadata()
        nan = torch.full_like(torch.cat([cache._mean[0:len(dataset)]]), math.nan)
        save_file({"latents": nan, "std": nan.clone()}, cache.path, metadata=ids_metadata)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = LatentCache(model, dataset, sd_pipeline / "vae", tmp_path / "latents", kwargs, progress=False)
    assert any("encoding it anew" in str(warning.message) for warning in caught)
    torch.testing.assert_close(again.lookup(ids), good)


def test_training_draws_x0_from_the_vae_posterior_as_diffusers_trainers_do(tmp_path, sd_pipeline, captioned_data):
    """x0 in training is ``latent_dist.sample()`` (diffusers' trainers) with the run's generator, scaled: equal to
    diffusers' own draw from the same generator state, and not the mode that stores use."""
    config = captioned_config(tmp_path, sd_pipeline, captioned_data)
    model, kwargs = build_dual_branch(config)
    objective = SideNetObjective(model, None, config, model.site_names[0])
    dataset = build_dataset("captioned", split="train", **kwargs)
    batch = default_collate([dataset[i] for i in range(4)])
    drawn = objective.draw(batch, torch.Generator().manual_seed(3))["x0"]
    with torch.no_grad():
        posterior = model.vae.encode(batch["image"]).latent_dist
        theirs = posterior.sample(generator=torch.Generator().manual_seed(3)) * model.vae.config.scaling_factor
    torch.testing.assert_close(drawn, theirs, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(drawn, model.encode_images(batch["image"]), atol=1e-3)
