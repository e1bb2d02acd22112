"""A dictionary of side features: a sparse autoencoder per site, trained on a feature store's rows.

Each position of a site's feature map (or each token) is a vector h (C,). After centring and scaling by the
features' root-mean-square norm (``mean``, ``scale``: stored with the weights), a TopK sparse autoencoder (Gao et
al. 2024) encodes it into K latents of which the ``k`` largest are kept, ``z = TopK(ReLU(W_enc (x − b_dec) +
b_enc))``, and decodes ``x̂ = W_dec z + b_dec`` with unit-norm decoder rows; the loss is the mean squared error. TopK
needs no sparsity penalty to tune. (A well-kept library was considered: SAELens is built around TransformerLens
hooks and language-model activation stores, dictionary-learning around nnsight buffers; our features come from HDF5
stores of conv maps and tokens, so the ~80 lines here are simpler than adapting either.)

Training is seeded and resumable: batch b's positions are drawn by a generator seeded by (seed, b), and a checkpoint
(weights, Adam's moments and the step, all safetensors) written every ``checkpoint_every`` steps continues to the
same weights as an uninterrupted run (tested).

``latent_table`` ranks the latents: how often each fires, how its activation map correlates with the side branch's
likelihood-score estimate (‖pred_full − pred_main‖ per position, ``alignment``) and how much information its pooled
activation carries about each known factor (``mutual_info``, with the factor's ``carried``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from sklearn.feature_selection import mutual_info_classif, mutual_info_regression
from torch import nn

from lisa_probe.analysis.alignment import resample_to
from lisa_probe.files import write_json

WEIGHTS, STATE = "sae.safetensors", "checkpoint.safetensors"


@dataclass(frozen=True)
class SaeConfig:
    """Dictionary size ``latents`` (K), ``k`` active latents, and the training settings."""

    latents: int
    k: int = 8
    steps: int = 2000
    batch_size: int = 1024
    lr: float = 1e-3
    seed: int = 0
    checkpoint_every: int = 500


class TopKSae(nn.Module):
    """x (B, C) -> (x̂ (B, C), z (B, K)); ``mean`` / ``scale`` normalise raw features (``encode_raw``)."""

    def __init__(self, channels: int, latents: int, k: int, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        decoder = torch.randn(latents, channels, generator=generator)
        self.W_dec = nn.Parameter(decoder / decoder.norm(dim=1, keepdim=True))
        self.W_enc = nn.Parameter(self.W_dec.detach().T.clone())
        self.b_enc = nn.Parameter(torch.zeros(latents))
        self.b_dec = nn.Parameter(torch.zeros(channels))
        self.k = k
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("scale", torch.ones(()))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C) normalised features -> (B, K) latents, all but the ``k`` largest zero."""
        pre = torch.relu((x - self.b_dec) @ self.W_enc + self.b_enc)
        top = pre.topk(self.k, dim=1)
        return torch.zeros_like(pre).scatter(1, top.indices, top.values)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode(x)
        return z @ self.W_dec + self.b_dec, z

    def encode_raw(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C) raw features -> (B, K) latents."""
        return self.encode((features - self.mean) / self.scale)

    def normalise_decoder(self) -> None:
        with torch.no_grad():
            self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)


def positions(features: np.ndarray) -> np.ndarray:
    """(N, C, H, W) maps or (N, T, D) tokens -> (N · H · W, C) / (N · T, D) float32 rows, sample-major."""
    features = np.asarray(features, dtype=np.float32)
    if features.ndim == 4:
        return features.transpose(0, 2, 3, 1).reshape(-1, features.shape[1])
    return features.reshape(-1, features.shape[-1])


def save_checkpoint(path: Path, sae: TopKSae, optimizer: torch.optim.Adam, step: int) -> None:
    """Weights, Adam's moments and step counts as one safetensors file, written atomically."""
    tensors = {f"model.{name}": value.detach().contiguous() for name, value in sae.state_dict().items()}
    for index, parameter in enumerate(sae.parameters()):
        state = optimizer.state.get(parameter, {})
        for key in ("exp_avg", "exp_avg_sq", "step"):
            if key in state:
                tensors[f"adam.{index}.{key}"] = torch.as_tensor(state[key]).detach().clone().contiguous()
    tensors["step"] = torch.tensor(step)
    staging = path.with_name(f".{path.name}.tmp")
    save_file(tensors, staging)
    staging.replace(path)


def load_checkpoint(path: Path, sae: TopKSae, optimizer: torch.optim.Adam) -> int:
    """Restore ``save_checkpoint``'s file into ``sae`` and ``optimizer``; returns the step."""
    tensors = load_file(path)
    sae.load_state_dict({name[len("model."):]: value for name, value in tensors.items() if name.startswith("model.")})
    for index, parameter in enumerate(sae.parameters()):
        if f"adam.{index}.exp_avg" in tensors:
            optimizer.state[parameter] = {key: tensors[f"adam.{index}.{key}"].clone()
                                          for key in ("exp_avg", "exp_avg_sq", "step")}
    return int(tensors["step"])


