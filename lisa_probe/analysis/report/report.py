"""A report directory: the tables as CSV, figures, ``report.md`` and the same as one self-contained
``report.html``, written to a staging directory and
published at the end (``prepare_out`` / ``publish_out``), so a failing analysis leaves a previous report whole."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from itertools import product
from pathlib import Path

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from lisa_probe.analysis.config import AnalyzeOptions
from lisa_probe.analysis.disentanglement import NEGLIGIBLE
from lisa_probe.analysis.plots import (
    ERROR_BARS,
    Figures,
    plot_alignment_vs_t,
    plot_decomposition_bars,
    plot_decomposition_heatmap,
    plot_probe_selectivity,
    plot_training_curves,
)
from lisa_probe.analysis.report.html import write_html
from lisa_probe.analysis.report.selection import Run, open_run, run_labels
from lisa_probe.analysis.report.streaming import ESTIMATES, READOUT_GRID
from lisa_probe.analysis.report.tables import TABLES, run_tables
from lisa_probe.analysis.report.timing import StageTimes
from lisa_probe.provenance import code_version

ALIGNMENT_FIGURES = (("decoder", "cosine"), ("ridge", "r2"), ("spatial_ridge", "r2"), ("cka", "cka_debiased"))


DISENTANGLEMENT_FIGURES = (("dci", "disentanglement"), ("mig", "mig"), ("sap", "sap"))


FIGURED_METHOD = {"store": "add_one_in", "model": "integrated_gradients"}


READING = """## How to read this report

* **Runs and arms.** Each store is a run; runs whose configs differ only in seed (and output or schedule options)
  form an *arm*, drawn as one line or bar. With several runs in an arm, error bars and bands are 95 % t-intervals
  across its runs (seeds); with one run, across the rows averaged into a point where there are several, and for a
  value measured once on all rows (a read-out's R², CKA, the decoder's alignment) across the five sample-grouped
  cross-validation folds (each fold holds other samples; the `half` column of `alignment.csv`). Timestep axes run from low noise (left) to high noise (right).
* **Alignment** asks whether the side features carry the likelihood score, estimated as `model` = full − main (what
  the side net adds) or `oracle` = target − main. `decoder cosine`: the LISA decoder's output against the estimate
  (1: same direction, 0: unrelated). `ridge` / `spatial_ridge` R²: share of the estimate's variance a cross-validated
  linear read-out of the features explains (0: none; below 0: worse than the mean). `cka` (debiased): similarity of
  the two representations' geometry (0: none, 1: identical up to rotation and scale). Every value sits beside its
  **shuffled-pairs control** (dashed), the same measure with features paired to another sample's estimate: read the
  gap between the solid and the dashed line, not the level.
* **Probes.** Selectivity = a linear probe's held-out score minus a control task's (a random label per sample), so
  0 is chance. *Carried* factors are those the condition determines (shape, position); a side branch should encode
  those and not the others.
* **DCI, MIG, SAP** (0 to 1, higher: more disentangled) score whether each feature direction serves one factor.
  A DCI disentanglement is only meaningful when its completeness and informativeness are not negligible; flagged
  values (`flag` in `disentanglement.csv`) are left out of means and drawn as gaps.
* **Decomposition.** How much of the side net's effect on the prediction (projected on the score's direction) comes
  from each injection site: `add_one_in` opens one site alone, `integrated_gradients` and `shapley_sampling` share the
  whole effect among the sites. The sites interact (the main net is nonlinear in the residuals), so single-site
  effects need not sum to the whole (`all_sites`).
* **Training.** The runs' own evaluations (control fidelity, e.g. edge F1) over steps, and the step at which each
  run first reaches the control metric's threshold (`convergence_step`, `--convergence-threshold`).
"""


def _has(table: pd.DataFrame, **equal) -> pd.DataFrame:
    """Rows where every named column equals the given value (possibly none)."""
    mask = np.logical_and.reduce([table[column] == value for column, value in equal.items()])
    return table[mask]


def alignment_figures(figures: Figures, table: pd.DataFrame) -> None:
    """Per method (decoder cosine, pooled and spatial ridge R², CKA) and estimate: the value against t, one panel
    per site, the arms overlaid with the shuffled-pairs control."""
    for (method, metric), estimate in product(ALIGNMENT_FIGURES, ESTIMATES):
        data = _has(table, method=method, metric=metric, estimate=estimate)
        if data["value"].notna().any():
            figures.save("alignment", f"alignment_{method}_{metric}_{estimate}",
                         plot_alignment_vs_t(data, metric, method),
                         f"{method} {metric} against the {estimate} estimate per site; solid: the features' own "
                         f"pairs, dashed: shuffled pairs (the control); {ERROR_BARS}")


def readable(codes: pd.DataFrame) -> pd.DataFrame:
    """The disentanglement rows with every flagged value (``flag``: undefined, or a DCI disentanglement beside a
    negligible completeness or informativeness) set to NaN: drawn as gaps, left out of the report's means."""
    return codes.assign(value=codes["value"].where(codes["flag"].fillna("") == ""))


