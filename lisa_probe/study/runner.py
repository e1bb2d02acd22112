"""``python -m lisa_probe.study experiments/<study>.yaml [--quick]``: baseline vs LISA, several seeds, end to end.

A study file (YAML, read with ``safe_load``) names settings (a main net to pretrain + side-net training options),
the arms (option overrides: ``baseline`` = ``lisa_weight: 0``), the seeds, an optional sweep on one setting, and what
to extract. The study pretrains each main net once, trains every (setting, arm, seed), extracts features at an early
checkpoint and at the end, runs the analysis, and writes ``experiments/results/<study>/``: ``runs.csv`` (one row per
run), ``convergence.csv`` (per setting and arm: mean convergence step with a bootstrap 95% CI over seeds, and the
baseline/LISA ratio), ``curves.csv`` and ``curves.png`` (control fidelity per step), ``curve_area.csv`` (its
area under the curve), ``readback.csv`` (each factor read back from the final samples and from the main net alone),
one ``analysis-<setting>/`` per setting, and a README with the headline numbers. Finished
runs are skipped, so an interrupted study continues where it stopped. ``--quick`` applies the file's ``quick``
overrides; ``--seeds`` and ``--settings`` run part of the plan (several processes can share a study that way).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from lisa_probe.analysis.config import AnalyzeOptions
from lisa_probe.analysis.report.report import report_stores
from lisa_probe.extraction.config import ExtractConfig
from lisa_probe.extraction.extractor import extract
from lisa_probe.rundir import is_finished, is_main_net_ready, read_summary
from lisa_probe.study.figures import plot_curves, plot_onset_fits, plot_probe_signals, plot_t50_vs_lr
from lisa_probe.study.readme import write_readme
from lisa_probe.study.spec import expect_names, load_study, planned_runs
from lisa_probe.study.tables import (
    control_curves,
    convergence_table,
    curve_area_table,
    lr_sweep_table,
    onset_summary,
    onset_table,
    paired_onset_table,
    probe_curves,
    readback_table,
    run_table,
    training_curves,
)
from lisa_probe.training.checkpoints import list_checkpoints
from lisa_probe.training.config import PretrainConfig, TrainConfig
from lisa_probe.training.main_net import pretrain
from lisa_probe.training.side_net import train


def run_name(plan: dict) -> str:
    """The run directory name of a planned run: ``<setting>-<arm>-s<seed>``."""
    return f"{plan['setting']}-{plan['arm']}-s{plan['seed']}"


def plan_text(study: dict, plans: list[dict], out_dir: Path) -> str:
    """What a study is about to do, printed before it starts: the runs (finished ones are reused), their training
    steps, the main nets to pretrain, and an estimate from the seconds per step of the runs already finished (none
    before the first)."""
    steps = {run_name(plan): {**study["settings"][plan["setting"]]["train"], **plan["overrides"]}.get("steps", 600)
             for plan in plans}
    finished = [name for name in steps if is_finished(out_dir / name)]
    todo = sum(steps[name] for name in steps if name not in finished)
    mains = sum(not is_main_net_ready(out_dir / f"main-{setting}") for setting in {p["setting"] for p in plans})
    rates = [read_summary(out_dir / name).get("seconds_per_step") for name in finished]
    rates = [rate for rate in rates if rate]
    estimate = ("nothing to train" if todo == 0 else
                f"about {todo * float(np.mean(rates)) / 60:.0f} min of training at the finished runs' "
                f"{np.mean(rates):.2f} s/step" if rates else "no estimate until a run has finished")
    return (f"study {study['name']}: {len(plans)} runs ({len(finished)} finished, reused), {todo} training steps to "
            f"go, {mains} main net(s) to pretrain first; {estimate}")


def run_one(study: dict, plan: dict, out_dir: Path) -> Path:
    """Pretrain (once per setting) and train one planned run; skipped when its summary exists."""
    setting = study["settings"][plan["setting"]]
    pretrain_options = {"out_dir": str(out_dir), "name": f"main-{plan['setting']}", **setting["pretrain"]}
    main_dir = out_dir / pretrain_options["name"]
    if not is_main_net_ready(main_dir):
        pretrain(PretrainConfig(**pretrain_options, resume="latest"))
    name = run_name(plan)
    run_dir = out_dir / name
    if is_finished(run_dir):
        return run_dir
    options = {**setting["train"], **plan["overrides"], "main": str(main_dir), "out_dir": str(out_dir),
               "name": name, "seed": plan["seed"], "keep_checkpoints": 0, "resume": "latest"}
    return train(TrainConfig(**options))


def extract_run(run_dir: Path, study: dict, features_dir: Path) -> list[Path]:
    """Feature stores of a run at its earliest checkpoint and at the end."""
    settings = study.get("extract") or {}
    stores = []
    checkpoints = list_checkpoints(run_dir)
    for label, source in (("early", checkpoints[0] if checkpoints else None), ("final", run_dir)):
        out = features_dir / f"{run_dir.name}-{label}.h5"
        if source is not None and not out.exists():
            extract(ExtractConfig(out=str(out), ckpt=str(source), samples=settings.get("samples", 128),
                                  timesteps=str(settings.get("timesteps", 6)), batch_size=settings.get("batch_size", 32),
                                  resume=True))
        if out.exists():
            stores.append(out)
    return stores


def onset_outputs(results: Path, study: dict, out_dir: Path, curves: pd.DataFrame,
                  runs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Write the onset tables (``onset.csv``, ``onset_summary.csv``, ``onset_paired.csv``, ``lr_sweep.csv``,
    ``probe_curves.csv``) and figures (``onset_fits.png``, ``t50_vs_lr.png``, ``probe_signals.png``); returns the
    tables."""
    onsets = onset_table(curves, runs)
    summary = onset_summary(onsets, curves, runs)
    paired = paired_onset_table(onsets)
    sweep = lr_sweep_table(study, onsets, runs)
    probes = probe_curves(out_dir, runs)
    for name, table in (("onset", onsets), ("onset_summary", summary), ("onset_paired", paired),
                        ("lr_sweep", sweep), ("probe_curves", probes)):
        table.to_csv(results / f"{name}.csv", index=False)
    if len(onsets):
        plot_onset_fits(control_curves(curves, runs), onsets, summary, results / "onset_fits.png")
    if sweep["lr"].nunique() >= 2:
        plot_t50_vs_lr(sweep, results / "t50_vs_lr.png")
    if len(probes):
        plot_probe_signals(probes, results / "probe_signals.png")
    return {"onset_summary": summary, "onset_paired": paired, "lr_sweep": sweep}


