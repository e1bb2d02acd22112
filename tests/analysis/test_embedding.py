import numpy as np
import pytest

from lisa_probe.analysis.embedding import embedding_scores, embedding_table, umap_embed


@pytest.fixture
def blobs():
    """90 rows of 45 samples in 3 well-separated 2-D clusters."""
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(45), 2)
    labels = groups % 3
    E = 10 * np.eye(3)[labels][:, :2] + rng.normal(size=(90, 2))
    return E, labels, groups


def test_embedding_scores_known_answers(blobs):
    E, labels, groups = blobs
    good = embedding_scores(E, labels, groups, "categorical", n_neighbors=5)
    assert good["silhouette"] > 0.6 and good["knn_accuracy"] > 0.95
    shuffled = np.random.default_rng(1).permutation(labels)
    bad = embedding_scores(E, shuffled, groups, "categorical", n_neighbors=5)
    assert abs(bad["silhouette"]) < 0.1 and bad["knn_accuracy"] < 0.6
    value = np.random.default_rng(2).uniform(size=90)
    line = np.c_[value, np.zeros(90)]
    assert embedding_scores(line, value, groups, "continuous", n_neighbors=5)["knn_r2"] > 0.9


def test_embedding_table(blobs):
    E, labels, groups = blobs
    factors = {"shape": (labels, "categorical", True), "size": (E[:, 0], "continuous", False)}
    table = embedding_table(E, factors, groups, n_neighbors=5, run="lisa", site="mid")
    assert list(table.columns) == ["run", "site", "method", "factor", "kind", "carried", "metric", "value"]
    assert table["metric"].tolist() == ["silhouette", "knn_accuracy", "knn_r2"]
    assert (table["method"] == "umap").all()


@pytest.mark.slow
def test_umap_embed_separates_clusters():
    """The only umap fit in the test suite (its first fit in a process JIT-compiles for ~35 s)."""
    rng = np.random.default_rng(3)
    X = np.r_[rng.normal(size=(30, 5)), rng.normal(size=(30, 5)) + 6]
    E = umap_embed(X, n_neighbors=10, seed=0)
    assert E.shape == (60, 2) and np.isfinite(E).all()
    labels = np.repeat([0, 1], 30)
    assert embedding_scores(E, labels, np.arange(60), n_neighbors=5)["knn_accuracy"] == 1.0
