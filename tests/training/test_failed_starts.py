"""Bad input on the captioned, SDXL / SD3, cache and folder paths: one ``prog: error:`` line naming the value, file,
row or column and what is allowed, exit 2, and no run directory left behind; runs locked while they train; data
errors in a running job leave a checkpoint to resume from."""

import io
import json
import shutil
from pathlib import Path

import datasets
import pytest
import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from PIL import Image
from safetensors import SafetensorError

import lisa_probe.training.checkpoints
from lisa_probe.data import DataError
from lisa_probe.data.shapes import ShapesDataset
from lisa_probe.extract import main as extract_main
from lisa_probe.files import OutputLock
from lisa_probe.train import main as train_main
from lisa_probe.training.side_net import train
from tests.tiny_pipelines import shape_row, write_sdxl_pipeline
from tests.training.test_side_net import make_main, side_weights, tiny_config

ROWS = 40


def image_table(rows: list[dict]) -> datasets.Dataset:
    return datasets.Dataset.from_list(rows).cast_column("image", datasets.Image()).cast_column(
        "conditioning_image", datasets.Image())


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def write_parquet(root: Path, rows: list[dict]) -> Path:
    (root / "data").mkdir(parents=True, exist_ok=True)
    image_table(rows).to_parquet(str(root / "data" / "train.parquet"))
    return root


@pytest.fixture(scope="module")
def bad_data(tmp_path_factory) -> dict[str, Path]:
    """One broken dataset per case, each beside 40 good rows' worth of structure."""
    root = tmp_path_factory.mktemp("bad-data")
    rows = [shape_row(i, 64) for i in range(ROWS)]
    made = {}
    table = image_table(rows)
    datasets.DatasetDict(train=table, validation=table.select([])).save_to_disk(str(root / "empty-val"))
    made["empty-val"] = root / "empty-val"
    for name, caption in (("int-captions", lambda i: i), ("dict-captions", lambda i: {"en": "a red circle"}),
                          ("empty-list-captions", lambda i: [])):
        made[name] = write_parquet(root / name, [dict(row, text=caption(i)) for i, row in enumerate(rows)])
    made["corrupt-images"] = write_parquet(root / "corrupt-images", [
        dict(row, image={"bytes": b"not an image" + png_bytes(row["image"])[:16], "path": None}) for row in rows])
    made["tiny-images"] = write_parquet(root / "tiny-images", [
        dict(row, image=row["image"].resize((4, 4)), conditioning_image=row["conditioning_image"].resize((4, 4)))
        for row in rows])
    folder = root / "imagefolder"
    folder.mkdir()
    with open(folder / "metadata.jsonl", "w") as handle:
        for i, row in enumerate(rows):
            row["image"].save(folder / f"{i}.png")
            if i < ROWS // 2:  # the second half names conditioning files that are not there
                row["conditioning_image"].save(folder / f"c{i}.png")
            handle.write(json.dumps({"file_name": f"{i}.png", "conditioning_image": f"c{i}.png",
                                     "text": row["text"]}) + "\n")
    made["missing-conditioning-files"] = folder
    made["missing-image-paths"] = root / "paths.jsonl"
    made["missing-image-paths"].write_text("".join(json.dumps({"image": f"nowhere/{i}.png",
                                                               "conditioning_image": f"nowhere/c{i}.png",
                                                               "text": "a red circle"}) + "\n"
                                                   for i in range(ROWS)))
    (root / "empty").mkdir()
    table.select([]).to_parquet(str(root / "empty" / "train.parquet"))
    made["empty-parquet"] = root / "empty" / "train.parquet"
    (root / "garbage").mkdir()
    (root / "garbage" / "train.parquet").write_bytes(b"PAR1" + bytes(range(256)) * 4)
    made["garbage-parquet"] = root / "garbage" / "train.parquet"
    return made


