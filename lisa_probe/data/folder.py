"""A directory of user images, with conditions from a matching directory or from a named extractor.

Images of any size and mode (RGB, RGBA / LA / transparent palette composited on white, grey, palette) are read with
PIL, resized so that the shorter side equals ``resolution`` and centre-cropped; condition images likewise, their
transparency composited on black. Files are assigned to splits by a hash of their file name (80 / 10 / 10 % by
default), so adding files never moves existing ones between splits. The split's images (and conditions from
``cond_dir``) are decoded once, at construction, and kept as uint8 arrays.

Optional factors come from a CSV file with a ``file`` column (file name with or without extension) and one column
per factor. A column is categorical when it is not numeric, or holds integers with at most ``MAX_CATEGORIES``
distinct values: its values are then coded 0..K-1 in sorted order (``factor_levels`` keeps the original values);
other numeric columns are continuous. Whether the condition carries a factor is unknown, so every factor is
``carried=False`` unless it is named in ``carried_factors``."""

from __future__ import annotations

import csv
import hashlib
import math
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from lisa_probe.data import SPLITS, FactorSpec, check_index, check_resolution, make_sample
from lisa_probe.data.condition_kinds import DEFAULT_CONDITION
from lisa_probe.data.conditions import get_extractor
from lisa_probe.options import check_choice

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
COND_MODES = ("L", "RGB")
MAX_CATEGORIES = 20
MIN_IMAGE_SIDE = 8  # pixels: a smaller image is refused as a bad file
DEFAULT_COND_DIR_LABEL = "custom"


def list_images(directory: Path) -> list[Path]:
    """Image files (by extension) directly inside ``directory``, sorted by name."""
    return sorted(p for p in Path(directory).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


HF_DATA_SUFFIXES = (".parquet", ".arrow", ".jsonl", ".csv")


def looks_like_a_hf_dataset(root: Path) -> bool:
    """Whether ``root`` is a data file or a directory that ``datasets`` reads (data files, a ``data/`` folder, a
    ``save_to_disk`` directory, an imagefolder's ``metadata.jsonl``)."""
    root = Path(root)
    if root.is_file():
        return root.suffix in HF_DATA_SUFFIXES
    if not root.is_dir():
        return False
    markers = ("dataset_dict.json", "dataset_info.json", "state.json", "metadata.jsonl", "metadata.csv")
    return (any((root / name).exists() for name in markers) or (root / "data").is_dir()
            or any(path.suffix in (".parquet", ".arrow") for path in root.iterdir()))


def condition_source(condition: str | None, given: bool, cond_mode: str):
    """(condition label, extractor or None, channels) of a dataset whose conditions are ``given`` as images (read in
    ``cond_mode``; the label defaults to ``"custom"``) or made from the image by ``condition``'s extractor (default
    ``"canny"``, one channel)."""
    if not given:
        label = DEFAULT_CONDITION["folder"] if condition is None else condition
        return label, get_extractor(label), 1
    return (DEFAULT_COND_DIR_LABEL if condition is None else condition), None, 1 if cond_mode == "L" else 3


def split_of(file_name: str, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> str:
    """The split of a file, from a SHA-1 hash of its name: stable when other files are added or removed."""
    position = int(hashlib.sha1(file_name.encode("utf-8")).hexdigest()[:8], 16) / 2**32
    cumulative = np.cumsum(fractions) / np.sum(fractions)
    return SPLITS[min(int(np.searchsorted(cumulative, position, side="right")), len(SPLITS) - 1)]


def _flatten_alpha(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """RGB version of ``image``, with any transparency composited over ``background``."""
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        base = Image.new("RGBA", rgba.size, background + (255,))
        return Image.alpha_composite(base, rgba).convert("RGB")
    return image.convert("RGB")


def _to_8_bit(image: Image.Image) -> Image.Image:
    """8-bit greyscale for 16- and 32-bit images (PIL's own conversion clips them): 16-bit integers scaled from
    their full range (0..65535), 32-bit integers and floats from the image's own min..max (e.g. a depth map in
    metres). Other images unchanged."""
    if not image.mode.startswith(("I", "F")):
        return image
    values = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16"):
        low, high = 0.0, 65535.0
    else:
        low, high = float(values.min()), float(values.max())
    scaled = (values - low) / max(high - low, np.finfo(np.float64).tiny) * 255.0
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


def load_image(path: Path, resolution: int, mode: str = "RGB", background: tuple[int, int, int] = (255, 255, 255),
               resample: Image.Resampling = Image.Resampling.BICUBIC) -> np.ndarray:
    """Read ``path`` and ``fit_image`` it.

    Returns:
        uint8 array (H, W, C) with H = W = ``resolution`` and C = 3 for ``mode="RGB"``, 1 for ``mode="L"``.
    """
    with Image.open(path) as image:
        return fit_image(image, resolution, mode, background, resample)


def load_condition(path: Path, resolution: int, channels: int) -> torch.Tensor:
    """A conditioning image file of your own (diffusers' ``--validation_image``) as the datasets read theirs: RGB
    for 3 channels, L for 1, on black, the shorter side resized (bilinear) and centre-cropped; (C, H, W) float32 in
    [0, 1]; ValueError naming a file that cannot be read."""
    try:
        array = load_image(Path(path), resolution, "L" if channels == 1 else "RGB", (0, 0, 0),
                           Image.Resampling.BILINEAR)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"--validation-image {str(path)!r}: {type(error).__name__}: {error}") from error
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float32) / 255.0)


