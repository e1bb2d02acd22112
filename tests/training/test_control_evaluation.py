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
    assert bare[2] == "final: no metrics (not evaluated: --eval-samples 0; or no control metric and no factors)"


def test_validation_pairs_are_sampled_scored_and_drawn_beside_the_split(tmp_path):
    """Two conditioning images of one's own (the val split's masks saved as PNG files): their control fidelity is
    logged as validation_pairs/<metric>, they are the grid's last columns, and the split's own metrics are those of
    the same run without them (the split keeps its noise; the batch grows by two, which moves the samples by float
    noise: measured up to 1.3e-5 in a read-back error and 5e-6 of FD, hence 1e-4 relative)."""
    from PIL import Image

    from lisa_probe.data import build_dataset
    from lisa_probe.rundir import read_eval
    from lisa_probe.training.side_net import train
    from tests.training.test_side_net import tiny_config

    val = build_dataset("shapes", split="val", resolution=16, condition="mask")
    paths = []
    for i in (5, 6):
        paths.append(tmp_path / f"mask{i}.png")
        Image.fromarray((val[i]["cond"][0].numpy() * 255).astype("uint8"), mode="L").save(paths[-1])
    common = dict(steps=1, eval_samples=3, condition="mask")
    plain = read_eval(train(tiny_config(tmp_path, name="plain", **common)))[1]
    run = train(tiny_config(tmp_path, name="pairs", validation_image=[str(path) for path in paths], **common))
    found = read_eval(run)[1]
    assert 0 <= found["validation_pairs/mask_iou"] <= 1 and "validation_pairs/edge_f1" in found
    for metric, value in plain.items():
        assert abs(found[metric] - value) <= 1e-4 * max(1.0, abs(value)), metric
    assert Image.open(run / "samples" / "step-1.png").width == 64 + (3 + 2) * (16 * 2 + 2)
