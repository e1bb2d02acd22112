"""Fréchet distance between two sets of feature vectors (the FID formula on any embedding)."""

from __future__ import annotations

import numpy as np
import torch


def _as_features(features: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    """Return ``features`` as a float64 (N, D) array with N >= 2, or raise ValueError."""
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().numpy()
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"{name} must be a (N, D) array of features with N >= 2, got shape {features.shape}")
    return features


def gaussian_stats(features: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D), in float64."""
    features = _as_features(features, "features")
    return features.mean(axis=0), np.cov(features, rowvar=False).reshape(features.shape[1], features.shape[1])


def trace_sqrt_product(cov1: np.ndarray, cov2: np.ndarray) -> float:
    """``tr((cov1 cov2)^½)`` for covariances (D, D), as ``tr((S cov2 S)^½)`` with ``S = cov1^½``.

    Both square roots come from symmetric eigendecompositions with negative round-off eigenvalues clipped to 0:
    exact for positive semi-definite inputs (singular ones included, e.g. N < D), real by construction and ~20×
    faster than ``scipy.linalg.sqrtm`` of the non-symmetric product at D = 128.
    """
    eigenvalues, eigenvectors = np.linalg.eigh(cov1)
    root = (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T
    inner = root @ cov2 @ root
    return float(np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0.0, None)).sum())


def frechet_distance_from_stats(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Fréchet distance ``|mu1 - mu2|² + tr(cov1 + cov2 - 2 (cov1 cov2)^½)`` between two Gaussians (means (D,),
    covariances (D, D))."""
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * trace_sqrt_product(cov1, cov2))


def frechet_distance(x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> float:
    """Fréchet distance between the Gaussian fits of features x (N, D) and y (M, D)."""
    x, y = _as_features(x, "x"), _as_features(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same feature dimension, got {x.shape} and {y.shape}")
    return frechet_distance_from_stats(*gaussian_stats(x), *gaussian_stats(y))


def disjoint_subsets(n_total: int, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint index arrays (n,) drawn without replacement from ``range(n_total)`` by a seeded permutation."""
    if 2 * n > n_total:
        raise ValueError(f"need at least 2 * {n} = {2 * n} real samples for two disjoint sets, have {n_total}")
    order = np.random.default_rng(seed).permutation(n_total)
    return order[:n], order[n:2 * n]


def fd_real_real(features: np.ndarray | torch.Tensor, n: int, seed: int = 0) -> float:
    """Fréchet distance between two disjoint random subsets of size n of real features (N, D), N >= 2n.

    It is the floor a generator's FD against ``n`` real samples can reach at this sample size; the first subset
    is the one :func:`disjoint_subsets` returns first (use it as the real side of the generated FD).
    """
    features = _as_features(features, "features")
    first, second = disjoint_subsets(features.shape[0], n, seed)
    return frechet_distance(features[second], features[first])
