"""Which rows an analysis reads (``analysis.selection``)."""



from types import SimpleNamespace

import numpy as np
import pytest

from lisa_probe.analysis.report.selection import arm_names, grid_bins, select_rows


def test_timestep_bins_and_row_selection():
    bins, bin_t = grid_bins(np.array([1.0, 2.0, 3.0, 4.0]), 2)
    np.testing.assert_array_equal(bins, [0, 0, 1, 1])
    np.testing.assert_allclose(bin_t, [1.5, 3.5])
    np.testing.assert_array_equal(grid_bins(np.array([1.0, 5.0]), None)[0], [0, 1])
    np.testing.assert_array_equal(grid_bins(np.array([1.0, 5.0]), 7)[0], [0, 1])  # no more bins than timesteps
    ids = np.repeat([f"s{i}" for i in range(10)], 3)
    rows = select_rows(ids, 16, 5, seed=0)
    assert len(rows) == 15 and all((ids[rows] == s).sum() == 3 for s in np.unique(ids[rows]))
    np.testing.assert_array_equal(select_rows(ids, None, 5, 0), np.arange(30))
    with pytest.raises(ValueError, match="cross-validation needs at least 5"):
        select_rows(ids, 10, 5, 0)


def test_runs_that_differ_only_in_seed_form_an_arm():
    def run(label, **config):
        return SimpleNamespace(label=label, store=SimpleNamespace(attrs={"config": config}))

    runs = [run("lisa-s0", lisa_weight=0.2, seed=0, name="a", steps=10), run("lisa-s1", lisa_weight=0.2, seed=1,
            name="b", steps=20), run("base-s0", lisa_weight=0.0, seed=0), run("base-s1", lisa_weight=0.0, seed=1),
            run("x", lisa_weight=0.5, seed=0), run("y", lisa_weight=0.5, seed=1), run("solo", lisa_weight=1.0)]
    assert arm_names(runs) == {"lisa-s0": "lisa", "lisa-s1": "lisa", "base-s0": "base", "base-s1": "base",
                               "x": "x+y", "y": "x+y", "solo": "solo"}
