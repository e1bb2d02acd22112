"""A captioned, paired dataset read with Hugging Face ``datasets``, in diffusers' ControlNet-trainer conventions.

``root`` is what ``datasets`` reads: a directory for ``load_dataset(root)`` (parquet / arrow shards, a ``data/``
folder, an imagefolder with ``metadata.jsonl``), a directory written by ``save_to_disk``, or one data file
(``.parquet``, ``.arrow``, ``.jsonl``, ``.csv``). Columns as diffusers' ``train_controlnet.py`` names them: ``image``,
``conditioning_image``, ``text`` by default (``image_column``, ``conditioning_image_column``, ``caption_column``);
a list of captions in a cell gives its first one.

Images and conditioning images are resized (shorter side to ``resolution``, bilinear as diffusers' trainer) and
centre-cropped, decoded when an item is read (nothing is held in memory but the table). The conditioning image is
used as it is (``cond_mode`` RGB by default, 3 channels, so that diffusers' pipelines take the same PIL images; L
for one channel); with ``cond_source="extractor"`` the condition is made from the image by the named extractor
(``--condition canny`` ...) instead.

Splits: the dataset's own ``train`` / ``validation`` (or ``val``) / ``test`` splits where it has a validation split
(test falls back to validation when there is none); a dataset without one is partitioned by a hash of each row's index and ``split_seed``: ``val_fraction`` of the rows
each to val and test, the rest to train (stable when rows are appended). ``max_train_samples`` keeps that many
train rows, drawn with the run's seed (diffusers shuffles with the seed and selects the first N).

Factors for the analysis come from ``factor_columns`` (inferred categorical / continuous as the folder dataset's
factors CSV); ``carried_factors`` names those the condition carries.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from PIL import Image

from lisa_probe.data import SPLITS, DataError, check_index, check_resolution, make_sample
from lisa_probe.data.folder import (
    COND_MODES,
    HF_DATA_SUFFIXES,
    column_spec,
    condition_source,
    encode_factor,
    fit_image,
    split_of,
)
from lisa_probe.options import check_choice

COND_SOURCES = ("column", "extractor")
SPLIT_NAMES = {"train": ("train",), "val": ("validation", "val"), "test": ("test",)}
DATA_FILE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".jsonl": "json", ".csv": "csv"}


def load_table(root: Path) -> datasets.DatasetDict:
    """The splits ``datasets`` finds at ``root`` (see the module docstring); ValueError naming ``root`` (and the split
    or file) when it does not exist, cannot be read, or has a split without rows."""
    root = Path(root)
    if not root.exists():
        raise ValueError(f"dataset {root} does not exist")
    if root.is_file() and root.suffix not in HF_DATA_SUFFIXES:
        raise ValueError(f"dataset file {root} is not one of {', '.join(HF_DATA_SUFFIXES)}")
    if root.is_dir() and (root / "dataset_dict.json").exists():
        check_saved_splits(root)
    try:
        if root.is_file():
            table = datasets.load_dataset(DATA_FILE_BUILDERS[root.suffix], data_files={"train": str(root)})
        elif (root / "dataset_dict.json").exists() or (root / "state.json").exists():
            loaded = datasets.load_from_disk(str(root))
            table = loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict(train=loaded)
        else:
            table = datasets.load_dataset(str(root))
    except (datasets.exceptions.DatasetNotFoundError, datasets.exceptions.DataFilesNotFoundError) as error:
        raise ValueError(f"datasets cannot read {root}: {error}") from error
    except (ValueError, OSError, IndexError, KeyError, TypeError, UnicodeDecodeError) as error:
        # an empty data file ("corresponds to no data"), a damaged parquet / arrow file, a malformed jsonl ...
        reason = "it holds no rows" if "corresponds to no data" in str(error) else f"{type(error).__name__}: {error}"
        raise ValueError(f"datasets cannot read {root} ({reason}); expected parquet / arrow / jsonl / csv data "
                         "with image, conditioning image and caption columns".replace("\n", " ")) from error
    empty = [name for name, split in table.items() if len(split) == 0]
    if empty:
        raise ValueError(f"dataset {root}: split(s) {', '.join(empty)} hold no rows")
    return table


def check_saved_splits(root: Path) -> None:
    """ValueError naming a split of a ``save_to_disk`` directory that holds no data files (``datasets`` itself fails
    with an IndexError on one)."""
    try:
        splits = json.loads((root / "dataset_dict.json").read_text())["splits"]
        states = {name: json.loads((root / name / "state.json").read_text()) for name in splits}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{root} is not a readable save_to_disk directory ({type(error).__name__}: {error})") \
            from error
    empty = [name for name, state in states.items() if not state.get("_data_files")]
    if empty:
        raise ValueError(f"dataset {root}: split(s) {', '.join(empty)} hold no rows (save_to_disk wrote no data "
                         "files for them); drop them or add rows")


def named_split(table: datasets.DatasetDict, split: str) -> str | None:
    """The table's own name for ``split`` (``validation`` or ``val`` for val), or None when it has none."""
    return next((name for name in SPLIT_NAMES[split] if name in table), None)


