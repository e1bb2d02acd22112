"""The notebooks' runs and stores: named ones kept, runs read from named stores, tiny ones built otherwise."""

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


def test_stores_whose_runs_are_elsewhere_need_run_dirs(tmp_path):
    runs, stores = runs_and_stores([], [], tmp_path / "work", **TINY)
    shutil.rmtree(runs[0])
    with pytest.raises(ValueError, match="name them in RUN_DIRS") as error:
        runs_and_stores([], stores, tmp_path / "work", **TINY)
    assert stores[0] in str(error.value) and stores[1] not in str(error.value)
