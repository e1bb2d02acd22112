"""``python -m lisa_probe.extract --ckpt runs/<name>[/checkpoint-N] --out features/<name>.h5``.

Dumps hooked side-branch features and predictions to an HDF5 feature store (schema in ``lisa_probe.store``): one
row per (sample, timestep, noise draw), rows ordered sample-major, then timestep, then draw. Noise of a row is
drawn from a generator seeded by (seed, row), and rows are computed in fixed batches (rows ``[k * batch_size,
(k + 1) * batch_size)``) whatever the resume point or the number of processes, so a resumed or sharded extraction
writes exactly the same bytes as an uninterrupted single-process one.
A side net not trained by lisa_probe is probed with ``--controlnet DIR --main DIR`` instead of ``--ckpt``.
Under ``accelerate launch`` (or ``torchrun``) each process writes a shard of whole batches; process 0 merges them at
the end. On CPU-only machines launch several processes with ``accelerate launch --multi_gpu --num_processes N``
(accelerate's ``--cpu`` starts a single process unless given an MPI hostfile).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env
from torch.utils.data import default_collate
from tqdm.auto import tqdm

from lisa_probe.config import add_dataclass_arguments, config_from_args
from lisa_probe.data import DATASET_NAMES, build_dataset
from lisa_probe.engine import cpu_only
from lisa_probe.hooks import capture
from lisa_probe.models import DualBranch
from lisa_probe.parameterization import FLOW_TIMESTEP_SCALE
from lisa_probe.provenance import code_version, file_digest
from lisa_probe.store import FeatureStoreWriter, make_layout, merge_shards, shard_path, shard_range
from lisa_probe.store.schema import COMPRESSIONS

SPLITS = ("train", "val", "test")


def _opt(text: str, **extra) -> dict:
    return {"help": text, **extra}


@dataclass
class ExtractConfig:
    """What to extract and where."""

    out: str = field(default="", metadata=_opt("output .h5 path"))
    ckpt: str | None = field(default=None, metadata=_opt("lisa_probe run or checkpoint directory"))
    controlnet: str | None = field(default=None, metadata=_opt("a plain diffusers side-net directory (with --main)"))
    main: str | None = field(default=None, metadata=_opt("main-net directory for --controlnet"))
    dataset: str = field(default="shapes", metadata=_opt("dataset for --controlnet", choices=DATASET_NAMES))
    condition: str | None = field(default=None, metadata=_opt("condition for --controlnet (default: dataset's)"))
    data_root: str | None = field(default=None, metadata=_opt("image directory of the folder dataset"))
    sites: str = field(default="all", metadata=_opt("comma-separated site names, or 'all'"))
    timesteps: str = field(default="8", metadata=_opt("a number of evenly spaced timesteps, or a comma list of "
                                                      "timesteps as fed to the model ('500,' for one)"))
    samples: int = field(default=256, metadata=_opt("number of samples"))
    draws: int = field(default=1, metadata=_opt("noise draws per (sample, timestep)"))
    split: str = field(default="val", metadata=_opt("data split", choices=SPLITS))
    batch_size: int = field(default=32, metadata=_opt("rows per forward pass"))
    seed: int = field(default=0, metadata=_opt("noise seed"))
    residuals: bool = field(default=False, metadata=_opt("also store the residual leaving each site"))
    decompose: bool = field(default=False, metadata=_opt("also store the prediction with only one site's gate "
                                                         "open, per extracted site"))
    feature_dtype: str = field(default="float16", metadata=_opt("feature dtype", choices=("float16", "float32")))
    compression: str = field(default="lzf", metadata=_opt("HDF5 compression", choices=COMPRESSIONS))
    resume: bool = field(default=False, metadata=_opt("continue an interrupted extraction"))
    overwrite: bool = field(default=False, metadata=_opt("replace an existing output"))

    def __post_init__(self) -> None:
        if not self.out:
            raise ValueError("--out is required (e.g. features/<run>.h5)")
        if (self.ckpt is None) == (self.controlnet is None):
            raise ValueError("give either --ckpt (a lisa_probe run) or --controlnet with --main (a diffusers side net)")
        if self.controlnet is not None and self.main is None:
            raise ValueError("--controlnet needs --main (the main-net directory it was trained for)")
        for name in ("samples", "draws", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")


@dataclass
class ForeignRun:
    """Stand-in train config for a side net that lisa_probe did not train."""

    main: str
    side: str
    dataset: str
    condition: str | None
    data_root: str | None
    seed: int = 0


def load_model(config: ExtractConfig):
    """(DualBranch, decoder or None, dataset kwargs, run config dict, side-net directory)."""
    from lisa_probe.runs import build_dual_branch, load_run

    if config.ckpt is not None:
        run_config, model, decoder, dataset_kwargs = load_run(Path(config.ckpt))
        return model, decoder, dataset_kwargs, asdict(run_config), Path(config.ckpt) / "controlnet"
    foreign = ForeignRun(config.main, config.controlnet, config.dataset, config.condition, config.data_root)
    model, dataset_kwargs = build_dual_branch(foreign)
    return model.eval(), None, dataset_kwargs, asdict(foreign), Path(config.controlnet)


def parse_timesteps(text: str, model: DualBranch) -> torch.Tensor:
    """'8' -> 8 evenly spaced timesteps; '100,500,900' -> those (validated against the schedule)."""
    parameterization = model.parameterization
    if "," not in text:
        return parameterization.evenly_spaced_timesteps(int(text))
    values = [float(v) for v in text.split(",")]
    limit = 1000.0 if parameterization.prediction_type == "flow" else parameterization.num_train_timesteps - 1
    bad = [v for v in values if not 0 <= v <= limit]
    if bad:
        raise ValueError(f"timesteps {bad} outside the schedule [0, {limit:g}]")
    dtype = torch.float32 if parameterization.prediction_type == "flow" else torch.long
    return torch.tensor(values).to(dtype)


def parse_sites(text: str, model: DualBranch) -> list[str]:
    """'all' or a comma list of site names (an unknown name lists the valid ones)."""
    if text == "all":
        return model.site_names
    names = [name.strip() for name in text.split(",") if name.strip()]
    for name in names:
        model.site(name)
    return names


def row_noise(shape: tuple[int, ...], seed: int, rows: range) -> torch.Tensor:
    """Noise (len(rows), *shape), each row from its own generator seeded by (seed, row)."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(seed * 1_000_003 + row))
                        for row in rows])