CROP_STREAM = 7  # the random-crop draws' stream in np.random.default_rng([seed, CROP_STREAM, draw])


class CaptionedDataset(torch.utils.data.Dataset):
    """Rows of a ``datasets`` table; see the module docstring.

    Items: ``{"image": (3, H, W) in [-1, 1], "cond": (C, H, W) in [0, 1], "text": str, "factors": dict,
    "id": "captioned/<split>/<row index in its table split>"}``.
    """

    name = "captioned"

    def __init__(self, split: str = "train", resolution: int = 64, condition: str | None = None, seed: int = 0,
                 size: int | None = None, *, root: str | Path, image_column: str = "image",
                 conditioning_image_column: str = "conditioning_image", caption_column: str | None = "text",
                 cond_source: str = "column", cond_mode: str = "RGB", factor_columns: tuple[str, ...] = (),
                 carried_factors: tuple[str, ...] = (), val_fraction: float = 0.1, split_seed: int = 0,
                 max_train_samples: int | None = None, random_crop: bool = False):
        check_choice("split", split, SPLITS)
        check_choice("condition source", cond_source, COND_SOURCES)
        check_choice("conditioning image mode", cond_mode, COND_MODES)
        if not 0 <= val_fraction < 0.5:
            raise ValueError(f"val_fraction must be in [0, 0.5), got {val_fraction!r}")
        self.split, self.seed, self.root = split, int(seed), Path(root)
        self.takes_draws = bool(random_crop)  # the loader then passes draw numbers (``__getitem__``)
        self._base = self.root if self.root.is_dir() else self.root.parent  # where relative image paths start
        self.resolution = check_resolution(resolution)
        self.image_column, self.conditioning_image_column = image_column, conditioning_image_column
        self.caption_column, self.cond_source, self.cond_mode = caption_column, cond_source, cond_mode
        table = load_table(self.root)
        if named_split(table, "val") is not None:  # the table's own splits; test falls back to validation
            source = named_split(table, split) or named_split(table, "val" if split == "test" else "train")
            partition = False
        else:  # a single split, partitioned by row
            source, partition = named_split(table, "train") or next(iter(table)), True
        if source is None:
            raise ValueError(f"{self.root} has no {split} split (its splits: {', '.join(table)})")
        self.table, self.table_split = table[source], source
        self._check_columns(factor_columns, carried_factors)
        self._fingerprint = self.table._fingerprint  # before the casts below: caches key on the data alone
        self.image_columns = [self.image_column] + ([self.conditioning_image_column] if cond_source == "column" else [])
        for column in self.image_columns:  # decoded by ``as_pil``, so that an error names its row and column
            if isinstance(self.table.features[column], datasets.Image):
                self.table = self.table.cast_column(column, datasets.Image(decode=False))
        fractions = (1 - 2 * val_fraction, val_fraction, val_fraction)
        rows = [i for i in range(len(self.table))
                if not partition or split_of(f"{split_seed}:{i}", fractions) == split]
        if split == "train" and max_train_samples is not None:
            if max_train_samples < 1:
                raise ValueError(f"max_train_samples must be >= 1, got {max_train_samples}")
            order = np.random.default_rng(self.seed).permutation(len(rows))[:max_train_samples]
            rows = [rows[i] for i in sorted(order)]
        if size is not None:
            rows = rows[:size]
        if not rows:
            raise ValueError(f"the {split} split of {self.root} is empty ({len(self.table)} rows in its "
                             f"{source!r} split; val_fraction {val_fraction})")
        self.rows = rows
        self._check_cells()
        self.condition, self._extract, self.cond_channels = condition_source(condition, cond_source == "column",
                                                                             cond_mode)
        self.factor_specs, self.factor_levels, self._factors = self._read_factors(factor_columns, carried_factors)
        self.reads_images = True  # False: items carry an empty image (``without_images``)

    def without_images(self) -> CaptionedDataset:
        """This split with items whose ``"image"`` is empty ((3, 0, 0): not decoded) where the condition is a column
        of its own: for a run that reads its images' latents from a cache, so a step decodes the conditions alone
        (at 512 px the image's decode and resize are most of an item's cost). Itself when the condition is made
        from the image."""
        if self._extract is not None:
            return self
        view = copy.copy(self)
        view.reads_images = False
        return view

    def _check_columns(self, factor_columns, carried_factors) -> None:
        """ValueError naming a missing column and listing the columns there are."""
        wanted = [("image", self.image_column)]
        if self.cond_source == "column":
            wanted.append(("conditioning image", self.conditioning_image_column))
        if self.caption_column is not None:
            wanted.append(("caption", self.caption_column))
        wanted += [("factor", column) for column in factor_columns]
        columns = self.table.column_names
        for what, column in wanted:
            if column not in columns:
                raise ValueError(f"{what} column {column!r} is not in {self.root} ({self.table_split} split); its "
                                 f"columns: {', '.join(columns)}")
        for factor in carried_factors:
            check_choice("carried factor (of the factor columns)", factor, factor_columns)

    def _check_cells(self) -> None:
        """ValueError naming the first row whose caption is not a string (or a non-empty list of strings, as diffusers'
        trainer reads them) or whose image cell names a file that does not exist; no image is decoded."""
        where = f"{self.root} ({self.table_split} split)"
        if self.caption_column is not None:
            captions = self.table[self.caption_column]
            for row in self.rows:
                cell = captions[row]
                if not (isinstance(cell, str) or (isinstance(cell, (list, tuple)) and cell
                                                  and all(isinstance(item, str) for item in cell))):
                    raise ValueError(f"{where}, row {row}, column {self.caption_column!r}: a caption must be a string "
                                     f"or a non-empty list of strings, got {type(cell).__name__} {cell!r:.60}")
        for column in self.image_columns:
            named = named_files(self.table.data.column(column))
            for row in self.rows:
                if named[row] is not None and not (self._base / named[row]).is_file():
                    raise ValueError(f"{where}, row {row}, column {column!r}: image file {self._base / named[row]} "
                                     "does not exist")

    def _read_factors(self, factor_columns, carried_factors):
        specs, levels, values = {}, {}, {}
        for column in factor_columns:
            cells = [str(cell) for cell in self.table[column]]
            spec, column_levels = column_spec(column, cells, column in carried_factors, f"column {column!r}")
            specs[column] = spec
            if column_levels is not None:
                levels[column] = column_levels
            values[column] = [encode_factor(cell, column_levels) for cell in cells]
        return specs, levels, values

    def content_digest(self) -> str:
        """SHA-1 (hex) of the table's fingerprint (``datasets``' hash of its contents) and of the row selection:
        read-back caches key on it."""
        return hashlib.sha1(f"{self._fingerprint}\0{self.rows}".encode()).hexdigest()

    def __len__(self) -> int:
        return len(self.rows)

    def captions(self) -> list[str]:
        """The caption of every item, in order (read from the caption column alone, no images decoded)."""
        if self.caption_column is None:
            return [""] * len(self.rows)
        captions = self.table[self.caption_column]  # the column alone, read at once
        return [first_caption(captions[row]) for row in self.rows]

    def __getitem__(self, index: int) -> dict:
        """Item ``index``, centre-cropped; with ``random_crop``, ``index`` is a draw number d (the loader's ``epoch
        * N + i``): item ``d % N`` cropped at a place drawn from (seed, d), the same for its image and condition, so
        that every epoch crops anew and a resumed run draws the same crops."""
        centering = (0.5, 0.5)
        if self.takes_draws:
            centering = tuple(np.random.default_rng([self.seed, CROP_STREAM, int(index)]).random(2))
            index = int(index) % len(self.rows)
        index = check_index(index, len(self.rows))
        row_index = self.rows[index]
        row = self.table[row_index]
        if self.reads_images:
            image = self._read_image(row, row_index, self.image_column, "RGB", (255, 255, 255), centering)
        else:
            image = np.zeros((0, 0, 3), dtype=np.float32)
        if self._extract is not None:
            cond = self._extract(image)
        else:
            cond = self._read_image(row, row_index, self.conditioning_image_column, self.cond_mode, (0, 0, 0),
                                    centering)
        factors = {name: values[row_index] for name, values in self._factors.items()}
        sample = make_sample(image, cond, factors, f"captioned/{self.split}/{self.table_split}-{row_index}")
        sample["text"] = first_caption(row[self.caption_column]) if self.caption_column is not None else ""
        return sample


    def _read_image(self, row: dict, row_index: int, column: str, mode: str, background, centering) -> np.ndarray:
        """One image cell fitted to the resolution, (H, W, C) float32 in [0, 1]; ``DataError`` naming the file, row
        and column of an image that cannot be decoded or is too small."""
        try:
            return fit_image(as_pil(row[column], self._base), self.resolution, mode, background,
                             Image.Resampling.BILINEAR, centering).astype(np.float32) / 255.0
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            raise DataError(f"{self.root} ({self.table_split} split), row {row_index}, column {column!r}: "
                            f"{type(error).__name__}: {error}") from error


