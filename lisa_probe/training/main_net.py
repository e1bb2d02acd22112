"""Pretraining a main net, unconditionally or on label prompts: the objective (EMA, min-SNR weighting, label
dropout), the quality evaluation and ``pretrain(PretrainConfig)``; ``python -m lisa_probe.pretrain`` is its command
line. The run directory is itself a diffusers-layout main-net directory (``unet/`` or ``transformer/`` +
``scheduler/``, and with label prompts ``tokenizer/`` + ``text_encoder/``: ``lisa_probe.text.labels``)."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch.utils.data import default_collate

from lisa_probe.data import build_dataset
from lisa_probe.data.shapes import LABEL_WORDS
from lisa_probe.diffusion.parameterization import Parameterization
from lisa_probe.diffusion.sampling import fixed_noise, sample
from lisa_probe.evaluation import Evaluator
from lisa_probe.evaluation.grids import save_grid, to_uint8
from lisa_probe.models.build import MAIN_FORWARD, MAIN_SUBFOLDER, build_main, null_context_for
from lisa_probe.rundir import SCHEDULER_DIR, cache_dir, is_main_net_ready, sample_grid_path, write_run_config
from lisa_probe.seeds import derive_seed
from lisa_probe.text.labels import main_context_widths, write_label_encoder
from lisa_probe.text.prompts import PromptEmbeddings, batch_context, drop_prompts, has_text_encoder, prompt_embeddings
from lisa_probe.training.checkpoints import prepare_run_dir
from lisa_probe.training.config import DEFAULT_MAIN_NAME, PretrainConfig
from lisa_probe.training.engine import (
    Objective,
    fit,
    gather_rows,
    is_main_process,
    process_state,
    with_epoch_steps,
)


class MainNetObjective(Objective):
    """Denoising loss of a main net: ``mean_b w_b |main(x_t, t, text_b)_b - y_b|^2``.

    ``w`` are min-SNR-gamma weights (``min_snr_gamma > 0``) or ones. Without ``prompts`` the main net is
    unconditional (the null context); with them (label prompts) each sample's caption embedding conditions it,
    replaced by the empty prompt's with probability ``proportion_empty_prompts`` (label dropout, so that the net
    also learns the prior without text). ``pipeline``: the directory whose ``tokenizer/`` + ``text_encoder/`` give
    the null context (the empty prompt; zeros without one).
    """

    def __init__(self, family: str, main: torch.nn.Module, parameterization: Parameterization,
                 ema_decay: float = 0.999, min_snr_gamma: float = 0.0, prompts: PromptEmbeddings | None = None,
                 proportion_empty_prompts: float = 0.0, pipeline: Path | None = None):
        super().__init__()
        self.family, self.main, self.parameterization = family, main, parameterization
        self.ema_decay, self.min_snr_gamma = ema_decay, min_snr_gamma
        self.prompts, self.proportion_empty_prompts = prompts, proportion_empty_prompts
        self.ema = copy.deepcopy(main).requires_grad_(False).eval()
        for name, value in null_context_for(main, family, pipeline).items():
            self.register_buffer(f"null_{name}", value, persistent=False)

    def context(self) -> dict[str, torch.Tensor]:
        """The fixed null context tensors, on the module's device."""
        return {name[5:]: value for name, value in self.named_buffers() if name.startswith("null_")}

    def modules_to_save(self) -> dict[str, torch.nn.Module]:
        """The EMA weights are the main net (``unet/`` or ``transformer/``); the raw weights resume training."""
        name = MAIN_SUBFOLDER[self.family]
        return {name: self.ema, f"{name}_raw": self.main}

    def networks(self) -> dict[str, torch.nn.Module]:
        """The trained main net (the EMA copy only samples at evaluation)."""
        return {MAIN_SUBFOLDER[self.family]: self.main}

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        """EMA update with the usual warm-up: decay min(ema_decay, (1 + step) / (10 + step))."""
        decay = min(self.ema_decay, (1 + step) / (10 + step))
        for ema, raw in zip(self.ema.parameters(), self.main.parameters()):
            ema.lerp_(raw.detach(), 1 - decay)

    def draw(self, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """x0, noise and timesteps of a batch; with prompts, their embeddings after label dropout (drawn last)."""
        x0 = batch["image"]
        inputs = {"x0": x0, "noise": torch.randn(x0.shape, generator=generator),
                  "timesteps": self.parameterization.sample_timesteps(x0.shape[0], generator)}
        if self.prompts is not None:
            inputs.update(self.prompts.lookup(drop_prompts(batch["text"], self.proportion_empty_prompts, generator)))
        return inputs

    def predict(self, x_t: torch.Tensor, timesteps: torch.Tensor, ema: bool = True,
                text: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Main-net prediction (B, C, H, W), with the EMA weights unless ``ema=False``; ``text``: per-sample
        prompt embeddings (``context`` (B, L, D), ``pooled`` (B, P)), the null context when None."""
        return MAIN_FORWARD[self.family](self.ema if ema else self.main, x_t, timesteps, text or self.context())

    def forward(self, x0, noise, timesteps, step, **text):
        x_t = self.parameterization.add_noise(x0, noise, timesteps)
        target = self.parameterization.target(x0, noise, timesteps)
        prediction = self.predict(x_t, timesteps, ema=False, text=text)
        per_sample = (prediction.float() - target.float()).pow(2).flatten(1).mean(1)
        if self.min_snr_gamma > 0:
            per_sample = per_sample * self.parameterization.min_snr_weight(timesteps, self.min_snr_gamma)
        return {"loss": per_sample.mean()}


def dataset_options(config: PretrainConfig) -> dict:
    """``build_dataset`` keyword arguments of the pretraining data (resolution, seed, a folder's root ...)."""
    return config.dataset_kwargs(config.resolution, config.seed)


def make_quality_evaluation(objective: MainNetObjective, config: PretrainConfig, run_dir: Path, splits: dict):
    """An ``evaluate(step)`` closure: samples a fixed-noise batch, saves a grid, returns quality numbers (``fd`` and,
    for datasets that draw silhouettes, ``shape_fit_iou`` / ``shape_fit_f1``, each beside its real-image value).
    With prompts, the samples are conditioned on the first val prompts, and ``readback/<factor>`` says whether they
    show what their prompts name (e.g. ``readback/kind``, ``readback/hue``). ``splits``: the run's ``train`` and
    ``val`` datasets, built once by ``pretrain``."""
    evaluator = Evaluator.for_dataset(splits["train"], cache_dir=cache_dir(config.out_dir),
                                      dataset_kwargs=dataset_options(config))
    shape = (config.eval_samples, objective.main.config.in_channels, config.resolution, config.resolution)
    text = factors = captions = None
    if objective.prompts is not None:
        val = splits["val"]
        batch = default_collate([val[i] for i in range(min(config.eval_samples, len(val)))])
        shape, factors = (len(batch["text"]), *shape[1:]), batch["factors"]
        text, captions = batch_context(objective.prompts, batch), list(batch["text"][:16])

    noise = fixed_noise(shape, derive_seed(config.seed, "main_eval"))

    def draw(rows: range) -> torch.Tensor:
        """(len(rows), 3, H, W): the evaluation samples of ``rows``."""
        device = next(objective.main.parameters()).device
        share = slice(rows.start, rows.stop)
        on_device = None if text is None else {name: value[share].to(device) for name, value in text.items()}
        return sample(lambda x, t: objective.predict(x, t, text=on_device), objective.parameterization,
                      noise[share].to(device), config.sample_steps).clamp(-1, 1).cpu()

    def evaluate(step: int) -> dict[str, float]:
        """Called on every process (each samples its share); the metrics on the main one, {} on the others."""
        images = gather_rows(draw, len(noise))
        if images is None:
            return {}
        save_grid([("samples", to_uint8(images[:16]))], sample_grid_path(run_dir, step),
                  captions=captions)
        named = {} if factors is None else evaluator.factor_readback(images, factors)
        return {**evaluator.frechet(images), **evaluator.shape_fit(images), **named}

    return evaluate


def pretrain(config: PretrainConfig) -> Path:
    """Run pretraining; returns the run directory (a diffusers main-net directory)."""
    used = ("train", "val") if config.has_captions else ("train",)  # val: the prompts of the evaluation samples
    splits = {split: build_dataset(config.dataset, split=split, **dataset_options(config)) for split in used}
    dataset = splits["train"]
    config = with_epoch_steps(config, len(dataset), config.run_dir)
    run_dir = config.run_dir  # created once the data is known to load
    prepare_run_dir(run_dir, config.resume, config.overwrite, is_main_process())
    process_state().wait_for_everyone()
    if is_main_process():
        write_run_config(run_dir, config, kind="pretrain")
    parameterization = Parameterization(config.prediction_type)
    main = build_main(config.backbone, config.preset, config.resolution, seed=config.seed)
    prompts = None
    if config.label_prompts:
        if is_main_process() and not has_text_encoder(run_dir):  # a resumed run keeps its encoder
            write_label_encoder(run_dir, LABEL_WORDS, main_context_widths(main, config.backbone), config.seed)
        process_state().wait_for_everyone()
        prompts = prompt_embeddings(config, list(splits.values()), cache_dir(config.out_dir), pipeline=run_dir)
    objective = MainNetObjective(config.backbone, main, parameterization, config.ema_decay, config.min_snr_gamma,
                                 prompts, config.proportion_empty_prompts, run_dir)
    evaluation = make_quality_evaluation(objective, config, run_dir, splits) if config.eval_samples > 0 else None
    fit(run_dir, objective, dataset, config, evaluate=evaluation)
    if is_main_process():
        parameterization.to_scheduler().save_pretrained(run_dir / SCHEDULER_DIR)
    process_state().wait_for_everyone()  # the other processes may load this main net next (lisa_probe.train)
    return run_dir


def ensure_default_main(out_dir: Path) -> Path:
    """The default main net under ``out_dir``: pretrained (or its interrupted pretraining resumed) if missing."""
    path = Path(out_dir) / DEFAULT_MAIN_NAME
    if not is_main_net_ready(path):
        print(f"default main net not found at {path}: pretraining it first")
        pretrain(PretrainConfig(out_dir=str(out_dir), resume="latest"))
    return path
