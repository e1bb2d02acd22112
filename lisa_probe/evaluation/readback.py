"""Read-back network: a small CNN that predicts a dataset's carried factors from images.

Trained by the toolkit on real samples (train split), it answers "does the generated image show the factors the
condition asked for?" (:func:`readback_scores`) and its penultimate embedding is the feature space of the
Fréchet distance. Trained nets are cached on disk under ``cache_dir / f"readback-{key}"`` (``weights.safetensors``
+ ``readback.json``), ``key`` being a short hash of the dataset identity and the training settings.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from lisa_probe.data import build_dataset, circular_distance
from lisa_probe.files import OutputLock, replace_dir
from lisa_probe.provenance import code_version

CACHE_FORMAT = 2  # bump when the architecture or the cache layout changes (2: circular heads)
CIRCULAR = "circular"  # head spec of a circular factor of period 1 (rotation, hue)
WEIGHTS_FILE, META_FILE = "weights.safetensors", "readback.json"
IDENTITY_KEYS = ("resolution", "condition", "seed", "size")  # a dataset identity's own entries, not its kwargs


@dataclass(frozen=True)
class ReadbackConfig:
    """Training settings of the read-back net (all part of the cache key)."""

    n_train: int = 8000
    n_val: int = 1000
    epochs: int = 8
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    width: int = 32
    embed_dim: int = 128
    seed: int = 0


def _conv_block(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1),
                         nn.GroupNorm(8, out_channels), nn.SiLU())


class ReadbackNet(nn.Module):
    """Conv+GroupNorm+SiLU encoder (stride-2 stem, then stride 1, 2, 2), 2×2 average pooling, a 128-d embedding
    and one linear head per factor.

    The stem is strided because full-resolution convolutions cost ~10× more on CPU; the pooled grid is 2×2
    rather than 1×1 because a global pool loses the position factors (and learns shape kind slower).
    ``heads`` maps a factor name to its number of classes (categorical), ``None`` (continuous, regressed after
    standardisation with ``mean_<name>``/``std_<name>`` buffers set from the training targets) or ``CIRCULAR``
    (a continuous factor of period 1, regressed as the point (cos 2πv, sin 2πv) on the unit circle, so that values
    near 0 and near 1 are neighbours).
    """

    def __init__(self, heads: dict[str, int | str | None], width: int = 32, embed_dim: int = 128):
        super().__init__()
        self.head_classes = dict(heads)
        self.encoder = nn.Sequential(
            _conv_block(3, width, 2), _conv_block(width, 2 * width, 1), _conv_block(2 * width, 4 * width, 2),
            _conv_block(4 * width, 4 * width, 2), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(4 * 4 * width, embed_dim), nn.SiLU())
        self.heads = nn.ModuleDict({name: nn.Linear(embed_dim, 2 if n == CIRCULAR else n or 1)
                                    for name, n in heads.items()})
        for name, n in heads.items():
            if n is None:
                self.register_buffer(f"mean_{name}", torch.zeros(()))
                self.register_buffer(f"std_{name}", torch.ones(()))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate embedding (N, embed_dim) of images (N, 3, H, W) in [-1, 1]."""
        return self.encoder(images)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw head outputs for images (N, 3, H, W) per factor: logits (N, K), standardised values (N,) or circle
        points (N, 2)."""
        embedding = self.features(images)
        return {name: head(embedding) if self.head_classes[name] else head(embedding)[:, 0]
                for name, head in self.heads.items()}

    def standardise(self, name: str, values: torch.Tensor) -> torch.Tensor:
        """Continuous factor values (N,) in factor units -> the standardised scale the head predicts."""
        return (values - getattr(self, f"mean_{name}")) / getattr(self, f"std_{name}")

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 256) -> dict[str, torch.Tensor]:
        """Per-factor predictions for images (N, 3, H, W): class index (N,) long, or value (N,) in factor units
        (circular ones in [0, 1))."""
        device = next(self.parameters()).device
        outputs = [self(chunk.to(device)) for chunk in images.split(batch_size)]
        predictions = {}
        for name, n_classes in self.head_classes.items():
            raw = torch.cat([out[name] for out in outputs])
            if n_classes == CIRCULAR:
                predictions[name] = torch.remainder(torch.atan2(raw[:, 1], raw[:, 0]) / (2 * math.pi), 1.0)
            elif n_classes:
                predictions[name] = raw.argmax(1)
            else:
                predictions[name] = raw * getattr(self, f"std_{name}") + getattr(self, f"mean_{name}")
        return predictions

    def loss(self, outputs: dict[str, torch.Tensor], factors: dict[str, torch.Tensor]) -> torch.Tensor:
        """Sum over heads of cross-entropy (categorical), MSE on standardised targets (continuous) or MSE to the
        target's point on the unit circle (circular)."""
        total = 0.0
        for name, n_classes in self.head_classes.items():
            if n_classes == CIRCULAR:
                total = total + F.mse_loss(outputs[name], circle_point(factors[name].float()))
            elif n_classes:
                total = total + F.cross_entropy(outputs[name], factors[name].long())
            else:
                total = total + F.mse_loss(outputs[name], self.standardise(name, factors[name].float()))
        return total


