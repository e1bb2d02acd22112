"""Sanity cases copied from disentanglement_lib's dci_test.py, mig_test.py and sap_score_test.py."""

import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.model_selection import GroupShuffleSplit

from lisa_probe.analysis.disentanglement import (
    dci,
    dci_completeness,
    dci_disentanglement,
    disentanglement_table,
    histogram_discretize,
    mig,
    mig_per_factor,
    mutual_information,
    reduce_features,
    sap,
)

ONE_OF_TWO = 1 - np.log(2) / np.log(10)
DIAGONAL = np.diag(5.0 * np.ones(5))
IMPORTANCE_CASES = {  # name: (importance matrix (codes, factors), disentanglement, completeness)
    "diagonal": (DIAGONAL, 1.0, 1.0),
    "diagonal_empty_codes": (np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]), 1.0, 1.0),
    "zero": (np.zeros((10, 10)), 0.0, 0.0),
    "redundant_codes": (np.vstack([DIAGONAL, DIAGONAL]), 1.0, ONE_OF_TWO),
    "missed_factors": (DIAGONAL[:2, :], 1.0, 1.0),
    "one_code_two_factors": (np.hstack([DIAGONAL, DIAGONAL]), ONE_OF_TWO, 1.0),
}


@pytest.mark.parametrize("case", IMPORTANCE_CASES)
def test_dci_scores_of_analytic_importance_matrices(case):
    importance, disentanglement, completeness = IMPORTANCE_CASES[case]
    np.testing.assert_allclose(dci_disentanglement(importance), disentanglement, atol=1e-7)
    np.testing.assert_allclose(dci_completeness(importance), completeness, atol=1e-7)


@pytest.fixture
def identity():
    """IdentityObservationsData analogue: 3 discrete factors with 4 values each, codes = factors."""
    factors = np.random.default_rng(0).integers(0, 4, size=(600, 3))
    return factors.astype(np.float64), factors, np.arange(600)


def test_dci_identity_permuted_and_duplicated_codes(identity):
    codes, factors, groups = identity
    good = dci(codes, factors, groups)
    assert 0.9 <= good.disentanglement <= 1.0 and 0.9 <= good.completeness <= 1.0
    assert good.informativeness > 0.95 and good.importance.shape == (3, 3)

    rng = np.random.default_rng(1)  # every row's code permuted at random: equal importance everywhere
    bad = dci(np.array([rng.permutation(row) for row in codes]), factors, groups)
    assert 0.0 <= bad.disentanglement <= 0.2 and 0.0 <= bad.completeness <= 0.2

    duplicated = dci(np.hstack([codes, codes]), factors, groups)
    assert 0.9 <= duplicated.disentanglement <= 1.0
    assert duplicated.completeness == pytest.approx(1 - np.log(2) / np.log(6), abs=0.1)


def test_dci_lasso_importance(identity):
    codes, factors, groups = identity
    good = dci(codes + 0.01 * np.random.default_rng(2).normal(size=codes.shape), factors, groups, importance="lasso")
    assert good.disentanglement > 0.9 and good.completeness > 0.9 and good.informativeness > 0.95
    continuous = dci(codes, codes, groups, kinds=["continuous"] * 3, importance="lasso")
    assert continuous.disentanglement > 0.9 and continuous.informativeness > 0.99
    with pytest.raises(ValueError, match=r"importance must be one of \('gbt', 'lasso'\), got 'forest'"):
        dci(codes, factors, groups, importance="forest")


def test_unknown_factor_kinds_are_refused(identity):
    codes, factors, groups = identity
    kinds = ["categorical", "ordinal", "continuous"]
    message = r"factor kinds must be one of \('categorical', 'continuous', 'circular'\), got \['ordinal'\]"
    for metric in (lambda: dci(codes, factors, groups, kinds, importance="lasso"),
                   lambda: mig(codes, factors, kinds), lambda: sap(codes, factors, groups, kinds)):
        with pytest.raises(ValueError, match=message):
            metric()


def test_mig(identity):
    codes, factors, _ = identity
    assert 0.9 <= mig(codes, factors) <= 1.0
    assert 0.9 <= mig(codes[:, [2, 0, 1]], factors) <= 1.0  # permuting codes keeps MIG
    assert 0.0 <= mig(np.zeros_like(codes), factors) <= 0.2
    assert 0.0 <= mig(np.hstack([codes, codes]), factors) <= 0.1