def disentanglement_figures(figures: Figures, probes: pd.DataFrame, codes: pd.DataFrame) -> None:
    """Probe selectivity of carried vs not-carried factors per site; DCI disentanglement, MIG and SAP against t."""
    figures.save("probes", "probe_selectivity", plot_probe_selectivity(probes),
                 "probe selectivity (task − chance-level control) per site, of the factors the condition carries "
                 "and of those it does not; error bars: 95 % t-intervals across an arm's runs (seeds) where it has "
                 "several, else across the factors × timestep bins averaged into the bar")
    overall = readable(codes[codes["factor"] == "all"])
    for method, metric in DISENTANGLEMENT_FIGURES:
        if not _has(overall, method=method, metric=metric)["value"].notna().any():
            continue  # undefined or flagged for every run (no factor predicted above chance)
        figures.save("disentanglement", f"disentanglement_{method}_{metric}",
                     plot_alignment_vs_t(overall, metric, method),
                     f"{method} {metric} (all factors) per site; gaps: undefined or flagged values "
                     f"(disentanglement.csv's flag column); {ERROR_BARS}")


def decomposition_figures(figures: Figures, table: pd.DataFrame) -> None:
    """Heatmap (and stacked bars) of the headline method of each source and objective: the store's add-one-in, the
    model's integrated gradients (the other methods are in the tables)."""
    for (source, objective), data in table.groupby(["source", "objective"], sort=False):
        method = FIGURED_METHOD[source]
        name = f"decomposition_{source}_{objective}_{method}"
        caption = f"mean {method} attributions of {objective} ({source}-based) over the examples"
        figures.save("decomposition", name, plot_decomposition_heatmap(data, method), caption + ", site × t")
        figures.save("decomposition", name + "_bars", plot_decomposition_bars(data, method), caption + ", stacked")


def training_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per run: each metric's last evaluation (``final <metric>``) and the ``summary.json`` rows."""
    curves = table[table["step"].notna()].sort_values("step")
    final = curves.groupby(["run", "metric"], sort=False).tail(1)
    return pd.concat([final.assign(metric="final " + final["metric"]), table[table["step"].isna()]])


def training_figure(figures: Figures, table: pd.DataFrame) -> None:
    """The evaluation curves (metrics with two or more evaluations in a run) with each run's convergence step."""
    curves = table[table["step"].notna()]
    if curves.groupby(["metric", "run"])["step"].nunique().max() < 2:
        return  # one evaluation per run: the table has it, there is no curve to draw
    steps = table[table["metric"] == "convergence_step"].set_index("run")["value"].to_dict()
    figures.save("training", "training_curves", plot_training_curves(curves, steps),
                 "evaluation metrics during training, the arms overlaid (dashed: convergence step; bands: 95 % "
                 "t-intervals across an arm's runs where it has several)")


def headline(table: pd.DataFrame, index: Sequence[str], runs: Sequence[str]) -> str:
    """Markdown table of the mean ``value`` over everything but ``index``, one column per run (in ``runs`` order)."""
    if table.empty:
        return "_(no rows)_"
    pivot = table.groupby([*index, "run"], dropna=False, sort=False)["value"].mean().unstack("run")
    pivot = pivot.reindex(columns=[run for run in runs if run in pivot.columns]).reset_index()
    return pivot.to_markdown(index=False, floatfmt=".3f")


def provenance(runs: Sequence[Run]) -> str:
    """Markdown table of every run's store, rows, sites, parameterisation, checkpoint, hash and code version, then
    the configs."""
    rows = []
    for run in runs:
        attrs = run.store.attrs
        rows.append({"run": run.label, "store": str(run.store.paths[0]),
                     "rows": f"{run.n_stream_rows}/{run.store.n_rows}", "samples": run.n_samples,
                     "summary sample": f"{len(run.rows)} rows, {run.meta['sample_id'].nunique()} samples",
                     "timesteps": ", ".join(f"{t:g}" for t in run.t_grid),
                     "sites": ", ".join(run.sites), "parameterization": attrs["parameterization"],
                     "LISA site": run.lisa_site or "-",
                     "checkpoint (from the store)": attrs["checkpoint"],
                     "checkpoint hash": str(attrs["checkpoint_hash"])[:12], "code version": attrs["code_version"]})
    configs = "\n\n".join(f"**{run.label}**\n\n```json\n{json.dumps(run.store.attrs['config'], indent=1)}\n```"
                          for run in runs)
    return (pd.DataFrame(rows).to_markdown(index=False)
            + f"\n\n<details><summary>run configs</summary>\n\n{configs}\n\n</details>\n")


