"""Which rows an analysis reads (``analysis.selection``)."""



import numpy as np
import pytest

from lisa_probe.analysis.report.selection import grid_bins, select_rows


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
