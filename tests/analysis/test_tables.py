import numpy as np
import pytest

from lisa_probe.analysis.tables import iter_factors, long_table


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
