"""Periodic evaluation of a side net during training and the run summary (convergence step).

A fixed validation set (the first ``eval_samples`` of the val split), fixed starting noise and a fixed sampler, so
that evaluations at different steps and in different runs are comparable.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch.utils.data import default_collate

from lisa_probe.data.folder import load_condition
from lisa_probe.diffusion.sampling import fixed_noise, sample
from lisa_probe.evaluation import Evaluator
from lisa_probe.evaluation.grids import save_grid, to_uint8
from lisa_probe.files import write_json
from lisa_probe.provenance import code_version
from lisa_probe.rundir import SUMMARY_FILE, cache_dir, read_eval, read_metrics, sample_grid_path
from lisa_probe.seeds import derive_seed
from lisa_probe.text.prompts import batch_context
from lisa_probe.training.engine import gather_rows

GRID_COLUMNS = 8


class ControlEvaluation:
    """``evaluate(step) -> metrics``: control fidelity, factor read-back and quality of controlled samples.

    The main net alone is sampled once from the same noise (``main_alone/<metric>``) as the reference point. The
    user's own ``--validation-image`` / ``--validation-prompt`` pairs are sampled with them (their own fixed noise,
    after the split's, which keeps its noise): their control fidelity is ``validation_pairs/<metric>`` and they are
    the grid's last columns.
    """

    def __init__(self, model, config, val, train_set, dataset_kwargs: dict, run_dir: Path, prompts=None):
        """``val``: the run's val split (its first ``config.eval_samples`` conditions are sampled); ``train_set``: its
        train split, centre-cropped (the read-back net trains on it, cached by ``dataset_kwargs``)."""
        self.model, self.config, self.run_dir = model, config, Path(run_dir)
        batch = default_collate([val[i] for i in range(min(config.eval_samples, len(val)))])
        pairs = config.validation_pairs
        self.n_val, self.factors = len(batch["cond"]), batch["factors"]
        resolution = batch["cond"].shape[-1]
        own = [load_condition(path, resolution, val.cond_channels) for path, _ in pairs]
        self.cond = torch.cat([batch["cond"], *[cond[None] for cond in own]])
        texts = list(batch["text"]) if prompts is not None else None
        self.captions = None  # shown above the grid's columns: the split's captions, the pairs' prompts or files
        if texts is not None or pairs:
            shown = texts[:GRID_COLUMNS] if texts is not None else [""] * min(GRID_COLUMNS, self.n_val)
            named = [f"{Path(path).name}: {prompt}" if prompt else Path(path).name for path, prompt in pairs]
            self.captions = shown + named  # a pair's column: its file and prompt
        self.context = batch_context(prompts, {"text": (texts or []) + [prompt for _, prompt in pairs]})
        self.evaluator = Evaluator.for_dataset(train_set, cache_dir=cache_dir(config.out_dir),
                                               dataset_kwargs=dataset_kwargs)
        image_shape = (self.model.main.config.in_channels, self.model.main.config.sample_size,
                       self.model.main.config.sample_size)
        self.noise = torch.cat([fixed_noise((self.n_val, *image_shape), derive_seed(config.seed, "side_eval")),
                                fixed_noise((len(pairs), *image_shape), derive_seed(config.seed, "validation_pairs"))])
        self.main_alone: torch.Tensor | None = None  # on the main process, once drawn
        self.main_alone_drawn = False

    def _sample(self, full: bool) -> torch.Tensor | None:
        """(N, 3, H, W) samples of every validation row, the full model's or (``full`` false) the main net's alone,
        each process drawing its share (``gather_rows``): on the main process; None on the others."""
        device = next(self.model.side.parameters()).device

        def draw(rows: range) -> torch.Tensor:
            share = slice(rows.start, rows.stop)
            cond = self.cond[share].to(device)
            context = None if self.context is None else {key: value[share].to(device)
                                                         for key, value in self.context.items()}
            if full:
                def predict(x, t):
                    return self.model(x, t, cond, context=context).pred_full
            else:
                def predict(x, t):
                    return self.model.predict_main(x, t, context)
            samples = sample(predict, self.model.parameterization, self.noise[share].to(device),
                             self.config.sample_steps, clip_sample=self.model.vae is None)
            return self.model.decode_samples(samples).cpu()

        return gather_rows(draw, len(self.noise))

    def _grid_columns(self, images: torch.Tensor) -> torch.Tensor:
        """The grid's columns of (N_val + N_pairs, ...) rows: the split's first ``GRID_COLUMNS``, then the pairs."""
        return torch.cat([images[:min(GRID_COLUMNS, self.n_val)], images[self.n_val:]])

    def __call__(self, step: int) -> dict[str, float]:
        """Called on every process (each samples its share of the rows); the metrics and the grid on the main one,
        {} on the others."""
        n, results = self.n_val, {}
        first = not self.main_alone_drawn  # the same on every process: each joins the same gathers
        if first:
            self.main_alone, self.main_alone_drawn = self._sample(full=False), True
        controlled = self._sample(full=True)
        if controlled is None:
            return {}
        if first and not any(metric.startswith("main_alone/") for rows in read_eval(self.run_dir).values()
                             for metric in rows):  # logged once per run, not again after a resume
            main_metrics = self.evaluator.evaluate(self.main_alone[:n], self.cond[:n], self.factors)
            results.update({f"main_alone/{k}": v for k, v in main_metrics.items()})
        results.update(self.evaluator.evaluate(controlled[:n], self.cond[:n], self.factors))
        if len(self.cond) > n:
            pairs = self.evaluator.control_fidelity(controlled[n:], self.cond[n:])
            results.update({f"validation_pairs/{k}": v for k, v in pairs.items() if math.isfinite(v)})
        save_grid([("condition", to_uint8(self._grid_columns(self.cond), (0.0, 1.0))),
                   ("main alone", to_uint8(self._grid_columns(self.main_alone))),
                   ("controlled", to_uint8(self._grid_columns(controlled)))], sample_grid_path(self.run_dir, step),
                  captions=self.captions)
        return results


def convergence_step(evaluations: dict[int, dict[str, float]], metric: str | None, threshold: float) -> int | None:
    """First evaluated step whose ``metric`` reaches ``threshold`` (None if never, or without a metric: a condition
    kind with no reference to score control against)."""
    for step in sorted(evaluations):
        if evaluations[step].get(metric, float("-inf")) >= threshold:
            return step
    return None


def mean_step_seconds(run_dir: Path) -> float | None:
    """Mean wall time per optimizer step from ``metrics.csv``'s ``seconds`` column (the training steps' own time,
    cumulative across resumes; evaluations and checkpoints excluded)."""
    rows = read_metrics(run_dir)
    if len(rows) < 2:
        return None
    first, last = rows[0], rows[-1]
    steps = int(last["step"]) - int(first["step"])
    return (float(last["seconds"]) - float(first["seconds"])) / steps if steps > 0 else None


def write_summary(run_dir: Path, config, state: dict, metric: str | None) -> dict:
    """Write ``summary.json``: final metrics, convergence step of control ``metric`` (None for a condition kind
    without one: ``control_metric`` and ``convergence_step`` are then null), time per step."""
    evaluations = read_eval(run_dir)
    summary = {
        "run": Path(run_dir).name, "code_version": code_version(), "steps": state["step"],
        "control_metric": metric, "convergence_threshold": config.convergence_threshold,
        "convergence_step": convergence_step(evaluations, metric, config.convergence_threshold),
        "seconds_per_step": mean_step_seconds(run_dir),
        "final": evaluations[max(evaluations)] if evaluations else {},
    }
    write_json(Path(run_dir) / SUMMARY_FILE, summary)
    return summary


def summary_lines(summary: dict) -> list[str]:
    """The end-of-run console summary of a ``summary.json``, the same lines whether or not the run evaluated:
    steps and time per step, the convergence step of its control metric, and the final evaluation."""
    seconds = summary.get("seconds_per_step")
    metric = summary.get("control_metric")
    step = summary.get("convergence_step")
    convergence = ("no control metric for this condition" if metric is None else
                   f"{metric} >= {summary.get('convergence_threshold')}: "
                   f"{'not reached' if step is None else f'step {step}'}")
    final = summary.get("final") or {}
    return [f"steps: {summary.get('steps')} ({'?' if seconds is None else f'{seconds:.3g}'} s/step)",
            f"convergence ({convergence})",
            "final: " + (", ".join(f"{key} {value:.4g}" for key, value in final.items()) if final
                         else "no metrics (not evaluated: --eval-samples 0; or no control metric and no factors)")]
