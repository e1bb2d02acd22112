"""Fréchet distance between two sets of feature vectors (the FID formula on any embedding)."""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg
import torch

_IMAG_TOLERANCE = 1e-3


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


def frechet_distance_from_stats(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray,
                                eps: float = 1e-6) -> float:
    """Fréchet distance ``|mu1 - mu2|² + tr(cov1 + cov2 - 2 (cov1 cov2)^½)`` between two Gaussians.

    Numerical fix as in pytorch-fid: when the product's square root is not finite, ``eps`` is added to both
    diagonals; a complex result with a negligible imaginary diagonal is replaced by its real part.
    """
    with warnings.catch_warnings():  # singular products are expected (N < D, identical features) and handled below
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(cov1 @ cov2)
    if not np.isfinite(covmean).all():
        offset = np.eye(cov1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((cov1 + offset) @ (cov2 + offset))
    if np.iscomplexobj(covmean):
        largest_imag = np.max(np.abs(np.diagonal(covmean).imag))
        if largest_imag > _IMAG_TOLERANCE:
            raise ValueError(f"matrix square root has a large imaginary component ({largest_imag:.3g})")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * np.trace(covmean))


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
