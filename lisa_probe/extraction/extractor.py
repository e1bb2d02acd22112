"""Extracting hooked side-branch features to a feature store (``python -m lisa_probe.extract`` is its command line).

Dumps hooked side-branch features and predictions to an HDF5 feature store (schema in ``lisa_probe.store``): one
row per (sample, timestep, noise draw), rows ordered sample-major, then timestep, then draw. Noise of a row is
drawn from a generator seeded by (seed, row), and rows are computed in fixed batches (rows ``[k * batch_size,
(k + 1) * batch_size)``) whatever the resume point or the number of processes, so a resumed extraction writes the
same values as an uninterrupted one, and a sharded one the same up to the last bits that other processes' kernels
may round differently.
A side net not trained by lisa_probe is probed with ``--controlnet DIR --main DIR`` instead of ``--ckpt``.
Under ``accelerate launch`` (or ``torchrun``) each process writes a shard of whole batches; process 0 merges them at
the end. On CPU-only machines launch several processes with ``accelerate launch --multi_gpu --num_processes N``
(accelerate's ``--cpu`` starts a single process unless given an MPI hostfile).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState
from torch.utils.data import default_collate
from tqdm.auto import tqdm

from lisa_probe.data import build_dataset, check_items
from lisa_probe.diffusion.parameterization import FLOW_TIMESTEP_SCALE
from lisa_probe.diffusion.sampling import ROW_NOISE_CONVENTION, row_noise
from lisa_probe.extraction.config import ExtractConfig, ForeignRun
from lisa_probe.models import DualBranch
from lisa_probe.models.hooks import capture
from lisa_probe.provenance import code_version, file_digest
from lisa_probe.rundir import SIDE_DIR, cache_dir, run_dir_of, stored_path, stored_paths
from lisa_probe.store import FeatureStoreWriter, make_layout, merge_shards, shard_path, shard_range
from lisa_probe.store.writer import check_finished_store
from lisa_probe.text.prompts import PromptEmbeddings, prompt_embeddings, text_layout
from lisa_probe.training.checkpoints import CHECKPOINT_PATTERN, list_checkpoints
from lisa_probe.training.engine import process_state
from lisa_probe.training.loading import build_dual_branch, load_decoder, load_run


def load_model(config: ExtractConfig):
    """(DualBranch, decoder or None, dataset kwargs, the run's TrainConfig or a ForeignRun, side-net directory).

    A ``--ckpt`` run keeps its own data options except those given here (``DataOptions.data_overrides``), which
    replace the run's and are checked with its config; ``--controlnet`` takes a LISA decoder from ``--decoder``."""
    if config.ckpt is not None:
        run_config, model, decoder, dataset_kwargs = load_run(Path(config.ckpt))
        overrides = config.data_overrides()
        if overrides:
            run_config = replace(run_config, **overrides)
            dataset_kwargs = run_config.dataset_kwargs(dataset_kwargs["resolution"], dataset_kwargs["seed"])
        return model, decoder, dataset_kwargs, run_config, Path(config.ckpt) / SIDE_DIR
    foreign = ForeignRun.of(config)
    model, dataset_kwargs = build_dual_branch(foreign)
    decoder = None
    if config.decoder is not None:
        decoder = load_decoder(Path(config.decoder), model)
        foreign = replace(foreign, lisa_site=decoder.config.site)
    return model.eval(), decoder, dataset_kwargs, foreign, Path(config.controlnet)


def parse_timesteps(text: str, model: DualBranch) -> torch.Tensor:
    """'8' -> 8 evenly spaced timesteps; '100,500,900' (or '500,') -> those, validated against the schedule:
    integers in [0, num_train_timesteps) for eps/v, values in [0, 1000] for flow. Returns (n_t,)."""
    parameterization = model.parameterization
    flow = parameterization.prediction_type == "flow"
    if "," not in text:
        count = int(text)
        if not flow and count > parameterization.num_train_timesteps:
            raise ValueError(f"{count} timesteps exceed the schedule's {parameterization.num_train_timesteps}")
        return parameterization.evenly_spaced_timesteps(count)
    values = [float(v) for v in text.split(",") if v.strip()]
    limit = FLOW_TIMESTEP_SCALE if flow else parameterization.num_train_timesteps - 1
    bad = [v for v in values if not 0 <= v <= limit or not (flow or v.is_integer())]
    if bad or not values:
        kind = "values" if flow else "integers"
        raise ValueError(f"timesteps {bad or text!r} outside the schedule: {kind} in [0, {limit:g}]")
    return torch.tensor(values).to(torch.float32 if flow else torch.long)


def parse_sites(text: str, model: DualBranch) -> list[str]:
    """'all' or a comma list of site names, in the given order without repeats (an unknown name lists the valid
    ones)."""
    if text == "all":
        return model.site_names
    names = list(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    if not names:
        raise ValueError(f"no site named in --sites {text!r}; valid sites: {', '.join(model.site_names)}")
    for name in names:
        model.site(name)
    return names


def _numpy(tensor: torch.Tensor, dtype: str = "float32") -> np.ndarray:
    """A float tensor (any device) as a numpy array of the same shape in ``dtype`` (cast by torch: numpy's float32 ->
    float16 cast is ~3x slower than writing the rows uncompressed)."""
    return tensor.detach().to(getattr(torch, dtype)).cpu().numpy()


class Extractor:
    """Computes the store's row blocks for a model, a dataset and a timestep grid (on the model's device)."""

    def __init__(self, model: DualBranch, decoder, dataset, sites: list[str], timesteps: torch.Tensor,
                 config: ExtractConfig, prompts: PromptEmbeddings | None = None, has_captions: bool = False):
        self.model, self.decoder, self.dataset, self.sites = model, decoder, dataset, sites
        self.timesteps, self.config = timesteps, config
        self.prompts = prompts  # the captions' embeddings (--prompt caption), or None: the null context
        self.has_captions = has_captions  # the data options' decision (DataOptions.has_captions): rows' prompts
        # then go to meta/prompt
        self.per_sample = len(timesteps) * config.draws
        self.device = next(model.parameters()).device

    @property
    def n_rows(self) -> int:
        """Rows of the whole extraction: samples x timesteps x draws."""
        return self.config.samples * self.per_sample

    def layout(self, lisa_site: str | None, steps: bool = False) -> dict:
        """The store layout: meta, factors (with ``carried``), features of the chosen sites, scores and options."""
        specs = self.dataset.factor_specs
        size = self.model.main.config.sample_size
        score_shape = (self.model.main.config.out_channels, size, size)
        return make_layout({s: self.model.site(s).feature_shape for s in self.sites}, score_shape,
                           {n: {"kind": f.kind, "carried": f.carried, "period": f.period, "levels": f.levels}
                            for n, f in specs.items()},
                           residual_shapes={s: self.model.site(s).residual_shape for s in self.sites}
                           if self.config.residuals else None,
                           decoded=lisa_site is not None,
                           decompose_sites=self.sites if self.config.decompose else (),
                           feature_dtype=self.config.feature_dtype, prompts=self.has_captions, steps=steps)

    def row_prompts(self, batch: dict) -> list[str]:
        """The prompt each row of a batch is conditioned on: its caption, or "" (``--prompt empty``)."""
        return list(batch["text"]) if self.prompts is not None else [""] * len(batch["text"])

    @torch.no_grad()
    def rows(self, rows: range, lisa_site: str | None) -> dict[str, np.ndarray]:
        """All datasets for a contiguous block of rows: ``{name: (len(rows), *row_shape)}``."""
        samples = [row // self.per_sample for row in rows]
        steps = torch.stack([self.timesteps[(row // self.config.draws) % len(self.timesteps)] for row in rows])
        batch = default_collate([self.dataset[i] for i in samples])
        model, parameterization = self.model, self.model.parameterization
        x0 = model.encode_images(batch["image"].to(self.device))
        noise = row_noise(tuple(x0.shape[1:]), self.config.seed, rows).to(self.device)
        model_steps, cond = steps.to(self.device), batch["cond"].to(self.device)
        x_t = parameterization.add_noise(x0, noise, model_steps)
        hooked = sorted(set(self.sites) | ({lisa_site} if lisa_site else set()))
        context = None if self.prompts is None else \
            {k: v.to(self.device) for k, v in self.prompts.lookup(batch["text"]).items()}
        with capture(model, hooked, what=("feature", "residual"), detach=True) as records:
            out = model(x_t, model_steps, cond, main_rows=len(rows), context=context)
        block = {"meta/sample_id": np.array(batch["id"], dtype=object), "meta/t": steps.float().numpy(),
                 "meta/noise_level": parameterization.noise_level(steps).numpy(),
                 "meta/draw": np.array([row % self.config.draws for row in rows], dtype=np.int32),
                 "scores/target": _numpy(parameterization.target(x0, noise, model_steps)),
                 "scores/main": _numpy(out.pred_main), "scores/full": _numpy(out.pred_full)}
        if self.has_captions:
            block["meta/prompt"] = np.array(self.row_prompts(batch), dtype=object)
        for name, values in batch["factors"].items():
            block[f"meta/factors/{name}"] = values.numpy()
        dtype = self.config.feature_dtype
        for site in self.sites:
            block[f"features/{site}"] = _numpy(records[site]["feature"], dtype)
            if self.config.residuals:
                block[f"residuals/{site}"] = _numpy(records[site]["residual"], dtype)
        if lisa_site is not None:
            feature = model.feature_to_map(lisa_site, records[lisa_site]["feature"])
            block["scores/decoded"] = _numpy(self.decoder(feature, model_steps))
        if self.config.decompose:
            block.update(self.decompose(x_t, model_steps, cond, context))
        return block

    def decompose(self, x_t: torch.Tensor, steps: torch.Tensor, cond: torch.Tensor,
                  context: dict[str, torch.Tensor] | None = None) -> dict[str, np.ndarray]:
        """``{"decompose/<site>": (B, C, H, W)}``: pred_full with only that site's gate open, per extracted site."""
        block = {}
        for site in self.sites:
            gates = torch.zeros(len(self.model.sites), device=self.device)
            gates[self.model.site_names.index(site)] = 1
            block[f"decompose/{site}"] = _numpy(self.model(x_t, steps, cond, gates=gates, context=context).pred_full)
        return block


def shard_rows(n_rows: int, batch_size: int, rank: int, world_size: int) -> range:
    """Rows of process ``rank``: a contiguous run of whole batches of the single-process extraction (the last one may
    be short), so every row is computed in the same batch whatever the number of processes."""
    batches = shard_range(math.ceil(n_rows / batch_size), rank, world_size)
    rows = range(batches.start * batch_size, min(batches.stop * batch_size, n_rows))
    if not rows:
        raise ValueError(f"{n_rows} rows make {math.ceil(n_rows / batch_size)} batches of {batch_size}, fewer than "
                         f"the {world_size} processes; lower --batch-size or use fewer processes")
    return rows


def pending_batches(rows: range, done: int, batch_size: int) -> Iterator[tuple[range, int]]:
    """``(batch, skip)`` for the batches of ``rows`` not yet written: batches are aligned to multiples of
    ``batch_size`` (``rows.start`` is one), ``done`` rows of ``rows`` are on disk, and the first ``skip`` rows of a
    batch are among them (they are recomputed so that the batch is the same as in an uninterrupted run)."""
    if done >= len(rows):
        return
    first = rows.start + done
    for start in range(first - done % batch_size, rows.stop, batch_size):
        yield range(start, min(start + batch_size, rows.stop)), max(0, first - start)


def write_rows(writer: FeatureStoreWriter, extractor: Extractor, rows: range, lisa_site: str | None,
               progress: tqdm) -> None:
    """Compute and write this process's ``rows`` from ``writer.rows_done`` on, one batch in memory at a time."""
    for batch, skip in pending_batches(rows, writer.rows_done, extractor.config.batch_size):
        block = extractor.rows(batch, lisa_site)
        writer.write_rows(batch.start + skip - rows.start, {name: values[skip:] for name, values in block.items()})
        progress.update(len(batch) - skip)


INPUTS_VERSION = 2  # 2: targets, timestep values, preprocessing, splits, digests and text per layout spelled out

PROMPT_RECIPES = {
    "sd": "the main net's tokenizer/ (padded to its model_max_length, truncated) and text_encoder/: its last hidden "
          "state is context (1, L, D); an encoder with a projection (CLIPTextModelWithProjection) also gives pooled = "
          "text_embeds",
    "sdxl": "tokenizer/ + text_encoder/ and tokenizer_2/ + text_encoder_2/ (each padded to 77 tokens, truncated): "
            "context = both encoders' penultimate hidden states (hidden_states[-2]) concatenated on the last axis; "
            "pooled = text_encoder_2's text_embeds; the UNet's added conditions are text_embeds = pooled and time_ids "
            "= (h, w, 0, 0, h, w) with (h, w) the image size in pixels (no crop, original size = target size)",
    "sd3": "CLIP-L (tokenizer/ + text_encoder/) and CLIP-G (tokenizer_2/ + text_encoder_2/), each padded to 77 tokens: "
           "their penultimate hidden states concatenated on the last axis and zero-padded to T5's width, followed on "
           "the token axis by T5's (tokenizer_3/ + text_encoder_3/) last hidden state of 77 tokens, or by 77 zero "
           "tokens when the pipeline has no text_encoder_3/; pooled = both CLIPs' text_embeds concatenated",
}
TARGET_RECIPES = {
    "eps": "y = noise",
    "v": "y = alpha_t * noise - sigma_t * x0",
    "flow": "y = noise - x0",
}


def input_recipe(model: DualBranch, dataset, timesteps: torch.Tensor, config: ExtractConfig,
                 captions: bool = False, text: str | None = None) -> dict:
    """The store's ``inputs`` attr: enough to rebuild every row's model inputs ``(x_t, t, cond, context)`` and its
    target from the store, the data and the main net without lisa_probe (``docs/CONTRACTS.md``, feature store).
    ``text``: the main net's text layout (``text.text_layout``: sd, sdxl, sd3) when rows are text-conditioned."""
    context = {name: tensor.detach().float().cpu() for name, tensor in model.context(1).items()}
    kind = model.parameterization.prediction_type
    resolution = model.main.config.sample_size * model.pixel_scale
    captioned = dataset.name == "captioned"
    return {
        "version": INPUTS_VERSION,
        "rows": "sample-major, then timestep, then noise draw: row r is sample r // (n_timesteps * draws) of the "
                "split, at timestep index (r // draws) % n_timesteps, draw r % draws",
        "draws": int(config.draws),
        "samples": f"the first {config.samples} samples of the {config.split!r} split of the dataset of attr 'config' "
                   "(dataset, condition, seed, data_root and the column options), each {'image': (3, H, W) in "
                   "[-1, 1], 'cond': (C, H, W) in [0, 1]} as lisa_probe.data builds it; meta/sample_id names each",
        "split": (f"{config.split!r} of the table: its own 'validation' (or 'val') / 'test' split when it has a "
                  "validation split, else a partition of its rows by p = int(sha1(f'0:{row}').hexdigest()[:8], 16) / "
                  "2**32: train below 1 - 2 * val_fraction, then val, then test (val_fraction in attr 'config'); sample ids read 'captioned/<split>/<table split>-"
                  "<row index in that table split>'" if captioned else
                  f"{config.split!r}, as the dataset's own deterministic split (sample ids '<dataset>/<split>/...')"),
        "resolution": int(resolution),
        "preprocessing": ("images and conditioning images: EXIF-transposed, alpha flattened (white / black), "
                          "converted to RGB (conditioning: the config's cond_mode), resized on the shorter side to "
                          f"{resolution} px with bilinear filtering and centre-cropped (PIL ImageOps.fit), then "
                          "image / 127.5 - 1 and cond / 255" if captioned or dataset.name == "folder" else
                          f"drawn procedurally at {resolution} px (no resizing)"),
        "timesteps": [float(t) for t in timesteps],
        "timestep_value": ("meta/t is what the nets receive: an integer step in [0, num_train_timesteps) as a float "
                           "for eps / v; for flow, 1000 * sigma (a float in (0, 1000]), which SD3's transformer and "
                           "ControlNet receive as their timestep"),
        "row_noise": {"convention": ROW_NOISE_CONVENTION, "seed": config.seed},
        "x0": "the image" if model.vae is None else
              "(vae.encode(image).latent_dist.mode() - (vae.config.shift_factor or 0)) * vae.config.scaling_factor "
              "(the posterior's mode: rows are deterministic; training draws latent_dist.sample())",
        "x_t": "alpha_t * x0 + sigma_t * noise; eps/v: alpha_t = sqrt(alphas_cumprod[t]), sigma_t = sqrt(1 - "
               "alphas_cumprod[t]) from scheduler/; flow: alpha_t = 1 - t / 1000, sigma_t = t / 1000",
        "target": TARGET_RECIPES[kind] + " (scores/target)",
        "condition": {"kind": dataset.condition, "channels": int(dataset.cond_channels),
                      "fed_as": condition_recipe(model)},
        "context": {name: {"shape": list(tensor.shape), "all_zero": bool(not tensor.any()),
                           "sha256": hashlib.sha256(tensor.numpy().tobytes()).hexdigest()}
                    for name, tensor in context.items()},
        "context_sha256": "SHA-256 of the null context tensor's bytes as float32, C order, on the CPU",
        "context_source": "the main net's null_context.safetensors when it has one, else the empty prompt through its "
                          "text encoders when it has them (as 'prompts' says), else zeros",
        "prompts": (f"each row's meta/prompt through {PROMPT_RECIPES[text or 'sd']}; the empty prompt is the null "
                    "context" if captions else "none: every row has the null context"),
        "dataset_sha256": "each dataset's 'sha256' attr: SHA-256 over its rows in order, the raw bytes of numeric "
                          "rows (C order, the stored dtype), length-prefixed UTF-8 of string rows",
        "paths": "config.main, config.data_root, 'checkpoint' and 'run' are relative to the store's directory",
        "probe_batch": ("training's onset probe (not stored here): the first probe_samples val samples, sample k at "
                        "the k mod 4-th of 4 evenly spaced timesteps (bin centres, low to high noise), noise "
                        "randn((n, C, H, W), Generator().manual_seed(seed + 4242)), x0 the posterior's mode; pred_main "
                        "gets each sample's caption"),
    }


def store_attrs(config: ExtractConfig, model: DualBranch, run_config: dict, side_dir: Path,
                lisa_site: str | None, inputs: dict) -> dict:
    """Root attrs of the store: run config, side-net directory (``checkpoint``) and its hash, the run directory
    (``run``; empty for ``--controlnet``), code version, parameterisation, extract args (as given; ``resume`` /
    ``overwrite`` blanked so a resumed extraction matches the interrupted one), the LISA site and how rows' inputs
    are made (``inputs``: ``input_recipe``). Paths of the run config, ``checkpoint`` and ``run`` are relative to the
    store's directory (``rundir.stored_path``)."""
    base = Path(config.out).parent
    return {"config": stored_paths(run_config, base), "checkpoint": stored_path(side_dir, base),
            "checkpoint_hash": file_digest(side_dir),
            "run": stored_path(run_dir_of(config.ckpt), base) if config.ckpt is not None else "",
            "code_version": code_version(), "parameterization": model.parameterization.prediction_type,
            "extract_args": asdict(config) | {"resume": False, "overwrite": False}, "lisa_site": lisa_site or "",
            "inputs": inputs}


def condition_recipe(model: DualBranch) -> str:
    """How a row's condition reaches the side net, in words (the store's ``inputs`` attr)."""
    if model.family == "dit" and model.vae is not None:
        return ("the (C, H, W) map in [0, 1] repeated to 3 channels, mapped to [-1, 1] and encoded like x0, as the "
                "SD3 ControlNet's controlnet_cond")
    return (f"the (C, H, W) map in [0, 1] at the image resolution, repeated along channels to the side net's "
            f"{model.cond_channels} when C is a divisor of it, as its controlnet_cond")


def extract(config: ExtractConfig) -> Path:
    """Run the extraction (this process's shard under accelerate); returns the final store path."""
    state = process_state()
    out = Path(config.out)
    if out.exists() and not config.overwrite:
        raise FileExistsError(f"feature store {out} already exists; pass --overwrite to replace it")
    model, decoder, dataset_kwargs, owner, side_dir = load_model(config)
    run_config = asdict(owner)
    model = model.to(state.device)
    decoder = decoder.to(state.device).eval() if decoder is not None else None
    lisa_site = run_config.get("lisa_site") if decoder is not None else None  # resolved once, by train / load_run
    dataset = build_dataset(run_config["dataset"], split=config.split, **dataset_kwargs)
    model.check_condition(dataset.cond_channels)
    if config.samples > len(dataset):
        raise ValueError(f"--samples {config.samples} exceeds the {config.split} split's {len(dataset)} samples")
    check_items(dataset, min(config.batch_size, config.samples), "the first batch")  # before any file is made
    prompts = (prompt_embeddings(owner, [dataset], cache_dir(out.parent), progress=state.is_local_main_process)
               if config.prompt == "caption" else None)
    extractor = Extractor(model, decoder, dataset, parse_sites(config.sites, model),
                          parse_timesteps(config.timesteps, model), config, prompts, has_captions=owner.has_captions)
    if config.checkpoints is not None:
        return extract_checkpoints(config, extractor, model, owner, run_config, lisa_site, prompts, dataset)
    rows = shard_rows(extractor.n_rows, config.batch_size, state.process_index, state.num_processes)
    sharded = state.num_processes > 1
    target = shard_path(out, state.process_index, state.num_processes) if sharded else out
    inputs = input_recipe(model, dataset, extractor.timesteps, config, captions=prompts is not None,
                          text=text_layout(Path(owner.main)) if prompts is not None else None)
    layout, attrs = extractor.layout(lisa_site), store_attrs(config, model, run_config, side_dir, lisa_site, inputs)
    shard = (state.process_index, state.num_processes) if sharded else None
    if sharded and config.resume and target.exists():  # a finished shard of an interrupted run is kept
        reuse_shard(target, layout, len(rows), attrs, shard)
    else:
        writer = FeatureStoreWriter(target, layout, len(rows), attrs, compression=config.compression,
                                    overwrite=config.overwrite, resume=config.resume, shard=shard)
        with writer, tqdm(total=len(rows), initial=writer.rows_done, unit="row", desc=out.name,
                          disable=not state.is_local_main_process) as progress:
            write_rows(writer, extractor, rows, lisa_site, progress)
    if sharded:
        merge(out, state, overwrite=config.overwrite or config.resume)
    return out


def checkpoint_blocks(run: Path, chosen: str) -> list[tuple[int, Path]]:
    """``[(step, checkpoint directory)]`` of a run, oldest first: every saved ``checkpoint-N`` (``"all"``) or those
    of the given steps; ValueError naming the steps there are for a missing one."""
    saved = {int(CHECKPOINT_PATTERN.match(path.name).group(1)): path for path in list_checkpoints(run)}
    if not saved:
        raise ValueError(f"{run} has no checkpoint-N directories to extract from (--checkpoint-every, "
                         "--keep-checkpoints 0 keeps them all)")
    steps = sorted(saved) if chosen == "all" else [int(part) for part in chosen.split(",") if part.strip()]
    missing = [step for step in steps if step not in saved]
    if missing:
        raise ValueError(f"--checkpoints: no checkpoint-{missing[0]} in {run}; its checkpoints: "
                         f"{', '.join(map(str, sorted(saved)))}")
    return [(step, saved[step]) for step in steps]


def extract_checkpoints(config: ExtractConfig, extractor: Extractor, model: DualBranch, owner, run_config: dict,
                        lisa_site: str | None, prompts, dataset) -> Path:
    """``--checkpoints``: one block of ``extractor.n_rows`` rows per checkpoint, in step order, each the same rows
    (samples, timesteps, noise) through that checkpoint's side net (and LISA decoder), ``meta/step`` naming it.
    Single process; ``--resume`` continues at the first unwritten row, in whichever block it lies."""
    state = process_state()
    if state.num_processes > 1:
        raise ValueError("--checkpoints extracts in one process; run it without accelerate launch")
    out, run = Path(config.out), run_dir_of(config.ckpt)
    blocks = checkpoint_blocks(run, config.checkpoints)
    per = extractor.n_rows
    inputs = input_recipe(model, dataset, extractor.timesteps, config, captions=prompts is not None,
                          text=text_layout(Path(owner.main)) if prompts is not None else None)
    last = blocks[-1][1] / SIDE_DIR
    attrs = store_attrs(config, model, run_config, last, lisa_site, inputs)
    attrs["checkpoints"] = json.dumps([{"step": step, "checkpoint": stored_path(path / SIDE_DIR, out.parent),
                                        "checkpoint_hash": file_digest(path / SIDE_DIR)} for step, path in blocks])
    writer = FeatureStoreWriter(out, extractor.layout(lisa_site, steps=True), per * len(blocks), attrs,
                                compression=config.compression, overwrite=config.overwrite, resume=config.resume)
    with writer, tqdm(total=per * len(blocks), initial=writer.rows_done, unit="row", desc=out.name,
                      disable=not state.is_local_main_process) as progress:
        for index, (step, path) in enumerate(blocks):
            done = writer.rows_done - index * per
            if done >= per:
                continue
            _, block_model, decoder, _ = load_run(path)
            extractor.model = block_model.to(extractor.device)
            extractor.decoder = decoder.to(extractor.device).eval() if decoder is not None else None
            for batch, skip in pending_batches(range(per), max(done, 0), config.batch_size):
                rows = extractor.rows(batch, lisa_site)
                rows["meta/step"] = np.full(len(batch), step, dtype=np.int64)
                writer.write_rows(index * per + batch.start + skip, {name: values[skip:] for name, values in
                                                                     rows.items()})
                progress.update(len(batch) - skip)
    return out


def reuse_shard(path: Path, layout: dict, n_rows: int, attrs: dict, shard: tuple[int, int]) -> None:
    """Check that the finished shard at ``path`` is this extraction's: same layout, ``n_rows``, root attrs
    (``store_attrs``) and ``shard`` (rank, world size); ValueError naming every differing attr otherwise."""
    try:
        check_finished_store(path, layout, n_rows, attrs, shard)
    except ValueError as error:
        raise ValueError(f"cannot reuse the finished shard on --resume: {error}; delete it, or run again with "
                         "--overwrite and without --resume") from error


def merge(out: Path, state: PartialState, overwrite: bool) -> None:
    """Once every process has finished its shard, process 0 merges them into ``out`` and deletes them
    (``overwrite`` also discards the unfinished output of an interrupted merge)."""
    state.wait_for_everyone()
    if state.is_main_process:
        shards = [shard_path(out, rank, state.num_processes) for rank in range(state.num_processes)]
        merge_shards(shards, out, overwrite=overwrite)
        for shard in shards:
            shard.unlink()
    state.wait_for_everyone()
