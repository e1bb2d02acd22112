"""How well side-branch features align with the likelihood score.

* ``decoder_alignment``: a LISA decoder's output against a score estimate (cosine, relative error, R²).
* ``ridge_readout`` / ``spatial_ridge_readout``: cross-validated R² of a linear readout of the score from
  features, grouped by sample so that no sample straddles train and test.
* ``linear_cka``: linear centred kernel alignment (Kornblith et al. 2019), optionally debiased.
* ``shuffled_pairs``: the reference point every ``*_table`` reports beside the real pairing.
* ``RidgeSufficientStats``: the ridge readout from per-fold sufficient statistics accumulated chunk by
  chunk, for feature stores larger than memory; ``ridge_readout`` is this with a single chunk.

Every table row carries ``half``, the half-width of the 95 % t-interval of the metric across the sample-grouped
cross-validation folds (``fold_half``): an interval across samples for a single run; across seeds the figures use
the seeds instead.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator, Mapping
from functools import cache

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import GroupKFold
from torch.nn.functional import interpolate

from lisa_probe.analysis.intervals import t_interval
from lisa_probe.analysis.tables import long_table

DEFAULT_ALPHAS = np.logspace(-3, 3, 7)
EPS = 1e-12
SST_RTOL = 1e-12  # an R²'s SST at most this fraction of Σ y² is rounding error: the target is constant, R² is NaN


def _rows(a: np.ndarray) -> np.ndarray:
    """(N, ...) -> (N, P) float64, one flattened row per sample."""
    a = np.asarray(a, dtype=np.float64)
    return a.reshape(len(a), -1)


def grand_mean_r2(sse: float, sst: float, squares: float) -> float:
    """1 − ``sse`` / ``sst``, or NaN when ``sst`` (Σ (y − ȳ)²) is zero up to rounding: at most ``SST_RTOL`` ·
    ``squares`` (Σ y²), i.e. the target y is constant and no R² is defined."""
    return 1.0 - sse / sst if sst > SST_RTOL * squares else float("nan")


def decoder_alignment(decoded: np.ndarray, estimate: np.ndarray) -> dict[str, float]:
    """Compare a decoder's output with a score estimate, both (N, ...) (flattened per row).

    Returns:
        ``cosine``: mean over rows of the cosine between the rows;
        ``rel_error``: mean over rows of ||decoded − estimate|| / ||estimate||;
        ``r2``: 1 − SSE / SST with both sums over all N·P elements and SST around the *grand* mean ȳ of all
        elements of ``estimate`` (one mean for every row, channel and position, not sklearn's per-output means);
        NaN when ``estimate`` is constant (``grand_mean_r2``).
    """
    sums = DecoderAlignmentSums()
    sums.update(decoded, estimate)
    return sums.metrics()


def fold_ids(groups: np.ndarray, n_splits: int = 5, by: str = "balanced") -> np.ndarray:
    """Assign every row to a cross-validation fold so that all rows of a group share one fold.

    Args:
        groups: (N,) sample ids.
        n_splits: number of folds.
        by: ``"balanced"`` (sklearn ``GroupKFold``: folds of near-equal size, needs all ids up front),
            ``"order"`` (the k-th group to appear, in row order, goes to fold k mod ``n_splits``: a stream of
            consecutive groups counts them as it goes) or ``"hash"`` (CRC32 of ``str(id)`` modulo ``n_splits``:
            known from a row alone; folds may be unequal or empty when there are few groups).

    Returns:
        (N,) int64 fold index in ``[0, n_splits)``.
    """
    groups = np.asarray(groups)
    if by == "balanced":
        folds = np.empty(len(groups), dtype=np.int64)
        for k, (_, test) in enumerate(GroupKFold(n_splits).split(np.zeros((len(groups), 1)), groups=groups)):
            folds[test] = k
        return folds
    if by == "order":
        _, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
        rank = np.empty(len(first), dtype=np.int64)
        rank[np.argsort(first, kind="stable")] = np.arange(len(first))
        return rank[inverse.reshape(-1)] % n_splits
    if by == "hash":
        unique, inverse = np.unique(groups, return_inverse=True)
        hashed = np.array([zlib.crc32(str(g).encode()) % n_splits for g in unique], dtype=np.int64)
        return hashed[inverse.reshape(-1)]
    raise ValueError(f"by must be 'balanced', 'order' or 'hash', got {by!r}")


class RidgeSufficientStats:
    """Per-fold sufficient statistics of a multi-output ridge readout Y ≈ X W + b, filled chunk by chunk.

    Holds, for each fold k: row count, Σx, Σy, XᵀX, XᵀY and Σ‖y‖² (float64, after subtracting the first
    chunk's means for numerical stability), so memory is O(n_splits · D · (D + K)) whatever the number of
    rows. ``cv_r2`` then runs the same nested grouped cross-validation as ``ridge_readout``.
    """

    def __init__(self, n_features: int, n_targets: int, n_splits: int = 5):
        if n_splits < 3:
            raise ValueError("nested cross-validation needs n_splits >= 3")
        d, k = n_features, n_targets
        self.n = np.zeros(n_splits)
        self.sx, self.sy = np.zeros((n_splits, d)), np.zeros((n_splits, k))
        self.sxx, self.sxy = np.zeros((n_splits, d, d)), np.zeros((n_splits, d, k))
        self.syy = np.zeros(n_splits)
        self.shift: tuple[np.ndarray, np.ndarray] | None = None

    def update(self, X: np.ndarray, Y: np.ndarray, folds: np.ndarray) -> None:
        """Add a chunk: X (n, D) features, Y (n, K) or (n,) targets, folds (n,) ints from ``fold_ids``."""
        X, Y, folds = _rows(X), _rows(Y), np.asarray(folds)
        if not (len(X) == len(Y) == len(folds)):
            raise ValueError(f"X, Y and folds must have the same number of rows, got {len(X)}, {len(Y)} and "
                             f"{len(folds)}")
        if len(folds) == 0:
            return
        if folds.min() < 0 or folds.max() >= len(self.n):
            raise ValueError(f"fold ids must lie in [0, {len(self.n)})")
        if self.shift is None:
            self.shift = (X.mean(axis=0), Y.mean(axis=0))
        X, Y = X - self.shift[0], Y - self.shift[1]
        for k in np.unique(folds):
            x, y = X[folds == k], Y[folds == k]
            self.n[k] += len(x)
            self.sx[k] += x.sum(axis=0)
            self.sy[k] += y.sum(axis=0)
            self.sxx[k] += x.T @ x
            self.sxy[k] += x.T @ y
            self.syy[k] += np.sum(y * y)

    def cv_r2(self, alphas: np.ndarray = DEFAULT_ALPHAS) -> float:
        """Out-of-fold R² = 1 − Σ SSE / SST, summed over all targets (variance-weighted).

        For each test fold the ridge is fit on the other folds, with features standardised on those
        folds and ``alpha`` chosen by an inner cross-validation over the same remaining folds (minimum
        pooled squared error). SST is taken around the mean of all rows.
        """
        return self.cv_r2_folds(alphas)[0]

    def cv_r2_folds(self, alphas: np.ndarray = DEFAULT_ALPHAS) -> tuple[float, np.ndarray]:
        """``(cv_r2, per-fold R² (n_splits,))``: each test fold's 1 − SSE_k / SST_k (SST_k around that fold's own
        mean; NaN for a fold whose targets are constant), from the same fits as ``cv_r2``: the spread of a read-out
        across sample-disjoint folds, for an interval across samples."""
        if (self.n == 0).any():
            raise ValueError(f"empty folds: {np.flatnonzero(self.n == 0).tolist()}")
        every = frozenset(range(len(self.n)))
        alphas = np.asarray(alphas, dtype=np.float64)
        path = cache(lambda train: self._ridge_path(train, alphas))
        fold_sse = np.zeros(len(self.n))
        for k in every:
            inner = sum(self._sse(j, *path(every - {k, j})) for j in every - {k})  # (A,) pooled over inner folds
            best = int(np.argmin(inner))
            W, b = path(every - {k})
            fold_sse[k] = self._sse(k, W[best : best + 1], b[best : best + 1])[0]
        n, sy, syy = self.n.sum(), self.sy.sum(axis=0), self.syy.sum()
        sst = syy - sy @ sy / n
        fold_sst = self.syy - np.einsum("fk,fk->f", self.sy, self.sy) / self.n
        with np.errstate(divide="ignore", invalid="ignore"):
            per_fold = np.where(fold_sst > 0, 1.0 - fold_sse / fold_sst, np.nan)
        return (float(1.0 - fold_sse.sum() / sst) if sst > 0 else float("nan")), per_fold

    def _ridge_path(self, train: frozenset[int], alphas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Fit on the folds in ``train`` at every alpha (A,) from one eigendecomposition: (W (A, D, K), b (A, K))."""
        idx = sorted(train)
        n = self.n[idx].sum()
        mx, my = self.sx[idx].sum(axis=0) / n, self.sy[idx].sum(axis=0) / n
        cxx = self.sxx[idx].sum(axis=0) - n * np.outer(mx, mx)
        cxy = self.sxy[idx].sum(axis=0) - n * np.outer(mx, my)
        scale = np.sqrt(np.clip(np.diag(cxx), 0, None) / n)
        scale[scale < EPS] = 1.0
        evals, evecs = np.linalg.eigh(cxx / np.outer(scale, scale))
        projected = evecs.T @ (cxy / scale[:, None])
        W = evecs @ (projected / (evals[None, :, None] + alphas[:, None, None])) / scale[:, None]
        return W, my - mx @ W

    def _sse(self, k: int, W: np.ndarray, b: np.ndarray) -> np.ndarray:
        """(A,) Σ‖y − x W_a − b_a‖² over the rows of fold k, from that fold's statistics, for W (A, D, K), b (A, K)."""
        return (
            self.syy[k]
            - 2 * np.einsum("dk,adk->a", self.sxy[k], W)
            - 2 * b @ self.sy[k]
            + np.einsum("adk,adk->a", self.sxx[k] @ W, W)
            + 2 * np.einsum("ak,ak->a", self.sx[k] @ W, b)
            + self.n[k] * np.einsum("ak,ak->a", b, b)
        )


def ridge_readout(
    X: np.ndarray, Y: np.ndarray, groups: np.ndarray, alphas: np.ndarray = DEFAULT_ALPHAS, n_splits: int = 5
) -> float:
    """Grouped cross-validated R² of a ridge readout of Y (N, K) or (N,) from X (N, D).

    Folds come from ``fold_ids(groups, n_splits)`` (sklearn ``GroupKFold``); see
    ``RidgeSufficientStats.cv_r2`` for the fit, the inner choice of ``alpha`` and the R².
    """
    width = [int(np.prod(np.shape(a)[1:])) for a in (X, Y)]
    stats = RidgeSufficientStats(*width, n_splits)
    stats.update(X, Y, fold_ids(groups, n_splits))
    return stats.cv_r2(alphas)


def resample_to(S: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resample score maps S (N, C, Hs, Ws) to (N, C, *size): area averaging when shrinking, nearest when growing."""
    if tuple(S.shape[-2:]) == tuple(size):
        return np.asarray(S, dtype=np.float64)
    shrink = S.shape[-2] >= size[0] and S.shape[-1] >= size[1]
    maps = torch.as_tensor(np.asarray(S, dtype=np.float64))
    out = interpolate(maps, size=tuple(size), mode="area" if shrink else "nearest")
    return out.numpy()


def positions_as_rows(A: np.ndarray) -> np.ndarray:
    """(n, C, H, W) -> (n·H·W, C): every spatial position becomes a row."""
    return np.moveaxis(A, 1, -1).reshape(-1, A.shape[1])


def spatial_ridge_readout(
    F: np.ndarray,
    S: np.ndarray,
    groups: np.ndarray,
    alphas: np.ndarray = DEFAULT_ALPHAS,
    n_splits: int = 5,
    chunk: int = 256,
    folds_by: str = "balanced",
) -> float:
    """Grouped cross-validated R² of one linear map, shared by all positions, from features to score.

    Args:
        F: (N, C, H, W) feature maps.
        S: (N, Cs, Hs, Ws) score maps, resampled to (H, W) with ``resample_to``.
        groups: (N,) sample ids; all positions of a row share its group (and fold).
        chunk: samples per chunk fed to ``RidgeSufficientStats`` (bounds memory).
        folds_by: how groups are assigned to folds (``fold_ids``'s ``by``; the streamed pass uses ``"order"``).

    Returns:
        R² over all positions and score channels (see ``RidgeSufficientStats.cv_r2``).
    """
    folds = fold_ids(groups, n_splits, folds_by)
    stats = RidgeSufficientStats(F.shape[1], S.shape[1], n_splits)
    for start in range(0, len(F), chunk):
        part = slice(start, start + chunk)
        add_spatial_rows(stats, F[part], resample_to(S[part], F.shape[-2:]), folds[part])
    return stats.cv_r2(alphas)


def add_spatial_rows(stats: RidgeSufficientStats, F: np.ndarray, S: np.ndarray, folds: np.ndarray) -> None:
    """Feed rows to a spatial read-out: feature maps F (n, C, H, W) and score maps S (n, Cs, H, W) at the same size,
    every position a row of its sample's fold (``folds`` (n,)). ``spatial_ridge_readout`` and the streamed analysis
    both fill their statistics with it."""
    stats.update(positions_as_rows(F), positions_as_rows(S), np.repeat(folds, F.shape[-2] * F.shape[-1]))


def linear_cka(X: np.ndarray, Y: np.ndarray, debiased: bool = False) -> float:
    """Linear CKA between X (N, D) and Y (N, K) (Kornblith et al. 2019, feature-space form).

    ‖XcᵀYc‖²_F / (‖XcᵀXc‖_F ‖YcᵀYc‖_F) with column-centred Xc, Yc; ``debiased`` replaces each HSIC by the
    unbiased estimator of Song et al. (2012) (NaN for N < 4); NaN where either side is constant. Invariant to orthogonal transforms and isotropic
    scaling of either side; ≈ 0 for independent X, Y (exactly in expectation when debiased).
    """
    x, y = _rows(X), _rows(Y)
    x, y = x - x.mean(axis=0), y - y.mean(axis=0)

    def hsic(a: np.ndarray, b: np.ndarray) -> float:
        value = np.linalg.norm(a.T @ b) ** 2
        if not debiased:
            return value
        n = len(a)
        rows_a, rows_b = np.sum(a * a, axis=1), np.sum(b * b, axis=1)
        return value - n / (n - 2) * rows_a @ rows_b + rows_a.sum() * rows_b.sum() / ((n - 1) * (n - 2))

    if debiased and len(x) < 4:
        return float("nan")  # the unbiased HSIC divides by (n - 1)(n - 2)(n - 3)
    scale = hsic(x, x) * hsic(y, y)
    return float(hsic(x, y) / np.sqrt(scale)) if scale > 0 else float("nan")


def other_sample_pairing(samples: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N,) row permutation that pairs every row with a row of another sample: row i is paired with ``perm[i]``.

    The rows are ordered by a random order of their samples (and at random within a sample), then shifted
    cyclically by the largest sample's row count m: a sample's rows fill a block of at most m consecutive places, so
    the shift moves every row out of its block, provided no sample holds more than half of the rows.

    Args:
        samples: (N,) sample id of every row.

    Raises:
        ValueError: a sample holds more than half of the rows.
    """
    ids, inverse, counts = np.unique(np.asarray(samples), return_inverse=True, return_counts=True)
    shift = int(counts.max()) if len(counts) else 0
    if 2 * shift > len(inverse):
        raise ValueError(f"cannot pair rows with other samples: sample {str(ids[counts.argmax()])!r} holds {shift} of "
                         f"{len(inverse)} rows (at most half is allowed)")
    sample_rank = rng.permutation(len(ids))[inverse.reshape(-1)]
    order = np.lexsort((rng.random(len(inverse)), sample_rank))
    perm = np.empty(len(inverse), dtype=np.int64)
    perm[order] = np.roll(order, -shift)
    return perm


def shuffled_pairs(Y: np.ndarray, groups: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """Y (N, ...) with every row replaced by a row of another sample (``other_sample_pairing`` over ``groups`` (N,);
    None: every row is its own sample): the no-alignment reference point."""
    Y = np.asarray(Y)
    samples = np.arange(len(Y)) if groups is None else groups
    return Y[other_sample_pairing(samples, np.random.default_rng(seed))]


def fold_half(values: np.ndarray) -> float:
    """Half-width of the 95 % t-interval of per-fold values (folds hold disjoint samples): the interval across
    samples reported beside a pooled value (NaN below two finite folds)."""
    return t_interval(values)[1]


def per_fold(measure: Callable[[np.ndarray, np.ndarray], Mapping[str, float]], a: np.ndarray, b: np.ndarray,
             folds: np.ndarray) -> dict[str, tuple[float, float]]:
    """``{metric: (value on all rows, fold_half of its values on each fold's rows)}``."""
    whole = measure(a, b)
    parts = [measure(a[folds == k], b[folds == k]) for k in np.unique(folds)]
    return {metric: (value, fold_half(np.array([part[metric] for part in parts]))) for metric, value in whole.items()}


def _controlled_rows(
    measure: Callable[[np.ndarray, np.ndarray], Mapping[str, tuple[float, float]]],
    a: np.ndarray,
    b: np.ndarray,
    method: str,
    groups: np.ndarray | None,
    seed: int,
) -> Iterator[dict]:
    """Rows of ``measure(a, b)`` (``{metric: (value, half)}``) with ``control="none"`` and of
    ``measure(a, shuffled_pairs(b, groups))``."""
    for control, paired in (("none", b), ("shuffled_pairs", shuffled_pairs(b, groups, seed))):
        for metric, (value, half) in measure(a, paired).items():
            yield {"method": method, "control": control, "metric": metric, "value": value, "half": half}


def decoder_alignment_table(decoded: np.ndarray, estimate: np.ndarray, groups: np.ndarray | None = None,
                            seed: int = 0, n_splits: int = 5, **ids) -> pd.DataFrame:
    """``decoder_alignment`` as a long table: method ``decoder``, metrics ``cosine, rel_error, r2``, both controls
    (``groups`` (N,): sample ids, so that the shuffled pairs never pair a row with its own sample, and the folds of
    the ``half`` column: ``per_fold`` over ``n_splits`` sample-grouped folds)."""
    folds = fold_ids(np.arange(len(decoded)) if groups is None else groups, n_splits)
    return long_table(_controlled_rows(lambda x, y: per_fold(decoder_alignment, x, y, folds), decoded, estimate,
                                       "decoder", groups, seed), **ids)


def readout_table(
    X: np.ndarray,
    Y: np.ndarray,
    groups: np.ndarray,
    alphas: np.ndarray = DEFAULT_ALPHAS,
    n_splits: int = 5,
    debiased: bool = False,
    seed: int = 0,
    **ids,
) -> pd.DataFrame:
    """Ridge readout and linear CKA of Y (N, K) from pooled features X (N, D), real and shuffled pairs.

    Returns:
        long table, method ``ridge`` (metric ``r2``) and ``cka`` (metric ``cka`` or ``cka_debiased``),
        column ``control`` in {``none``, ``shuffled_pairs``}, and ``half``: the 95 % t-interval's half-width across
        the ``n_splits`` sample-grouped folds (the ridge's out-of-fold R² per test fold; CKA on each fold's rows).
    """
    cka_name = "cka_debiased" if debiased else "cka"
    folds = fold_ids(groups, n_splits)

    def ridge(x: np.ndarray, y: np.ndarray) -> dict[str, tuple[float, float]]:
        stats = RidgeSufficientStats(x.shape[1], int(np.prod(y.shape[1:])), n_splits)
        stats.update(x, y, folds)
        value, folds_r2 = stats.cv_r2_folds(alphas)
        return {"r2": (value, fold_half(folds_r2))}

    rows = [
        *_controlled_rows(ridge, X, Y, "ridge", groups, seed),
        *_controlled_rows(lambda x, y: per_fold(lambda u, v: {cka_name: linear_cka(u, v, debiased)}, x, y, folds),
                          X, Y, "cka", groups, seed),
    ]
    return long_table(rows, **ids)


class DecoderAlignmentSums:
    """``decoder_alignment`` over rows fed chunk by chunk: sums of per-row cosines and relative errors, the squared
    error and the first two moments of the estimate's elements (so the R²'s SST is around the grand mean of all
    elements); ``metrics()`` equals ``decoder_alignment`` of all rows at once."""

    def __init__(self) -> None:
        self.rows = self.elements = 0
        self.cosine = self.rel_error = self.sse = self.total = self.squares = 0.0

    def update(self, decoded: np.ndarray, estimate: np.ndarray) -> None:
        """Add rows: decoded and estimate (n, ...) of the same shape."""
        d, e = _rows(decoded), _rows(estimate)
        if d.shape != e.shape:
            raise ValueError(f"decoded {d.shape} and estimate {e.shape} differ")
        d_norm, e_norm = np.linalg.norm(d, axis=1), np.linalg.norm(e, axis=1)
        self.rows += len(d)
        self.elements += e.size
        self.cosine += float(np.sum(np.sum(d * e, axis=1) / np.maximum(d_norm * e_norm, EPS)))
        self.rel_error += float(np.sum(np.linalg.norm(d - e, axis=1) / np.maximum(e_norm, EPS)))
        self.sse += float(np.sum((d - e) ** 2))
        self.total += float(e.sum())
        self.squares += float(np.sum(e * e))

    def add(self, other: DecoderAlignmentSums) -> None:
        """Add the sums of ``other`` (the rows of another fold or chunk)."""
        for name in ("rows", "elements", "cosine", "rel_error", "sse", "total", "squares"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def metrics(self) -> dict[str, float]:
        """``{"cosine", "rel_error", "r2"}`` as ``decoder_alignment`` defines them (``r2`` NaN for a constant
        estimate)."""
        sst = self.squares - self.total**2 / self.elements
        return {"cosine": self.cosine / self.rows, "rel_error": self.rel_error / self.rows,
                "r2": grand_mean_r2(self.sse, sst, self.squares)}