@pytest.mark.parametrize("case,message", [
    ("empty-val", "split(s) validation hold no rows"),
    ("int-captions", "column 'text': a caption must be a string or a non-empty list of strings, got int"),
    ("dict-captions", "column 'text': a caption must be a string or a non-empty list of strings, got dict"),
    ("empty-list-captions", "column 'text': a caption must be a string or a non-empty list of strings, got list"),
    ("corrupt-images", "the first training batch: "),
    ("tiny-images", "column 'image': ValueError: 4x4 px is smaller than the 8 px"),
    ("missing-conditioning-files", "column 'conditioning_image': image file"),
    ("missing-image-paths", "column 'image': image file"),
    ("empty-parquet", "train.parquet (it holds no rows)"),
    ("garbage-parquet", "datasets cannot read"),
])
def test_bad_captioned_data_is_named_before_a_run_directory_is_made(tmp_path, sd_pipeline, bad_data, capsys, case,
                                                                    message):
    with pytest.raises(SystemExit) as stop:
        train_main(["--main", str(sd_pipeline), "--dataset", "captioned", "--data-root", str(bad_data[case]),
                    "--out-dir", str(tmp_path / "runs"), "--eval-samples", "0", "--steps", "2"])
    error = capsys.readouterr().err
    assert stop.value.code == 2 and message in error and "Traceback" not in error, error
    assert str(bad_data[case]) in error  # the dataset is named
    if case in ("int-captions", "corrupt-images", "missing-image-paths"):
        assert ", row " in error  # ... and the row
    assert not (tmp_path / "runs").exists()


def broken_pipeline(source: Path, root: Path, change: str) -> Path:
    pipeline = root / change
    shutil.copytree(source, pipeline)
    if change == "corrupt-text-encoder-config":
        (pipeline / "text_encoder" / "config.json").write_text('{"architectures": [')
    elif change == "scheduler-not-a-scheduler":
        config = json.loads((pipeline / "scheduler" / "scheduler_config.json").read_text())
        (pipeline / "scheduler" / "scheduler_config.json").write_text(json.dumps({**config,
                                                                                  "_class_name": "UNet2DModel"}))
    elif change == "sdxl-without-text-encoder-2":
        shutil.rmtree(pipeline / "text_encoder_2")
        shutil.rmtree(pipeline / "tokenizer_2")
    return pipeline


@pytest.mark.parametrize("change,message", [
    ("corrupt-text-encoder-config", "text_encoder/config.json is not a readable JSON config"),
    ("scheduler-not-a-scheduler", "scheduler _class_name 'UNet2DModel' is not a diffusers scheduler"),
    ("sdxl-without-text-encoder-2", "is an SDXL pipeline (its UNet's addition_embed_type is 'text_time') without "
                                    "text_encoder_2/ and tokenizer_2/"),
])
def test_a_broken_pipeline_is_named(tmp_path, sd_pipeline, captioned_data, capsys, change, message):
    source = write_sdxl_pipeline(tmp_path / "sdxl") if change.startswith("sdxl") else sd_pipeline
    pipeline = broken_pipeline(source, tmp_path, change)
    with pytest.raises(SystemExit) as stop:
        train_main(["--main", str(pipeline), "--dataset", "captioned", "--data-root", str(captioned_data),
                    "--out-dir", str(tmp_path / "runs"), "--eval-samples", "0", "--steps", "2"])
    error = capsys.readouterr().err
    assert stop.value.code == 2 and message in error and "Traceback" not in error, error
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("argv,message", [
    (["--weighting-scheme", "logit_normal", "--logit-mean", "nan"], "--logit-mean must be a finite number"),
    (["--weighting-scheme", "logit_normal", "--logit-mean", "inf"], "--logit-mean must be a finite number"),
    (["--weighting-scheme", "mode", "--mode-scale", "nan"], "--mode-scale must be a finite number in [-1, 7.235]"),
    (["--weighting-scheme", "mode", "--mode-scale", "-10"], "--mode-scale must be a finite number in [-1, 7.235]"),
    (["--name", "../../escaped-run"], "--name must be one directory name inside --out-dir"),
    (["--name", "/tmp/elsewhere"], "--name must be one directory name inside --out-dir"),
    (["--lisa-main-prompt", "empty"], "--lisa-main-prompt empty needs captions; --dataset shapes has none here"),
    (["--proportion-empty-prompts", "0.5"], "--proportion-empty-prompts 0.5 needs captions"),
    (["--probe-every", "1", "--probe-samples", "100000"], "--probe-samples 100000 is more than the"),
    (["--resume", "{runs}/nope/checkpoint-9"], "is not a checkpoint directory"),
    (["--train-size", "0"], "--train-size must be >= 1, got 0"),
    (["--dataset", "folder", "--data-root", "{runs}", "--train-size", "5"], "--train-size applies to the built-in"),
    (["--lisa-decoder-channels", "0"], "--lisa-decoder-channels must be >= 1, got 0"),
    (["--probe-grad-split"], "--probe-grad-split needs the onset probe (--probe-every > 0) and LISA"),
    (["--cond-embedding-init-scale", "-1"], "--cond-embedding-init-scale must be a finite number in [0, inf]"),
])
def test_options_that_cannot_apply_are_refused_before_anything_is_made(tmp_path, capsys, argv, message):
    runs = tmp_path / "runs"
    argv = [arg.replace("{runs}", str(runs)) for arg in argv]
    with pytest.raises(SystemExit) as stop:
        train_main(["--main", make_main(tmp_path, "unet", "eps"), "--out-dir", str(runs), "--eval-samples", "0",
                    "--steps", "2", "--batch-size", "2", *argv])
    error = capsys.readouterr().err
    assert stop.value.code == 2 and message in error and "Traceback" not in error, error
    assert not runs.exists() and not (tmp_path / "escaped-run").exists()


