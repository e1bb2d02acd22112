import numpy as np
import pytest
from scipy import stats
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from lisa_probe.analysis.alignment import (
    DEFAULT_ALPHAS,
    DecoderAlignmentSums,
    RidgeSufficientStats,
    decoder_alignment,
    decoder_alignment_table,
    fold_ids,
    linear_cka,
    other_sample_pairing,
    readout_table,
    resample_to,
    ridge_readout,
    shuffled_pairs,
    spatial_ridge_readout,
)


@pytest.fixture
def linear_data():
    """300 rows of 60 samples (5 rows each); Y (N, 3) is a noisy linear map of badly scaled, offset X (N, 8)."""
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(60), 5)
    X = rng.normal(size=(300, 8)) * rng.uniform(0.1, 10, size=8) + 5
    Y = X @ rng.normal(size=(8, 3)) + rng.normal(size=(300, 3))
    return X, Y, groups


def brute_force_ridge_r2(X, Y, folds):
    """Independent nested CV with sklearn: StandardScaler + Ridge, alpha by pooled SSE over inner folds."""

    def fit(rows, alpha):
        return make_pipeline(StandardScaler(), Ridge(alpha=alpha)).fit(X[rows], Y[rows])

    pred = np.zeros_like(Y)
    for k in np.unique(folds):
        others = [j for j in np.unique(folds) if j != k]
        inner = [
            sum(((fit((folds != k) & (folds != j), a).predict(X[folds == j]) - Y[folds == j]) ** 2).sum() for j in others)
            for a in DEFAULT_ALPHAS
        ]
        pred[folds == k] = fit(folds != k, DEFAULT_ALPHAS[np.argmin(inner)]).predict(X[folds == k])
    return 1 - ((pred - Y) ** 2).sum() / ((Y - Y.mean(axis=0)) ** 2).sum()


def test_decoder_alignment_matches_loop():
    rng = np.random.default_rng(1)
    estimate = rng.normal(size=(6, 2, 3, 3))
    decoded = estimate + 0.5 * rng.normal(size=estimate.shape)
    cos, rel = [], []
    for d, e in zip(decoded.reshape(6, -1), estimate.reshape(6, -1)):
        cos.append(sum(a * b for a, b in zip(d, e)) / np.sqrt(sum(d * d) * sum(e * e)))
        rel.append(np.sqrt(sum((d - e) ** 2)) / np.sqrt(sum(e * e)))
    r2 = 1 - ((decoded - estimate) ** 2).sum() / ((estimate - estimate.mean()) ** 2).sum()
    got = decoder_alignment(decoded.astype(np.float32), estimate)
    np.testing.assert_allclose([got["cosine"], got["rel_error"], got["r2"]], [np.mean(cos), np.mean(rel), r2], rtol=1e-6)
    assert decoder_alignment(estimate, estimate) == pytest.approx({"cosine": 1.0, "rel_error": 0.0, "r2": 1.0})


def test_decoder_alignment_r2_uses_the_grand_mean_and_is_nan_for_a_constant_estimate():
    rng = np.random.default_rng(3)
    estimate = rng.normal(size=(5, 2, 3, 3)) + np.array([10.0, -10.0])[:, None, None]  # channel means differ
    decoded = estimate + rng.normal(size=estimate.shape)
    sse = ((decoded - estimate) ** 2).sum()
    grand = 1 - sse / ((estimate - estimate.mean()) ** 2).sum()
    assert decoder_alignment(decoded, estimate)["r2"] == pytest.approx(grand, rel=1e-12)
    per_channel = 1 - sse / ((estimate - estimate.mean(axis=(0, 2, 3), keepdims=True)) ** 2).sum()
    assert grand > 0.9 and per_channel < 0.5  # the channel offsets count as explained variance
    for constant in (0.0, 0.3):
        got = decoder_alignment(decoded, np.full(estimate.shape, constant))
        assert np.isnan(got["r2"]) and np.isfinite(got["rel_error"])


def test_decoder_alignment_table_has_shuffled_reference():
    rng = np.random.default_rng(2)
    estimate = rng.normal(size=(200, 4))
    table = decoder_alignment_table(estimate + 0.1 * rng.normal(size=(200, 4)), estimate, run="lisa", t_bin=0)
    assert list(table.columns) == ["run", "t_bin", "method", "control", "half", "metric", "value"]
    assert (table["half"] > 0).all()
    value = table.set_index(["control", "metric"])["value"]
    assert value["none", "cosine"] > 0.99 and abs(value["shuffled_pairs", "cosine"]) < 0.1
    assert value["shuffled_pairs", "r2"] < 0