def flagged_count(codes: pd.DataFrame) -> str:
    """'k of n values' flagged among the all-factor rows of a disentanglement table."""
    overall = codes[codes["factor"] == "all"]
    return f"{int((overall['flag'].fillna('') != '').sum())} of {len(overall)} values"


def _figure_lines(figures: Figures, section: str) -> str:
    """The section's figures as markdown images with captions."""
    return "\n\n".join(f"![{caption}]({path})\n*{caption}*" for caption, path in figures.sections[section])


def embedding_grid(figures: Figures) -> str:
    """The per-run embedding figures side by side (one table row)."""
    shots = figures.sections["embedding"]
    if not shots:
        return ""
    header = "| " + " | ".join(caption for caption, _ in shots) + " |\n|" + " --- |" * len(shots)
    return header + "\n| " + " | ".join(f"![{caption}]({path})" for caption, path in shots) + " |"


def write_report(out: Path, runs: Sequence[Run], tables: Mapping[str, pd.DataFrame], figures: Figures,
                 command: str) -> Path:
    """``report.md``: provenance, notes, then every section's headline tables (runs side by side) and figures."""
    alignment, probes = tables["alignment"], tables["probes"]
    codes, decomposition, training = tables["disentanglement"], tables["decomposition"], tables["training"]
    labels = [run.label for run in runs]
    notes = [f"- **{run.label}**: {note}" for run in runs for note in run.notes]
    sections = [
        f"# lisa_probe analysis: {' vs '.join(run.label for run in runs)}",
        f"`{command}` (code version {code_version()})",
        "## Runs\n\n" + provenance(runs),
        "## Notes\n\n" + "\n".join(notes) if notes else "",
        READING,
        "## Alignment with the likelihood score\n\nEstimates in prediction units: `model` = full − main, `oracle` = "
        "target − main. `ridge` / `cka` (debiased): mean-pooled features vs the estimate on a "
        f"{READOUT_GRID}×{READOUT_GRID} grid; `spatial_ridge`: one linear map shared by all positions; `decoder`: the "
        "LISA decoder's output. `shuffled_pairs` pairs features with another sample's estimate. Mean over timestep "
        "bins:\n\n" + headline(alignment, ["method", "metric", "estimate", "site", "control"], labels),
        _figure_lines(figures, "alignment"),
        "## Disentanglement\n\n### Probes\n\nMean selectivity (task − control task; with folds grouped by sample the "
        "control scores at chance, so selectivity is the task score above chance) over factors and timestep bins:\n\n"
        + headline(tables["carried_summary"].query("metric == 'selectivity'"), ["site", "contrast"], labels)
        + "\n\nPer factor (mean over sites and timestep bins):\n\n"
        + headline(probes, ["factor", "carried", "metric"], labels),
        _figure_lines(figures, "probes"),
        "### DCI, MIG, SAP\n\nOn pooled features reduced by a PCA fitted on the training rows of DCI's and SAP's "
        "split, all factors, mean over timestep bins of the readable values (flagged ones, undefined or a DCI "
        f"disentanglement beside a completeness or informativeness below {NEGLIGIBLE}, are left out; "
        f"{flagged_count(codes)} flagged):\n\n"
        + headline(readable(codes[codes["factor"] == "all"]), ["method", "metric", "site"], labels),
        _figure_lines(figures, "disentanglement"),
        "### Embedding\n\n" + headline(tables["embedding"], ["site", "method", "factor", "metric"], labels),
        embedding_grid(figures),
        "## Per-site decomposition of the likelihood score\n\nMean attribution (prediction units) over examples and "
        "timestep bins; `all_sites` is the whole effect f(all open) − f(all closed):\n\n"
        + headline(decomposition, ["source", "objective", "method", "site", "metric"], labels),
        _figure_lines(figures, "decomposition"),
        "## Training\n\nLast evaluation and `summary.json`:\n\n"
        + headline(training_summary(training), ["metric"], labels),
        _figure_lines(figures, "training"),
        causal_section(runs),
    ]
    path = out / "report.md"
    path.write_text("\n\n".join(section for section in sections if section) + "\n")
    return path


