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

import hashlib
import io
from pathlib import Path

import datasets
import numpy as np
import torch
from PIL import Image

from lisa_probe.data import SPLITS, check_choice, check_index, check_resolution, make_sample
from lisa_probe.data.folder import (
    COND_MODES,
    HF_DATA_SUFFIXES,
    column_spec,
    condition_source,
    encode_factor,
    fit_image,
    split_of,
)

COND_SOURCES = ("column", "extractor")
SPLIT_NAMES = {"train": ("train",), "val": ("validation", "val"), "test": ("test",)}
DATA_FILE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".jsonl": "json", ".csv": "csv"}


def load_table(root: Path) -> datasets.DatasetDict:
    """The splits ``datasets`` finds at ``root`` (see the module docstring); ValueError naming ``root`` otherwise."""
    root = Path(root)
    if not root.exists():
        raise ValueError(f"dataset {root} does not exist")
    try:
        if root.is_file():
            if root.suffix not in HF_DATA_SUFFIXES:
                raise ValueError(f"dataset file {root} is not one of {', '.join(HF_DATA_SUFFIXES)}")
            return datasets.load_dataset(DATA_FILE_BUILDERS[root.suffix], data_files={"train": str(root)})
        if (root / "dataset_dict.json").exists() or (root / "state.json").exists():
            loaded = datasets.load_from_disk(str(root))
            return loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict(train=loaded)
        return datasets.load_dataset(str(root))
    except (FileNotFoundError, datasets.exceptions.DatasetNotFoundError, datasets.exceptions.DataFilesNotFoundError) \
            as error:
        raise ValueError(f"datasets cannot read {root}: {error}") from error


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
        self.condition, self._extract, self.cond_channels = condition_source(condition, cond_source == "column",
                                                                             cond_mode)
        self.factor_specs, self.factor_levels, self._factors = self._read_factors(factor_columns, carried_factors)

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
        return hashlib.sha1(f"{self.table._fingerprint}\0{self.rows}".encode()).hexdigest()

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
        image = fit_image(as_pil(row[self.image_column], self._base), self.resolution, "RGB", (255, 255, 255),
                          Image.Resampling.BILINEAR, centering).astype(np.float32) / 255.0
        if self._extract is not None:
            cond = self._extract(image)
        else:
            cond = fit_image(as_pil(row[self.conditioning_image_column], self._base), self.resolution, self.cond_mode,
                             (0, 0, 0), Image.Resampling.BILINEAR, centering).astype(np.float32) / 255.0
        factors = {name: values[row_index] for name, values in self._factors.items()}
        sample = make_sample(image, cond, factors, f"captioned/{self.split}/{self.table_split}-{row_index}")
        sample["text"] = first_caption(row[self.caption_column]) if self.caption_column is not None else ""
        return sample


def as_pil(cell, base: Path) -> Image.Image:
    """A table cell as a PIL image: ``datasets``' Image feature decodes to one; a dict with ``bytes`` or ``path``
    (an undecoded cell) or a path string (relative to ``base``: an imagefolder's extra image columns) is opened."""
    if isinstance(cell, Image.Image):
        return cell
    if isinstance(cell, dict) and cell.get("bytes") is not None:
        return Image.open(io.BytesIO(cell["bytes"]))
    if isinstance(cell, dict) and cell.get("path"):
        return Image.open(base / cell["path"])
    if isinstance(cell, str):
        return Image.open(base / cell)
    raise ValueError(f"cannot read an image from a cell of type {type(cell).__name__}")


def first_caption(cell) -> str:
    """A caption cell as one string: a list of captions gives its first one, None gives the empty prompt."""
    if isinstance(cell, (list, tuple)):
        return str(cell[0]) if cell else ""
    return "" if cell is None else str(cell)


__all__ = ["COND_SOURCES", "CaptionedDataset", "load_table"]
