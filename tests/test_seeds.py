"""Derived seeds: one table, the formulas every stream used before the table existed."""

import pytest

from lisa_probe.seeds import PURPOSES, derive_seed


@pytest.mark.parametrize("purpose,index,expected", [
    ("process", 3, 7 * 1_000_003 + 3), ("zero_init", 0, 7 * 1_000_003 + 7), ("cond_gate_init", 0, 7 * 1_000_003 + 11), ("row_noise", 11, 7 * 1_000_003 + 11),
    ("data_order", 2, 7 * 100_003 + 2), ("main_eval", 0, 8), ("probe", 0, 7 + 4242), ("side_eval", 0, 7 + 12345)])
def test_each_stream_keeps_its_original_formula(purpose, index, expected):
    assert derive_seed(7, purpose, index) == expected


def test_the_table_names_every_purpose_and_refuses_others():
    assert set(PURPOSES) == {"process", "zero_init", "cond_gate_init", "row_noise", "data_order", "main_eval", "probe",
                             "side_eval", "validation_pairs"}
    with pytest.raises(ValueError, match="unknown seed purpose 'noise'; known: process"):
        derive_seed(0, "noise")
