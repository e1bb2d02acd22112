import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, KFold, cross_val_predict
from sklearn.preprocessing import StandardScaler

from lisa_probe.analysis.probes import (
    carried_summary,
    control_task_labels,
    probe_factor,
    probe_table,
    probe_with_selectivity,
)


@pytest.fixture
def shapes():
    """120 samples × 3 rows; features encode shape (3 classes) and size, not colour (4 classes)."""
    rng = np.random.default_rng(0)
    n_groups, reps = 120, 3
    groups = np.repeat(np.arange(n_groups), reps)
    shape = np.repeat(rng.integers(0, 3, n_groups), reps)
    size = np.repeat(rng.uniform(0, 1, n_groups), reps)
    colour = np.repeat(rng.integers(0, 4, n_groups), reps)
    n = n_groups * reps
    X = np.c_[2 * np.eye(3)[shape], 3 * size, rng.normal(size=(n, 6))] + 0.1 * rng.normal(size=(n, 10))
    return X, groups, {"shape": (shape, "categorical", True), "size": (size, "continuous", True),
                       "colour": (colour, "categorical", False)}


def test_probe_factor_known_answers(shapes):
    X, groups, factors = shapes
    assert probe_factor(X, factors["shape"][0], groups, "categorical") > 0.95
    assert probe_factor(X, factors["size"][0], groups, "continuous") > 0.9
    assert probe_factor(X, factors["colour"][0], groups, "categorical") < 0.4
    constant = np.ones_like(X)
    assert probe_factor(constant, factors["size"][0], groups, "continuous") <= 0.05


def test_probe_factor_matches_manual_loop(shapes):
    X, groups, factors = shapes
    y = factors["shape"][0]
    correct = 0
    for train, test in GroupKFold(5, shuffle=True, random_state=3).split(X, y, groups):
        scaler = StandardScaler().fit(X[train])
        model = LogisticRegression(max_iter=2000).fit(scaler.transform(X[train]), y[train])
        correct += (model.predict(scaler.transform(X[test])) == y[test]).sum()
    assert probe_factor(X, y, groups, "categorical", seed=3) == pytest.approx(correct / len(y))


@pytest.mark.parametrize("kind", ["categorical", "continuous"])
def test_control_task_labels(shapes, kind):
    _, groups, factors = shapes
    y = factors["shape" if kind == "categorical" else "size"][0]
    control = control_task_labels(y, groups, seed=1)
    assert control.shape == y.shape and control.dtype == y.dtype
    assert pd.Series(control).groupby(groups).nunique().eq(1).all()
    assert np.isin(control, y).all()
    assert not np.array_equal(control, y)
    np.testing.assert_array_equal(control, control_task_labels(y, groups, seed=1))
    if kind == "categorical":  # label distribution kept (up to sampling noise over 120 groups)
        np.testing.assert_allclose(np.bincount(control) / len(y), np.bincount(y) / len(y), atol=0.15)


def test_memorising_probe_on_random_labels_has_no_selectivity():
    rng = np.random.default_rng(1)
    n_groups, reps = 400, 2
    groups = np.repeat(np.arange(n_groups), reps)
    X = rng.normal(size=(n_groups, 32))[groups] + 0.05 * rng.normal(size=(n_groups * reps, 32))
    y = np.repeat(rng.integers(0, 4, n_groups), reps)
    result = probe_with_selectivity(X, y, groups, "categorical")
    assert result["task"] == pytest.approx(0.25, abs=0.08) and result["control"] == pytest.approx(0.25, abs=0.08)
    assert abs(result["selectivity"]) < 0.1


