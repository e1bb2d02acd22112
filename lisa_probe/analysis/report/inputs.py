"""The model inputs of a store's rows rebuilt from the store and the data alone: the row's sample of its split,
the row's noise (``sampling.row_noise``, the store's ``row_noise`` convention), its timestep and, in stores of
captioned data, its prompt's embedding (``meta/prompt``, read from the prompt cache the extraction wrote)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from lisa_probe.analysis.report.selection import Run
from lisa_probe.data import build_dataset
from lisa_probe.diffusion.sampling import row_noise
from lisa_probe.rundir import cache_dir
from lisa_probe.text.prompts import prompt_embeddings


class RowInputs(NamedTuple):
    """The model inputs of n rows: ``x_t`` (n, C, H, W), ``timesteps`` (n,) (long for eps/v, float for flow),
    ``cond`` (n, Cc, Hc, Wc), the text ``context`` ``{"context": (n, L, D)}`` of rows extracted on captions (None:
    the null context), the regression ``target`` (n, C, H, W) of the parameterization and the clean ``images``
    (n, 3, Hc, Wc) in [-1, 1]."""

    x_t: torch.Tensor
    timesteps: torch.Tensor
    cond: torch.Tensor
    context: dict | None
    target: torch.Tensor
    images: torch.Tensor


def rebuild_inputs(run: Run, model, config, dataset_kwargs: dict, index: np.ndarray) -> RowInputs:
    """The model inputs of store rows ``run.rows[index]`` as the extraction built them: sample ``row // (n_rows /
    samples)`` of its split, noise ``row_noise(seed, row)`` and the row's timestep."""
    args = run.store.attrs["extract_args"]
    dataset = build_dataset(config.dataset, split=args["split"], **dataset_kwargs)
    rows = run.rows[index]
    rows_per_sample = run.store.n_rows // args["samples"]
    samples = [dataset[int(row // rows_per_sample)] for row in rows]
    stored = run.meta["sample_id"].to_numpy()[index]
    if [sample["id"] for sample in samples] != list(stored):
        raise ValueError(f"the {args['split']} split no longer yields the store's samples (e.g. {stored[0]!r})")
    images = torch.stack([sample["image"] for sample in samples])
    x0 = model.encode_images(images)
    noise = row_noise(tuple(x0.shape[1:]), args["seed"], [int(row) for row in rows])
    dtype = torch.float32 if model.parameterization.prediction_type == "flow" else torch.long
    steps = torch.as_tensor(run.meta["t"].to_numpy()[index]).to(dtype)
    context = None
    if "meta/prompt" in run.store.layout and args.get("prompt", "caption") == "caption":
        prompts = prompt_embeddings(config, [dataset], cache_dir(run.store.paths[0].parent), progress=False)
        context = prompts.lookup(list(run.store.read("meta/prompt", rows)))
    parameterization = model.parameterization
    return RowInputs(parameterization.add_noise(x0, noise, steps), steps, torch.stack([s["cond"] for s in samples]),
                     context, parameterization.target(x0, noise, steps), images)