def test_fold_ids_keep_groups_together():
    groups = np.repeat(np.arange(23), np.arange(1, 24) % 4 + 1)
    for by in ("balanced", "order", "hash"):
        folds = fold_ids(groups, 5, by=by)
        assert all(len(set(folds[groups == g])) == 1 for g in np.unique(groups))
    balanced = np.bincount(fold_ids(groups, 5))
    assert balanced.max() - balanced.min() <= 4
    # hash folds depend on the id alone, not on which other ids are present
    np.testing.assert_array_equal(fold_ids(groups[:10], 5, by="hash"), fold_ids(groups, 5, by="hash")[:10])
    # order folds: the k-th group to appear goes to fold k mod 5, whatever its id
    shuffled = np.repeat(np.random.default_rng(0).permutation(23), 3)
    np.testing.assert_array_equal(fold_ids(shuffled, 5, by="order"), np.repeat(np.arange(23) % 5, 3))
    with pytest.raises(ValueError):
        fold_ids(groups, 5, by="random")


def test_ridge_readout_matches_sklearn_brute_force(linear_data):
    X, Y, groups = linear_data
    r2 = ridge_readout(X, Y, groups)
    assert r2 == pytest.approx(brute_force_ridge_r2(X, Y, fold_ids(groups, 5)), abs=1e-6)
    assert r2 > 0.9


def test_ridge_readout_known_answers(linear_data):
    X, Y, groups = linear_data
    exact = X[:, :3] @ np.array([[1.0, 2.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, -3.0]])
    assert ridge_readout(X, exact, groups) > 0.999
    assert ridge_readout(X, Y[:, 0], groups) > 0.9
    assert ridge_readout(X, shuffled_pairs(Y, seed=1), groups) <= 0.05


@pytest.mark.parametrize("by", ["balanced", "hash"])
def test_streaming_matches_in_memory(linear_data, by):
    X, Y, groups = linear_data
    folds = fold_ids(groups, 5, by=by)
    whole = RidgeSufficientStats(8, 3)
    whole.update(X, Y, folds)
    streamed = RidgeSufficientStats(8, 3)
    order = np.random.default_rng(3).permutation(len(X))
    for chunk in np.array_split(order, 9):
        streamed.update(X[chunk].astype(np.float16), Y[chunk], folds[chunk])
    reference = RidgeSufficientStats(8, 3)
    reference.update(X.astype(np.float16), Y, folds)
    assert streamed.cv_r2() == pytest.approx(reference.cv_r2(), abs=1e-6)
    if by == "balanced":
        assert whole.cv_r2() == pytest.approx(ridge_readout(X, Y, groups), abs=1e-12)
    assert whole.cv_r2() == pytest.approx(brute_force_ridge_r2(X, Y, folds), abs=1e-6)


def test_sufficient_stats_validation():
    with pytest.raises(ValueError, match="n_splits"):
        RidgeSufficientStats(2, 1, n_splits=2)
    stats = RidgeSufficientStats(2, 1, n_splits=3)
    with pytest.raises(ValueError, match="fold ids"):
        stats.update(np.zeros((2, 2)), np.zeros(2), np.array([0, 3]))
    with pytest.raises(ValueError, match="same number of rows, got 2, 3 and 4"):
        stats.update(np.zeros((2, 2)), np.zeros(3), np.zeros(4, dtype=int))
    stats.update(np.ones((2, 2)), np.zeros(2), np.array([0, 1]))
    with pytest.raises(ValueError, match="empty folds"):
        stats.cv_r2()


def test_resample_to_pools_and_repeats():
    rng = np.random.default_rng(4)
    S = rng.normal(size=(2, 3, 8, 8))
    pooled = resample_to(S, (4, 4))
    brute = np.array([[[[S[n, c, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].mean() for j in range(4)] for i in range(4)]
                       for c in range(3)] for n in range(2)])
    np.testing.assert_allclose(pooled, brute, atol=1e-12)
    np.testing.assert_array_equal(resample_to(pooled, (8, 8)), pooled.repeat(2, axis=2).repeat(2, axis=3))
    np.testing.assert_array_equal(resample_to(S, (8, 8)), S)


def test_spatial_ridge_readout_shared_linear_map():
    rng = np.random.default_rng(5)
    F = rng.normal(size=(40, 4, 4, 4))
    S = np.einsum("nchw,cd->ndhw", F, rng.normal(size=(4, 2)))
    fine = S.repeat(2, axis=2).repeat(2, axis=3)  # score at twice the feature resolution
    groups = np.arange(40)
    assert spatial_ridge_readout(F, S, groups) > 0.999
    assert spatial_ridge_readout(F, fine, groups, chunk=7) > 0.999
    assert spatial_ridge_readout(F, shuffled_pairs(fine, groups), groups) <= 0.05  # the control: another sample


def gram_cka(X, Y, debiased):
    """Kernel-form CKA with N×N Gram matrices: centring matrix (biased) or Song et al.'s U-statistic."""
    n = len(X)
    K, L = X @ X.T, Y @ Y.T

    def hsic(K, L):
        if not debiased:
            H = np.eye(n) - 1 / n
            return np.trace(K @ H @ L @ H)
        K, L = K - np.diag(np.diag(K)), L - np.diag(np.diag(L))
        one = np.ones(n)
        return np.trace(K @ L) + one @ K @ one * (one @ L @ one) / ((n - 1) * (n - 2)) - 2 / (n - 2) * one @ K @ L @ one

    return hsic(K, L) / np.sqrt(hsic(K, K) * hsic(L, L))


