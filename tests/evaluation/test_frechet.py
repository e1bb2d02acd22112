import numpy as np
import pytest
import scipy.linalg
import torch

from lisa_probe.evaluation.frechet import (
    disjoint_subsets,
    fd_real_real,
    frechet_distance,
    frechet_distance_from_stats,
    gaussian_stats,
)


def _reference_fd(x: np.ndarray, y: np.ndarray, eps: float = 1e-6) -> float:
    """The usual float64 FID formula: scipy.linalg.sqrtm of the product, eps fix, real part (as pytorch-fid)."""
    mu1, mu2 = x.mean(0), y.mean(0)
    c1, c2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = scipy.linalg.sqrtm(c1 @ c2)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(c1)) * eps
        covmean = scipy.linalg.sqrtm((c1 + offset) @ (c2 + offset))
    return float(((mu1 - mu2) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2 * np.trace(covmean.real))


def test_closed_form_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([0.5, 1.0, 0.0])
    var1, var2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(var1) - np.sqrt(var2)) ** 2).sum()
    assert frechet_distance_from_stats(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(expected, rel=1e-9)


def test_samples_approach_closed_form():
    rng = np.random.default_rng(0)
    x = rng.normal(0.0, 1.0, size=(20000, 4))
    y = rng.normal(1.0, 2.0, size=(20000, 4))
    assert frechet_distance(x, y) == pytest.approx(4 * 1.0 + 4 * 1.0, rel=0.05)


def test_matches_float64_reference_on_correlated_features():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 16)) @ rng.normal(size=(16, 16))
    y = rng.normal(size=(400, 16)) @ rng.normal(size=(16, 16)) + 0.3
    assert frechet_distance(x, y) == pytest.approx(_reference_fd(x, y), rel=1e-6)
    assert frechet_distance(torch.from_numpy(x).float(), torch.from_numpy(y).float()) == pytest.approx(
        _reference_fd(x, y), rel=1e-4)


def test_identical_sets_give_zero_even_when_singular():
    x = np.random.default_rng(2).normal(size=(20, 64))  # N < D: singular covariance
    assert abs(frechet_distance(x, x)) < 1e-6 * np.trace(gaussian_stats(x)[1])


def test_fd_real_real_uses_disjoint_subsets():
    first, second = disjoint_subsets(100, 40, seed=3)
    assert len(first) == len(second) == 40 and not set(first) & set(second)
    features = np.random.default_rng(4).normal(size=(100, 8))
    assert fd_real_real(features, 40, seed=3) == pytest.approx(frechet_distance(features[second], features[first]))
    assert fd_real_real(features, 40, seed=3) > 0


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="need at least"):
        disjoint_subsets(10, 6)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        frechet_distance(np.zeros(5), np.zeros((5, 2)))
    with pytest.raises(ValueError, match="same feature dimension"):
        frechet_distance(np.zeros((5, 3)), np.zeros((5, 2)))