def run_study(path: Path, quick: bool = False, analyze: bool = True, seeds: list[int] | None = None,
              settings: list[str] | None = None) -> Path:
    """Run (or continue) a study, optionally with other ``seeds`` or only some ``settings``; returns its results
    directory: ``<results_dir>/<name>``, or ``<name>-<setting>[+<setting>…]`` for a subset of the settings (the
    runs stay under ``<out_dir>/<name>``, so that the whole study reuses them)."""
    started = time.perf_counter()
    study = load_study(path, quick)
    if seeds:
        study["seeds"] = seeds
    results_name = study["name"]
    if settings:
        expect_names(settings, study["settings"], f"{path}: --settings", "settings")
        study["settings"] = {name: study["settings"][name] for name in settings}
        results_name = f"{study['name']}-{'+'.join(settings)}"
    out_dir = Path(study.get("out_dir", "runs")) / study["name"]
    results = Path(study.get("results_dir", "experiments/results")) / results_name
    features_dir = out_dir / "features"
    for directory in (out_dir, results, features_dir):
        directory.mkdir(parents=True, exist_ok=True)
    (results / "study.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    plans = planned_runs(study)
    print(plan_text(study, plans, out_dir))
    stores: dict[str, list[Path]] = {}
    for plan in plans:
        run_dir = run_one(study, plan, out_dir)
        if analyze and plan["arm"] in (study.get("extract") or {}).get("arms", study["arms"]):
            stores.setdefault(plan["setting"], []).extend(extract_run(run_dir, study, features_dir))
    runs = run_table(out_dir, plans)
    runs.to_csv(results / "runs.csv", index=False)
    convergence = convergence_table(runs)
    convergence.to_csv(results / "convergence.csv", index=False)
    curves = training_curves(out_dir, runs)
    curves.to_csv(results / "curves.csv", index=False)
    plot_curves(curves, runs, results / "curves.png")
    areas = curve_area_table(curves, runs)
    areas.to_csv(results / "curve_area.csv", index=False)
    onset = onset_outputs(results, study, out_dir, curves, runs)
    readback = readback_table(curves)
    readback.to_csv(results / "readback.csv", index=False)
    if analyze:
        for setting, paths in stores.items():
            report_stores(paths, results / f"analysis-{setting}", AnalyzeOptions(), overwrite=True,
                          command=f"python -m lisa_probe.analyze {' '.join(map(str, paths))} --out "
                                  f"{results / f'analysis-{setting}'} --overwrite")
    command = f"python -m lisa_probe.study {path}" + (" --quick" if quick else "") + \
        (f" --seeds {','.join(map(str, seeds))}" if seeds else "") + \
        (f" --settings {','.join(settings)}" if settings else "")
    write_readme(results, study, runs, convergence, areas, onset, readback, time.perf_counter() - started, command)
    return results