@pytest.mark.parametrize("debiased", [False, True])
def test_linear_cka(debiased):
    rng = np.random.default_rng(6)
    X = rng.normal(size=(400, 8)) + 3
    Q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    assert linear_cka(X, 2.5 * X @ Q + 1, debiased) == pytest.approx(1.0, abs=1e-10)
    noise = rng.normal(size=(400, 5))
    assert abs(linear_cka(X, noise, debiased)) < 0.05
    Y = X[:, :3] @ rng.normal(size=(3, 4)) + rng.normal(size=(400, 4))
    assert linear_cka(X, Y, debiased) == pytest.approx(gram_cka(X - X.mean(0), Y - Y.mean(0), debiased), rel=1e-8)


def test_per_fold_r2_is_each_test_folds_own_r2(linear_data):
    """``cv_r2_folds``: the pooled R² as ``cv_r2`` and, per test fold, 1 − SSE/SST of that fold's out-of-fold
    predictions around its own mean, recomputed with sklearn (one alpha: no inner choice to replicate)."""
    X, Y, groups = linear_data
    folds = fold_ids(groups, 5)
    stats = RidgeSufficientStats(8, 3)
    stats.update(X, Y, folds)
    pooled, per_fold = stats.cv_r2_folds(np.array([1.0]))
    assert pooled == stats.cv_r2(np.array([1.0]))
    for k in range(5):
        model = make_pipeline(StandardScaler(), Ridge(alpha=1.0)).fit(X[folds != k], Y[folds != k])
        y = Y[folds == k]
        expected = 1 - ((model.predict(X[folds == k]) - y) ** 2).sum() / ((y - y.mean(axis=0)) ** 2).sum()
        assert per_fold[k] == pytest.approx(expected, abs=1e-6)


def test_readout_table(linear_data):
    X, Y, groups = linear_data
    table = readout_table(X, Y, groups, debiased=True, run="base", site="down.5", t_bin=1)
    assert list(table.columns) == ["run", "site", "t_bin", "method", "control", "half", "metric", "value"]
    half = table.set_index(["method", "control"])["half"]
    folds = fold_ids(groups, 5)
    cka_folds = np.array([linear_cka(X[folds == k], Y[folds == k], True) for k in range(5)])
    expected = stats.t.ppf(0.975, 4) * cka_folds.std(ddof=1) / np.sqrt(5)
    assert half["cka", "none"] == pytest.approx(expected) and (table["half"] > 0).all()
    value = table.set_index(["method", "control"])["value"]
    assert value["ridge", "none"] > 0.9 and value["ridge", "shuffled_pairs"] <= 0.05
    assert value["cka", "none"] > 0.3 and abs(value["cka", "shuffled_pairs"]) < 0.05
    assert set(table["metric"]) == {"r2", "cka_debiased"}


def test_shuffled_pairs_permutes_rows():
    Y = np.arange(20).reshape(10, 2)
    shuffled = shuffled_pairs(Y, seed=0)
    assert np.all(shuffled[:, 0] != Y[:, 0])  # no row keeps its own partner
    np.testing.assert_array_equal(np.sort(shuffled[:, 0]), Y[:, 0])
    np.testing.assert_array_equal(shuffled[:, 1] - shuffled[:, 0], 1)


@pytest.mark.parametrize("counts", [[4, 4, 4, 4], [3, 1, 2, 2], [5, 5], [1] * 9])
def test_shuffled_pairs_never_pair_a_row_with_its_own_sample(counts):
    """Rows of a sample (its timesteps and noise draws) are never each other's reference, for any sample sizes up
    to half of the rows; the pairing is a permutation fixed by the seed."""
    groups = np.repeat(np.arange(len(counts)), counts)
    Y = np.arange(len(groups))
    for seed in range(20):
        paired = shuffled_pairs(Y, groups, seed)
        assert np.all(groups[paired] != groups) and sorted(paired) == list(Y)
    np.testing.assert_array_equal(shuffled_pairs(Y, groups, 3), shuffled_pairs(Y, groups, 3))


def test_shuffled_pairs_refuse_a_sample_holding_most_rows():
    with pytest.raises(ValueError, match="sample '0' holds 3 of 4 rows"):
        other_sample_pairing(np.array([0, 0, 0, 1]), np.random.default_rng(0))


def test_decoder_sums_r2_is_nan_for_a_constant_estimate():
    rng = np.random.default_rng(5)
    decoded = rng.normal(size=(6, *(1, 8, 8)))
    for constant in (0.0, 0.3):
        estimate = np.full((6, *(1, 8, 8)), constant)
        sums = DecoderAlignmentSums()
        for part in np.array_split(np.arange(6), 3):
            sums.update(decoded[part], estimate[part])
        assert np.isnan(sums.metrics()["r2"]) and np.isnan(decoder_alignment(decoded, estimate)["r2"])
        assert sums.metrics()["rel_error"] == pytest.approx(decoder_alignment(decoded, estimate)["rel_error"])