def circle_point(values: torch.Tensor) -> torch.Tensor:
    """Values (N,) of period 1 -> points (N, 2) ``(cos 2πv, sin 2πv)``."""
    angle = 2 * math.pi * values
    return torch.stack([angle.cos(), angle.sin()], dim=1)


@dataclass
class CachedReadback:
    """A read-back net with its held-out scores, dataset identity, cache directory and whether this call trained
    it."""

    net: ReadbackNet
    heldout: dict[str, float]
    identity: dict
    path: Path
    trained: bool


def dataset_identity(dataset, dataset_kwargs: dict | None = None) -> dict:
    """What determines a dataset's samples: name, resolution, condition, seed and the extra ``build_dataset``
    keyword arguments (a folder's ``root`` and ``split_fractions``, and shapes' ``label_prompts``, are taken from the dataset, with a digest of its
    files as ``content``; options it does not keep, such as ``factors_csv`` or ``carried_factors``, must be passed
    in ``dataset_kwargs``). JSON-ready."""
    kwargs = {"root": str(Path(dataset.root).resolve())} if getattr(dataset, "root", None) is not None else {}
    if getattr(dataset, "split_fractions", None) is not None:
        kwargs["split_fractions"] = list(dataset.split_fractions)
    if getattr(dataset, "label_prompts", False):  # shapes with label prompts: the prompt carries kind and hue
        kwargs["label_prompts"] = True
    kwargs.update({key: value for key, value in (dataset_kwargs or {}).items() if key not in IDENTITY_KEYS})
    identity = {"name": dataset.name, "resolution": int(dataset.resolution), "condition": dataset.condition,
                "seed": int(dataset.seed)}
    if kwargs:
        identity["kwargs"] = json.loads(json.dumps(kwargs, sort_keys=True, default=str))
    if hasattr(dataset, "content_digest"):  # a folder: its files, sizes and times (build_split does not read it)
        identity["content"] = dataset.content_digest()
    return identity