def train_sae(rows: np.ndarray, config: SaeConfig, out: Path, resume: bool = False,
              progress=None) -> tuple[TopKSae, pd.DataFrame]:
    """Train on feature rows (M, C); writes ``out/checkpoint.safetensors`` every ``checkpoint_every`` steps and at
    the end (``resume`` continues from it, also to more steps), and ``out/sae.safetensors`` with ``sae.json``. Returns the SAE and the log ``[step, mse, fvu]`` (fraction
    of variance unexplained on each batch)."""
    out.mkdir(parents=True, exist_ok=True)
    data = torch.from_numpy(np.asarray(rows, dtype=np.float32))
    sae = TopKSae(data.shape[1], config.latents, config.k, config.seed)
    sae.mean.copy_(data.mean(dim=0))
    sae.scale.copy_((data - sae.mean).norm(dim=1).pow(2).mean().sqrt().clamp_min(1e-12))
    optimizer = torch.optim.Adam(sae.parameters(), lr=config.lr)
    start = load_checkpoint(out / STATE, sae, optimizer) if resume and (out / STATE).exists() else 0
    log = []
    for step in range(start, config.steps):
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
        batch = (data[torch.randint(len(data), (config.batch_size,), generator=generator)] - sae.mean) / sae.scale
        recon, _ = sae(batch)
        loss = (recon - batch).pow(2).sum(dim=1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sae.normalise_decoder()
        if (step + 1) % 50 == 0 or step + 1 == config.steps:
            total = (batch - batch.mean(dim=0)).pow(2).sum(dim=1).mean()
            log.append({"step": step + 1, "mse": loss.item(), "fvu": (loss / total).item()})
        if config.checkpoint_every and (step + 1) % config.checkpoint_every == 0:
            save_checkpoint(out / STATE, sae, optimizer, step + 1)
        if progress is not None:
            progress.update(1)
    save_checkpoint(out / STATE, sae, optimizer, max(start, config.steps))  # a later --resume with more steps
    save_file({name: value.contiguous() for name, value in sae.state_dict().items()}, out / WEIGHTS)
    write_json(out / "sae.json", {"config": asdict(config), "channels": int(data.shape[1])})
    return sae, pd.DataFrame(log)


@torch.no_grad()
def latent_maps(sae: TopKSae, features: np.ndarray) -> np.ndarray:
    """(N, K, H, W) activation maps of each store row's positions; tokens (N, T, D) of a DiT as their patch grid
    (√T, √T), row-major as the patches are, or (T, 1) when T is not a square."""
    features = np.asarray(features, dtype=np.float32)
    side = int(round(np.sqrt(features.shape[1]))) if features.ndim == 3 else 0
    grid = features.shape[2:] if features.ndim == 4 else (side, side) if side * side == features.shape[1] else \
        (features.shape[1], 1)
    z = sae.encode_raw(torch.from_numpy(positions(features))).numpy()
    return z.reshape(len(features), *grid, -1).transpose(0, 3, 1, 2)


def latent_table(maps: np.ndarray, estimate: np.ndarray, factors: dict[str, np.ndarray], kinds: dict[str, str],
                 carried: dict[str, bool], seed: int = 0) -> pd.DataFrame:
    """One row per latent: ``frequency`` (share of positions where it fires), ``alignment`` (Pearson correlation,
    over rows and positions, of its activation with the estimate's channel norm resampled to the map's grid; NaN for
    a latent that never fires) and ``mi/<factor>`` (mutual information in nats of its mean activation per row with
    each factor; ``carried`` factors named in ``mi_carried`` / ``mi_not_carried``, their means)."""
    n, latents = maps.shape[:2]
    norm = np.linalg.norm(np.asarray(estimate, dtype=np.float64), axis=1, keepdims=True)
    target = resample_to(norm, maps.shape[2:])[:, 0].reshape(n, -1)
    flat = maps.reshape(n, latents, -1)
    pooled = flat.mean(axis=2)
    rows = []
    for latent in range(latents):
        values = flat[:, latent].ravel()
        fires = values > 0
        alignment = (float(np.corrcoef(values, target.ravel())[0, 1]) if fires.any() and values.std() > 0
                     else float("nan"))
        row = {"latent": latent, "frequency": float(fires.mean()), "alignment": alignment}
        for name, y in factors.items():
            x = pooled[:, latent:latent + 1]
            if not x.std():
                row[f"mi/{name}"] = 0.0
                continue
            estimator = mutual_info_classif if kinds[name] == "categorical" else mutual_info_regression
            row[f"mi/{name}"] = float(estimator(x, y, random_state=seed)[0])
        rows.append(row)
    table = pd.DataFrame(rows)
    for label, keep in (("mi_carried", True), ("mi_not_carried", False)):
        names = [f"mi/{name}" for name in factors if carried[name] == keep]
        table[label] = table[names].mean(axis=1) if names else np.nan
    return table
