"""Side nets on a main net pretrained on label prompts (the onset study's setting 5): a pose condition, the prompts
through the main net's label encoder (context and pooled for the SD3-style transformer), extraction with them."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from lisa_probe.analysis.config import AnalyzeOptions
from lisa_probe.analysis.report.inputs import rebuild_inputs
from lisa_probe.analysis.report.selection import open_run
from lisa_probe.data import build_dataset
from lisa_probe.extract import main as extract_main
from lisa_probe.rundir import read_eval, read_summary
from lisa_probe.store import FeatureStore
from lisa_probe.text.prompts import PromptEncoder
from lisa_probe.train import main as train_main
from lisa_probe.training.config import PretrainConfig
from lisa_probe.training.loading import load_run
from lisa_probe.training.main_net import pretrain
from lisa_probe.training.side_net import SideNetObjective
from tests.training.test_side_net import make_main


@pytest.fixture(scope="module")
def labelled_dit(tmp_path_factory):
    """A tiny SD3-style transformer pretrained for 2 steps on shapes' label prompts."""
    out = tmp_path_factory.mktemp("labelled")
    return pretrain(PretrainConfig(backbone="dit", preset="tiny", resolution=16, steps=2, batch_size=4,
                                   label_prompts=True, proportion_empty_prompts=0.1, eval_samples=0,
                                   out_dir=str(out), name="main"))


def test_both_arms_train_on_a_pose_condition_with_label_prompts_and_score_prompt_and_condition(tmp_path,
                                                                                              labelled_dit):
    common = ["--main", str(labelled_dit), "--dataset", "shapes", "--label-prompts", "--condition", "pose",
              "--out-dir", str(tmp_path / "runs"), "--steps", "2", "--batch-size", "4", "--eval-every", "2",
              "--eval-samples", "4", "--sample-steps", "2", "--checkpoint-every", "2"]
    for name, weight in (("base", "0"), ("lisa", "0.2")):
        train_main([*common, "--name", name, "--lisa-weight", weight])
        summary = read_summary(tmp_path / "runs" / name)
        assert summary["control_metric"] == "mask_iou" and math.isfinite(summary["final"]["mask_iou"])
        metrics = read_eval(tmp_path / "runs" / name)[2]
        # what the prompt names (kind, hue) and what the condition carries (x, y, size, rotation) are read back,
        # for the controlled samples and for the main net alone (the prior)
        for factor in ("kind", "hue", "x", "y", "size", "rotation"):
            assert f"readback/{factor}" in metrics and f"main_alone/readback/{factor}" in metrics, factor


def test_a_drawn_batch_carries_each_samples_prompt_tokens_and_pooled_projection(tmp_path, labelled_dit):
    from lisa_probe.text.prompts import prompt_embeddings
    from lisa_probe.training.config import TrainConfig
    from lisa_probe.training.loading import build_dual_branch

    config = TrainConfig(main=str(labelled_dit), dataset="shapes", label_prompts=True, condition="pose",
                         out_dir=str(tmp_path), lisa_weight=0.0)
    model, kwargs = build_dual_branch(config)
    prompts = prompt_embeddings(config, [build_dataset("shapes", split="train", **kwargs)], tmp_path / "cache",
                                progress=False)
    objective = SideNetObjective(model, None, config, model.site_names[0], prompts=prompts)
    dataset = build_dataset("shapes", split="train", **kwargs, size=8)
    batch = default_collate([dataset[i] for i in range(8)])
    drawn = objective.draw(batch, torch.Generator().manual_seed(0))
    direct = PromptEncoder.from_pipeline(labelled_dit).encode(batch["text"])
    for name in ("context", "pooled"):
        torch.testing.assert_close(drawn[name], direct[name], rtol=1e-5, atol=1e-6)
    losses = objective(**drawn, step=0)
    assert torch.isfinite(losses["loss"])


def test_extraction_records_the_label_prompts_and_rebuilds_the_rows(tmp_path, labelled_dit):
    train_main(["--main", str(labelled_dit), "--dataset", "shapes", "--label-prompts", "--condition", "pose",
                "--out-dir", str(tmp_path / "runs"), "--steps", "2", "--batch-size", "4", "--eval-samples", "0",
                "--name", "run"])
    run = tmp_path / "runs" / "run"
    store_path = tmp_path / "run.h5"
    extract_main(["--ckpt", str(run), "--out", str(store_path), "--samples", "6", "--timesteps", "2"])
    store = FeatureStore(store_path)
    val = build_dataset("shapes", split="val", resolution=16, condition="pose", label_prompts=True, size=6)
    assert list(store.read("meta/prompt")) == [val[i]["text"] for i in range(6) for _ in range(2)]
    assert_rows_rebuild(run, store_path)


def assert_rows_rebuild(run: Path, store_path: Path) -> None:
    """The store's rows, rebuilt from the store and the prompt cache (tokens and pooled embeddings), give the stored
    predictions again (within float noise: the extraction ran other batches)."""
    config, model, _, dataset_kwargs = load_run(run)
    selected = open_run(store_path, "run", AnalyzeOptions(n_splits=2))
    x_t, steps, cond, context, *_ = rebuild_inputs(selected, model, config, dataset_kwargs,
                                                   np.arange(len(selected.rows)))
    assert set(context) == {"context", "pooled"}
    with torch.no_grad():
        rebuilt = model(x_t, steps, cond, context=context).pred_full.numpy()
    np.testing.assert_allclose(rebuilt, FeatureStore(store_path).read("scores/full")[selected.rows], rtol=1e-4,
                               atol=1e-5)


def test_label_prompts_without_a_label_encoder_exit_2_with_no_run_dir(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        train_main(["--main", make_main(tmp_path, "dit", "flow"), "--dataset", "shapes", "--label-prompts",
                    "--condition", "pose", "--out-dir", str(tmp_path / "runs"), "--eval-samples", "0"])
    error = capsys.readouterr().err
    assert stop.value.code == 2 and "a main net pretrained with --label-prompts has one" in error
    assert not (tmp_path / "runs").exists()
