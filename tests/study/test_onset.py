"""The onset fit against curves with a known onset."""

import math

import numpy as np
import pytest

from lisa_probe.study.onset import MIN_RISE, first_step_above, fit_onset, logistic
from lisa_probe.training.onset_probe import onset_signals


@pytest.mark.parametrize("t50,width", [(300.0, 20.0), (150.0, 30.0), (900.0, 5.0)])
def test_the_fit_finds_a_known_onset(t50, width):
    """Noisy samples of a logistic every 25 steps: t50 within a tenth of the evaluation interval's reach, the
    plateaus within the noise."""
    rng = np.random.default_rng(0)
    steps = np.arange(25, 1201, 25, dtype=float)
    fidelity = logistic(steps, t50, width, 0.1, 0.7) + rng.normal(0, 0.01, len(steps))
    onset = fit_onset(steps, fidelity)
    assert onset.found
    assert onset.t50 == pytest.approx(t50, abs=max(0.1 * t50, 12.5))
    assert onset.low == pytest.approx(0.1, abs=0.03) and onset.high == pytest.approx(0.7, abs=0.03)


def test_a_flat_curve_has_no_onset():
    steps = np.arange(25, 601, 25, dtype=float)
    flat = 0.1 + np.random.default_rng(1).normal(0, 0.01, len(steps))
    onset = fit_onset(steps, flat)
    assert not onset.found and math.isnan(onset.width) and onset.high - onset.low < MIN_RISE
    with pytest.raises(ValueError, match="at least 4 evaluated steps"):
        fit_onset(steps[:3], flat[:3])


def test_first_step_above():
    steps = np.array([25, 50, 75, 100])
    fidelity = np.array([0.1, 0.3, 0.6, 0.5])
    assert first_step_above(steps, fidelity, 0.5) == 75 and math.isnan(first_step_above(steps, fidelity, 0.9))


def test_onset_signals_closed_cases():
    """Zero residuals explain nothing (0); a side branch that predicts the target explains all of the main net's
    error (1), with its estimate along the oracle's (cosine 1); the opposite direction gives cosine -1."""
    rng = np.random.default_rng(0)
    target, main = rng.normal(size=(6, 2, 4, 4)), rng.normal(size=(6, 2, 4, 4))
    assert onset_signals(target, main, main) == {"explained": 0.0, "cosine": 0.0}
    perfect = onset_signals(target, target, main)
    assert perfect["explained"] == pytest.approx(1.0) and perfect["cosine"] == pytest.approx(1.0)
    half = onset_signals(target, main + 0.5 * (target - main), main)
    assert half["explained"] == pytest.approx(0.75) and half["cosine"] == pytest.approx(1.0)
    assert onset_signals(target, main - (target - main), main)["cosine"] == pytest.approx(-1.0)
    assert math.isnan(onset_signals(main, main, main)["explained"])


@pytest.mark.parametrize("last_step,expected", [(200, "right"), (250, "right"), (1200, "")])
def test_an_onset_still_to_come_is_right_censored_never_a_number_at_the_bound(last_step, expected):
    """A curve with its onset at step 300 (width 60) evaluated to step 200 or 250 is still rising at its last step:
    censored, t50 NaN (the bounded fit used to return the last step); evaluated to 1200 the onset is observed. One
    that has not yet risen by MIN_RISE has no onset, also NaN."""
    steps = np.arange(10, last_step + 1, 10, dtype=float)
    fidelity = logistic(steps, 300.0, 60.0, 0.1, 0.7) + np.random.default_rng(2).normal(0, 0.005, len(steps))
    onset = fit_onset(steps, fidelity)
    assert onset.censored == expected
    if expected:
        assert math.isnan(onset.t50) and not onset.found
    else:
        assert onset.t50 == pytest.approx(300.0, abs=15)
    early = fit_onset(steps[:6], fidelity[:6])
    assert math.isnan(early.t50) and early.high - early.low < MIN_RISE


def test_an_onset_before_the_first_step_is_left_censored():
    steps = np.arange(100, 1001, 50, dtype=float)
    fidelity = logistic(steps, 60.0, 40.0, 0.1, 0.7)
    onset = fit_onset(steps, fidelity, min_rise=0.0)
    assert onset.censored == "left" and math.isnan(onset.t50)
