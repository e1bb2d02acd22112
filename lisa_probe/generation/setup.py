"""What every command that samples from side nets prepares: the sources around one main net, the conditions,
prompts and starting noise of the samples, and ``Drawing``, which samples a batch of rows under any gate schedule.

The noise is ``randn((N, C, h, w), Generator().manual_seed(seed + 12345))`` (``seeds``' ``side_eval``): with a
run's seed, steps equal to its ``--sample-steps`` and N its ``--eval-samples``, the full model's images are its
validation grid's. The sampler is train's evaluation sampler (DDIM for eps / v, flow-match Euler for flow; no
classifier-free guidance).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from accelerate import PartialState
from torch.utils.data import default_collate
from tqdm.auto import tqdm

from lisa_probe.data import build_dataset, check_items
from lisa_probe.data.condition_kinds import condition_kind
from lisa_probe.diffusion.sampling import Predictor, fixed_noise, sample
from lisa_probe.extraction.config import ForeignRun
from lisa_probe.generation.config import DrawConfig
from lisa_probe.generation.sources import Source, attach_sources, read_sources, shared_setting
from lisa_probe.models import DualBranch
from lisa_probe.rundir import cache_dir
from lisa_probe.seeds import derive_seed
from lisa_probe.text.prompts import batch_context, prompt_embeddings
from lisa_probe.training.loading import load_main_net

GateSchedule = Callable[[float], "torch.Tensor | None"]  # a sampler step's timestep -> the site gates (S,)


class Drawing:
    """The shared inputs of every row: conditions (N, C, H, W) in [0, 1], the text context, the starting noise and
    the device, and the row's images drawn batch by batch."""

    def __init__(self, config: DrawConfig, cond: torch.Tensor, context: dict | None, noise: torch.Tensor, device):
        self.config, self.cond, self.context, self.noise, self.device = config, cond, context, noise, device

    def context_on(self, device) -> dict | None:
        """The text context of every sample on ``device`` (None: the null context)."""
        return None if self.context is None else {key: value.to(device) for key, value in self.context.items()}

    def batches(self) -> list[slice]:
        size = self.config.batch_size
        return [slice(start, start + size) for start in range(0, len(self.cond), size)]

    def images(self, model: DualBranch, gates_at: GateSchedule | None, progress: tqdm | None = None) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1] on the CPU: the main net alone (``gates_at`` None) or the full model with the
        site gates ``gates_at(t)`` (S,) at each sampler step's timestep ``t`` (None there: every gate open)."""
        def predictor(rows: slice, cond: torch.Tensor, context: dict | None) -> Predictor:
            if gates_at is None:
                return lambda x, t: model.predict_main(x, t, context)

            def predict(x, t):
                gates = gates_at(float(t[0]))
                return model(x, t, cond, gates=None if gates is None else gates.to(self.device),
                             context=context).pred_full
            return predict

        return self.draw(model, predictor, progress)

    @torch.no_grad()
    def draw(self, model: DualBranch, predictor: Callable[[slice, torch.Tensor, dict | None], Predictor],
             progress: tqdm | None = None) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1] on the CPU, sampled batch by batch with ``predictor(rows, cond, context)``'s
        ``predict(x_t, t)`` for the samples ``rows`` (their conditions and context on the device)."""
        drawn = []
        for rows in self.batches():
            cond = self.cond[rows].to(self.device)
            context = None if self.context is None else {k: v[rows].to(self.device) for k, v in self.context.items()}
            samples = sample(predictor(rows, cond, context), model.parameterization, self.noise[rows].to(self.device),
                             self.config.steps, clip_sample=model.vae is None)
            drawn.append(model.decode_samples(samples).float().cpu())
            if progress is not None:
                progress.update(1)
        return torch.cat(drawn)


def constant_gates(model: DualBranch, scale: float) -> GateSchedule:
    """Every site's gate at ``scale`` at every step (diffusers' ``controlnet_conditioning_scale``)."""
    gates = torch.full((len(model.sites),), float(scale))
    return lambda t: gates


class Setup(NamedTuple):
    """Everything a sampling command draws from: ``sources`` and their ``models`` (one main net), the shared
    ``setting``, the ``dataset`` and the collated ``batch`` of its first samples, ``drawing``, the ``captions`` the
    rows are conditioned on (None: the null context), ``noise_recipe`` (how the starting noise is made) and the
    ``dataset_kwargs`` the dataset was built with."""

    sources: list[Source]
    models: list[DualBranch]
    setting: ForeignRun
    dataset: object
    batch: dict
    drawing: Drawing
    captions: list[str] | None
    noise_recipe: str
    dataset_kwargs: dict

    def silhouettes(self) -> np.ndarray | None:
        """(N, H, W) bool true silhouettes of the samples for a condition scored against them (shapes' pose),
        else None."""
        if condition_kind(self.dataset.condition, self.dataset.cond_channels).reference != "silhouette":
            return None
        factors, size = self.batch["factors"], int(self.batch["cond"].shape[-1])
        return np.stack([self.dataset.silhouette({name: values[i].item() for name, values in factors.items()}, size)
                         for i in range(len(self.batch["cond"]))])


def prepare(paths: list[str], labels: list[str] | None, config: DrawConfig, progress: bool = True) -> Setup:
    """Read and check the sources, load the main net once and a side net per source, build the conditions,
    prompts and noise of the first ``config.samples`` samples. ValueError naming any bad input, before anything
    is written."""
    chosen = read_sources(paths, labels)
    setting = shared_setting(config, chosen)
    net, dataset_kwargs = load_main_net(setting)
    dataset = build_dataset(setting.dataset, split=config.split, **dataset_kwargs)
    if config.samples > len(dataset):
        raise ValueError(f"--samples {config.samples} exceeds the {config.split} split's {len(dataset)} samples")
    check_items(dataset, config.samples, "the conditions")
    models = attach_sources(net, setting, chosen, dataset.cond_channels)
    batch = default_collate([dataset[index] for index in range(config.samples)])
    prompts = (prompt_embeddings(setting, [dataset], cache_dir(Path(config.out).parent), progress=progress)
               if config.prompt == "caption" else None)
    device = PartialState().device  # accelerate's: the GPU this process is given, else the CPU
    for model in models:
        model.to(device)
    main = net.main.config
    shape, seed = (config.samples, main.in_channels, main.sample_size, main.sample_size), \
        derive_seed(config.seed, "side_eval")
    drawing = Drawing(config, batch["cond"], batch_context(prompts, batch), fixed_noise(shape, seed), device)
    captions = list(batch["text"]) if prompts is not None else None
    return Setup(chosen, models, setting, dataset, batch, drawing, captions,
                 f"randn({shape}, Generator().manual_seed({seed})), CPU, float32", dataset_kwargs)
