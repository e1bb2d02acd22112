"""``python -m lisa_probe.over_training``'s work: the over-training table and figure of a checkpoints store, with
the run's fitted onset of control (``onset.fit_onset`` on its ``eval.csv``) marked when the run is found."""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from lisa_probe.analysis.over_training import over_training_table, plot_over_training
from lisa_probe.files import write_csv_atomic, write_json
from lisa_probe.provenance import code_version, file_digest
from lisa_probe.rundir import read_eval, read_summary, resolved_path, stored_path
from lisa_probe.store import FeatureStore
from lisa_probe.study.onset import fit_onset


def run_onset(store: FeatureStore, store_path: Path) -> tuple[float | None, str]:
    """The onset t50 of the store's run (its control metric in ``eval.csv``) and a line saying where it came from."""
    run = store.attrs.get("run") or ""
    run_dir = resolved_path(run, store_path.parent) if run else None
    if run_dir is None or not run_dir.is_dir():
        return None, "the store's run directory is not here: no onset marked"
    metric = read_summary(run_dir).get("control_metric")
    evaluations = read_eval(run_dir)
    steps = sorted(step for step, values in evaluations.items() if metric in values)
    if metric is None or len(steps) < 4:
        return None, f"{run_dir} has no control metric evaluated at 4 or more steps: no onset marked"
    onset = fit_onset(np.array(steps), np.array([evaluations[step][metric] for step in steps]))
    if not math.isfinite(onset.t50):
        return None, f"{run_dir}: no onset of {metric} within the evaluated steps ({onset.censored or 'no rise'})"
    return float(onset.t50), f"{run_dir}: onset of {metric} at t50 = {onset.t50:.0f}"


def write_over_training(store_path: str, config, command: str) -> tuple[Path, list[str]]:
    """Write ``over_training.csv``, ``over_training.png`` and ``over_training.json`` to ``config.out``."""
    out, path = Path(config.out), Path(store_path)
    with FeatureStore(path) as store:
        sites = None if config.sites == "all" else [name.strip() for name in config.sites.split(",") if name.strip()]
        unknown = [site for site in sites or () if site not in store.sites]
        if unknown:
            raise ValueError(f"unknown site(s) {unknown}; sites of {path}: {', '.join(store.sites)}")
        table = over_training_table(store, sites, config.n_splits)
        t50, onset_line = run_onset(store, path)
    out.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(out / "over_training.csv", list(table.columns), table.to_dict("records"))
    figure = plot_over_training(table, t50)
    figure.savefig(out / "over_training.png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    write_json(out / "over_training.json", {"code_version": code_version(), "command": command,
                                            "config": asdict(config), "store": stored_path(path, out),
                                            "store_sha256": file_digest(path), "t50": t50})
    final = table[table["step"] == table["step"].max()]
    lines = [onset_line] + [f"{row.site}: alignment R² {row.value:.3f} at the last checkpoint"
                            for row in final[final["metric"] == "alignment_r2"].itertuples()]
    return out, lines