def test_mig_matches_contingency_table():
    rng = np.random.default_rng(3)
    factors = rng.integers(0, 3, size=(500, 2))
    codes = np.c_[factors[:, 0] + 0.3 * rng.normal(size=500), rng.normal(size=500), factors[:, 1] * 1.0]

    def mutual_info(a, b):
        joint = np.zeros((a.max() + 1, b.max() + 1))
        np.add.at(joint, (a, b), 1)
        joint /= joint.sum()
        outer = joint.sum(1, keepdims=True) * joint.sum(0, keepdims=True)
        nz = joint > 0
        return np.sum(joint[nz] * np.log(joint[nz] / outer[nz]))

    binned = histogram_discretize(codes, 20)
    expected = []
    for y in factors.T:
        mi = sorted((mutual_info(c, y) for c in binned.T), reverse=True)
        expected.append((mi[0] - mi[1]) / mutual_info(y, y))
    np.testing.assert_allclose(mig_per_factor(codes, factors), expected, rtol=1e-10)


def test_mutual_information_is_sklearns_mutual_info_score():
    from sklearn.metrics import mutual_info_score

    rng = np.random.default_rng(4)
    for n, levels in ((7, 2), (200, 5), (500, 40)):
        a = rng.integers(0, levels, n)
        for b in (rng.integers(0, levels + 3, n) - 2, a * 3 + 1, np.zeros(n), a.astype(str)):
            assert mutual_information(a, b) == pytest.approx(mutual_info_score(a, b), abs=1e-12)


def test_sap(identity):
    codes, factors, groups = identity
    continuous = ["continuous"] * 3
    assert 0.9 <= sap(codes, factors, groups, continuous) <= 1.0
    assert 0.0 <= sap(np.zeros_like(codes), factors, groups, continuous) <= 0.2
    assert 0.0 <= sap(np.hstack([codes, codes]), factors, groups, continuous) <= 0.2
    assert 0.0 <= sap(np.zeros_like(codes), factors, groups) <= 0.2
    binary = factors % 2
    assert sap(binary.astype(float), binary, groups) > 0.4  # 1-D SVM: 1.0 for the matching code, ~0.5 for others


def test_reduce_features():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(100, 3)) @ rng.normal(size=(3, 20))
    Z = reduce_features(X, 5, seed=0)
    assert Z.shape == (100, 5)
    assert np.allclose(Z[:, 3:], 0, atol=1e-8)  # rank 3
    assert reduce_features(X[:4], 10).shape == (4, 4)


def test_pca_is_fitted_on_the_training_rows_only():
    rng = np.random.default_rng(5)
    groups = np.repeat(np.arange(100), 3)
    factors = np.repeat(rng.integers(0, 3, size=(100, 2)), 3, axis=0)
    X = np.c_[factors, np.zeros((300, 6))] @ rng.normal(size=(8, 8)) + 0.3 * rng.normal(size=(300, 8))
    named = {"a": (factors[:, 0], "categorical", True), "b": (factors[:, 1], "categorical", False)}
    train, test = next(GroupShuffleSplit(1, test_size=0.3, random_state=0).split(X, groups=groups))
    codes = PCA(3, random_state=0).fit(X[train]).transform(X)
    np.testing.assert_allclose(reduce_features(X, 3, fit_rows=train), codes, atol=1e-10)
    table = disentanglement_table(X, named, groups, importance="lasso", pca_components=3)
    expected = disentanglement_table(codes, named, groups, importance="lasso")
    np.testing.assert_allclose(table["value"], expected["value"], atol=1e-6)
    # held-out rows cannot move the codes of the training rows, on which DCI's and SAP's models are fitted
    moved = X.copy()
    moved[test] += 50.0 * rng.normal(size=(len(test), 1)) * rng.normal(size=8)
    np.testing.assert_allclose(reduce_features(moved, 3, fit_rows=train)[train], codes[train], atol=1e-10)
    leaky = reduce_features(moved, 3)  # a PCA fitted on all rows: the held-out rows reshape every code
    assert not np.allclose(np.abs(leaky[train]), np.abs(codes[train]), atol=1e-3)


def test_disentanglement_table(identity):
    codes, factors, groups = identity
    named = {
        "shape": (factors[:, 0], "categorical", True),
        "size": (factors[:, 1] + 0.1, "continuous", True),
        "colour": (factors[:, 2], "categorical", False),
    }
    table = disentanglement_table(codes, named, groups, importance="lasso", run="lisa", t_bin=0)
    assert list(table.columns) == ["run", "t_bin", "method", "factor", "kind", "carried", "flag", "metric",
                                   "value"]
    assert len(table) == 4 * 3 + 5
    aggregate = table[table.factor == "all"].set_index("metric")["value"]
    assert aggregate["disentanglement"] > 0.9 and aggregate["mig"] > 0.9
    assert table[table.factor != "all"]["carried"].tolist() == [True, True, False] * 4


@pytest.mark.parametrize("importance", ["gbt", "lasso"])
def test_codes_independent_of_the_factors_have_no_disentanglement(importance):
    """Pure-noise codes: no factor is predicted above chance, so no importance counts and D, C are NaN (LassoCV's
    few tiny coefficients used to make D = 1.0)."""
    rng = np.random.default_rng(0)
    n = 600
    groups = np.arange(n)
    factors = np.column_stack([rng.integers(0, 3, n), rng.normal(size=n)])
    result = dci(rng.normal(size=(n, 4)), factors, groups, ["categorical", "continuous"], importance=importance)
    assert np.isnan(result.disentanglement) and np.isnan(result.completeness)
    assert np.isnan(result.completeness_per_factor).all() and not result.importance.any()
    assert result.informativeness_per_factor[1] <= 0  # held-out R² of noise


