"""``analysis.intervals``: the 95 % t-interval against scipy's."""

import numpy as np
import pytest
from scipy import stats

from lisa_probe.analysis import intervals

RNG = np.random.default_rng(0)


def test_t_interval_against_scipy():
    values = RNG.normal(size=7)
    mean, half, n = intervals.t_interval(np.r_[values, np.nan])
    low, high = stats.t.interval(0.95, 6, loc=values.mean(), scale=stats.sem(values))
    assert n == 7 and mean == pytest.approx(values.mean()) and half == pytest.approx((high - low) / 2)
    assert np.isnan(intervals.t_interval([1.0])[1]) and intervals.t_interval([])[2] == 0