def fit_image(image: Image.Image, resolution: int, mode: str = "RGB", background: tuple[int, int, int] = (255, 255, 255),
              resample: Image.Resampling = Image.Resampling.BICUBIC,
              centering: tuple[float, float] = (0.5, 0.5)) -> np.ndarray:
    """An image as displayed (EXIF orientation applied; 16/32-bit and float images scaled to 8 bits, see
    ``_to_8_bit``), transparency flattened onto ``background``, the shorter side resized to ``resolution`` and
    cropped at ``centering`` (PIL's: (0.5, 0.5) the centre, (0, 0) the top left); ValueError for an image under
    ``MIN_IMAGE_SIDE`` px.

    Returns:
        uint8 array (H, W, C) with H = W = ``resolution`` and C = 3 for ``mode="RGB"``, 1 for ``mode="L"``.
    """
    if min(image.size) < MIN_IMAGE_SIDE:
        raise ValueError(f"{image.size[0]}x{image.size[1]} px is smaller than the {MIN_IMAGE_SIDE} px this dataset "
                         "reads (it would be upscaled to nothing but blur)")
    flat = _flatten_alpha(_to_8_bit(ImageOps.exif_transpose(image)), background).convert(mode)
    fitted = ImageOps.fit(flat, (resolution, resolution), method=resample, centering=centering)
    return np.asarray(fitted, dtype=np.uint8).reshape(resolution, resolution, -1)


def _parse_number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def column_spec(name: str, cells: list[str], carried: bool, source: str = "the factors CSV") \
        -> tuple[FactorSpec, list | None]:
    """Infer the spec of one factor column from its cells; returns it with the sorted levels of a categorical column
    (else None)."""
    numbers = [_parse_number(cell) for cell in cells]
    if any(number is None for number in numbers):
        levels = sorted(set(cells))
    elif all(number.is_integer() for number in numbers) and len(set(numbers)) <= MAX_CATEGORIES:
        levels = sorted({int(number) for number in numbers})
    else:
        return FactorSpec(name, "continuous", carried, None, f"from {source}"), None
    return FactorSpec(name, "categorical", carried, len(levels), f"from {source}, levels {levels}",
                      levels=tuple(map(str, levels))), levels


def read_csv_rows(path: Path, what: str) -> list[dict]:
    """The rows of a UTF-8 CSV (a byte-order mark, as Excel writes, is dropped); ValueError naming ``path`` for a file
    that is not UTF-8 text, and naming the lines of a ``file`` value given twice."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            table = list(csv.DictReader(handle))
    except UnicodeDecodeError as error:
        raise ValueError(f"{what} {path} is not a UTF-8 text CSV ({error.reason} at byte {error.start})") from error
    except csv.Error as error:
        raise ValueError(f"{what} {path} is not a readable CSV: {error}") from error
    seen: dict[str, int] = {}
    for line, row in enumerate(table, start=2):
        name = row.get("file")
        if name is not None and name in seen:
            raise ValueError(f"{what} {path}: file {name!r} has two rows (lines {seen[name]} and {line}); keep one")
        seen[name] = line
    return table


def read_captions_csv(path: Path) -> dict[str, str]:
    """A captions CSV (``file`` and ``text`` columns, as the factors CSV names files): file name or stem -> caption."""
    table = read_csv_rows(path, "captions file")
    if not table or not {"file", "text"} <= set(table[0]):
        raise ValueError(f"captions file {path} needs 'file' and 'text' columns and at least one row"
                         f"{'; it has ' + ', '.join(table[0]) if table else ''}")
    return {row["file"]: row["text"] or "" for row in table}


def check_named_files(names, root: Path, source: str) -> None:
    """ValueError naming the first entry of ``names`` (file names or stems, from ``source``) that is no image of
    ``root``."""
    files = list_images(root)
    known = {path.name for path in files} | {path.stem for path in files}
    unknown = sorted(set(names) - known)
    if unknown:
        raise ValueError(f"{source} names {len(unknown)} file(s) that are not images in {root}, e.g. {unknown[0]!r}")


def read_factors_csv(path: Path, carried_factors=()) -> tuple[dict, dict, dict]:
    """Read a factors CSV.

    Returns:
        ``(rows, specs, levels)``: file name -> {factor: int | float}, factor -> FactorSpec, and categorical
        factor -> list of original values (code i stands for ``levels[factor][i]``).
    """
    table = read_csv_rows(path, "factors CSV")
    if not table or "file" not in table[0]:
        raise ValueError(f"factors CSV {path} needs a 'file' column and at least one row")
    columns = [c for c in table[0] if c != "file"]
    for factor in carried_factors:
        check_choice(f"carried factor (columns of {path})", factor, columns)
    for row_number, row in enumerate(table, start=2):
        missing = [c for c in columns if not (row[c] or "").strip()]
        if missing:
            raise ValueError(f"factors CSV {path}, line {row_number}: empty value for {missing}")
        infinite = {c: row[c] for c in columns if not math.isfinite(_parse_number(row[c]) or 0.0)}
        if infinite:
            raise ValueError(f"factors CSV {path}, line {row_number}: non-finite values {infinite}; factors must be "
                             "finite numbers or category names")
    specs, levels = {}, {}
    for column in columns:
        spec, column_levels = column_spec(column, [row[column].strip() for row in table], column in carried_factors)
        specs[column] = spec
        if column_levels is not None:
            levels[column] = column_levels
    rows = {row["file"]: {c: encode_factor(row[c].strip(), levels.get(c)) for c in columns} for row in table}
    return rows, specs, levels


def encode_factor(cell: str, levels: list | None) -> int | float:
    """A factor cell's value: its code among ``levels`` for a categorical factor, the number for a continuous one."""
    if levels is None:
        return float(cell)
    return levels.index(cell if isinstance(levels[0], str) else int(float(cell)))


