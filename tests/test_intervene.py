"""``python -m lisa_probe.intervene``: maps and interventions of a LISA run end to end, and bad input as one line,
exit 2, nothing made."""

import json
import re

import pandas as pd
import pytest

from lisa_probe.intervene import main
from lisa_probe.training.config import TrainConfig
from lisa_probe.training.side_net import train
from tests.training.test_side_net import make_main


@pytest.fixture(scope="module")
def lisa_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("intervene")
    return train(TrainConfig(main=make_main(root, "unet", "eps"), out_dir=str(root / "runs"), steps=1, batch_size=2,
                             eval_samples=0, checkpoint_every=0, lisa_weight=0.2))


def test_maps_and_interventions_of_a_run(lisa_run, tmp_path, capsys):
    out = tmp_path / "causal"
    assert main([str(lisa_run), "--out", str(out), "--samples", "3", "--steps", "3", "--windows", "3",
                 "--sites", "down.1,mid", "--map-timesteps", "2", "--map-figures", "1"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("full model: edge_f1 ") and "of its add-one-in map inside the condition" in printed
    table = pd.read_csv(out / "interventions.csv")
    readback = {"readback/kind", "readback/x", "readback/y", "readback/size", "readback/rotation"}  # carried factors
    assert set(table["metric"]) == {"edge_f1"} | readback and (table["n"] == 3).all()
    assert len(table) == (1 + 3 * (1 + 3) + 3) * 6  # full; down.1, mid, all off (whole + 3 windows); all only x 3
    maps = pd.read_csv(out / "maps.csv")
    assert set(maps["method"]) == {"add_one_in", "leave_one_out", "residual", "full", "decoder", "oracle", "support"}
    assert set(maps.loc[maps["method"] == "add_one_in", "site"]) == {"down.1", "mid"}
    assert len(maps) == 2 * 3 * (3 * 2 + 3 + 1)  # timesteps x samples x (3 methods x 2 sites + 3 references + area)
    figures = sorted(path.name for path in (out / "figures").iterdir())
    assert figures[0] == "interventions.png" and len(figures) == 1 + 2
    record = json.loads((out / "intervene.json").read_text())
    assert record["sites"] == ["down.1", "mid"] and len(record["windows"]) == 3 and record["decoder"]


def test_patching_and_steering_of_a_run(lisa_run, tmp_path):
    """The tables' shapes: patching per site and all, per measure; probes per site and factor the measures read;
    steering per site, direction (the probes' and a random one), alpha and measure."""
    out = tmp_path / "use"
    assert main([str(lisa_run), "--out", str(out), "--samples", "2", "--steps", "2", "--analyses", "patching,steering",
                 "--patch-factor", "x", "--sites", "mid", "--probe-samples", "8", "--steer-alphas=-1,1"]) == 0
    patching = pd.read_csv(out / "patching.csv")
    assert list(patching["patched"].unique()) == ["mid", "all"] and len(patching) == 2 * 3
    probes = pd.read_csv(out / "probes.csv")
    assert set(probes["factor"]) == {"x", "y", "size"} and set(probes["site"]) == {"mid"}
    steering = pd.read_csv(out / "steering.csv")
    assert set(steering["direction"]) == {"x", "y", "size", "random"}  # the LISA site is not among --sites
    assert set(steering["measure"]) == {"centroid_x", "centroid_y", "size", "edge_f1"} and len(steering) == 4 * 2 * 4
    record = json.loads((out / "intervene.json").read_text())
    assert "with 'x' from sample" in record["donors"] and not (out / "maps.csv").exists()


@pytest.mark.parametrize("argv, message", [
    (["--sites", "down.1,nope"], "unknown site 'nope'; valid sites: down.0"),
    (["--windows", "9", "--steps", "3"], "--windows 9: between 1 and the 3 sampler steps"),
    (["--windows", "0"], "--windows must be >= 1"),
    (["--analyses", "maps,nope"], "--analyses 'maps,nope': choose from maps, interventions, patching, steering"),
    (["--analyses", "patching", "--patch-factor", "nope"], "--patch-factor 'nope' is not a factor"),
    (["--steer-alphas", "a"], "--steer-alphas 'a': expected numbers, e.g. '-2,2'"),
    (["--dataset", "shapes", "--condition", "nope"], "nope"),
])
def test_bad_input_is_one_line_and_makes_nothing(lisa_run, tmp_path, capsys, argv, message):
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as stop:
        main([str(lisa_run), "--out", str(tmp_path / "causal"), "--samples", "2", "--steps", "3", *argv])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and re.search(message, err), err
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize("pipeline", ["sd_pipeline", "sdxl_pipeline", "sd3_pipeline"])
def test_every_analysis_on_a_foreign_controlnet_of_each_pipeline_family(pipeline, request, captioned_data, tmp_path):
    """Maps on the latent grid, interventions, patching with other samples and steering (no factors a measure reads:
    the random direction alone) for a ControlNet lisa_probe did not train on a tiny SD / SDXL / SD3 pipeline."""
    from tests.generation.test_comparison import perturbed_controlnet

    pipeline = request.getfixturevalue(pipeline)
    theirs = perturbed_controlnet(pipeline, tmp_path / "theirs")
    out = tmp_path / "causal"
    assert main([str(theirs), "--main", str(pipeline), "--dataset", "captioned", "--data-root", str(captioned_data),
                 "--condition", "canny", "--split", "train", "--resolution", "32", "--samples", "2", "--steps", "2",
                 "--windows", "2", "--map-timesteps", "1", "--map-figures", "1", "--probe-samples", "4",
                 "--steer-alphas=1", "--analyses", "maps,interventions,patching,steering", "--out", str(out)]) == 0
    maps = pd.read_csv(out / "maps.csv")
    assert {"add_one_in", "full", "oracle", "support"} <= set(maps["method"]) and "decoder" not in set(maps["method"])
    assert set(pd.read_csv(out / "steering.csv")["direction"]) == {"random"}
    sites = maps.loc[maps["method"] == "add_one_in", "site"].nunique()
    assert len(pd.read_csv(out / "patching.csv")) == (sites + 1) * 3  # each site and all, three measures


def test_steering_at_the_lisa_site_adds_the_decoders_directions(lisa_run, tmp_path):
    from lisa_probe.training.loading import load_run

    site = load_run(lisa_run)[0].lisa_site
    out = tmp_path / "steer"
    assert main([str(lisa_run), "--out", str(out), "--samples", "2", "--steps", "2", "--analyses", "steering",
                 "--sites", site, "--probe-samples", "8", "--steer-alphas=1"]) == 0
    directions = set(pd.read_csv(out / "steering.csv")["direction"])
    assert {"decoder_read", "decoder_complement", "random"} <= directions


@pytest.fixture(scope="module")
def trained_shapes_run(tmp_path_factory):
    """A tiny DiT flow main net pretrained on the shapes (800 steps) and a side net trained on its masks (300 steps):
    mask IoU ~0.37 against ~0.07 for the main net alone, so its trunk sites carry the shape's position (~50 s)."""
    from lisa_probe.pretrain import main as pretrain
    from lisa_probe.train import main as train_side

    runs = tmp_path_factory.mktemp("controls") / "runs"
    assert pretrain(["--backbone", "dit", "--preset", "tiny", "--prediction-type", "flow", "--resolution", "16",
                     "--condition", "mask", "--steps", "800", "--lr", "2e-3", "--lr-warmup-steps", "20",
                     "--eval-every", "0", "--name", "main", "--out-dir", str(runs)]) == 0
    assert train_side(["--main", str(runs / "main"), "--steps", "300", "--lr", "2e-3", "--batch-size", "16",
                       "--eval-samples", "0", "--checkpoint-every", "0", "--name", "side",
                       "--out-dir", str(runs)]) == 0
    return runs / "side"


def test_positive_and_negative_controls_on_a_trained_shapes_run(trained_shapes_run, tmp_path):
    """The closed causal controls on a side net that learned its masks: patching a trunk site's features from a scene
    that differs only in x moves the generated x a clear part of the way to the donor's (measured here ~0.5 ± 0.17
    for each of the two sites over 32 samples), patching every site moves it all the way; a steer along a random
    direction at the same scale moves nothing (measured |Δ| ≤ 0.01 of the image)."""
    out = tmp_path / "controls"
    assert main([str(trained_shapes_run), "--out", str(out), "--analyses", "patching,steering", "--samples", "32",
                 "--steps", "10", "--patch-factor", "x"]) == 0
    moved = pd.read_csv(out / "patching.csv").query("measure == 'centroid_x'").set_index("patched")
    assert moved.loc["all", "value"] == 1.0 and (moved["n"] >= 12).all()
    trunk = moved.drop(index="all")
    assert len(trunk) == 2 and (trunk["value"] > 0.2).all() and (trunk["value"] - trunk["half"] > 0).all(), trunk
    steering = pd.read_csv(out / "steering.csv").query("direction == 'random' and measure == 'centroid_x'")
    assert len(steering) == 2 * 2 and (steering["value"].abs() < 0.05).all(), steering
    assert steering["value"].abs().max() < trunk["value"].min() / 5