def test_random_crop_at_a_size_the_unet_cannot_take_is_refused_naming_the_sizes(tmp_path, sd_pipeline,
                                                                                 captioned_data, capsys):
    with pytest.raises(SystemExit) as stop:
        train_main(["--main", str(sd_pipeline), "--dataset", "captioned", "--data-root", str(captioned_data),
                    "--out-dir", str(tmp_path / "runs"), "--eval-samples", "0", "--random-crop", "--resolution", "16"])
    error = capsys.readouterr().err
    assert stop.value.code == 2 and "--resolution 16 does not fit this main net: it takes multiples of 16 from 32" \
        in error
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("captions,message", [
    (b"\xff\xfe\x00\x81binary\x00", "is not a UTF-8 text CSV"),
    (b"file,text\n{first},a\n{first},b\n", "has two rows (lines 2 and 3)"),
    (b"file,text\n{first},a\nnot-there.png,b\n", "names 1 file(s) that are not images in"),
])
def test_a_bad_captions_file_is_named(tmp_path, capsys, captions, message):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(12):
        shape_row(i, 32)["image"].save(images / f"{i:02d}.png")
    path = tmp_path / "captions.csv"
    path.write_bytes(captions.replace(b"{first}", b"00.png"))
    with pytest.raises(SystemExit) as stop:
        train_main(["--main", make_main(tmp_path, "unet", "eps"), "--dataset", "folder", "--data-root", str(images),
                    "--captions-file", str(path), "--out-dir", str(tmp_path / "runs"), "--eval-samples", "0"])
    error = capsys.readouterr().err
    assert stop.value.code == 2 and message in error and str(path) in error and "Traceback" not in error, error
    assert not (tmp_path / "runs").exists()