@pytest.mark.parametrize("importance,draws", [("gbt", 8), ("lasso", 30)])
def test_pure_noise_codes_are_never_scored_as_disentangled_over_many_draws(importance, draws):
    """Over many noise draws (where a factor's held-out R² is sometimes above 0 by luck), the significance gate keeps
    every draw's disentanglement NaN (fewer than two factors predicted) and any completeness NaN; a factor that does
    pass by luck holds a p-value within the Bonferroni level."""
    kinds = ["categorical", "continuous", "continuous", "circular"]
    lucky = 0
    for draw in range(draws):
        rng = np.random.default_rng(100 + draw)
        n = 240
        factors = np.column_stack([rng.integers(0, 3, n), rng.normal(size=n), rng.normal(size=n), rng.random(n)])
        result = dci(rng.normal(size=(n, 6)), factors, np.arange(n), kinds, importance=importance, seed=draw)
        assert np.isnan(result.disentanglement), (draw, result)
        lucky += int(result.importance.any())
    assert lucky <= max(1, draws // 10)


def test_dci_needs_two_predicted_factors_for_disentanglement():
    """One informative factor beside noise: completeness is scored, disentanglement is NaN (with one factor every
    code trivially serves one factor); two informative factors in separate codes: D near 1."""
    rng = np.random.default_rng(0)
    n = 400
    a, b, noise = rng.normal(size=n), rng.normal(size=n), rng.normal(size=n)
    codes = np.column_stack([a + 0.05 * rng.normal(size=n), b + 0.05 * rng.normal(size=n), rng.normal(size=n)])
    one = dci(codes, np.column_stack([a, noise]), np.arange(n), ["continuous"] * 2, importance="lasso")
    assert np.isnan(one.disentanglement) and one.completeness > 0.8
    two = dci(codes, np.column_stack([a, b]), np.arange(n), ["continuous"] * 2, importance="lasso")
    assert two.disentanglement > 0.9 and two.completeness > 0.9


def test_circular_factors_are_scored_around_the_circle():
    """A closed case: code 0 is the rotation's point on the circle folded into one number (cos), code 1 its sin,
    code 2 noise. Treated as circular, DCI predicts the rotation almost perfectly from codes 0-1 and SAP's best
    code explains most of it; treated as linear, the wrap from 0.99 to 0 breaks both."""
    rng = np.random.default_rng(0)
    n = 800
    turns = rng.random(n)
    codes = np.column_stack([np.cos(2 * np.pi * turns), np.sin(2 * np.pi * turns), rng.normal(size=n)])
    groups = np.arange(n)
    circular = dci(codes, turns[:, None], groups, ["circular"], importance="lasso")
    linear = dci(codes, turns[:, None], groups, ["continuous"], importance="lasso")
    assert circular.informativeness > 0.99 and linear.informativeness < 0.8
    assert circular.importance[2, 0] < 0.05 * circular.importance[:2, 0].min()
    assert sap(codes, turns[:, None], groups, ["circular"]) < 0.1  # cos and sin each explain half: no gap
    assert sap(codes[:, [0, 2]], turns[:, None], groups, ["circular"]) > 0.4


def test_degenerate_values_are_flagged(monkeypatch):
    """A DCI disentanglement beside a negligible completeness (or informativeness) and every NaN get a flag."""
    from lisa_probe.analysis import disentanglement as module

    rng = np.random.default_rng(5)
    codes, groups = rng.normal(size=(60, 4)), np.repeat(np.arange(30), 2)
    factors = {"a": (rng.integers(0, 2, 60), "categorical", True), "b": (rng.normal(size=60), "continuous", False)}
    for completeness, informativeness, expected in ((0.08, 0.5, "negligible completeness"), (0.5, 0.05,
                                                    "negligible informativeness"), (0.5, 0.5, "")):
        result = module.DCIResult(1.0, completeness, informativeness, np.ones((4, 2)), np.array([0.1, np.nan]),
                                  np.array([0.5, 0.5]))
        monkeypatch.setattr(module, "dci", lambda *args, result=result, **kwargs: result)
        table = disentanglement_table(codes, factors, groups, importance="lasso")
        flags = table.set_index(["method", "factor", "metric"])["flag"]
        assert flags["dci", "all", "disentanglement"] == expected
        assert flags["dci", "b", "completeness"] == "undefined" and flags["dci", "a", "completeness"] == ""
        assert list(table.columns[-3:]) == ["flag", "metric", "value"]
