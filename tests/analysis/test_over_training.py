"""``analysis.over_training``: per-checkpoint probes, alignment and CKA on a store whose later block encodes a factor
and the estimate, the earlier one noise; the command line marks the run's onset."""

import json

import numpy as np
import pandas as pd
import pytest

from lisa_probe.analysis.over_training import over_training_table, plot_over_training, step_blocks
from lisa_probe.over_training import main
from lisa_probe.store import FeatureStore, FeatureStoreWriter, make_layout

N = 60  # samples per block, one row each


def write_steps_store(path, run: str = "") -> None:
    rng = np.random.default_rng(0)
    factor = rng.uniform(size=N)
    kind = rng.integers(0, 2, N)
    main_ = rng.normal(size=(N, 2, 4, 4))
    delta = rng.normal(size=(N, 2, 1, 1)) * np.ones((1, 1, 4, 4))
    layout = make_layout({"s": (4, 4, 4)}, (2, 4, 4), {"f": {"kind": "continuous", "carried": True},
                                                       "k": {"kind": "categorical", "carried": False}},
                         feature_dtype="float32", steps=True)
    attrs = {"config": {}, "checkpoint": "c", "checkpoint_hash": "h", "code_version": "t", "parameterization": "eps",
             "extract_args": {}, "run": run}
    blocks = []
    for step, signal in ((10, 0.0), (20, 1.0)):
        features = rng.normal(size=(N, 4, 4, 4)) * 0.1
        features[:, 0] += signal * factor[:, None, None]
        features[:, 1] += signal * delta[:, 0]
        features[:, 3] += signal * delta[:, 1]
        features[:, 2] += signal * kind[:, None, None]
        blocks.append({"meta/sample_id": [f"s{i}" for i in range(N)], "meta/t": np.full(N, 100.0),
                       "meta/noise_level": np.ones(N), "meta/draw": np.zeros(N, dtype=np.int32),
                       "meta/step": np.full(N, step), "meta/factors/f": factor, "meta/factors/k": kind,
                       "features/s": features, "scores/target": main_, "scores/main": main_,
                       "scores/full": main_ + delta})
    with FeatureStoreWriter(path, layout, 2 * N, attrs) as writer:
        for index, block in enumerate(blocks):
            writer.write_rows(index * N, block)


def test_probes_alignment_and_cka_rise_where_the_features_learned(tmp_path):
    write_steps_store(tmp_path / "s.h5")
    store = FeatureStore(tmp_path / "s.h5")
    assert {step: len(rows) for step, rows in step_blocks(store).items()} == {10: N, 20: N}
    table = over_training_table(store).set_index(["step", "metric"])["value"]
    assert table[20, "probe/f"] > 0.9 > 0.2 > table[10, "probe/f"]
    assert table[20, "probe/k"] == pytest.approx(1.0) and table[10, "probe/k"] < 0.8
    assert table[20, "alignment_r2"] > 0.9 > 0.2 > table[10, "alignment_r2"]
    assert table[20, "cka_to_final"] == pytest.approx(1.0) and table[10, "cka_to_final"] < 0.5
    figure = plot_over_training(over_training_table(store), t50=15.0)
    assert len(figure.axes) == 4 and all(any(line.get_label() == "onset t50" for line in ax.lines)
                                         for ax in figure.axes)


def test_the_command_marks_the_runs_onset(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"control_metric": "edge_f1"}))
    steps = np.arange(0, 100, 10)
    values = 0.1 + 0.5 / (1 + np.exp(-(steps - 45) / 4))
    pd.DataFrame({"step": steps, "metric": "edge_f1", "value": values}).to_csv(run / "eval.csv", index=False)
    write_steps_store(tmp_path / "s.h5", run="run")
    assert main([str(tmp_path / "s.h5"), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "onset of edge_f1 at t50 = 45" in printed and "s: alignment R²" in printed
    record = json.loads((tmp_path / "out" / "over_training.json").read_text())
    assert record["t50"] == pytest.approx(45, abs=1) and (tmp_path / "out" / "over_training.png").exists()
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path / "s.h5"), "--out", str(tmp_path / "x"), "--sites", "nope"])
    assert stop.value.code == 2 and "unknown site(s) ['nope']" in capsys.readouterr().err
