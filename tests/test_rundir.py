"""Run directories: path storage relative to the run, the config round trip, and runs that move."""

import shutil
from pathlib import Path

import pytest
import yaml

from lisa_probe.diffusion.parameterization import Parameterization
from lisa_probe.extraction.config import ExtractConfig
from lisa_probe.extraction.extractor import extract
from lisa_probe.models import build_main, save_main
from lisa_probe.rundir import (
    CONFIG_FILE,
    RELATIVE_TO_RUN,
    is_finished,
    read_run_config,
    resolved_path,
    run_dir_of,
    stored_path,
)
from lisa_probe.store import FeatureStore
from lisa_probe.training.config import TrainConfig
from lisa_probe.training.side_net import train


def test_stored_paths_are_relative_and_resolve_back(tmp_path):
    base = tmp_path / "runs" / "r"
    base.mkdir(parents=True)
    assert stored_path(tmp_path / "runs" / "main", base) == "../main"
    assert stored_path(base / "controlnet", base) == "controlnet"
    assert resolved_path("../main", base) == tmp_path / "runs" / "main"
    assert resolved_path("/abs/main", base) == Path("/abs/main")  # files written before: as they were


def test_a_run_works_from_another_directory_and_after_its_tree_moves(tmp_path, monkeypatch):
    """The main job's way: a relative --main from the working directory. config.yaml stores it relative to the run
    (and the resolved LISA site), so extraction by absolute path from elsewhere, and after moving the tree that
    holds main net and run, finds the main net."""
    work = tmp_path / "work"
    save_main(work / "runs" / "main", "unet", build_main("unet", "tiny", 16), Parameterization("eps"))
    monkeypatch.chdir(work)
    run_dir = train(TrainConfig(main="runs/main", out_dir="runs", name="r", steps=1, batch_size=2, eval_samples=0,
                                checkpoint_every=0))
    payload = yaml.safe_load((work / "runs" / "r" / CONFIG_FILE).read_text())
    assert payload["paths"] == RELATIVE_TO_RUN and payload["config"]["main"] == "../main"
    assert payload["config"]["lisa_site"] == "down.2"  # resolved (the middle of down.0..down.3, mid), not null
    assert is_finished(run_dir)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    extract(ExtractConfig(out="a.h5", ckpt=str(work / "runs" / "r"), samples=2, timesteps="2", batch_size=4))
    shutil.move(work / "runs", tmp_path / "moved")
    store = extract(ExtractConfig(out="b.h5", ckpt=str(tmp_path / "moved" / "r"), samples=2, timesteps="2",
                                  batch_size=4))
    assert FeatureStore(store).n_rows == 4
    assert read_run_config(tmp_path / "moved" / "r", TrainConfig, "train").main == str(tmp_path / "moved" / "main")


def test_configs_written_before_relative_paths_read_as_given(tmp_path, monkeypatch):
    """A config.yaml without ``paths`` (older runs) keeps its paths relative to the working directory."""
    run = tmp_path / "old"
    run.mkdir()
    (run / CONFIG_FILE).write_text(yaml.safe_dump({"kind": "train", "code_version": "0.1.0", "config": {
        "main": "runs/main", "name": "old"}}))
    monkeypatch.chdir(tmp_path)
    assert read_run_config(run, TrainConfig, "train").main == str(tmp_path / "runs" / "main")
    with pytest.raises(ValueError, match="is a 'train' run, not a 'pretrain' run"):
        read_run_config(run, TrainConfig, "pretrain")
    assert run_dir_of(run / "checkpoint-3") == run
    with pytest.raises(ValueError, match="not a lisa_probe run"):
        run_dir_of(tmp_path)