class Extractor:
    """Computes the store's row blocks for a model, a dataset and a timestep grid."""

    def __init__(self, model: DualBranch, decoder, dataset, sites: list[str], timesteps: torch.Tensor,
                 config: ExtractConfig):
        self.model, self.decoder, self.dataset, self.sites = model, decoder, dataset, sites
        self.timesteps, self.config = timesteps, config
        self.per_sample = len(timesteps) * config.draws

    def layout(self, lisa_site: str | None) -> dict:
        specs = self.dataset.factor_specs
        size = self.model.main.config.sample_size
        score_shape = (self.model.main.config.out_channels, size, size)
        return make_layout({s: self.model.site(s).feature_shape for s in self.sites}, score_shape,
                           {n: {"kind": f.kind, "carried": f.carried} for n, f in specs.items()},
                           residual_shapes={s: self.model.site(s).residual_shape for s in self.sites}
                           if self.config.residuals else None,
                           decoded=lisa_site is not None,
                           decompose_sites=self.model.site_names if self.config.decompose else (),
                           feature_dtype=self.config.feature_dtype)

    @torch.no_grad()
    def rows(self, rows: range, lisa_site: str | None) -> dict[str, np.ndarray]:
        """All datasets for a contiguous block of rows."""
        samples = [row // self.per_sample for row in rows]
        steps = torch.stack([self.timesteps[(row // self.config.draws) % len(self.timesteps)] for row in rows])
        batch = default_collate([self.dataset[i] for i in samples])
        model, parameterization = self.model, self.model.parameterization
        x0 = model.encode_images(batch["image"])
        noise = row_noise(tuple(x0.shape[1:]), self.config.seed, rows)
        x_t = parameterization.add_noise(x0, noise, steps)
        hooked = sorted(set(self.sites) | ({lisa_site} if lisa_site else set()))
        with capture(model, hooked, what=("feature", "residual"), detach=True) as records:
            out = model(x_t, steps, batch["cond"], main_rows=len(rows))
        block = {"meta/sample_id": np.array(batch["id"], dtype=object), "meta/t": steps.float().numpy(),
                 "meta/noise_level": parameterization.noise_level(steps).numpy(),
                 "meta/draw": np.array([row % self.config.draws for row in rows], dtype=np.int32),
                 "scores/target": parameterization.target(x0, noise, steps).float().numpy(),
                 "scores/main": out.pred_main.float().numpy(), "scores/full": out.pred_full.float().numpy()}
        for name, values in batch["factors"].items():
            block[f"meta/factors/{name}"] = values.numpy()
        for site in self.sites:
            block[f"features/{site}"] = records[site]["feature"].float().numpy()
            if self.config.residuals:
                block[f"residuals/{site}"] = records[site]["residual"].float().numpy()
        if lisa_site is not None:
            feature = model.feature_to_map(lisa_site, records[lisa_site]["feature"])
            block["scores/decoded"] = self.decoder(feature, steps).float().numpy()
        if self.config.decompose:
            for k, site in enumerate(model.site_names):
                gates = torch.zeros(len(model.sites))
                gates[k] = 1
                block[f"decompose/{site}"] = model(x_t, steps, batch["cond"], gates=gates).pred_full.float().numpy()
        return block


def extract(config: ExtractConfig) -> Path:
    """Run the extraction (this process's shard under accelerate); returns the final store path."""
    state = PartialState(cpu=cpu_only())
    model, decoder, dataset_kwargs, run_config, side_dir = load_model(config)
    lisa_site = None
    if decoder is not None:
        lisa_site = run_config.get("lisa_site") or model.default_lisa_site()
    dataset = build_dataset(run_config["dataset"], split=config.split, **dataset_kwargs)
    if config.samples > len(dataset):
        raise ValueError(f"--samples {config.samples} exceeds the {config.split} split's {len(dataset)} samples")
    extractor = Extractor(model, decoder, dataset, parse_sites(config.sites, model),
                          parse_timesteps(config.timesteps, model), config)
    sample_range = shard_range(config.samples, state.process_index, state.num_processes)
    row_range = range(sample_range.start * extractor.per_sample, sample_range.stop * extractor.per_sample)
    out = Path(config.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists() and not config.overwrite:
        raise FileExistsError(f"feature store {out} already exists; pass --overwrite to replace it")
    attrs = {"config": run_config, "checkpoint": str(side_dir), "checkpoint_hash": file_digest(side_dir),
             "code_version": code_version(), "parameterization": model.parameterization.prediction_type,
             "extract_args": asdict(config) | {"resume": False, "overwrite": False}, "lisa_site": lisa_site or ""}
    sharded = state.num_processes > 1
    target = shard_path(out, state.process_index, state.num_processes) if sharded else out
    writer = FeatureStoreWriter(target, extractor.layout(lisa_site), len(row_range), attrs,
                                compression=config.compression, overwrite=config.overwrite, resume=config.resume,
                                shard=(state.process_index, state.num_processes) if sharded else None)
    with writer, tqdm(total=len(row_range), initial=writer.rows_done, unit="row", desc=out.name,
                      disable=not state.is_local_main_process) as progress:
        for start in range(writer.rows_done, len(row_range), config.batch_size):
            local = range(start, min(start + config.batch_size, len(row_range)))
            block = extractor.rows(range(row_range.start + local.start, row_range.start + local.stop), lisa_site)
            writer.write_rows(start, block)
            progress.update(len(local))
    state.wait_for_everyone()
    if sharded and state.is_main_process:
        shards = [shard_path(out, rank, state.num_processes) for rank in range(state.num_processes)]
        merge_shards(shards, out, overwrite=config.overwrite)
        for shard in shards:
            shard.unlink()
    state.wait_for_everyone()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lisa_probe.extract", description=__doc__.splitlines()[0])
    add_dataclass_arguments(parser, ExtractConfig)
    args = parser.parse_args(argv)
    try:
        config = config_from_args(ExtractConfig, args)
    except ValueError as error:
        parser.error(str(error))
    print(f"features written to {extract(config)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
