"""The README a study writes beside its results: the headline tables (the reading is added by hand)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lisa_probe.provenance import code_version
from lisa_probe.study.figures import lr_slope


def write_readme(results: Path, study: dict, runs: pd.DataFrame, convergence: pd.DataFrame, areas: pd.DataFrame,
                 onset: dict[str, pd.DataFrame], readback: pd.DataFrame, seconds: float, command: str) -> None:
    """A short README with the headline tables (the interpretation is added by hand after reading them)."""
    final_cols = ["setting", "arm"] + [c for c in runs.columns if c.startswith("final/") and "main_alone" not in c]
    final = runs[final_cols].groupby(["setting", "arm"]).mean(numeric_only=True).reset_index()
    timing = runs.groupby(["setting", "arm"])["seconds_per_step"].mean().reset_index()
    text = [f"# Study `{study['name']}`", "",
            f"Reproduce: `{command}` (code {code_version()}, {seconds / 60:.0f} min on this machine).", "",
            "## Convergence (first evaluation where control fidelity reaches the threshold)", "",
            convergence.to_markdown(index=False, floatfmt=".3g"), "",
            "## Control fidelity averaged over the training curve (threshold-free)", "",
            areas.to_markdown(index=False, floatfmt=".3g"), "",
            "## Final metrics (mean over seeds)", "", final.to_markdown(index=False, floatfmt=".3g"), "",
            "## Training time per step", "", timing.to_markdown(index=False, floatfmt=".3g"), "",
            "![control fidelity vs step](curves.png)", ""]
    if len(onset["onset_summary"]):
        text += ["## Onset (logistic fit of control fidelity vs step; `onset.csv` per run)", "",
                 onset["onset_summary"].to_markdown(index=False, floatfmt=".3g"), "",
                 "t50: geometric mean over the seeds with an observed onset, 95 % t-interval on log t50; runs whose "
                 "onset lies after their last step are counted as right-censored, never given a number.", "",
                 "![fitted onsets](onset_fits.png)", ""]
        if len(onset.get("onset_paired", [])):
            text += ["### Paired by seed (same data order and noise): arm / baseline t50", "",
                     onset["onset_paired"].to_markdown(index=False, floatfmt=".3g"), "",
                     "ratio: geometric mean of the per-seed ratios with its paired 95 % t-interval; p_equivalence: "
                     "two one-sided tests against ±margin; mde: the smallest ratio − 1 this many pairs detect with "
                     "80 % power.", ""]
    if onset["lr_sweep"]["lr"].nunique() >= 2:
        text += ["## Onset vs learning rate", "", onset["lr_sweep"].to_markdown(index=False, floatfmt=".3g"), "",
                 f"Slope of log t50 on log lr: **{lr_slope(onset['lr_sweep']):.2f}** (−1: t50 ∝ 1/lr).", "",
                 "![t50 vs lr](t50_vs_lr.png)", ""]
    if (results / "probe_signals.png").exists():
        text += ["## Onset probe and norms", "", "![onset probe](probe_signals.png)", ""]
    if len(readback):
        text += ["## What the samples show, factor by factor (read-back at the last evaluation, beside the main net "
                 "alone; accuracy for kind, MAE otherwise)", "", readback.to_markdown(index=False, floatfmt=".3g"), ""]
    (results / "README.md").write_text("\n".join(text))
