"""The notebooks' runs and stores: named ones kept (missing ones an error), runs read from named stores, tiny
ones built only when nothing is named."""

import shutil
from pathlib import Path

import pytest

from lisa_probe.demo_runs import runs_and_stores
from lisa_probe.store import FeatureStore

TINY = dict(lisa_weight=0.2, steps=1, samples=2, timesteps="1", decompose=False)


def test_tiny_runs_then_the_runs_of_named_stores(tmp_path):
    runs, stores = runs_and_stores([], [], tmp_path / "work", **TINY)
    assert [r.rsplit("-", 2)[-2] for r in runs] == ["baseline", "lisa0.2"]
    assert [FeatureStore(s).attrs["extract_args"]["ckpt"] for s in stores] == runs
    # named stores without runs: the runs come from the stores, nothing new is trained or extracted
    copies = [shutil.copy(s, Path(s).with_name(f"copy-{i}.h5")) for i, s in enumerate(stores)]  # beside them:
    # a store records its run relative to its own directory
    again_runs, again_stores = runs_and_stores([], [str(c) for c in copies], tmp_path / "other", **TINY)
    assert again_runs == runs and again_stores == [str(c) for c in copies]
    assert not (tmp_path / "other" / "runs").exists()
    # named runs without stores: stores are extracted from those runs
    named_runs, new_stores = runs_and_stores(runs, [], tmp_path / "third", **TINY)
    assert named_runs == runs and all(s.startswith(str(tmp_path / "third")) for s in new_stores)


def test_a_store_whose_run_is_not_here_has_no_run_and_missing_paths_are_errors(tmp_path, capsys):
    runs, stores = runs_and_stores([], [], tmp_path / "work", **TINY)
    assert "no STORES or RUN_DIRS named: building tiny demo runs" in capsys.readouterr().out
    shutil.rmtree(runs[0])  # as for a foreign ControlNet's store or one moved from another machine
    assert runs_and_stores([], stores, tmp_path / "work", **TINY) == ([None, runs[1]], stores)
    assert capsys.readouterr().out == ""  # named stores: no demo
    typo = str(tmp_path / "feature" / "lisa.h5")
    with pytest.raises(FileNotFoundError, match=f"STORES not found: {typo}") as error:
        runs_and_stores([], [stores[1], typo], tmp_path / "fresh", **TINY)
    assert stores[1] not in str(error.value) and not (tmp_path / "fresh").exists()
    with pytest.raises(FileNotFoundError, match="RUN_DIRS not found: runs/nope"):
        runs_and_stores(["runs/nope"], [], tmp_path / "fresh", **TINY)
    with pytest.raises(ValueError, match="RUN_DIRS names 1 runs for 2 STORES"):
        runs_and_stores([runs[1]], stores, tmp_path / "fresh", **TINY)
