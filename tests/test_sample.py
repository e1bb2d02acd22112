"""``python -m lisa_probe.sample``: the command line end to end, and bad input as one line, exit 2, nothing made."""

import re

import pytest

from lisa_probe.sample import main
from lisa_probe.training.config import TrainConfig
from lisa_probe.training.side_net import train
from tests.training.test_side_net import make_main


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two one-step runs on one main net and one on another."""
    root = tmp_path_factory.mktemp("sample-runs")
    main_a, main_b = make_main(root / "a", "unet", "eps"), make_main(root / "b", "unet", "eps")
    made = {name: train(TrainConfig(main=main, out_dir=str(root / "runs"), name=name, steps=1, batch_size=2,
                                    eval_samples=0, checkpoint_every=0, lisa_weight=weight))
            for name, main, weight in (("base", main_a, 0.0), ("lisa", main_a, 0.2), ("other", main_b, 0.0))}
    return made, main_a


def test_two_runs_and_their_controlnet_side_by_side(runs, tmp_path, capsys):
    made, main_dir = runs
    out = tmp_path / "cmp"
    assert main([str(made["base"]), str(made["lisa"]), str(made["lisa"] / "controlnet"), "--main", main_dir,
                 "--labels", "base,lisa,exported", "--out", str(out), "--samples", "3", "--steps", "2",
                 "--batch-size", "2"]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"^base: edge_f1 [\d.]+ \[", printed, re.M) and f"samples written to {out}" in printed
    rows = sorted(path.name for path in (out / "images").iterdir())
    assert rows == ["base", "condition", "exported", "lisa", "main_alone"]
    assert (out / "images" / "lisa" / "002.png").exists() and (out / "grid.png").exists()
    # the run and its exported ControlNet draw the same images
    assert (out / "images" / "lisa" / "001.png").read_bytes() == (out / "images" / "exported" / "001.png").read_bytes()


@pytest.mark.parametrize("argv, message", [
    (["{tmp}/nowhere"], "source .*nowhere does not exist"),
    (["{lisa}/controlnet"], "ControlNet sources need --main"),
    (["{base}", "{other}"], r"the sources use different main nets \(.*base.*other"),
    (["{base}", "--conditioning-scale", "1,a"], r"--conditioning-scale '1,a': expected numbers, e.g. finite numbers >= 0"),
    (["{base}", "--conditioning-scale", "-1"], r"expected numbers, e.g. finite numbers >= 0"),
    (["{base}", "{lisa}", "--labels", "one"], "--labels names 1 sources, 2 were given"),
    (["{base}", "--resolution", "32"], "--resolution 32 applies to ControlNet sources only"),
    (["{base}", "--samples", "100000"], "--samples 100000 exceeds the val split's"),
    (["{base}", "--out", "{tmp}/full"], "--out .*full is not empty; pass --overwrite"),
    (["{tmp}"], "neither a lisa_probe run nor a diffusers side-net directory"),
])
def test_bad_input_is_one_line_and_makes_nothing(runs, tmp_path, capsys, argv, message):
    made, _ = runs
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    before = sorted(tmp_path.rglob("*"))
    values = {"tmp": tmp_path, **{name: path for name, path in made.items()}}
    argv = [arg.format(**values) for arg in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "cmp")]
    with pytest.raises(SystemExit) as stop:
        main(argv + ["--samples", "2", "--steps", "1"] if "--samples" not in argv else argv + ["--steps", "1"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and re.search(message, err), err
    assert sorted(tmp_path.rglob("*")) == before
