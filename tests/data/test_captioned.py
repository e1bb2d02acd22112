"""The captioned dataset: a `datasets` table in diffusers' columns, its splits, factors and bad inputs."""

import json

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from lisa_probe.data import build_dataset
from lisa_probe.data.captioned import CaptionedDataset
from tests.tiny_pipelines import shape_row

ROWS = 40


def build(root, split="train", **options):
    return build_dataset("captioned", split=split, resolution=32, root=root, **options)


def test_items_follow_the_data_contract_with_captions(captioned_data):
    dataset = build(captioned_data)
    item = dataset[0]
    assert item["image"].shape == (3, 32, 32) and -1 <= item["image"].min() and item["image"].max() <= 1
    assert item["cond"].shape == (3, 32, 32) and 0 <= item["cond"].min() and item["cond"].max() <= 1
    row = int(item["id"].rsplit("-", 1)[1])
    assert item["text"] == shape_row(row, 64)["text"]
    assert dataset.captions()[0] == item["text"] and dataset.cond_channels == 3 and dataset.condition == "custom"
    grey = build(captioned_data, cond_mode="L")[0]["cond"]
    assert grey.shape == (1, 32, 32)
    torch.testing.assert_close(grey[0], item["cond"].mean(0), atol=2 / 255, rtol=0)  # white on black: R = G = B


def test_rows_are_partitioned_into_disjoint_splits_when_the_table_has_only_train(captioned_data):
    ids = {split: {item for item in build(captioned_data, split).rows} for split in ("train", "val", "test")}
    assert set().union(*ids.values()) == set(range(ROWS))
    assert sum(map(len, ids.values())) == ROWS
    assert len(ids["val"]) > 0 and len(ids["test"]) > 0 and len(ids["train"]) > ROWS / 2
    assert {i for i in build(captioned_data, "val", split_seed=1).rows} != ids["val"]


def test_max_train_samples_keeps_that_many_rows_drawn_with_the_seed(captioned_data):
    everything = build(captioned_data).rows
    kept = build(captioned_data, max_train_samples=5).rows
    assert len(kept) == 5 and set(kept) <= set(everything)
    assert build(captioned_data, max_train_samples=5, seed=1).rows != kept
    assert build(captioned_data, "val", max_train_samples=1).rows == build(captioned_data, "val").rows


def test_a_named_validation_split_a_save_to_disk_directory_and_a_single_file(tmp_path):
    table = datasets.Dataset.from_list([shape_row(i, 32) for i in range(6)])
    table = table.cast_column("image", datasets.Image()).cast_column("conditioning_image", datasets.Image())
    splits = datasets.DatasetDict(train=table.select(range(4)), validation=table.select([4, 5]))
    splits.save_to_disk(str(tmp_path / "saved"))
    assert len(build(tmp_path / "saved")) == 4 and build(tmp_path / "saved", "val").table_split == "validation"
    assert len(build(tmp_path / "saved", "test")) == 2  # test falls back to the validation split
    table.to_parquet(str(tmp_path / "one.parquet"))
    single = build(tmp_path / "one.parquet", val_fraction=0.0)
    assert len(single) == 6 and single[2]["text"] == shape_row(2, 32)["text"]


def test_an_imagefolder_with_metadata_jsonl(tmp_path):
    folder = tmp_path / "imagefolder"
    folder.mkdir()
    with open(folder / "metadata.jsonl", "w") as handle:
        for i in range(5):
            row = shape_row(i, 32)
            row["image"].save(folder / f"{i}.png")
            row["conditioning_image"].save(folder / f"{i}-cond.png")
            handle.write(json.dumps({"file_name": f"{i}.png", "conditioning_image": f"{i}-cond.png",
                                     "text": row["text"]}) + "\n")
    dataset = build(folder, val_fraction=0.0)
    assert len(dataset) == 5
    assert sorted(dataset.captions()) == sorted(shape_row(i, 32)["text"] for i in range(5))
    assert dataset[0]["cond"].max() == 1.0  # the conditioning image's path was opened


def test_factor_columns_are_recorded_like_a_factors_csv(captioned_data):
    dataset = build(captioned_data, factor_columns=("colour", "size"), carried_factors=("size",))
    assert dataset.factor_specs["colour"].kind == "categorical" and dataset.factor_specs["colour"].n_classes == 4
    assert dataset.factor_specs["size"].kind == "continuous" and dataset.factor_specs["size"].carried
    assert not dataset.factor_specs["colour"].carried
    item = dataset[3]
    row = shape_row(int(item["id"].rsplit("-", 1)[1]), 64)
    assert dataset.factor_levels["colour"][item["factors"]["colour"]] == row["colour"]
    assert item["factors"]["size"] == pytest.approx(row["size"])


def test_an_extractor_makes_the_condition_only_when_asked(captioned_data):
    dataset = build(captioned_data, cond_source="extractor", condition="canny")
    assert dataset.cond_channels == 1 and dataset.condition == "canny"
    assert dataset[0]["cond"].shape == (1, 32, 32) and set(np.unique(dataset[0]["cond"].numpy())) <= {0.0, 1.0}