def test_a_run_directory_in_use_is_not_replaced(tmp_path, capsys, monkeypatch):
    """Another live run holds the directory's lock: --overwrite is refused naming it, and its files stay."""
    config = tiny_config(tmp_path, name="busy")
    config.run_dir.mkdir(parents=True)
    (config.run_dir / "config.yaml").write_text("kind: train\n")
    lock = OutputLock(config.run_dir, what="run directory")
    try:
        with pytest.raises(SystemExit) as stop:
            train_main(["--main", config.main, "--out-dir", config.out_dir, "--name", "busy", "--overwrite",
                        "--steps", "2", "--eval-samples", "0"])
    finally:
        lock.release()
    error = capsys.readouterr().err
    assert stop.value.code == 2 and "run directory" in error and "is being written by another process" in error
    assert (config.run_dir / "config.yaml").read_text() == "kind: train\n"
    # free again; after a run that evaluated (the read-back cache's lock) no lock file is left anywhere
    monkeypatch.setenv("LISA_PROBE_CACHE", str(tmp_path / "cache"))
    train(tiny_config(tmp_path, name="busy", overwrite=True, steps=2, eval_samples=4, eval_every=2))
    assert list((tmp_path / "cache").glob("readback-*")) and not list(tmp_path.rglob("*.lock"))


def test_a_checkpoint_that_cannot_be_written_leaves_no_temporary_directory(tmp_path, capsys, monkeypatch):
    def full_disk(*args, **kwargs):
        raise SafetensorError("Error while serializing: IoError(No space left on device (os error 28))")

    monkeypatch.setattr(lisa_probe.training.checkpoints, "save_file", full_disk)
    config = tiny_config(tmp_path, name="full", steps=2, checkpoint_every=1)
    with pytest.raises(SystemExit) as stop:
        train_main(["--main", config.main, "--out-dir", config.out_dir, "--name", "full", "--steps", "2",
                    "--checkpoint-every", "1", "--eval-samples", "0", "--batch-size", "4"])
    error = capsys.readouterr().err
    assert stop.value.code == 2 and "writing checkpoint-1 in" in error and "No space left on device" in error
    assert "no checkpoint had been saved yet" in error and "Traceback" not in error
    assert not list(config.run_dir.glob(".checkpoint-*"))


def test_unreadable_data_in_a_running_job_stops_it_with_a_checkpoint_to_resume_from(tmp_path, monkeypatch):
    """An item that fails during step 3 (after the first batch was checked): the message names it and the step-2
    checkpoint written then; once the data are mended, --resume latest ends where an uninterrupted run does."""
    straight = train(tiny_config(tmp_path, name="straight", steps=4, batch_size=2))
    read = ShapesDataset.__getitem__
    calls = {"n": 0}

    def failing(self, index):
        calls["n"] += 1
        if calls["n"] > 2 + 2 * 2:  # the first-batch check, then two steps of two items
            raise DataError(f"shapes (train split), row {index}, column 'image': OSError: unreadable")
        return read(self, index)

    monkeypatch.setattr(ShapesDataset, "__getitem__", failing)
    with pytest.raises(DataError, match=r"row \d+, column 'image'.*training stopped at step 2: mend the data and "
                                        r"continue from .*checkpoint-2 with --resume latest"):
        train(tiny_config(tmp_path, name="broken", steps=4, batch_size=2, checkpoint_every=0))
    monkeypatch.setattr(ShapesDataset, "__getitem__", read)
    resumed = train(tiny_config(tmp_path, name="broken", steps=4, batch_size=2, checkpoint_every=0,
                                resume="latest"))
    first, second = side_weights(straight / "controlnet"), side_weights(resumed / "controlnet")
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_extracting_a_foreign_controlnet_on_corrupt_images_names_the_row_and_makes_no_store(tmp_path, sd_pipeline,
                                                                                          bad_data, capsys):
    ControlNetModel.from_unet(UNet2DConditionModel.from_pretrained(sd_pipeline / "unet")).save_pretrained(
        tmp_path / "theirs")
    out = tmp_path / "theirs.h5"
    with pytest.raises(SystemExit) as stop:
        extract_main(["--controlnet", str(tmp_path / "theirs"), "--main", str(sd_pipeline), "--dataset", "captioned",
                      "--data-root", str(bad_data["corrupt-images"]), "--out", str(out), "--samples", "4",
                      "--timesteps", "1", "--split", "train"])
    error = capsys.readouterr().err
    assert stop.value.code == 2 and "the first batch: " in error and ", row " in error and "column 'image'" in error
    assert "Traceback" not in error and not out.exists() and not list(tmp_path.glob("theirs.h5*"))
