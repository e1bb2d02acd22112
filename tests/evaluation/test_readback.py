import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from lisa_probe.data import build_dataset
from lisa_probe.data.shapes import draw_factors, render
from lisa_probe.evaluation.readback import (
    CIRCULAR,
    ReadbackConfig,
    ReadbackNet,
    cache_key,
    carried_heads,
    circle_point,
    circular_distance,
    dataset_identity,
    load_or_train_readback,
    load_samples,
    readback_scores,
)

# Tiny settings: shape kind needs ~1000 steps on 8k samples to reach ~0.99 (the defaults at 32 px); here the test
# only checks that it is learned above chance while positions are already read back well.
SMALL = ReadbackConfig(n_train=1000, n_val=500, epochs=2, batch_size=32)
TINY = ReadbackConfig(n_train=128, n_val=64, epochs=1, batch_size=32)


def _shapes(**kwargs):
    return build_dataset("shapes", split="val", **{"resolution": 16, "condition": "mask", "size": 8, **kwargs})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cache_dir = tmp_path_factory.mktemp("cache")
    return cache_dir, load_or_train_readback(_shapes(), cache_dir, SMALL, progress=False)


def test_heldout_scores_beat_chance(trained):
    _, cached = trained
    assert cached.trained
    heldout = cached.heldout
    assert set(heldout) == {"kind/accuracy", "kind/chance", "rotation/mae", "rotation/chance",
                            *(f"{f}/{m}" for f in ("x", "y", "size") for m in ("mae", "r2"))}
    assert 0 <= heldout["rotation/mae"] <= 0.5 and heldout["rotation/chance"] == 0.25
    assert heldout["kind/accuracy"] > heldout["kind/chance"] + 0.04
    assert heldout["x/r2"] > 0.9 and heldout["y/r2"] > 0.9 and heldout["size/r2"] > 0.3


def test_cache_layout_and_hit(trained):
    cache_dir, cached = trained
    identity = dataset_identity(_shapes())
    assert cached.path == cache_dir / f"readback-{cache_key(identity, SMALL)}"
    meta = json.loads((cached.path / "readback.json").read_text())
    assert meta["dataset"] == {"name": "shapes", "resolution": 16, "condition": "mask", "seed": 0}
    assert meta["config"]["n_train"] == 1000 and meta["heldout"] == cached.heldout
    mtime = (cached.path / "weights.safetensors").stat().st_mtime_ns
    again = load_or_train_readback(_shapes(size=3), cache_dir, SMALL, progress=False)  # size is not identity
    assert not again.trained and again.heldout == cached.heldout
    assert (cached.path / "weights.safetensors").stat().st_mtime_ns == mtime
    images = torch.randn(4, 3, 16, 16).clamp(-1, 1)
    assert torch.equal(again.net.features(images), cached.net.features(images))


def test_identity_or_settings_change_retrains(trained, tmp_path):
    _, cached = trained
    for dataset, config in [(_shapes(condition="edges"), SMALL), (_shapes(seed=1), SMALL),
                            (_shapes(), dataclasses.replace(SMALL, epochs=1))]:
        assert cache_key(dataset_identity(dataset), config) != cached.path.name.removeprefix("readback-")
    other = load_or_train_readback(_shapes(), tmp_path, TINY, progress=False)
    assert other.trained
    meta_path = other.path / "readback.json"
    meta = json.loads(meta_path.read_text())
    meta["dataset"]["seed"] = 99  # an entry that does not record this identity is retrained
    meta_path.write_text(json.dumps(meta))
    assert load_or_train_readback(_shapes(), tmp_path, TINY, progress=False).trained
    assert not load_or_train_readback(_shapes(), tmp_path, TINY, progress=False).trained


def test_training_is_deterministic(tmp_path):
    first = load_or_train_readback(_shapes(), tmp_path / "a", TINY, progress=False)
    second = load_or_train_readback(_shapes(), tmp_path / "b", TINY, progress=False)
    for name, tensor in first.net.state_dict().items():
        assert torch.equal(tensor, second.net.state_dict()[name]), name


def test_net_shapes_and_readback_scores(trained):
    _, cached = trained
    net = cached.net
    images, factors = load_samples(build_dataset("shapes", "val", 16, "mask", size=500), progress=False)
    assert net.features(images[:5]).shape == (5, 128)
    outputs = net(images[:5])
    assert outputs["kind"].shape == (5, 4) and outputs["x"].shape == (5,)
    scores = readback_scores(net, images, factors)
    assert set(scores) == {"kind", "x", "y", "size", "rotation"}
    assert scores["kind"] == pytest.approx(cached.heldout["kind/accuracy"])
    assert scores["x"] == pytest.approx(cached.heldout["x/mae"], rel=1e-4)
    with pytest.raises(ValueError, match="lacks \\['kind'\\]"):
        readback_scores(net, images, {k: v for k, v in factors.items() if k != "kind"})
    with pytest.raises(ValueError, match=r"factors\['x'\] must have shape \(500,\)"):
        readback_scores(net, images, {**factors, "x": factors["x"][:3]})


