"""``data.factor_table``: factor cells by row id from CSV and parquet tables, typed over the whole column, matched
to sample ids whole or by their last part; duplicate ids and empty or non-finite cells refused by name."""

import pandas as pd
import pytest

from lisa_probe.data.factor_table import table_factors


def test_parquet_and_csv_give_the_same_factors(tmp_path):
    frame = pd.DataFrame({"sample_id": ["000001", "000002", "shapes/val/000003"], "weight": [0.5, 1.5, 2.0],
                          "colour": ["red", "blue", "red"], "count": [3, 1, 3]})
    frame.to_parquet(tmp_path / "t.parquet")
    frame.to_csv(tmp_path / "t.csv", index=False)
    found = []
    for name in ("t.parquet", "t.csv"):
        table = table_factors(tmp_path / name, ["weight", "colour", "count"])
        specs, levels = table.specs(carried=["colour"])
        values = table.values_for(["shapes/val/000002", "shapes/val/000003", "shapes/val/000001"], levels)
        found.append((specs, values))
        assert [specs[c].kind for c in ("weight", "colour", "count")] == ["continuous", "categorical", "categorical"]
        assert specs["colour"].levels == ("blue", "red") and specs["colour"].carried and not specs["count"].carried
        assert values["colour"] == {"shapes/val/000002": 0, "shapes/val/000003": 1, "shapes/val/000001": 1}
        assert values["count"]["shapes/val/000002"] == 0 and values["weight"]["shapes/val/000003"] == 2.0
    assert [v for _, v in found][0] == [v for _, v in found][1]


@pytest.mark.parametrize("text, message", [
    ("sample_id,w\na,1\na,2\n", "id 'a' is on two rows"),
    ("sample_id,w\na,1\nb,\n", "row 'b' has no finite value in column 'w'"),
    ("sample_id,w\na,1\nb,inf\n", "row 'b' has no finite value in column 'w'"),
])
def test_bad_tables_are_refused_by_row(tmp_path, text, message):
    (tmp_path / "t.csv").write_text(text)
    with pytest.raises(ValueError, match=message):
        table_factors(tmp_path / "t.csv", ["w"])
