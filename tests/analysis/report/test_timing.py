"""Stage timing of an analysis (``analysis.report.timing``)."""

import time

import pytest

from lisa_probe.analysis.report.timing import StageTimes


def test_stages_sum_their_wall_time_in_first_run_order():
    times = StageTimes()
    with times.stage("b"):
        time.sleep(0.02)
    with times.stage("a"):
        pass
    with pytest.raises(RuntimeError), times.stage("b"):  # a failing body still counts
        time.sleep(0.02)
        raise RuntimeError
    assert list(times.seconds) == ["b", "a"]
    assert times.seconds["b"] >= 0.04 and times.seconds["a"] < 0.02
    lines = times.lines().splitlines()
    assert lines[0].startswith("b ") and lines[-1].startswith("total")
    assert float(lines[-1].split()[1]) == pytest.approx(sum(times.seconds.values()), abs=0.01)