class FolderDataset(torch.utils.data.Dataset):
    """Images from a user directory; see the module docstring.

    Items: ``{"image": (3, H, W) in [-1, 1], "cond": (C, H, W) in [0, 1], "factors": dict (empty without a CSV),
    "id": "folder/<split>/<file name>"}`` (and ``"text"`` with a captions file); C = 1 for extractors and ``cond_mode="L"``, 3 for ``cond_mode="RGB"``.

    Args:
        split, resolution, size: as in :func:`lisa_probe.data.build_dataset`; ``size`` keeps the split's first files.
        condition: with ``cond_dir``, a free label for the condition kind (default ``"custom"``); without it, the name
            of a kind an extractor makes (``condition_kinds.extractor_kinds()``; default ``"canny"``).
        seed: accepted for a uniform interface; nothing here is random.
        root: directory of the images (not searched recursively).
        cond_dir: directory of condition images with the same file stems (any image extension).
        cond_mode: ``"L"`` (one channel) or ``"RGB"`` for conditions read from ``cond_dir``.
        factors_csv: CSV with a ``file`` column and factor columns.
        carried_factors: CSV columns the condition carries.
        skip_bad: skip unreadable images, images under ``MIN_IMAGE_SIDE`` px and images without a condition / CSV
            row, with one warning listing each, instead of raising one error listing each.
        split_fractions: train / val / test fractions of the hash partition.
        captions_file: CSV with ``file`` and ``text`` columns: each image's caption (items then have ``"text"``).
    """

    name = "folder"

    def __init__(self, split: str = "train", resolution: int = 32, condition: str | None = None, seed: int = 0,
                 size: int | None = None, *, root: str | Path, cond_dir: str | Path | None = None,
                 cond_mode: str = "L", factors_csv: str | Path | None = None, carried_factors=(),
                 skip_bad: bool = False, split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
                 captions_file: str | Path | None = None):
        check_choice("split", split, SPLITS)
        check_choice("cond_mode", cond_mode, COND_MODES)
        self.split, self.seed = split, int(seed)
        self.resolution = check_resolution(resolution)
        self.root = Path(root)
        self.skip_bad = skip_bad
        self.split_fractions = tuple(float(f) for f in split_fractions)
        self.condition, self._extract, self.cond_channels = condition_source(condition, cond_dir is not None,
                                                                             cond_mode)
        self.factor_specs, self.factor_levels, csv_rows = {}, {}, None
        if factors_csv is not None:
            csv_rows, self.factor_specs, self.factor_levels = read_factors_csv(Path(factors_csv), carried_factors)
        elif carried_factors:
            raise ValueError("carried_factors needs a factors_csv")
        cond_files = self._index_cond_dir(Path(cond_dir)) if cond_dir is not None else None
        captions = read_captions_csv(Path(captions_file)) if captions_file is not None else None
        if captions is not None and self.root.is_dir():
            check_named_files(captions, self.root, f"captions file {captions_file}")
        self.files, self.factors, images, conds, bad = [], [], [], [], []
        self.texts: list[str] | None = None if captions is None else []
        for path in self._split_files(split_fractions, size):
            if size is not None and len(self.files) >= size:
                break
            try:
                if captions is not None and captions.get(path.name, captions.get(path.stem)) is None:
                    raise ValueError(f"image {path} has no row in the captions file")
                loaded = self._load_one(path, cond_files, csv_rows, cond_mode)
            except (OSError, ValueError) as error:
                bad.append(str(error))
                continue
            if captions is not None:
                self.texts.append(captions.get(path.name, captions.get(path.stem)))
            self.files.append(path)
            images.append(loaded[0])
            conds.append(loaded[1])
            self.factors.append(loaded[2])
        if bad:
            listing = "\n  ".join(bad)
            if not skip_bad:
                raise ValueError(f"{len(bad)} bad file(s) in the {split} split of {self.root}:\n  {listing}\n"
                                 "fix or remove them, or skip them with --skip-bad-files (skip_bad=True)")
            warnings.warn(f"skipped {len(bad)} bad file(s) in the {split} split of {self.root}:\n  {listing}",
                          stacklevel=2)
        empty = np.zeros((0, self.resolution, self.resolution, 3), np.uint8)
        self.images = np.stack(images) if images else empty
        self.conds = None if cond_dir is None else (np.stack(conds) if conds else empty[..., :self.cond_channels])

    def content_digest(self) -> str:
        """SHA-1 (hex) of every image file's name, size and modification time under ``root``: it changes when the
        folder's contents do (read-back caches key on it)."""
        digest = hashlib.sha1()
        for path in list_images(self.root):
            stat = path.stat()
            digest.update(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()

    def _split_files(self, split_fractions: tuple[float, float, float], size: int | None) -> list[Path]:
        """The image files of this split, in name order; ``ValueError`` for an empty root or a negative size."""
        if size is not None and size < 0:
            raise ValueError(f"size must be >= 0, got {size!r}")
        hint = (" (it looks like a `datasets` dataset: read it with --dataset captioned)"
                if looks_like_a_hf_dataset(self.root) else "")
        if not self.root.is_dir():
            raise ValueError(f"--data-root {self.root} is not a directory of images{hint}")
        files = list_images(self.root)
        if not files:
            raise ValueError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in {self.root}{hint}")
        return [f for f in files if split_of(f.name, split_fractions) == self.split]

    @staticmethod
    def _index_cond_dir(cond_dir: Path) -> dict[str, Path]:
        """Condition files by stem; ``ValueError`` if a stem appears with two extensions."""
        by_stem = {}
        for path in list_images(cond_dir):
            if path.stem in by_stem:
                raise ValueError(f"ambiguous condition files for stem {path.stem!r}: {by_stem[path.stem]}, {path}")
            by_stem[path.stem] = path
        return by_stem

    def _load_one(self, path: Path, cond_files: dict | None, csv_rows: dict | None, cond_mode: str):
        """(image (H, W, 3) uint8, condition (H, W, C) uint8 or None, factors) for ``path``; OSError or ValueError
        naming the file when it cannot be used."""
        factors = {}
        if csv_rows is not None:
            row = csv_rows.get(path.name, csv_rows.get(path.stem))
            if row is None:
                raise ValueError(f"image {path} has no row in the factors CSV")
            factors = dict(row)
        cond = None
        if cond_files is not None:
            if path.stem not in cond_files:
                raise ValueError(f"image {path} has no condition file with stem {path.stem!r}")
            cond = self._read(cond_files[path.stem], cond_mode, (0, 0, 0), Image.Resampling.BILINEAR)
        return self._read(path, "RGB", (255, 255, 255), Image.Resampling.BICUBIC), cond, factors

    def _read(self, path: Path, mode: str, background: tuple, resample) -> np.ndarray:
        try:
            return load_image(path, self.resolution, mode, background, resample)
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            raise OSError(f"cannot read image file {path}: {error}") from error

    def __len__(self) -> int:
        return len(self.files)

    def captions(self) -> list[str]:
        """Every item's caption (empty prompts without a captions file)."""
        return list(self.texts) if self.texts is not None else [""] * len(self.files)

    def __getitem__(self, index: int) -> dict:
        index = check_index(index, len(self.files))
        image = self.images[index].astype(np.float32) / 255.0
        cond = self._extract(image) if self.conds is None else self.conds[index].astype(np.float32) / 255.0
        sample = make_sample(image, cond, dict(self.factors[index]), f"folder/{self.split}/{self.files[index].name}")
        if self.texts is not None:
            sample["text"] = self.texts[index]
        return sample


__all__ = ["FolderDataset", "condition_source", "fit_image", "list_images", "load_image", "read_captions_csv",
           "read_factors_csv", "split_of"]
