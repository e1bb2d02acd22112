"""The VAE-latent cache: equal to encoding each batch, read back without encoding, and training as without it."""

import pytest
import torch
from torch.utils.data import default_collate

from lisa_probe.data import build_dataset
from lisa_probe.latent_cache import LatentCache
from lisa_probe.runs import build_dual_branch
from lisa_probe.side_training import train
from tests.test_train import read_metrics
from tests.test_train_captioned import captioned_config


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

    def no_encoding(images):
        raise AssertionError("the latents were encoded again")

    monkeypatch.setattr(model, "encode_images", no_encoding)
    again = LatentCache(model, dataset, sd_pipeline / "vae", tmp_path / "latents", kwargs, progress=False)
    assert again.path == cache.path and torch.equal(again.lookup(batch["id"]), cache.lookup(batch["id"]))
    monkeypatch.undo()
    with_cache = read_metrics(train(captioned_config(tmp_path, sd_pipeline, captioned_data, name="cached",
                                                     cache_latents=True)))
    without = read_metrics(train(captioned_config(tmp_path, sd_pipeline, captioned_data, name="encoded")))
    assert [float(r["loss"]) for r in with_cache] == pytest.approx([float(r["loss"]) for r in without], rel=1e-4)
