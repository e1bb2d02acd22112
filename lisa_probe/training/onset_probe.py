"""The onset probe of a side net during training (``--probe-every``): without sampling, on a fixed probe batch,
how much of the likelihood-score target the side branch already explains (``onset_signals``), per noise level, and
each site's residual and zero-module norms."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import default_collate

from lisa_probe.diffusion.sampling import fixed_noise
from lisa_probe.models import DualBranch
from lisa_probe.models.hooks import capture
from lisa_probe.seeds import derive_seed
from lisa_probe.text.prompts import PromptEmbeddings, batch_context
from lisa_probe.training.config import TrainConfig
from lisa_probe.training.engine import Probe
from lisa_probe.training.grad_split import gradient_split


def onset_signals(target: np.ndarray, full: np.ndarray, main: np.ndarray) -> dict[str, float]:
    """How much of the condition a side branch already supplies, without sampling, on rows (N, ...):

    * ``explained``: the share of the main net's error the side branch removes, ``1 − ‖y − full‖² / ‖y − main‖²``
      (sums over all rows and elements): 0 while its residuals are zero, 1 when ``full`` is the target;
    * ``cosine``: the mean over rows of the cosine between the model's likelihood-score estimate ``full − main``
      and the oracle one ``y − main`` (0 for a row where either is zero).
    """
    y, full, main = (np.asarray(a, dtype=np.float64).reshape(len(a), -1) for a in (target, full, main))
    model, oracle = full - main, y - main
    norms = np.linalg.norm(model, axis=1) * np.linalg.norm(oracle, axis=1)
    cosine = np.divide(np.sum(model * oracle, axis=1), norms, out=np.zeros(len(y)), where=norms > 0)
    error_main = float(np.sum(oracle**2))
    explained = 1.0 - float(np.sum((y - full) ** 2)) / error_main if error_main > 0 else math.nan
    return {"explained": explained, "cosine": float(cosine.mean())}


class OnsetProbe(Probe):
    """The onset signal of a side net, without sampling, on a fixed probe batch every ``every`` steps: the first
    ``samples`` validation samples, each at one of ``BINS`` evenly spaced timesteps (sample k at bin k mod BINS),
    fixed noise. Columns: ``probe/explained`` and ``probe/cosine`` (``onset_signals``) overall and per bin
    (``…/t<b>``, low to high noise), ``probe/residual_norm/<site>`` (mean L2 norm per row of the residual the site
    adds) and ``probe/zero_weight_norm/<site>`` (Frobenius norm of its zero module's weight); with ``grad_split``
    (``--probe-grad-split``), also ``grad/<group>/*`` of ``grad_split.gradient_split`` on the same batch, with the
    objective and optimizer the loop binds (``bind``)."""

    BINS = 4

    def __init__(self, model: DualBranch, config: TrainConfig, val, every: int, samples: int,
                 prompts: PromptEmbeddings | None = None, grad_split: bool = False):
        """``val``: the run's val split, of at least ``samples`` items (``side_net.run_splits`` checks it)."""
        self.model, self.every, self.grad_split = model, every, grad_split
        self.objective = self.optimizer = None
        batch = default_collate([val[i] for i in range(samples)])
        self.context = batch_context(prompts, batch)
        parameterization = model.parameterization
        self.bins = torch.arange(len(batch["cond"])) % self.BINS
        self.timesteps = parameterization.evenly_spaced_timesteps(self.BINS)[self.bins]
        x0 = model.encode_images(batch["image"])
        noise = fixed_noise(tuple(x0.shape), derive_seed(config.seed, "probe"))
        self.x0, self.noise = x0, noise
        self.x_t = parameterization.add_noise(x0, noise, self.timesteps)
        self.target = parameterization.target(x0, noise, self.timesteps)
        self.cond = batch["cond"]

    def bind(self, objective, optimizer) -> None:
        """The objective (``SideNetObjective``) and optimizer of the run, for the gradient split."""
        self.objective, self.optimizer = objective, optimizer

    def split_gradients(self, step: int) -> dict[str, float]:
        """``grad_split.gradient_split`` of the objective's terms on the probe batch at ``step``."""
        device = next(self.model.side.parameters()).device
        context = {} if self.context is None else {k: v.to(device) for k, v in self.context.items()}
        with torch.enable_grad():
            terms = self.objective.loss_terms(self.x0.to(device), self.cond.to(device), self.noise.to(device),
                                              self.timesteps.to(device), step, **context)
            return gradient_split(terms, self.objective.parameter_sets(), self.optimizer)

    @torch.no_grad()
    def __call__(self, step: int) -> dict[str, float]:
        device = next(self.model.side.parameters()).device
        sites = self.model.site_names
        with capture(self.model, sites, what=("residual",), detach=True) as records:
            context = None if self.context is None else {k: v.to(device) for k, v in self.context.items()}
            out = self.model(self.x_t.to(device), self.timesteps.to(device), self.cond.to(device),
                             main_rows=len(self.cond), context=context)
        target, full, main = (a.float().cpu().numpy() for a in (self.target, out.pred_full, out.pred_main))
        values = {f"probe/{key}": value for key, value in onset_signals(target, full, main).items()}
        for b in range(self.BINS):
            rows = (self.bins == b).numpy()
            if not rows.any():  # a probe batch of fewer samples than bins
                continue
            values.update({f"probe/{key}/t{b}": value
                           for key, value in onset_signals(target[rows], full[rows], main[rows]).items()})
        for site in sites:
            residual = records[site]["residual"].float()
            values[f"probe/residual_norm/{site}"] = float(residual.flatten(1).norm(dim=1).mean())
            values[f"probe/zero_weight_norm/{site}"] = float(self.model.site_module(site).weight.norm())
        if self.grad_split and self.objective is not None:
            values.update(self.split_gradients(step))
        return values
