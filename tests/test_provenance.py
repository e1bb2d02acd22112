"""Code version: commit, and ``.dirty`` only for uncommitted changes to the code itself."""

import subprocess

from lisa_probe.provenance import file_digest, git_version


def git(root, *args):
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


def test_dirty_means_changed_code_not_changed_results(tmp_path):
    assert git_version(tmp_path, "1.0") == "1.0"  # not a checkout
    git(tmp_path, "init", "-q")
    (tmp_path / "lisa_probe").mkdir()
    (tmp_path / "lisa_probe" / "core.py").write_text("x = 1\n")
    (tmp_path / "results.csv").write_text("a\n")
    git(tmp_path, "add", ".")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "c")
    clean = git_version(tmp_path, "1.0")
    assert clean.startswith("1.0+g") and not clean.endswith(".dirty")
    (tmp_path / "results.csv").write_text("b\n")  # an output being rewritten
    (tmp_path / "notes.md").write_text("draft\n")
    assert git_version(tmp_path, "1.0") == clean
    (tmp_path / "lisa_probe" / "new_module.py").write_text("y = 2\n")  # untracked code counts
    assert git_version(tmp_path, "1.0") == clean + ".dirty"


def test_file_digest_of_a_file_and_of_a_directory(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.bin").write_bytes(b"abc")
    before = file_digest(tmp_path / "d")
    assert file_digest(tmp_path / "d" / "a.bin") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    (tmp_path / "d" / "a.bin").write_bytes(b"abd")
    assert file_digest(tmp_path / "d") != before
