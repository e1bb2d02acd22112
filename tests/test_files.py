"""Files that an interruption never leaves half-written."""

import csv
from pathlib import Path

import pytest

from lisa_probe.files import OutputBusyError, OutputLock, replace_dir, write_csv_atomic, write_json, write_text_atomic


def test_atomic_writes_leave_only_the_file(tmp_path):
    write_text_atomic(tmp_path / "a.yaml", "x: 1\n")
    write_json(tmp_path / "b.json", {"z": 1, "a": [1, 2]})
    write_csv_atomic(tmp_path / "c.csv", ["step", "value"], [{"step": 1, "value": 0.5}])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.yaml", "b.json", "c.csv"]
    assert (tmp_path / "a.yaml").read_text() == "x: 1\n"
    with open(tmp_path / "c.csv", newline="") as handle:
        assert list(csv.DictReader(handle)) == [{"step": "1", "value": "0.5"}]


def test_a_failed_write_keeps_the_old_content(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"
    write_json(target, {"steps": 1})
    original = Path.write_text

    def half_then_interrupted(self, text):
        if not self.name.endswith(".tmp"):
            return original(self, text)
        original(self, text[: len(text) // 2])  # half the text reaches the disk, then the run is stopped
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", half_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_json(target, {"steps": 2, "final": {"edge_f1": 0.7}})
    assert target.read_text() == '{\n  "steps": 1\n}'


def test_replace_dir_swaps_whole_directories(tmp_path):
    final, new = tmp_path / "controlnet", tmp_path / ".controlnet.tmp"
    final.mkdir()
    (final / "old.txt").write_text("old")
    new.mkdir()
    (new / "new.txt").write_text("new")
    replace_dir(new, final)
    assert [p.name for p in final.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["controlnet"]


def test_a_waiting_lock_gets_the_output_once_the_holder_is_done(tmp_path):
    """``OutputLock(wait=True)`` blocks until the holder releases (a thread stands in for another process: flock
    locks belong to open files), then holds the lock itself; without ``wait`` a held lock is refused; no lock file is
    left after either."""
    import threading
    import time

    order = []
    holder = OutputLock(tmp_path / "cache-entry", what="cache")
    with pytest.raises(OutputBusyError, match="feature store .*cache-entry is being written by another process"):
        OutputLock(tmp_path / "cache-entry")

    def waiter():
        with OutputLock(tmp_path / "cache-entry", wait=True):
            order.append("waiter")

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.3)
    order.append("holder done")
    holder.release()
    thread.join(timeout=10)
    assert order == ["holder done", "waiter"] and not list(tmp_path.iterdir())


def cache_model(hub: Path, repo_id: str, source: Path, ref: str = "main",
                commit: str = "0123456789abcdef0123456789abcdef01234567") -> Path:
    """``source`` laid out as the Hugging Face cache keeps a downloaded model: refs/<ref> naming a snapshot."""
    import shutil

    folder = hub / f"models--{repo_id.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / ref).write_text(commit)
    shutil.copytree(source, folder / "snapshots" / commit)
    return folder / "snapshots" / commit


def test_a_model_id_in_the_local_cache_resolves_offline_and_an_uncached_one_is_one_line(tmp_path, monkeypatch):
    from lisa_probe.files import local_model, model_id_hint

    (tmp_path / "model" / "unet").mkdir(parents=True)
    (tmp_path / "model" / "unet" / "config.json").write_text("{}")
    import huggingface_hub.constants

    # the cache directory is read from HF_HUB_CACHE at import: patch the constant
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snapshot = cache_model(tmp_path / "hub", "me/tiny-sd", tmp_path / "model")
    assert Path(local_model("me/tiny-sd")) == snapshot
    assert local_model(str(tmp_path / "model")) == str(tmp_path / "model") and local_model(None) is None
    assert local_model("me/other") == "me/other" and local_model("runs/a/b") == "runs/a/b"  # left to the loaders
    assert "nor is me/other a model id in the local Hugging Face cache: fetch it first (huggingface-cli download " \
           "me/other)" in model_id_hint("me/other")
    assert model_id_hint("runs/a/b") == "" and model_id_hint(str(tmp_path)) == ""