def cache_key(identity: dict, config: ReadbackConfig) -> str:
    """Short (12 hex digits) hash of the dataset identity, the training settings and the cache format."""
    blob = json.dumps({"dataset": identity, "config": dataclasses.asdict(config), "format": CACHE_FORMAT},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def carried_heads(factor_specs: dict) -> dict[str, int | str | None]:
    """Head spec (name -> n_classes, None for a continuous factor, ``CIRCULAR`` for one of period 1) of the carried
    factors of a dataset's ``factor_specs``."""
    heads = {}
    for name, spec in factor_specs.items():
        if not spec.carried:
            continue
        if spec.period not in (None, 1.0):
            raise ValueError(f"factor {name!r} has period {spec.period}; circular read-back heads support period "
                             "1 only")
        heads[name] = spec.n_classes if spec.kind == "categorical" else (CIRCULAR if spec.period else None)
    return heads


def build_split(identity: dict, split: str, size: int):
    """Rebuild a split of the dataset described by ``identity``, with at most ``size`` samples."""
    args = dict(name=identity["name"], split=split, resolution=identity["resolution"],
                condition=identity["condition"], seed=identity["seed"], **identity.get("kwargs", {}))
    return build_dataset(**args, size=min(size, len(build_dataset(**args))))


def load_samples(dataset, desc: str = "samples", progress: bool = True) -> tuple[torch.Tensor, dict]:
    """All images (N, 3, H, W) and factors {name: (N,) tensor} of a dataset, in index order."""
    samples = [dataset[i] for i in tqdm(range(len(dataset)), desc=desc, disable=not progress, leave=False)]
    batch = torch.utils.data.default_collate(samples)
    return batch["image"], batch["factors"]


def train_readback(images: torch.Tensor, factors: dict[str, torch.Tensor], heads: dict[str, int | None],
                   config: ReadbackConfig, device: str | torch.device = "cpu", progress: bool = True) -> ReadbackNet:
    """Train a :class:`ReadbackNet` on images (N, 3, H, W) in [-1, 1] and factors {name: (N,)}, seeded."""
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        net = ReadbackNet(heads, config.width, config.embed_dim)
    images, factors = images.to(device), {name: factors[name].to(device) for name in heads}
    for name, n_classes in heads.items():
        if n_classes is None:
            getattr(net, f"mean_{name}").fill_(factors[name].float().mean())
            getattr(net, f"std_{name}").fill_(factors[name].float().std().clamp_min(1e-6))
    steps_per_epoch = math.ceil(len(images) / config.batch_size)
    net.to(device)
    optimiser = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, config.lr, total_steps=config.epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(config.seed)
    net.train()
    bar = tqdm(total=config.epochs * steps_per_epoch, desc="read-back net", disable=not progress)
    for _ in range(config.epochs):
        for index in torch.randperm(len(images), generator=generator).split(config.batch_size):
            index = index.to(device)
            loss = net.loss(net(images[index]), {name: values[index] for name, values in factors.items()})
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            bar.update()
    bar.close()
    return net.eval()


def readback_per_sample(net: ReadbackNet, images: torch.Tensor, factors: dict[str, torch.Tensor]) \
        -> dict[str, np.ndarray]:
    """Per image, whether the net reads back the requested class (1 or 0, categorical) or its absolute error
    (continuous; circular factors: the distance around the circle, at most 0.5).

    images: (N, 3, H, W) in [-1, 1]; factors: {name: (N,)} holding at least every factor the net has a head for.
    Returns {factor name: (N,) float64}.
    """
    missing = sorted(set(net.head_classes) - set(factors))
    if missing:
        raise ValueError(f"factors lacks {missing}, needed by the read-back net (heads {sorted(net.head_classes)})")
    predictions = net.predict(images)
    scores = {}
    for name, n_classes in net.head_classes.items():
        target = torch.as_tensor(factors[name]).to(predictions[name].device)
        if target.shape != (len(images),):
            raise ValueError(f"factors[{name!r}] must have shape ({len(images)},), got {tuple(target.shape)}")
        if n_classes == CIRCULAR:
            score = circular_distance(predictions[name], target.float())
        elif n_classes:
            score = (predictions[name] == target.long()).float()
        else:
            score = (predictions[name] - target.float()).abs()
        scores[name] = score.double().cpu().numpy()
    return scores


def readback_scores(net: ReadbackNet, images: torch.Tensor, factors: dict[str, torch.Tensor]) -> dict[str, float]:
    """Accuracy (categorical) or mean absolute error (continuous; circular factors: the distance around the
    circle, at most 0.5) of the net's read-back vs requested factors: the means of ``readback_per_sample``."""
    return {name: float(values.mean()) for name, values in readback_per_sample(net, images, factors).items()}


def heldout_metrics(net: ReadbackNet, images: torch.Tensor, factors: dict[str, torch.Tensor]) -> dict[str, float]:
    """Held-out scores: ``<f>/accuracy`` and ``<f>/chance`` (majority class) per categorical factor, ``<f>/mae``
    and ``<f>/r2`` per continuous one, ``<f>/mae`` (around the circle) and ``<f>/chance`` (0.25, a uniform guess)
    per circular one, on images (N, 3, H, W) with factors {name: (N,)}."""
    predictions, metrics = net.predict(images), {}
    for name, n_classes in net.head_classes.items():
        target = factors[name].to(predictions[name].device)
        if n_classes == CIRCULAR:
            metrics[f"{name}/mae"] = float(circular_distance(predictions[name].double(), target.double()).mean())
            metrics[f"{name}/chance"] = 0.25
        elif n_classes:
            metrics[f"{name}/accuracy"] = float((predictions[name] == target).float().mean())
            metrics[f"{name}/chance"] = float(torch.bincount(target.long()).max() / len(target))
        else:
            error = predictions[name].double() - target.double()
            metrics[f"{name}/mae"] = float(error.abs().mean())
            spread = (target.double() - target.double().mean()).pow(2).sum()
            metrics[f"{name}/r2"] = float(1 - error.pow(2).sum() / spread)
    return metrics


def _load(path: Path, meta: dict) -> ReadbackNet:
    net = ReadbackNet(meta["heads"], meta["config"]["width"], meta["config"]["embed_dim"])
    net.load_state_dict(load_file(path / WEIGHTS_FILE))
    return net.eval()


def _read_meta(path: Path) -> dict | None:
    try:
        return json.loads((path / META_FILE).read_text())
    except (OSError, ValueError):
        return None


def _save(path: Path, net: ReadbackNet, meta: dict) -> None:
    """Write weights + JSON into a fresh temporary sibling directory, then swap it in as ``path``
    (``files.replace_dir``). Callers hold ``cache_lock(path)``."""
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    save_file({name: tensor.contiguous() for name, tensor in net.state_dict().items()}, staging / WEIGHTS_FILE)
    (staging / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
    replace_dir(staging, path)


def cache_lock(path: Path) -> OutputLock:
    """The inter-process lock of cache entry ``path`` (``<path>.lock``, deleted when released): runs that share a
    cache directory (a baseline and a LISA run started together) train a missing read-back net once; the others
    wait, then load it."""
    return OutputLock(path, what="read-back cache", wait=True)


def load_or_train_readback(dataset, cache_dir: str | Path, config: ReadbackConfig | None = None,
                           device: str | torch.device = "cpu", progress: bool = True,
                           dataset_kwargs: dict | None = None) -> CachedReadback:
    """The read-back net for ``dataset``'s identity (see :func:`dataset_identity`), from cache or trained.

    Trains on the first ``config.n_train`` train-split samples, scores on the first ``config.n_val`` val-split
    samples and caches both under ``cache_dir / f"readback-{key}"``. A cached entry whose JSON does not
    record the same identity and settings is retrained and overwritten. ``config`` defaults to ``ReadbackConfig()``.
    """
    config = ReadbackConfig() if config is None else config
    identity = dataset_identity(dataset, dataset_kwargs)
    heads = carried_heads(dataset.factor_specs)
    if not heads:
        raise ValueError(f"dataset {identity['name']!r} has no carried factors: nothing for a read-back net to learn")
    path = Path(cache_dir) / f"readback-{cache_key(identity, config)}"
    with cache_lock(path):
        meta = _read_meta(path)
        if meta and meta.get("dataset") == identity and meta.get("config") == dataclasses.asdict(config):
            return CachedReadback(_load(path, meta).to(device), meta["heldout"], identity, path, trained=False)
        return _train_and_cache(identity, heads, config, path, device, progress)


def _train_and_cache(identity: dict, heads: dict, config: ReadbackConfig, path: Path, device,
                     progress: bool) -> CachedReadback:
    """Train the read-back net of ``identity`` and cache it at ``path`` (the caller holds its lock)."""
    start = time.perf_counter()
    train_split = build_split(identity, "train", config.n_train)
    if carried_heads(train_split.factor_specs) != heads:
        raise ValueError(f"the train split rebuilt from {identity} does not carry the factors {heads} of the given "
                         "dataset: pass the build_dataset options it was made with as dataset_kwargs")
    images, factors = load_samples(train_split, "train samples", progress)
    net = train_readback(images, factors, heads, config, device, progress)
    train_seconds = time.perf_counter() - start
    val_images, val_factors = load_samples(build_split(identity, "val", config.n_val), "val samples", progress)
    heldout = heldout_metrics(net, val_images, val_factors)
    meta = {"dataset": identity, "config": dataclasses.asdict(config), "heads": heads, "heldout": heldout,
            "train_seconds": round(train_seconds, 2), "n_train": len(images), "n_val": len(val_images),
            "code_version": code_version(), "format": CACHE_FORMAT}
    _save(path, net, meta)
    return CachedReadback(net.to(device), heldout, identity, path, trained=True)


def embed(net: ReadbackNet, images: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Read-back features (N, embed_dim) float64 of images (N, 3, H, W) in [-1, 1], on the net's device."""
    device = next(net.parameters()).device
    with torch.no_grad():
        chunks = [net.features(chunk.to(device)).double().cpu() for chunk in images.split(batch_size)]
    return torch.cat(chunks).numpy()
