"""Tests of the user-folder dataset."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import default_collate

from lisa_probe.data import build_dataset
from lisa_probe.data.folder import MIN_IMAGE_SIDE, load_image, read_factors_csv, split_of

ALL_TRAIN = (1.0, 0.0, 0.0)


def _write_images(root):
    """Write one image per supported mode into ``root``; returns file name -> mode."""
    root.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8), "RGB").save(root / "rgb.png")
    rgba = np.zeros((50, 20, 4), np.uint8)
    rgba[:, :, 0] = 200
    rgba[25:, :, 3] = 255  # top half fully transparent
    Image.fromarray(rgba, "RGBA").save(root / "rgba.png")
    Image.fromarray(rng.integers(0, 256, (30, 30), dtype=np.uint8), "L").save(root / "gray.jpg")
    Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8), "RGB").quantize(8).save(root / "pal.png")
    palette_alpha = Image.new("P", (16, 16), 1)
    palette_alpha.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    palette_alpha.save(root / "pal_alpha.gif", transparency=1)
    (root / "notes.txt").write_text("not an image")
    return {"rgb.png": "RGB", "rgba.png": "RGBA", "gray.jpg": "L", "pal.png": "P", "pal_alpha.gif": "P"}


def _folder(tmp_path, **kwargs):
    return build_dataset("folder", split="train", resolution=16, root=tmp_path / "img", split_fractions=ALL_TRAIN,
                         **kwargs)


def test_mixed_modes_are_resized_cropped_and_flattened(tmp_path):
    files = _write_images(tmp_path / "img")
    ds = _folder(tmp_path)
    assert sorted(f.name for f in ds.files) == sorted(files) and ds.condition == "canny" and ds.cond_channels == 1
    batch = default_collate([ds[i] for i in range(len(ds))])
    assert batch["image"].shape == (5, 3, 16, 16) and batch["cond"].shape == (5, 1, 16, 16)
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1
    assert batch["cond"].min() >= 0 and batch["cond"].max() <= 1
    by_name = {f.name: ds[i]["image"] for i, f in enumerate(ds.files)}
    assert torch.equal(by_name["gray.jpg"][0], by_name["gray.jpg"][1])
    assert torch.allclose(by_name["rgba.png"][:, :6], torch.ones(3, 6, 16))  # transparent top -> white
    assert torch.allclose(by_name["rgba.png"][1:, -6:], torch.full((2, 6, 16), -1.0))  # opaque red bottom
    assert torch.allclose(by_name["pal_alpha.gif"], torch.ones(3, 16, 16))
    assert ds[0]["id"] == f"folder/train/{ds.files[0].name}"


def test_deterministic_across_instances(tmp_path):
    _write_images(tmp_path / "img")
    a, b = _folder(tmp_path, condition="sobel"), _folder(tmp_path, condition="sobel")
    for i in range(len(a)):
        assert torch.equal(a[i]["image"], b[i]["image"]) and torch.equal(a[i]["cond"], b[i]["cond"])


def test_conditions_from_a_matching_directory(tmp_path):
    _write_images(tmp_path / "img")
    (tmp_path / "cond").mkdir()
    for stem, value in [("rgb", 255), ("rgba", 0), ("gray", 128), ("pal", 255), ("pal_alpha", 64)]:
        Image.new("L", (20, 20), value).save(tmp_path / "cond" / f"{stem}.{'png' if value else 'bmp'}")
    ds = _folder(tmp_path, cond_dir=tmp_path / "cond", condition="depth")
    assert ds.condition == "depth" and ds.cond_channels == 1
    values = {f.stem: float(ds[i]["cond"].mean()) for i, f in enumerate(ds.files)}
    assert values == pytest.approx({"rgb": 1.0, "rgba": 0.0, "gray": 128 / 255, "pal": 1.0, "pal_alpha": 64 / 255})
    rgb_cond = _folder(tmp_path, cond_dir=tmp_path / "cond", cond_mode="RGB")
    assert rgb_cond.cond_channels == 3 and rgb_cond[0]["cond"].shape == (3, 16, 16)


def test_missing_condition_is_named_or_skipped(tmp_path):
    _write_images(tmp_path / "img")
    (tmp_path / "cond").mkdir()
    Image.new("L", (8, 8), 255).save(tmp_path / "cond" / "rgb.png")
    with pytest.raises(ValueError, match="gray.jpg"):
        _folder(tmp_path, cond_dir=tmp_path / "cond")
    with pytest.warns(UserWarning, match="no condition file"):
        ds = _folder(tmp_path, cond_dir=tmp_path / "cond", skip_bad=True)
    assert [f.name for f in ds.files] == ["rgb.png"]


def test_corrupt_file_is_named_or_skipped(tmp_path):
    _write_images(tmp_path / "img")
    (tmp_path / "img" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(ValueError, match="broken.png"):
        _folder(tmp_path)
    with pytest.warns(UserWarning, match="broken.png"):
        ds = _folder(tmp_path, skip_bad=True)
    assert len(ds) == 5 and "broken.png" not in {f.name for f in ds.files}


def test_every_bad_file_is_listed_and_tiny_images_are_refused(tmp_path):
    """The error (or, with skip_bad, the one warning) lists every bad file, not the first; an image below
    MIN_IMAGE_SIDE is one of them instead of being upscaled."""
    _write_images(tmp_path / "img")
    (tmp_path / "img" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (tmp_path / "img" / "empty.jpg").write_bytes(b"")
    Image.new("RGB", (1, 1)).save(tmp_path / "img" / "dot.png")
    Image.new("RGB", (MIN_IMAGE_SIDE, 40)).save(tmp_path / "img" / "narrow.png")  # at the minimum: kept
    with pytest.raises(ValueError, match=r"3 bad file\(s\)") as error:
        _folder(tmp_path)
    for name in ("broken.png", "empty.jpg", "dot.png: 1x1 px is smaller than the 8 px", "--skip-bad-files"):
        assert name in str(error.value)
    with pytest.warns(UserWarning, match=r"skipped 3 bad file\(s\)") as caught:
        ds = _folder(tmp_path, skip_bad=True)
    assert all(name in str(caught[0].message) for name in ("broken.png", "empty.jpg", "dot.png"))
    assert len(ds) == 6 and "narrow.png" in {f.name for f in ds.files}


def test_factors_from_csv(tmp_path):
    _write_images(tmp_path / "img")
    csv_path = tmp_path / "factors.csv"
    csv_path.write_text("file,angle,label,count\n"
                        "rgb.png,0.5,cat,3\n"
                        "rgba,1.25,dog,1\n"
                        "gray.jpg,2.0,cat,3\n"
                        "pal.png,-1.5,bird,2\n"
                        "pal_alpha.gif,0.0,dog,1\n"
                        "absent.png,9.0,fish,7\n")
    ds = _folder(tmp_path, factors_csv=csv_path, carried_factors=["angle"])
    specs = ds.factor_specs
    assert (specs["angle"].kind, specs["angle"].carried, specs["angle"].n_classes) == ("continuous", True, None)
    assert (specs["label"].kind, specs["label"].carried, specs["label"].n_classes) == ("categorical", False, 4)
    assert (specs["count"].kind, specs["count"].n_classes) == ("categorical", 4)
    assert ds.factor_levels == {"label": ["bird", "cat", "dog", "fish"], "count": [1, 2, 3, 7]}
    factors = {f.stem: ds[i]["factors"] for i, f in enumerate(ds.files)}
    assert factors["rgba"] == {"angle": 1.25, "label": 2, "count": 0}
    assert factors["pal"] == {"angle": -1.5, "label": 0, "count": 1}
    batch = default_collate([ds[i] for i in range(len(ds))])
    assert batch["factors"]["label"].dtype == torch.int64 and batch["factors"]["angle"].dtype == torch.float64
    assert not read_factors_csv(csv_path)[1]["angle"].carried


def test_csv_errors(tmp_path):
    _write_images(tmp_path / "img")
    csv_path = tmp_path / "factors.csv"
    csv_path.write_text("file,angle\nrgb.png,0.5\nrgba.png,\n")
    with pytest.raises(ValueError, match="line 3.*angle"):
        _folder(tmp_path, factors_csv=csv_path)
    csv_path.write_text("file,angle\nrgb.png,0.5\n")
    with pytest.raises(ValueError, match="'size'.*'angle'"):
        _folder(tmp_path, factors_csv=csv_path, carried_factors=["size"])
    with pytest.raises(ValueError, match="gray.jpg.*factors CSV"):
        _folder(tmp_path, factors_csv=csv_path)
    with pytest.warns(UserWarning):
        assert len(_folder(tmp_path, factors_csv=csv_path, skip_bad=True)) == 1


def test_csv_with_a_byte_order_mark_and_non_finite_values(tmp_path):
    csv_path = tmp_path / "factors.csv"
    csv_path.write_bytes("file,angle\nrgb.png,0.5\ngray.jpg,1.5\n".encode("utf-8-sig"))  # as Excel saves it
    rows, specs, _ = read_factors_csv(csv_path)
    assert rows["gray.jpg"] == {"angle": 1.5} and specs["angle"].kind == "continuous"
    csv_path.write_text("file,angle,depth\nrgb.png,0.5,1\ngray.jpg,nan,1e400\n")
    with pytest.raises(ValueError, match=r"line 3: non-finite values \{'angle': 'nan', 'depth': '1e400'\}"):
        read_factors_csv(csv_path)


def test_16_bit_float_and_rotated_images_load_as_displayed(tmp_path):
    """16-bit PNGs (depth maps) keep their gradations, float images span 0..255, EXIF orientation is applied."""
    ramp = np.tile(np.linspace(0, 65535, 16).astype(np.uint16), (16, 1))
    Image.fromarray(ramp).save(tmp_path / "depth16.png")
    loaded = load_image(tmp_path / "depth16.png", 16, mode="L")[..., 0]
    np.testing.assert_allclose(loaded[0].astype(float), ramp[0] / 257.0, atol=1.0)  # PIL alone: all 255 but one
    Image.fromarray(np.tile(np.linspace(2.0, 7.5, 16, dtype=np.float32), (16, 1)), mode="F").save(
        tmp_path / "depth.tiff")
    floats = load_image(tmp_path / "depth.tiff", 16, mode="L")[..., 0]
    assert floats.min() == 0 and floats.max() == 255 and np.all(np.diff(floats[0].astype(int)) > 0)
    pixels = np.zeros((8, 16, 3), dtype=np.uint8)
    pixels[:, :8] = 255  # stored 16 wide, 8 high: left half white
    stored = Image.fromarray(pixels)
    exif = stored.getexif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    stored.save(tmp_path / "phone.jpg", exif=exif)
    with Image.open(tmp_path / "phone.jpg") as image:
        assert image.size == (16, 8)
    shown = load_image(tmp_path / "phone.jpg", 8)  # displayed 8 wide, 16 high -> resized and centre-cropped
    assert shown.shape == (8, 8, 3)
    assert shown[:2].mean() > 200 and shown[-2:].mean() < 50  # the white half is now on top


def test_hash_split_is_roughly_80_10_10():
    splits = [split_of(f"img_{i:05d}.png") for i in range(3000)]
    counts = {s: splits.count(s) / len(splits) for s in ("train", "val", "test")}
    assert counts == pytest.approx({"train": 0.8, "val": 0.1, "test": 0.1}, abs=0.03)


def test_splits_partition_the_folder_and_survive_new_files(tmp_path):
    root = tmp_path / "img"
    root.mkdir()
    for i in range(30):
        Image.new("L", (8, 8), i).save(root / f"{i:02d}.png")

    def membership():
        return {s: {f.name for f in build_dataset("folder", split=s, resolution=8, root=root).files}
                for s in ("train", "val", "test")}

    before = membership()
    assert set().union(*before.values()) == {f"{i:02d}.png" for i in range(30)}
    assert sum(len(v) for v in before.values()) == 30
    Image.new("L", (8, 8), 99).save(root / "new.png")
    after = membership()
    assert all(before[s] <= after[s] for s in before)


def test_size_and_bad_arguments(tmp_path):
    _write_images(tmp_path / "img")
    assert len(_folder(tmp_path, size=2)) == 2
    with pytest.raises(ValueError, match="'hed'.*'canny'"):
        _folder(tmp_path, condition="hed")
    with pytest.raises(ValueError, match="no image files"):
        build_dataset("folder", root=tmp_path)
    with pytest.raises(ValueError, match="'CMYK'.*'L', 'RGB'"):
        _folder(tmp_path, cond_mode="CMYK")


def test_captions_from_a_csv_by_file_name_or_stem(tmp_path):
    files = _write_images(tmp_path / "img")
    rows = ["file,text"] + [f"{name if i % 2 else name.rsplit('.', 1)[0]},caption of {name}"
                            for i, name in enumerate(files)]
    (tmp_path / "captions.csv").write_text("\n".join(rows) + "\n")
    ds = _folder(tmp_path, captions_file=tmp_path / "captions.csv")
    assert {ds[i]["text"] for i in range(len(ds))} == {f"caption of {name}" for name in files}
    assert ds.captions() == [ds[i]["text"] for i in range(len(ds))]
    assert "text" not in _folder(tmp_path)[0] and _folder(tmp_path).captions() == [""] * len(files)
    (tmp_path / "partial.csv").write_text("file,text\nrgb.png,only one\n")
    with pytest.raises(ValueError, match="gray.jpg has no row in the captions file"):
        _folder(tmp_path, captions_file=tmp_path / "partial.csv")
    assert len(_folder(tmp_path, captions_file=tmp_path / "partial.csv", skip_bad=True)) == 1
    (tmp_path / "wrong.csv").write_text("name,caption\nrgb.png,x\n")
    with pytest.raises(ValueError, match="needs 'file' and 'text' columns and at least one row; it has name, caption"):
        _folder(tmp_path, captions_file=tmp_path / "wrong.csv")
