"""Training a side net (ControlNet / SD3 ControlNet) with or without LISA: the objective, the decoder and
``train(TrainConfig)``; ``python -m lisa_probe.train`` is its command line."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from lisa_probe.data import build_dataset, check_items
from lisa_probe.data.condition_kinds import condition_kind
from lisa_probe.files import OutputLock
from lisa_probe.models import DualBranch
from lisa_probe.models.hooks import capture
from lisa_probe.rundir import DECODER_DIR, SIDE_DIR, cache_dir, write_run_config
from lisa_probe.seeds import derive_seed
from lisa_probe.text.prompts import PromptEmbeddings, drop_prompts, prompt_embeddings
from lisa_probe.training.checkpoints import prepare_run_dir, resolve_resume
from lisa_probe.training.config import TrainConfig
from lisa_probe.training.control_evaluation import ControlEvaluation, write_summary
from lisa_probe.training.engine import WEIGHT_DTYPES, Objective, fit, is_main_process, process_state, with_epoch_steps
from lisa_probe.training.latent_cache import LatentCache
from lisa_probe.training.lisa import LisaDecoder, lisa_distance, lisa_target
from lisa_probe.training.lisa_schedule import lisa_rows, lisa_weight
from lisa_probe.training.loading import attach_side, load_main_net
from lisa_probe.training.main_net import ensure_default_main
from lisa_probe.training.onset_probe import OnsetProbe


class SideNetObjective(Objective):
    """``L = MSE(pred_full, y) + lambda_t * distance(D(h_site, t), y - sg[pred_main])`` on a DualBranch.

    The LISA term covers the first ``lisa_rows(B, fraction)`` rows of each batch; with ``decoder=None`` (baseline)
    there is no hook, no main-alone prediction and no extra term.
    """

    def __init__(self, model: DualBranch, decoder: LisaDecoder | None, config: TrainConfig, site: str,
                 prompts: PromptEmbeddings | None = None, latents: LatentCache | None = None):
        super().__init__()
        self.model, self.decoder, self.config, self.site = model, decoder, config, site
        self.prompts, self.latents = prompts, latents

    def networks(self) -> dict[str, torch.nn.Module]:
        """The side net and the frozen main net (the LISA decoder is a few convolutions)."""
        return {SIDE_DIR: self.model.side, "main": self.model.main}

    def modules_to_save(self) -> dict[str, torch.nn.Module]:
        modules = {SIDE_DIR: self.model.side}
        if self.decoder is not None:
            modules[DECODER_DIR] = self.decoder
        return modules

    def parameter_sets(self) -> dict[str, list[torch.nn.Parameter]]:
        """The trainable parameters by group: ``zero_modules`` (every site's zero-conv / zero-linear),
        ``cond_embedding`` (the condition embedding: ControlNet's ``controlnet_cond_embedding``, SD3 ControlNet's
        ``pos_embed_input``), ``decoder`` (LISA's) and ``trunk`` (the rest of the side net)."""
        side = self.model.side
        zero = {id(p) for name in self.model.site_names for p in self.model.site_module(name).parameters()}
        embedding = getattr(side, "controlnet_cond_embedding", None) or getattr(side, "pos_embed_input", None)
        embedded = {id(p) for p in embedding.parameters()} if embedding is not None else set()
        sets = {"zero_modules": [], "cond_embedding": [], "trunk": [],
                "decoder": [p for p in self.decoder.parameters()] if self.decoder is not None else []}
        for p in side.parameters():
            if p.requires_grad:
                sets["zero_modules" if id(p) in zero else "cond_embedding" if id(p) in embedded else "trunk"].append(p)
        return sets

    def param_groups(self) -> list[dict]:
        """One AdamW group per parameter set with its ``--lr-scale-*`` factor; a single group when every factor
        is 1 (as before the factors existed, so older checkpoints resume)."""
        sets = self.parameter_sets()
        scales = {name: getattr(self.config, f"lr_scale_{name}") for name in sets}
        if all(scale == 1.0 for scale in scales.values()):
            return super().param_groups()  # the parameters in their module order, as checkpoints hold them
        return [{"params": params, "lr_scale": scales[name], "name": name} for name, params in sets.items() if params]

    def draw(self, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """x0 (model space: a draw from the VAE's posterior, encoded now or read from the latent cache, for a latent
        main net; the pixels otherwise), cond, noise and timesteps of a batch; with captions, their embeddings after caption
        dropout (drawn last, so a run without dropout draws what it drew before): ``context`` (B, L, D) and, for an
        SD3-style transformer, ``pooled`` (B, P)."""
        images, cond = batch["image"], batch["cond"]
        if self.config.random_flip:  # the pair together; drawn only when asked
            images, cond = flip_pairs(images, cond, torch.rand(len(images), generator=generator) < 0.5)
        x0 = (self.model.encode_images(images, generator) if self.latents is None  # a posterior draw (latent nets)
              else self.latents.lookup(batch["id"], generator))
        inputs = {"x0": x0, "cond": cond, "noise": torch.randn(x0.shape, generator=generator),
                  "timesteps": self.model.parameterization.sample_timesteps(x0.shape[0], generator,
                                                                            self.config.timestep_sampling,
                                                                            self.config.weighting())}
        if self.prompts is not None:
            texts = drop_prompts(batch["text"], self.config.proportion_empty_prompts, generator)
            inputs.update(self.prompts.lookup(texts))
        return inputs

    def gates(self) -> torch.Tensor | None:
        """Every site's residual scale in training (``--conditioning-scale``); None for 1 (no scaling)."""
        if self.config.conditioning_scale == 1.0:
            return None
        return torch.full((len(self.model.sites),), self.config.conditioning_scale,
                          device=next(self.model.side.parameters()).device)

    def loss_terms(self, x0, cond, noise, timesteps, step, **text) -> dict[str, torch.Tensor]:
        """The objective's terms of a drawn batch, with their graphs: ``diffusion`` (scalar) and, with a decoder,
        ``lisa`` (scalar, unweighted), ``weight`` (λ at ``step``, float64 scalar) and ``lisa_target_norm``;
        ``text``: the batch's prompt embeddings (``draw``), none for the null context."""
        parameterization = self.model.parameterization
        x_t = parameterization.add_noise(x0, noise, timesteps)
        target = parameterization.target(x0, noise, timesteps)
        rows = lisa_rows(x0.shape[0], self.config.lisa_fraction) if self.decoder is not None else 0
        hook = capture(self.model, [self.site]) if rows else nullcontext({})
        text = text or None
        main_text = (self.model.null_context_batch(rows)
                     if rows and text is not None and self.config.lisa_main_prompt == "empty" else None)
        with hook as records:
            out = self.model(x_t, timesteps, cond, gates=self.gates(), main_rows=rows,
                             main_pass=self.config.lisa_main_pass, context=text, main_context=main_text)
        weights = parameterization.loss_weights(timesteps, self.config.weighting())
        if weights is None:
            diffusion = F.mse_loss(out.pred_full.float(), target.float())
        else:  # diffusers' SD3 trainers: mean over elements of weight · (pred − target)², per sample
            per_sample = (out.pred_full.float() - target.float()).pow(2).flatten(1).mean(1)
            diffusion = (weights.to(per_sample.device) * per_sample).mean()
        if not rows:
            return {"diffusion": diffusion}
        feature = self.model.feature_to_map(self.site, records[self.site]["feature"][:rows])
        decoded = self.decoder(feature, timesteps[:rows])
        aux_target = lisa_target(target[:rows], out.pred_main)
        weight = lisa_weight(step, self.config.lisa_weight, self.config.lisa_schedule, self.config.lisa_end_step)
        return {"diffusion": diffusion, "lisa": lisa_distance(decoded, aux_target, self.config.lisa_distance),
                "weight": torch.tensor(weight, dtype=torch.float64),
                "lisa_target_norm": aux_target.float().pow(2).mean().detach()}

    def forward(self, x0, cond, noise, timesteps, step, **text):
        """Losses of a drawn batch (``loss_terms``): ``loss`` = diffusion + λ · LISA, and their detached logs."""
        terms = self.loss_terms(x0, cond, noise, timesteps, step, **text)
        diffusion = terms["diffusion"]
        if "lisa" not in terms:
            return {"loss": diffusion, "diffusion_loss": diffusion.detach()}
        weight, lisa = float(terms["weight"]), terms["lisa"]
        return {"loss": diffusion + weight * lisa, "diffusion_loss": diffusion.detach(), "lisa_loss": lisa.detach(),
                "lisa_target_norm": terms["lisa_target_norm"], "lisa_weight": terms["weight"]}


def flip_pairs(images: torch.Tensor, cond: torch.Tensor, flip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (B, 3, H, W) and conditions (B, C, H, W) with the rows where ``flip`` (B,) bool is set mirrored
    left-right, both alike."""
    mask = flip[:, None, None, None]
    return torch.where(mask, images.flip(-1), images), torch.where(mask, cond.flip(-1), cond)


def init_zero_modules(model: DualBranch, scale: float, seed: int) -> None:
    """Give a new side net's zero modules weights ~ N(0, (scale / sqrt(fan_in))²) (biases stay 0), so that the
    diffusion loss reaches the trunk from step 1; ``scale = 0`` keeps ControlNet's zero initialisation."""
    if scale == 0:
        return
    generator = torch.Generator().manual_seed(derive_seed(seed, "zero_init"))
    with torch.no_grad():
        for name in model.site_names:
            weight = model.site_module(name).weight
            fan_in = weight[0].numel()
            weight.copy_(torch.randn(weight.shape, generator=generator) * scale / fan_in**0.5)


def build_decoder(model: DualBranch, site: str, seed: int, min_channels: int | None = None) -> LisaDecoder:
    """A LISA decoder from ``site``'s feature map to the prediction's shape.

    Channels halve per stage down to ``min_channels`` (``--lisa-decoder-channels``), by default ``min(64, C / 4)``:
    64 as in the reference for SD-sized features (C >= 256), narrower for the small built-in presets, where
    64-channel convolutions at full resolution would cost more than the side net itself.
    """
    channels, height, _ = model.site(site).map_shape
    out_size = model.main.config.sample_size
    torch.manual_seed(seed)
    floor = min(64, max(8, channels // 4)) if min_channels is None else min_channels
    return LisaDecoder(in_channels=channels, in_size=height, out_channels=model.main.config.out_channels,
                       out_size=out_size, min_channels=floor, site=site)


def condition_gate(model: DualBranch) -> torch.nn.Module:
    """The condition embedding's zero-initialised output: ControlNet's ``controlnet_cond_embedding.conv_out``, the
    SD3 ControlNet's ``pos_embed_input`` projection."""
    side = model.side
    embedding = getattr(side, "controlnet_cond_embedding", None)
    return embedding.conv_out if embedding is not None else side.pos_embed_input.proj


def init_condition_gate(model: DualBranch, scale: float, seed: int) -> None:
    """Give a new side net's condition-embedding output weights ~ N(0, (scale / sqrt(fan_in))²) (bias 0); ``scale =
    0`` keeps ControlNet's zero initialisation."""
    if scale == 0:
        return
    generator = torch.Generator().manual_seed(derive_seed(seed, "cond_gate_init"))
    with torch.no_grad():
        weight = condition_gate(model).weight
        weight.copy_(torch.randn(weight.shape, generator=generator) * scale / weight[0].numel() ** 0.5)


def train(config: TrainConfig) -> Path:
    """Train a side net; returns the run directory.

    Everything the run reads is built and checked first (model, the data splits it uses and their first batch, the
    prompt and latent caches, the checkpoint named by ``--resume``); only then is the run directory created, so a
    failed start leaves nothing behind. The directory is locked (``<run_dir>.lock``) while this process trains into
    it: a second run into the same directory, ``--overwrite`` included, is refused.
    """
    if config.main is None:
        config = replace(config, main=str(ensure_default_main(Path(config.out_dir))))
    net, dataset_kwargs = load_main_net(config)
    splits = run_splits(config, dataset_kwargs)  # every split the run uses, built once and checked
    config = with_epoch_steps(config, len(splits["train"]), config.run_dir)
    model = attach_side(net, config, splits["train"].cond_channels)
    model.cast_frozen(WEIGHT_DTYPES[config.mixed_precision])
    model.parameterization.check_weighting(config.weighting())
    if config.side is None:  # a new side net (a resumed run loads its weights from the checkpoint)
        init_zero_modules(model, config.zero_init_scale, config.seed)
        init_condition_gate(model, config.cond_embedding_init_scale, config.seed)
    site = config.lisa_site or model.default_lisa_site()
    model.site(site)
    run_dir = config.run_dir
    resolve_resume(run_dir, config.resume)  # a --resume path that is no checkpoint: refused before anything is made
    dataset = (build_dataset(config.dataset, split="train", **dataset_kwargs, random_crop=True)
               if config.random_crop else splits["train"])  # crops for training only; evaluation: centre
    model.check_condition(dataset.cond_channels)
    check_items(dataset, config.batch_size, "the first training batch")
    prompts = prompt_embeddings(config, list(splits.values()), cache_dir(config.out_dir), progress=is_main_process(),
                                extra=[prompt for _, prompt in config.validation_pairs])
    latents = (LatentCache(model, dataset, Path(config.main) / "vae", cache_dir(config.out_dir) / "latents",
                           dataset_kwargs, progress=is_main_process(), variant=config.variant)
               if config.cache_latents else None)
    if latents is not None and hasattr(dataset, "without_images"):
        dataset = dataset.without_images()  # a step reads the latents: decoding the images would be wasted
    evaluation = (ControlEvaluation(model, config, splits["val"], splits["train"], dataset_kwargs, run_dir, prompts)
                  if config.eval_samples > 0 else None)
    probe = (OnsetProbe(model, config, splits["val"], config.probe_every, config.probe_samples, prompts,
                        grad_split=config.probe_grad_split) if config.probe_every > 0 else None)
    lock = OutputLock(run_dir, what="run directory") if is_main_process() else None
    try:
        prepare_run_dir(run_dir, config.resume, config.overwrite, is_main_process())  # the inputs are valid
        process_state().wait_for_everyone()
        decoder = (build_decoder(model, site, config.seed, config.lisa_decoder_channels) if config.lisa_weight > 0
                   else None)
        if is_main_process():
            write_run_config(run_dir, replace(config, lisa_site=site), kind="train")  # the site resolved, saved
        objective = SideNetObjective(model, decoder, config, site, prompts, latents)
        state = fit(run_dir, objective, dataset, config, evaluate=evaluation, probe=probe)
        if is_main_process():
            write_summary(run_dir, config, state, condition_kind(dataset.condition).control_metric)
    finally:
        if lock is not None:
            lock.release()
    return run_dir


def run_splits(config: TrainConfig, dataset_kwargs: dict) -> dict:
    """``{"train": ..., "val": ...}``: the splits a side-net run uses, each built once (val only when the run uses it:
    evaluation, the onset probe, captions to encode); ValueError when the val split cannot give what the run takes
    from it (``--probe-samples``) and ``DataError`` when its first items cannot be read."""
    splits = {"train": build_dataset(config.dataset, split="train", **dataset_kwargs,
                                     **({"size": config.train_size} if config.train_size is not None else {}))}
    wanted = max(config.eval_samples, config.probe_samples if config.probe_every > 0 else 0)
    if wanted == 0 and not config.has_captions:
        return splits
    val = splits["val"] = build_dataset(config.dataset, split="val", **dataset_kwargs)
    if config.probe_every > 0 and config.probe_samples > len(val):
        raise ValueError(f"--probe-samples {config.probe_samples} is more than the {len(val)} samples of the val "
                         f"split; use at most {len(val)}")
    check_items(val, wanted, "the validation samples")
    return splits
