"""The run summary's convergence step at real thresholds."""

import pytest

from lisa_probe.training.control_evaluation import convergence_step, summary_lines

EVALUATIONS = {100: {"edge_f1": 0.12}, 25: {"edge_f1": 0.05}, 50: {"edge_f1": 0.49}, 75: {"edge_f1": 0.5},
               125: {"edge_f1": 0.71, "mask_iou": 0.4}}


@pytest.mark.parametrize("threshold,step", [(0.5, 75), (0.49, 50), (0.500001, 125), (0.71, 125), (0.72, None),
                                            (0.06, 50)])
def test_first_evaluation_that_reaches_the_threshold(threshold, step):
    """Steps are taken in order whatever the dict's order; reaching means >=; a later dip (0.12 at 100 after 0.5 at
    75) does not undo it."""
    assert convergence_step(EVALUATIONS, "edge_f1", threshold) == step


def test_a_metric_that_is_missing_or_absent_never_converges():
    assert convergence_step(EVALUATIONS, "mask_iou", 0.3) == 125  # only evaluated at the last step
    assert convergence_step(EVALUATIONS, "mask_iou", 0.5) is None
    assert convergence_step(EVALUATIONS, None, 0.0) is None  # a condition kind without a control metric
    assert convergence_step({}, "edge_f1", 0.0) is None


def test_the_console_summary_has_the_same_lines_with_and_without_an_evaluation():
    evaluated = {"steps": 600, "seconds_per_step": 0.41, "control_metric": "edge_f1", "convergence_threshold": 0.5,
                 "convergence_step": 100, "final": {"edge_f1": 0.72, "mask_iou": 0.51}}
    lines = summary_lines(evaluated)
    assert lines == ["steps: 600 (0.41 s/step)", "convergence (edge_f1 >= 0.5: step 100)",
                     "final: edge_f1 0.72, mask_iou 0.51"]
    bare = summary_lines({**evaluated, "convergence_step": None, "final": {}})
    assert len(bare) == len(lines) and bare[1] == "convergence (edge_f1 >= 0.5: not reached)"
    assert bare[2] == "final: not evaluated (--eval-samples 0)"
