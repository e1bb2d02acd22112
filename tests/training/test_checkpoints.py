"""Pickle-free optimizer/RNG state, checkpoint discovery, retention."""

import pytest
import torch

from lisa_probe.training.checkpoints import (
    finalize_checkpoint,
    list_checkpoints,
    load_rng,
    optimizer_from_safe,
    optimizer_to_safe,
    prune_checkpoints,
    resolve_resume,
    save_rng,
    temporary_checkpoint_dir,
)


def test_optimizer_round_trip_continues_identically():
    def make():
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2)
        return model, torch.optim.AdamW(model.parameters(), lr=0.1)

    def step(model, optimizer, seed):
        optimizer.zero_grad()
        model(torch.randn(4, 3, generator=torch.Generator().manual_seed(seed))).square().sum().backward()
        optimizer.step()

    a, opt_a = make()
    for seed in range(3):
        step(a, opt_a, seed)
    b, opt_b = make()
    for seed in range(2):
        step(b, opt_b, seed)
    tensors, meta = optimizer_to_safe(opt_b)
    c, opt_c = make()
    c.load_state_dict(b.state_dict())
    optimizer_from_safe(opt_c, tensors, meta)
    step(c, opt_c, 2)
    for pa, pc in zip(a.parameters(), c.parameters()):
        torch.testing.assert_close(pa, pc, rtol=0, atol=0)


def test_rng_round_trip(tmp_path):
    generator = torch.Generator().manual_seed(5)
    save_rng(tmp_path / "rng.safetensors", generator)
    expected = (torch.randn(3, generator=generator), torch.randn(3))
    other = torch.Generator().manual_seed(99)
    load_rng(tmp_path / "rng.safetensors", other)
    torch.testing.assert_close((torch.randn(3, generator=other), torch.randn(3)), expected)


def test_checkpoint_listing_retention_and_resume(tmp_path):
    for step in (10, 2, 30):
        finalize_checkpoint(temporary_checkpoint_dir(tmp_path, step), step)
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    temporary_checkpoint_dir(tmp_path, 40)  # an unfinished one is never listed
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-10", "checkpoint-30"]
    assert resolve_resume(tmp_path, "latest").name == "checkpoint-30"
    assert resolve_resume(tmp_path, None) is None
    prune_checkpoints(tmp_path, keep=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-30"]
    with pytest.raises(ValueError, match="not a checkpoint directory"):
        resolve_resume(tmp_path, str(tmp_path / "nope"))
