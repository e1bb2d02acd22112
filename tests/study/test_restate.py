"""Restating a finished study's onset tables from its curves (no runs needed)."""

import numpy as np
import pandas as pd
import pytest

from lisa_probe.study.onset import logistic
from lisa_probe.study.restate import main


def write_results(root, t50s: dict, last_step: int):
    """A results directory with runs.csv and curves.csv of logistic control curves (mask_iou) per (arm, seed)."""
    steps = np.arange(10, last_step + 1, 10)
    runs, curves = [], []
    for (arm, seed), t50 in t50s.items():
        run = f"s-{arm}-s{seed}"
        runs.append({"run": run, "setting": "s", "arm": arm, "seed": seed, "control_metric": "mask_iou"})
        curves += [{"run": run, "setting": "s", "arm": arm, "seed": seed, "step": int(step), "metric": "mask_iou",
                    "value": float(value)} for step, value in zip(steps, logistic(steps, t50, 15.0, 0.1, 0.7))]
    root.mkdir()
    pd.DataFrame(runs).to_csv(root / "runs.csv", index=False)
    pd.DataFrame(curves).to_csv(root / "curves.csv", index=False)
    return root


def test_restated_tables_pair_seeds_and_censor_onsets_beyond_the_last_step(tmp_path, capsys):
    observed = write_results(tmp_path / "observed", {("baseline", 0): 100.0, ("baseline", 1): 120.0,
                                                     ("lisa", 0): 110.0, ("lisa", 1): 126.0}, 400)
    early = write_results(tmp_path / "early", {("baseline", 0): 270.0, ("lisa", 0): 275.0}, 250)  # rising at 250
    assert main([str(observed), str(early)]) == 0
    paired = pd.read_csv(observed / "onset_paired.csv").iloc[0]
    assert paired["seeds"] == "0,1" and paired["ratio"] == pytest.approx(np.sqrt(1.1 * 1.05), rel=1e-3)
    censored = pd.read_csv(early / "onset.csv")
    assert list(censored["censored"]) == ["right", "right"] and censored["t50"].isna().all()
    assert "onset tables rewritten" in capsys.readouterr().out


def test_a_directory_that_is_not_a_study_result_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path)])
    assert stop.value.code == 2 and "lacks curves.csv, runs.csv" in capsys.readouterr().err