def causal_section(runs: Sequence[Run]) -> str:
    """``--causal``: each run's summary lines and figures (``causal_*.csv`` hold the tables; how to read them:
    docs/commands.md, "Where and when the side branch steers")."""
    parts = []
    for run in runs:
        if run.causal:
            figures = "\n\n".join(f"![{name}](figures/{name})" for name in run.causal["figures"])
            parts.append(f"### {run.label}\n\n" + "\n".join(f"- {line}" for line in run.causal["lines"])
                         + "\n\n" + figures)
    if not parts:
        return ""
    return ("## Causal analyses\n\nDrawn anew from each side net on the store's data (`--causal`): where each site "
            "acts (share of its map inside the condition, beside the condition's share of the area), the effect on "
            "control of gating sites off in noise windows (paired with the full model on the same noise, 95 % "
            "t-intervals over the samples), how far patched features move the generated shape, and steering. Tables: "
            "`causal_<name>.csv`.\n\n" + "\n\n".join(parts))


def causal_tables(runs: Sequence[Run]) -> dict[str, pd.DataFrame]:
    """``{name: the runs' causal table of that name, concatenated}``."""
    names = dict.fromkeys(name for run in runs if run.causal for name in run.causal["tables"])
    return {name: pd.concat([run.causal["tables"][name] for run in runs if name in run.causal.get("tables", {})],
                            ignore_index=True) for name in names}


def prepare_out(out: Path, overwrite: bool) -> Path:
    """Refuse a non-empty ``out`` without ``overwrite`` (or a file there); returns the empty staging directory
    ``<parent>/.<name>.new`` the report is written to, which ``publish_out`` swaps in for ``out`` at the end: a
    failing analysis leaves a previous report whole."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not out.is_dir():
            raise FileExistsError(f"--out {out} is a file; give a directory for the report")
        if not overwrite:
            raise FileExistsError(f"--out {out} exists and is not empty; pass --overwrite to replace it")
    staging = out.parent / f".{out.name}.new"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def publish_out(staging: Path, out: Path) -> None:
    """Move the finished report in ``staging`` into ``out``, replacing a previous report's files (tables, figures,
    ``report.md``) and keeping any other file there."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / "figures", ignore_errors=True)
    for name in (*(f"{table}.csv" for table in TABLES), "report.md", "report.html"):
        (out / name).unlink(missing_ok=True)
    for path in out.glob("causal_*.csv"):
        path.unlink()
    for item in staging.iterdir():
        item.rename(out / item.name)
    staging.rmdir()


def analyze(runs: Sequence[Run], out: Path, options: AnalyzeOptions, command: str = "",
            times: StageTimes | None = None) -> Path:
    """Analyse opened runs into ``out`` (prepared by ``prepare_out``): CSV tables, figures, report; returns the
    report's path. Each stage's wall time is added to ``times``.

    BLAS runs on one thread: the matrices here are small (features up to ~10³ wide), where threads cost more than
    they give, and on a busy 2-core machine they thrash (a 64×64 ``eigh``: 0.4 ms on one thread, 46 ms on two).
    """
    times = times if times is not None else StageTimes()
    with threadpool_limits(limits=1, user_api="blas"):
        figures = Figures(out)
        tables = run_tables(runs, options, figures, times)
        with times.stage("figures"):
            for name in TABLES:
                tables[name].to_csv(out / f"{name}.csv", index=False)
            for name, table in causal_tables(runs).items():
                table.to_csv(out / f"causal_{name}.csv", index=False)
            alignment_figures(figures, tables["alignment"])
            if len(tables["probes"]):
                disentanglement_figures(figures, tables["probes"], tables["disentanglement"])
            if len(tables["decomposition"]):
                decomposition_figures(figures, tables["decomposition"])
            if len(tables["training"]):
                training_figure(figures, tables["training"])
        with times.stage("report"):
            path = write_report(out, runs, tables, figures, command)
            write_html(path)
            return path


def report_stores(stores: Sequence[str | Path], out: str | Path, options: AnalyzeOptions,
                  labels: str | None = None, random_reference: str | None = None, overwrite: bool = False,
                  command: str = "", times: StageTimes | None = None) -> Path:
    """The whole analysis of feature ``stores`` into the report directory ``out``, as ``python -m
    lisa_probe.analyze`` runs it (the study and notebooks call this): open every store (``labels``: comma-separated,
    default the file stems; ``random_reference``: a store analysed as ``random-init``), then write the report to a
    staging directory and publish it; returns the report's path. Nothing is written before the stores open. Each
    stage's wall time is added to ``times``."""
    out = Path(out)
    times = times if times is not None else StageTimes()
    with times.stage("open"):
        runs = [open_run(path, label, options) for path, label in run_labels(list(map(str, stores)), labels,
                                                                            random_reference)]
    staging = prepare_out(out, overwrite)
    try:
        analyze(runs, staging, options, command, times)
        publish_out(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out / "report.md"
