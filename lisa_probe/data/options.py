"""Where a run's data come from (``DataOptions``, shared by every command that reads a dataset) and the option
values of the data stage. Light: importing it loads no torch, so command lines parse quickly."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from lisa_probe.data import DATASET_NAMES
from lisa_probe.options import check_choice, check_number, option

PROMPT_MODES = ("caption", "empty")  # what a text-conditioned forward gets: each row's caption, or the empty prompt


def names_list(text: str) -> tuple[str, ...]:
    """A comma-separated option as a tuple of names ('' gives none)."""
    return tuple(name.strip() for name in text.split(",") if name.strip())


@dataclass
class DataOptions:
    """Where a side net's data come from: the dataset and, for ``captioned`` (a ``datasets`` table) and ``folder``,
    its location and columns (option names as diffusers' ControlNet trainer's: ``--image-column`` ...)."""

    dataset: str = field(default="shapes", metadata=option("training data (captioned: a `datasets` table with image, "
                                                           "conditioning image and caption columns)",
                                                           choices=DATASET_NAMES))
    condition: str | None = field(default=None, metadata=option(
        "condition kind (default: the dataset's; for your own conditioning images a label, e.g. canny, which picks "
        "its control metric)"))
    data_root: str | None = field(default=None, metadata=option(
        "folder: the image directory; captioned: a load_dataset directory, a save_to_disk directory or a data file "
        "(parquet, arrow, jsonl, csv)"))
    skip_bad_files: bool = field(default=False, metadata=option("folder dataset: skip unreadable or tiny images "
                                                               "(listed in a warning) instead of stopping"))
    image_column: str = field(default="image", metadata=option("captioned: the target image column"))
    conditioning_image_column: str = field(default="conditioning_image", metadata=option(
        "captioned: the conditioning image column"))
    caption_column: str | None = field(default="text", metadata=option("captioned: the caption column (none: no "
                                                                       "captions, the empty prompt)"))
    cond_source: str = field(default="column", metadata=option(
        "captioned: conditions from the conditioning image column, or made from the image by --condition's "
        "extractor", choices=("column", "extractor")))
    cond_mode: str = field(default="RGB", metadata=option("captioned, folder with --conditioning-dir: conditioning "
                                                          "images as RGB (3 channels, what diffusers' pipelines "
                                                          "take) or L (1)", choices=("RGB", "L")))
    factor_columns: str = field(default="", metadata=option("captioned: comma-separated columns recorded as factors "
                                                            "for the analysis"))
    carried_factors: str = field(default="", metadata=option("captioned, folder: the factor columns the condition "
                                                             "carries"))
    val_fraction: float = field(default=0.1, metadata=option(
        "captioned without a validation split: the fraction of rows each for val and test (by a hash of the row)"))
    max_train_samples: int | None = field(default=None, metadata=option(
        "captioned: keep this many training rows (drawn with --seed)"))
    conditioning_dir: str | None = field(default=None, metadata=option(
        "folder: a directory of your conditioning images, each named as its image (any image extension)"))
    captions_file: str | None = field(default=None, metadata=option(
        "folder: a CSV with 'file' and 'text' columns, each image's caption"))
    factors_csv: str | None = field(default=None, metadata=option(
        "folder: a CSV with a 'file' column and factor columns, recorded as factors for the analysis"))
    label_prompts: bool = field(default=False, metadata=option(
        "shapes: each sample's caption names its colour and kind ('red square'); pretraining with it writes a "
        "label text encoder beside the main net and conditions the main net on these prompts"))

    def check_data_options(self) -> None:
        """ValueError for data options that do not fit together."""
        check_choice("dataset", self.dataset, DATASET_NAMES)
        if self.skip_bad_files and self.dataset != "folder":
            raise ValueError(f"--skip-bad-files applies to --dataset folder, not {self.dataset!r}")
        check_number("val_fraction", self.val_fraction, 0, 0.5, high_open=True)
        if self.max_train_samples is not None and self.max_train_samples < 1:
            raise ValueError(f"--max-train-samples must be >= 1, got {self.max_train_samples}")
        if self.dataset == "captioned" and self.data_root is None:
            raise ValueError("--dataset captioned needs --data-root (a load_dataset directory or a data file)")
        for name in ("conditioning_dir", "captions_file", "factors_csv"):
            if getattr(self, name) is not None and self.dataset != "folder":
                raise ValueError(f"--{name.replace('_', '-')} applies to --dataset folder, not {self.dataset!r}")
        if self.label_prompts and self.dataset != "shapes":
            raise ValueError(f"--label-prompts applies to --dataset shapes, not {self.dataset!r} (a captioned "
                             "dataset brings its own captions)")

    def data_overrides(self) -> dict:
        """The data options set to values other than their defaults: what replaces a run's own data options in the
        commands that read a run (``extract --ckpt``, ``sample``); an option left at its default keeps the run's."""
        defaults = DataOptions()
        return {f.name: getattr(self, f.name) for f in fields(DataOptions)
                if getattr(self, f.name) != getattr(defaults, f.name)}

    @property
    def has_captions(self) -> bool:
        """Whether the samples carry a caption (``"text"``): a captioned table's caption column or label prompts."""
        return (self.label_prompts or (self.dataset == "captioned" and self.caption_column is not None)
                or (self.dataset == "folder" and self.captions_file is not None))

    def dataset_kwargs(self, resolution: int, seed: int) -> dict:
        """``build_dataset`` keyword arguments (besides the name) of these options at ``resolution``."""
        kwargs = {"resolution": resolution, "condition": self.condition, "seed": seed}
        if self.data_root is not None:
            kwargs["root"] = self.data_root
        if self.skip_bad_files:
            kwargs["skip_bad"] = True
        if self.label_prompts:
            kwargs["label_prompts"] = True
        if self.dataset == "folder":
            if self.conditioning_dir is not None:
                kwargs.update(cond_dir=self.conditioning_dir, cond_mode=self.cond_mode)
            if self.captions_file is not None:
                kwargs["captions_file"] = self.captions_file
            if self.factors_csv is not None:
                kwargs.update(factors_csv=self.factors_csv, carried_factors=names_list(self.carried_factors))
        if self.dataset == "captioned":
            kwargs.update(image_column=self.image_column, conditioning_image_column=self.conditioning_image_column,
                          caption_column=self.caption_column, cond_source=self.cond_source, cond_mode=self.cond_mode,
                          factor_columns=names_list(self.factor_columns),
                          carried_factors=names_list(self.carried_factors), val_fraction=self.val_fraction,
                          max_train_samples=self.max_train_samples)
        return kwargs