def test_a_list_of_captions_gives_its_first(tmp_path):
    rows = [dict(shape_row(i, 32), text=[f"caption {i}", "other"]) for i in range(3)]
    table = datasets.Dataset.from_list(rows).cast_column("image", datasets.Image())
    table.cast_column("conditioning_image", datasets.Image()).to_parquet(str(tmp_path / "lists.parquet"))
    assert build(tmp_path / "lists.parquet", val_fraction=0.0).captions() == ["caption 0", "caption 1", "caption 2"]


@pytest.mark.parametrize("options,message", [
    ({"caption_column": "prompt"}, "caption column 'prompt' is not in .* its columns: image, conditioning_image, "
                                   "text, colour, size"),
    ({"image_column": "target"}, "image column 'target' is not in"),
    ({"factor_columns": ("hue",)}, "factor column 'hue' is not in"),
    ({"carried_factors": ("colour",)}, "unknown carried factor"),
    ({"val_fraction": 0.5}, "val_fraction must be in"),
    ({"max_train_samples": 0}, "max_train_samples must be >= 1"),
    ({"cond_source": "nowhere"}, "unknown condition source 'nowhere'"),
])
def test_bad_options_name_the_value(captioned_data, options, message):
    with pytest.raises(ValueError, match=message):
        build(captioned_data, **options)


def test_an_empty_split_and_unreadable_locations_are_refused(captioned_data, tmp_path):
    with pytest.raises(ValueError, match="the val split of .* is empty"):
        build(captioned_data, "val", val_fraction=0.0)
    with pytest.raises(ValueError, match="does not exist"):
        CaptionedDataset(root=tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="is not one of .parquet"):
        CaptionedDataset(root=tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="datasets cannot read"):
        CaptionedDataset(root=tmp_path / "empty")


def test_the_folder_dataset_points_a_parquet_path_to_the_captioned_one(captioned_data):
    with pytest.raises(ValueError, match="not a directory of images .*--dataset captioned"):
        build_dataset("folder", root=next((captioned_data / "data").glob("*.parquet")))
    with pytest.raises(ValueError, match="no image files .*--dataset captioned"):
        build_dataset("folder", root=captioned_data)


def test_random_crops_move_each_epoch_and_keep_image_and_condition_together(tmp_path):
    """Wide images (the shorter side resized to 32, so only the long side can be cropped): a draw number d gives
    item d % N, cropped at a place drawn from (seed, d), the same place for its image and its condition (here the
    same picture); without random crops items are centre-cropped."""
    rng = np.random.default_rng(0)
    pictures = [Image.fromarray(rng.integers(0, 256, (32, 96, 3), dtype=np.uint8)) for _ in range(4)]
    rows = [{"image": picture, "conditioning_image": picture, "text": f"row {i}"} for i, picture in enumerate(pictures)]
    table = datasets.Dataset.from_list(rows).cast_column("image", datasets.Image())
    table.cast_column("conditioning_image", datasets.Image()).to_parquet(str(tmp_path / "wide.parquet"))
    cropped = build(tmp_path / "wide.parquet", val_fraction=0.0, random_crop=True)
    centred = build(tmp_path / "wide.parquet", val_fraction=0.0)
    n = len(cropped)
    first, later = cropped[1], cropped[1 + 2 * n]  # the same row in epochs 0 and 2
    assert first["text"] == later["text"] == centred[1]["text"]
    assert not torch.equal(first["image"], later["image"])
    for item in (first, later):  # the condition is in [0, 1], the image in [-1, 1]: the same pixels
        torch.testing.assert_close(item["cond"] * 2 - 1, item["image"], rtol=0, atol=1e-6)
    middle = np.asarray(pictures[centred.rows[1]].resize((96, 32)))[:, 32:64] / 127.5 - 1
    np.testing.assert_allclose(centred[1]["image"].permute(1, 2, 0).numpy(), middle, atol=1e-6)
    assert torch.equal(cropped[1]["image"], build(tmp_path / "wide.parquet", val_fraction=0.0,
                                                  random_crop=True)[1]["image"])  # deterministic


def test_without_images_skips_the_image_and_keeps_everything_else(captioned_data):
    """A run that reads cached latents decodes the conditions alone: the items' image is empty (3, 0, 0), the rest
    equal the full items'; a condition made from the image keeps its images."""
    full = CaptionedDataset("train", resolution=32, root=captioned_data)
    view = full.without_images()
    assert full.reads_images and not view.reads_images and len(view) == len(full)
    for index in (0, 3):
        a, b = full[index], view[index]
        assert tuple(b["image"].shape) == (3, 0, 0) and torch.equal(a["cond"], b["cond"])
        assert (a["id"], a["text"], a["factors"]) == (b["id"], b["text"], b["factors"])
    extracted = CaptionedDataset("train", resolution=32, root=captioned_data, condition="canny",
                                 cond_source="extractor")
    assert extracted.without_images() is extracted