@pytest.mark.parametrize("kind", ["categorical", "continuous"])
def test_control_is_at_chance_even_for_features_that_identify_every_sample(kind):
    """Features = the sample's one-hot identity (plus a little noise per row): a probe memorises the control
    labels when folds split samples, but with folds grouped by sample the control is at chance."""
    rng = np.random.default_rng(2)
    n_groups, reps = 200, 3
    groups = np.repeat(np.arange(n_groups), reps)
    X = 3 * np.eye(n_groups)[groups] + 0.01 * rng.normal(size=(n_groups * reps, n_groups))
    y = np.repeat(rng.integers(0, 4, n_groups) if kind == "categorical" else rng.normal(size=n_groups), reps)
    control = control_task_labels(y, groups, seed=0)
    if kind == "categorical":
        memorised = cross_val_predict(LogisticRegression(max_iter=2000), X, control, cv=KFold(5, shuffle=True,
                                                                                               random_state=0))
        assert np.mean(memorised == control) > 0.9  # rows of a test sample seen in training: memorised
    result = probe_with_selectivity(X, y, groups, kind)
    if kind == "categorical":  # between uniform guessing and always the majority class
        assert 0.25 - 0.06 <= result["control"] <= np.max(np.bincount(control)) / len(y) + 0.06
    else:  # no better than predicting the mean
        assert result["control"] <= 0.05
    assert result["selectivity"] == pytest.approx(result["task"] - result["control"])


def test_probe_table_and_carried_summary(shapes):
    X, groups, factors = shapes
    table = probe_table(X, factors, groups, run="lisa", site="mid")
    assert list(table.columns) == ["run", "site", "method", "factor", "kind", "carried", "score", "metric", "value"]
    assert len(table) == 9
    selectivity = table[table.metric == "selectivity"].set_index("factor")["value"]
    assert selectivity["shape"] > 0.5 and selectivity["size"] > 0.8 and abs(selectivity["colour"]) < 0.15

    summary = carried_summary(table)
    assert list(summary.columns) == ["run", "site", "method", "score", "metric", "contrast", "value", "n_factors"]
    logistic = summary[(summary.method == "logistic") & (summary.metric == "selectivity")].set_index("contrast")
    assert logistic.loc["carried", "value"] == pytest.approx(selectivity["shape"])
    assert logistic.loc["not_carried", "value"] == pytest.approx(selectivity["colour"])
    assert logistic.loc["carried_minus_not", "value"] == pytest.approx(selectivity["shape"] - selectivity["colour"])
    ridge = summary[(summary.method == "ridge") & (summary.metric == "selectivity")].set_index("contrast")
    assert ridge["n_factors"].to_dict() == {"carried": 1, "not_carried": 0, "carried_minus_not": 0}
    assert np.isnan(ridge.loc["carried_minus_not", "value"])


def test_carried_summary_averages_factors_and_skips_aggregates():
    table = pd.DataFrame({
        "run": "a", "method": "m", "factor": ["f", "g", "h", "all"], "carried": [True, True, False, None],
        "metric": "task", "value": [1.0, 0.5, 0.25, 9.0],
    })
    value = carried_summary(table).set_index("contrast")["value"]
    assert value.to_dict() == {"carried": 0.75, "not_carried": 0.25, "carried_minus_not": 0.5}


def test_a_circular_factor_is_probed_around_the_circle():
    """Features that hold the rotation as (cos, sin): the circular probe reads it almost perfectly, a linear probe
    of the raw value cannot (the jump from 0.99 to 0); the table names the circular method and score."""
    rng = np.random.default_rng(0)
    n = 300
    turns = rng.random(n)
    X = np.column_stack([np.cos(2 * np.pi * turns), np.sin(2 * np.pi * turns), rng.normal(size=(n, 2))])
    groups = np.arange(n) // 2
    assert probe_factor(X, turns, groups, "circular") > 0.98
    assert probe_factor(X, turns, groups, "continuous") < 0.8
    table = probe_table(X, {"rotation": (turns, "circular", True)}, groups)
    assert set(table["method"]) == {"ridge_circular"} and set(table["score"]) == {"circular_r2"}
    assert table.query("metric == 'control'")["value"].item() < 0.1