def named_files(column: pa.ChunkedArray) -> list[str | None]:
    """The file each cell of an image column names (a path string, or an Image cell's ``path`` where it holds no
    ``bytes``; None otherwise), read from the Arrow column without touching the image bytes."""
    if pa.types.is_struct(column.type):
        paths = pc.struct_field(column, "path")
        return pc.if_else(pc.is_null(pc.struct_field(column, "bytes")), paths,
                          pa.scalar(None, paths.type)).to_pylist()
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return column.to_pylist()
    return [None] * len(column)


def image_path(cell, base: Path) -> Path | None:
    """The file an image cell names (a path string, or an undecoded cell with a path and no bytes), else None."""
    if isinstance(cell, str):
        return base / cell
    if isinstance(cell, dict) and cell.get("bytes") is None and cell.get("path"):
        return base / cell["path"]
    return None


def as_pil(cell, base: Path) -> Image.Image:
    """A table cell as a PIL image: ``datasets``' Image feature decodes to one; a dict with ``bytes`` or ``path``
    (an undecoded cell) or a path string (relative to ``base``: an imagefolder's extra image columns) is opened."""
    if isinstance(cell, Image.Image):
        return cell
    if isinstance(cell, dict) and cell.get("bytes") is not None:
        image = Image.open(io.BytesIO(cell["bytes"]))
        image.load()
        return image
    path = image_path(cell, base)
    if path is not None:
        with Image.open(path) as image:
            image.load()
            return image
    raise ValueError(f"cannot read an image from a cell of type {type(cell).__name__}")


def first_caption(cell) -> str:
    """A caption cell (checked by ``CaptionedDataset._check_cells``) as one string: a list gives its first one."""
    return cell[0] if isinstance(cell, (list, tuple)) else cell


__all__ = ["COND_SOURCES", "CaptionedDataset", "load_table"]
