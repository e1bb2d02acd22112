"""2-D UMAP embeddings of features and how well a factor is organised in them.

umap's first fit in a process JIT-compiles for ~40 s; later fits take seconds. A fixed ``random_state``
makes umap run single-threaded (and reproducible).
"""

import warnings
from collections.abc import Mapping

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, r2_score, silhouette_score
from sklearn.model_selection import GroupKFold, cross_val_predict
from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor

from lisa_probe.analysis.tables import circle_points, circular_r2, iter_factors, long_table, turns_of


def umap_embed(
    X: np.ndarray, n_neighbors: int = 15, min_dist: float = 0.1, n_components: int = 2, seed: int = 0
) -> np.ndarray:
    """UMAP of X (N, D) to (N, n_components) with ``random_state=seed``.

    numba's OpenMP layer resets the thread count it shares with torch; it is restored afterwards (otherwise later
    torch work in the process can run ~100x slower and round differently).
    """
    import torch
    import umap  # deferred: importing umap loads numba (seconds)

    threads = torch.get_num_threads()
    reducer = umap.UMAP(n_neighbors=n_neighbors, min_dist=min_dist, n_components=n_components, random_state=seed)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="n_jobs value .* overridden", category=UserWarning)
            return reducer.fit_transform(np.asarray(X, dtype=np.float32))
    finally:
        torch.set_num_threads(threads)


def embedding_scores(
    E: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    kind: str = "categorical",
    n_neighbors: int = 15,
    n_splits: int = 5,
) -> dict[str, float]:
    """How well a factor is organised in an embedding E (N, d).

    Args:
        labels: (N,) factor values; groups: (N,) sample ids for ``GroupKFold``.
        kind: ``"categorical"`` -> ``silhouette`` (Euclidean, of the labels as clusters) and ``knn_accuracy``;
            ``"continuous"`` -> ``knn_r2``; ``"circular"`` (values in turns) -> ``knn_circular_r2`` (kNN regression
            of the point on the circle, scored around it).
        n_neighbors: k of the (distance-unweighted) kNN readout, evaluated out of fold.

    Returns:
        ``{"silhouette": s, "knn_accuracy": a}``, ``{"knn_r2": r}`` or ``{"knn_circular_r2": r}``.
    """
    E, labels = np.asarray(E, dtype=np.float64), np.asarray(labels)
    cv = GroupKFold(n_splits)
    if kind == "categorical":
        pred = cross_val_predict(KNeighborsClassifier(n_neighbors), E, labels, groups=groups, cv=cv)
        return {"silhouette": float(silhouette_score(E, labels)), "knn_accuracy": float(accuracy_score(labels, pred))}
    if kind == "circular":
        points = cross_val_predict(KNeighborsRegressor(n_neighbors), E, circle_points(labels), groups=groups, cv=cv)
        return {"knn_circular_r2": circular_r2(labels, turns_of(points))}
    pred = cross_val_predict(KNeighborsRegressor(n_neighbors), E, labels, groups=groups, cv=cv)
    return {"knn_r2": float(r2_score(labels, pred))}


def embedding_table(
    E: np.ndarray,
    factors: Mapping[str, tuple],
    groups: np.ndarray,
    n_neighbors: int = 15,
    n_splits: int = 5,
    method: str = "umap",
    **ids,
) -> pd.DataFrame:
    """``embedding_scores`` of E (N, d) for ``factors = {name: (y (N,), kind, carried)}``.

    Returns:
        long table with columns ``[*ids, method, factor, kind, carried, metric, value]``; ``method`` names
        the embedding scored, metric in {``silhouette``, ``knn_accuracy``, ``knn_r2``}.
    """
    rows = [
        {"method": method, "factor": name, "kind": kind, "carried": carried, "metric": metric, "value": value}
        for name, y, kind, carried in iter_factors(factors)
        for metric, value in embedding_scores(E, y, groups, kind, n_neighbors, n_splits).items()
    ]
    return long_table(rows, **ids)
