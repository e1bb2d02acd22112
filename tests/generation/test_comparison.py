"""``generation``: runs and ControlNets drawn side by side from one noise. A run's row is its own validation grid's
(computed by the trainer's evaluation); scale 0 is the main net alone exactly; SD, SDXL and SD3 pipelines with a
ControlNet lisa_probe did not train; fidelity per sample against the fidelity module."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lisa_probe.evaluation.fidelity import fidelity_per_sample
from lisa_probe.generation.comparison import draw_comparison
from lisa_probe.generation.config import SampleConfig
from lisa_probe.models import build_side, load_main
from lisa_probe.training.config import TrainConfig
from lisa_probe.training.side_net import train
from tests.training.test_side_net import make_main


def perturbed_controlnet(pipeline: Path, out: Path) -> Path:
    """A diffusers side net of the pipeline's family (3-channel condition, as diffusers' trainers make), its zero
    modules perturbed so that it changes the prediction, saved as a plain diffusers directory."""
    family, main, *_, vae = load_main(pipeline)
    side = build_side(main, family, cond_channels=3, latent=vae is not None, seed=0)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in side.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    side.save_pretrained(out)
    return out


def row_images(out: Path, row: str) -> np.ndarray:
    files = sorted((out / "images" / row).glob("*.png"))
    return np.stack([np.asarray(Image.open(path)) for path in files])


def test_a_runs_row_is_its_validation_grid_and_scale_zero_is_the_main_net_alone(tmp_path):
    """With the run's seed, steps and sample count, the run's row equals the last `controlled` row of the grid the
    trainer drew (tiles read back from samples/step-N.png), and its main-alone row too."""
    run = train(TrainConfig(main=make_main(tmp_path, "unet", "eps"), out_dir=str(tmp_path / "runs"), steps=2,
                            batch_size=4, eval_samples=4, eval_every=2, sample_steps=3, checkpoint_every=0))
    out, lines = draw_comparison([str(run)], SampleConfig(out=str(tmp_path / "cmp"), samples=4, steps=3,
                                                          conditioning_scale="0,1"), "test", progress=False)
    grid = np.asarray(Image.open(run / "samples" / "step-2.png").convert("RGB"))
    size, cell = 16, 16 * 2 + 2  # save_grid: 2x nearest upscaling, 2 px padding, a 64 px label column

    def tiles(row: int) -> np.ndarray:
        return np.stack([grid[row * cell:row * cell + 2 * size:2, 64 + c * cell:64 + c * cell + 2 * size:2]
                         for c in range(4)])

    np.testing.assert_array_equal(row_images(out, f"{run.name}_@_1"), tiles(2))
    np.testing.assert_array_equal(row_images(out, "main_alone"), tiles(1))
    np.testing.assert_array_equal(row_images(out, f"{run.name}_@_0"), row_images(out, "main_alone"))
    np.testing.assert_array_equal(row_images(out, "condition"), tiles(0))
    with open(out / "fidelity.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 3 * 4 and {row["row"] for row in table} == {"main alone", f"{run.name} @ 0", f"{run.name} @ 1"}
    images = torch.from_numpy(row_images(out, f"{run.name}_@_1")).permute(0, 3, 1, 2).float() / 127.5 - 1
    cond = torch.from_numpy(row_images(out, "condition")[..., :1]).permute(0, 3, 1, 2).float() / 255
    expected = fidelity_per_sample(images, cond, "edges")["edge_f1"]
    found = [float(row["edge_f1"]) for row in table if row["row"] == f"{run.name} @ 1"]
    np.testing.assert_allclose(found, expected, atol=0.02)  # images went through uint8 here
    assert lines[0].startswith("main alone: edge_f1 ") and "95 % t-interval over 4 samples" in lines[0]
    record = json.loads((out / "sample.json").read_text())
    assert record["sources"][0]["run"] and record["sample_ids"][0] == "shapes/val/000000"
    assert not list(tmp_path.glob(".cmp*"))


@pytest.mark.parametrize("pipeline", ["sd_pipeline", "sdxl_pipeline", "sd3_pipeline"])
def test_a_foreign_controlnet_on_each_pipeline_family(pipeline, request, captioned_data, tmp_path):
    """A ControlNet lisa_probe did not train, on a tiny SD / SDXL / SD3 pipeline with captioned data: rows drawn with
    the captions, scale 0 equal to the main net alone, scale 1 different, canny fidelity per sample."""
    pipeline = request.getfixturevalue(pipeline)
    theirs = perturbed_controlnet(pipeline, tmp_path / "theirs")
    out, lines = draw_comparison([str(theirs)], SampleConfig(
        out=str(tmp_path / "cmp"), main=str(pipeline), dataset="captioned", data_root=str(captioned_data),
        condition="canny", split="train", samples=2, steps=2, conditioning_scale="0,1", resolution=32),
        "test", progress=False)
    main_alone = row_images(out, "main_alone")
    assert main_alone.shape == (2, 32, 32, 3)
    np.testing.assert_array_equal(row_images(out, "theirs_@_0"), main_alone)
    assert np.abs(row_images(out, "theirs_@_1").astype(int) - main_alone).max() > 0
    record = json.loads((out / "sample.json").read_text())
    assert len(record["prompts"]) == 2 and all(record["prompts"])
    assert [row["label"] for row in record["rows"]] == ["main alone", "theirs @ 0", "theirs @ 1"]
    assert len(lines) == 3 and all("edge_f1" in line for line in lines)
