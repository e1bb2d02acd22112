import numpy as np
import pytest

from lisa_probe.analysis.tables import circle_points, circular_r2, iter_factors, long_table, turns_of
from lisa_probe.data import circular_distance


def test_long_table_puts_ids_first_and_metric_value_last():
    rows = [
        {"method": "ridge", "metric": "r2", "value": 1, "control": "none"},
        {"method": "ridge", "control": "shuffled_pairs", "metric": "r2", "value": 0.0},
    ]
    table = long_table(rows, run="lisa", site="mid", t_bin=2)
    assert list(table.columns) == ["run", "site", "t_bin", "method", "control", "metric", "value"]
    assert table["value"].dtype == float
    assert (table["run"] == "lisa").all() and (table["t_bin"] == 2).all()


def test_long_table_method_may_come_from_ids():
    table = long_table([{"metric": "m", "value": 1.0}], method="x", run="a")
    assert list(table.columns) == ["method", "run", "metric", "value"]


def test_long_table_rejects_clashes_and_missing_columns():
    with pytest.raises(ValueError, match="also set"):
        long_table([{"method": "a", "metric": "m", "value": 1.0, "site": "x"}], site="y")
    with pytest.raises(ValueError, match="without"):
        long_table([{"metric": "m", "value": 1.0}])


def test_long_table_empty():
    table = long_table([], run="a")
    assert table.empty and list(table.columns) == ["run", "method", "metric", "value"]


def test_iter_factors_validates_kind():
    y = np.arange(4)
    assert [name for name, *_ in iter_factors({"a": (y, "categorical", 1)})] == ["a"]
    with pytest.raises(ValueError, match="kind"):
        list(iter_factors({"a": (y, "ordinal", True)}))


def test_circular_r2_closed_cases():
    """Distances around the circle: exact predictions score 1, the circular mean 0, a half-turn off is worse than
    the mean; 0.99 and 0.01 are 0.02 apart, not 0.98."""
    y = np.linspace(0, 1, 40, endpoint=False)
    assert circular_r2(y, y) == pytest.approx(1.0)
    assert circular_r2(y, (y + 0.5) % 1) < 0
    assert circular_distance(np.array([0.99, 0.25]), np.array([0.01, 0.75])) == pytest.approx([0.02, 0.5])
    wrapped = np.array([0.97, 0.99, 0.01, 0.03])  # predicting across the wrap: nearly right, not 0.98 off
    assert circular_r2(wrapped, (wrapped + 0.005) % 1) > 0.9
    assert np.isnan(circular_r2(np.full(5, 0.3), np.zeros(5)))
    np.testing.assert_allclose(turns_of(circle_points(y)), y, atol=1e-12)