def test_no_carried_factors_is_an_error(tmp_path):
    dataset = _shapes()
    dataset.factor_specs = {name: spec for name, spec in dataset.factor_specs.items() if not spec.carried}
    with pytest.raises(ValueError, match="no carried factors"):
        load_or_train_readback(dataset, tmp_path, TINY, progress=False)


def test_folder_dataset_needs_and_records_its_build_options(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    lines = ["file,kind"]
    for index in range(40):
        factors = draw_factors(0, "train", index)
        Image.fromarray((render(factors, 16)["image"] * 255).astype(np.uint8)).save(root / f"{index:03d}.png")
        lines.append(f"{index:03d}.png,{factors['kind']}")
    (tmp_path / "factors.csv").write_text("\n".join(lines) + "\n")
    options = {"factors_csv": tmp_path / "factors.csv", "carried_factors": ["kind"]}
    dataset = build_dataset("folder", split="val", resolution=16, root=root, **options)
    with pytest.raises(ValueError, match="dataset_kwargs"):
        load_or_train_readback(dataset, tmp_path / "cache", TINY, progress=False)
    cached = load_or_train_readback(dataset, tmp_path / "cache", TINY, progress=False, dataset_kwargs=options)
    assert cached.identity["kwargs"] == {"root": str(root.resolve()), "factors_csv": str(tmp_path / "factors.csv"),
                                         "carried_factors": ["kind"], "split_fractions": [0.8, 0.1, 0.1]}
    assert set(cached.heldout) == {"kind/accuracy", "kind/chance"}
    again = load_or_train_readback(dataset, tmp_path / "cache", TINY, progress=False, dataset_kwargs=options)
    assert not again.trained
    # new or changed images make another identity: the stale net is not reused
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / "040.png")
    changed = build_dataset("folder", split="val", resolution=16, root=root, **options)
    assert dataset_identity(changed, options)["content"] != cached.identity["content"]
    assert cache_key(dataset_identity(changed, options), TINY) != cached.path.name.removeprefix("readback-")


CONCURRENT_SCRIPT = """
import sys
from lisa_probe.data import build_dataset
from lisa_probe.evaluation.readback import ReadbackConfig, load_or_train_readback
dataset = build_dataset("shapes", split="val", resolution=16, condition="mask", size=8)
config = ReadbackConfig(n_train=128, n_val=64, epochs=1, batch_size=32)
print("trained" if load_or_train_readback(dataset, sys.argv[1], config, progress=False).trained else "loaded")
"""


@pytest.mark.slow
def test_runs_sharing_a_cache_train_the_net_once(tmp_path):
    """Two processes that miss the cache together: one trains, the other waits for it and loads it."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    processes = [subprocess.Popen([sys.executable, "-c", CONCURRENT_SCRIPT, str(tmp_path)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [process.communicate(timeout=240) for process in processes]
    assert all(process.returncode == 0 for process in processes), [err[-2000:] for _, err in results]
    assert sorted(out.strip() for out, _ in results) == ["loaded", "trained"]
    assert [p.suffix for p in tmp_path.iterdir()] == [""]  # the entry alone: no staging, no lock file left


def test_circular_factors_wrap_around():
    """Rotation wraps at 1: 0.98 and 0.02 are 0.04 apart; the head regresses points on the unit circle."""
    assert torch.allclose(circular_distance(torch.tensor([0.98, 0.25, 0.5]), torch.tensor([0.02, 0.75, 0.0])),
                          torch.tensor([0.04, 0.5, 0.5]), atol=1e-6)
    specs = _shapes().factor_specs
    heads = carried_heads(specs)
    assert heads["rotation"] == CIRCULAR and heads["x"] is None and heads["kind"] == 4
    net = ReadbackNet({"rotation": CIRCULAR}, width=8, embed_dim=8)
    with torch.no_grad():  # a net whose circle point is a fixed angle: it predicts that value for every image
        net.heads["rotation"].weight.zero_()
        net.heads["rotation"].bias.copy_(circle_point(torch.tensor([0.97]))[0])
    images = torch.zeros(3, 3, 16, 16)
    assert torch.allclose(net.predict(images)["rotation"], torch.full((3,), 0.97), atol=1e-5)
    scores = readback_scores(net, images, {"rotation": torch.tensor([0.01, 0.97, 0.5])})
    assert scores["rotation"] == pytest.approx((0.04 + 0.0 + 0.47) / 3, abs=1e-5)
    outputs = {"rotation": circle_point(torch.tensor([0.999, 0.5]))}
    assert float(net.loss(outputs, {"rotation": torch.tensor([0.001, 0.5])})) < 1e-3  # the wrap costs nothing
