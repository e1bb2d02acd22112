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
from lisa_probe.analysis.report import report_stores
from lisa_probe.diffusion.parameterization import Parameterization
from lisa_probe.extraction.config import ExtractConfig
from lisa_probe.extraction.extractor import extract
from lisa_probe.models.build import build_main, build_side, make_dual_branch, null_context_for, set_resolution
from lisa_probe.options import SEED_MAX, config_from_dict
from lisa_probe.provenance import code_version
from lisa_probe.rundir import is_finished, is_main_net_ready, read_eval, read_metrics, read_run_config, read_summary
from lisa_probe.study.figures import lr_slope, plot_onset_fits, plot_probe_signals, plot_t50_vs_lr
from lisa_probe.study.onset import Onset, first_step_above, fit_onset
from lisa_probe.training.checkpoints import list_checkpoints
from lisa_probe.training.config import PretrainConfig, TrainConfig
from lisa_probe.training.main_net import pretrain
from lisa_probe.training.side_net import train

STUDY_KEYS = ("name", "settings", "arms", "seeds", "sweep", "extract", "quick", "out_dir", "results_dir")


SETTING_KEYS = ("pretrain", "train", "arms")  # arms: the arms this setting runs (default: all)
EXTRACT_KEYS = ("samples", "timesteps", "batch_size", "arms")
QUICK_KEYS = ("settings", "arms", "seeds", "pretrain", "train", "extract", "sweep")
ARM_SEEDS = "seeds"  # the one key of an arm that is not a train option: the study seeds this arm runs at
# an arm that changes only these (and keeps lisa_weight 0) belongs to the learning-rate sweep with the baseline
LR_SWEEP_OPTIONS = {"lr", "steps", "eval_schedule", "eval_every", "checkpoint_every", "lisa_weight", ARM_SEEDS}
SWEEP_KEYS = ("setting", "seed", "base", "values")


def _expect(value, kind: type | tuple[type, ...], where: str, what: str) -> None:
    """ValueError naming ``where`` (file and key) unless ``value`` is a ``kind`` (bools are not numbers)."""
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple)
                                                                                 else (kind,))):
        raise ValueError(f"{where} must be {what}, got {value!r}")


def _expect_mapping(value, where: str, allowed: tuple[str, ...] | None = None) -> None:
    """``value`` is a mapping with string keys (only ``allowed`` ones, when given)."""
    _expect(value, dict, where, "a mapping")
    unknown = sorted(str(key) for key in value if allowed is not None and key not in allowed)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {', '.join(allowed)}")


def _expect_seeds(value, where: str) -> None:
    _expect(value, list, where, "a list of seeds, e.g. [0, 1, 2]")
    if not value:
        raise ValueError(f"{where} is empty")
    for seed in value:
        _expect(seed, int, where, f"a list of integer seeds in [0, {SEED_MAX}]")
        if not 0 <= seed <= SEED_MAX:
            raise ValueError(f"{where}: seed {seed} outside [0, {SEED_MAX}]")


def _expect_names(names, known: dict, where: str, what: str) -> None:
    """``names`` is a list of keys of ``known`` (the study's settings or arms)."""
    _expect(names, list, where, f"a list of {what[:-1]} names")
    missing = [name for name in names if name not in known]
    if missing:
        raise ValueError(f"{where} names unknown {what} {missing}; known: {', '.join(known)}")


def check_study(study, path: Path) -> None:
    """Refuse a study of the wrong shape, naming the file and the key: what ``load_study`` promises before anything
    is trained."""
    _expect_mapping(study, f"study file {path}", STUDY_KEYS)
    for key in ("name", "settings", "arms", "seeds"):
        if key not in study:
            raise ValueError(f"study file {path} lacks {key!r}")
    _expect(study["name"], str, f"{path}: name", "a string")
    for key in ("settings", "arms"):
        _expect_mapping(study[key], f"{path}: {key}")
        if not study[key]:
            raise ValueError(f"{path}: {key} is empty")
    for name, setting in study["settings"].items():
        _expect_mapping(setting, f"{path}: settings.{name}", SETTING_KEYS)
        for part in ("pretrain", "train"):
            if part not in setting:
                raise ValueError(f"{path}: settings.{name} lacks {part!r}")
            _expect_mapping(setting[part], f"{path}: settings.{name}.{part}")
        if "arms" in setting:
            _expect_names(setting["arms"], study["arms"], f"{path}: settings.{name}.arms", "arms")
    _expect_seeds(study["seeds"], f"{path}: seeds")
    for name, overrides in study["arms"].items():
        _expect_mapping(overrides, f"{path}: arms.{name}")
        if ARM_SEEDS in overrides:
            _expect_seeds(overrides[ARM_SEEDS], f"{path}: arms.{name}.seeds")
            outside = sorted(set(overrides[ARM_SEEDS]) - set(study["seeds"]))
            if outside:
                raise ValueError(f"{path}: arms.{name}.seeds {outside} are not among the study's seeds "
                                 f"{study['seeds']}")
    extract = study.get("extract") or {}
    _expect_mapping(extract, f"{path}: extract", EXTRACT_KEYS)
    quick = study.get("quick") or {}
    _expect_mapping(quick, f"{path}: quick", QUICK_KEYS)
    for key in ("pretrain", "train", "extract"):
        _expect_mapping(quick.get(key) or {}, f"{path}: quick.{key}", EXTRACT_KEYS if key == "extract" else None)
    for where, names, part in ((f"{path}: quick.settings", quick.get("settings"), "settings"),
                               (f"{path}: quick.arms", quick.get("arms"), "arms"),
                               (f"{path}: extract.arms", extract.get("arms"), "arms"),
                               (f"{path}: quick.extract.arms", (quick.get("extract") or {}).get("arms"), "arms")):
        if names is not None:
            _expect_names(names, study[part], where, part)
    if "seeds" in quick:
        _expect_seeds(quick["seeds"], f"{path}: quick.seeds")
    for where, sweep in ((f"{path}: sweep", study.get("sweep")), (f"{path}: quick.sweep", quick.get("sweep"))):
        if sweep:
            _expect_mapping(sweep, where, SWEEP_KEYS)
            if sweep.get("setting") not in study["settings"]:
                raise ValueError(f"{where}.setting {sweep.get('setting')!r} is not a setting; known: "
                                 f"{', '.join(study['settings'])}")
            _expect_seeds([sweep.get("seed")], f"{where}.seed")
            _expect_mapping(sweep.get("base") or {}, f"{where}.base")
            _expect_mapping(sweep.get("values"), f"{where}.values")
            for option, values in sweep["values"].items():
                _expect(values, list, f"{where}.values.{option}", "a list of values")


def check_run_configs(study: dict, path: Path) -> None:
    """Build the pretraining and training config of every planned run, and check each training config against its
    setting's main net (built untrained: its sites and the sizes it takes), so that an unknown option, a bad value
    or an option that does not fit the setting (named with its run) stops the study before any main net is
    pretrained."""
    checked = set()
    for plan in planned_runs(study):
        setting = study["settings"][plan["setting"]]
        where = f"{path}: run {plan['setting']}-{plan['arm']}-s{plan['seed']}"
        pretrain_config = config_from_dict(PretrainConfig, {**setting["pretrain"], "name": "check"},
                                           f"{where}, pretrain")
        train_config = config_from_dict(TrainConfig, {**setting["train"], **plan["overrides"], "main": "check",
                                                      "name": "check", "seed": plan["seed"]}, f"{where}, train")
        fit_key = (plan["setting"], train_config.lisa_site, train_config.resolution)
        if fit_key not in checked:
            try:
                check_train_fits_main(pretrain_config, train_config)
            except ValueError as error:
                raise ValueError(f"{where}, train: {error}") from error
            checked.add(fit_key)


def check_train_fits_main(pretrain_config: PretrainConfig, train_config: TrainConfig) -> None:
    """ValueError when the training options name a site or a resolution that the main net ``pretrain_config`` makes
    does not have (checked on an untrained net of the same architecture)."""
    family = pretrain_config.backbone
    main = build_main(family, pretrain_config.preset, pretrain_config.resolution)
    if train_config.resolution is not None:
        set_resolution(family, main, None, train_config.resolution)
    model = make_dual_branch(family, main, build_side(main, family, cond_channels=1),
                             Parameterization(pretrain_config.prediction_type), null_context_for(main, family))
    if train_config.lisa_site is not None:
        model.site(train_config.lisa_site)


def load_study(path: Path, quick: bool = False) -> dict:
    """Read and validate a study file (shape, then every run's configs); with ``quick`` its ``quick`` section
    overrides the rest. ValueError naming the file and key for anything wrong."""
    try:
        study = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"study file {path} is not valid YAML: {' '.join(str(error).split())}") from error
    check_study(study, path)
    if quick:
        overrides = study.get("quick", {})
        if "settings" in overrides:
            study["settings"] = {name: study["settings"][name] for name in overrides["settings"]}
        if "arms" in overrides:
            study["arms"] = {name: study["arms"][name] for name in overrides["arms"]}
            for setting in study["settings"].values():
                if "arms" in setting:
                    setting["arms"] = [arm for arm in setting["arms"] if arm in study["arms"]]
        study["seeds"] = overrides.get("seeds", study["seeds"])
        study["arms"] = {name: {key: value for key, value in arm.items() if key != ARM_SEEDS}
                         for name, arm in study["arms"].items()}
        for name, setting in study["settings"].items():
            setting["pretrain"] = {**setting["pretrain"], **overrides.get("pretrain", {})}
            setting["train"] = {**setting["train"], **overrides.get("train", {})}
        study["extract"] = {**study.get("extract", {}), **overrides.get("extract", {})}
        study["sweep"] = overrides.get("sweep", study.get("sweep"))
        study["name"] = f"{study['name']}-quick"
    check_run_configs(study, path)
    return study


def planned_runs(study: dict) -> list[dict]:
    """Every (setting, arm, seed) run plus the sweep runs, as {setting, arm, seed, overrides}; a setting with its
    own ``arms`` runs those only, an arm with its own ``seeds`` (in quick mode: ignored) runs at those only.

    Seeds are the outer loop, so a study stopped part-way has every setting and arm at the seeds it reached."""
    runs = [{"setting": setting, "arm": arm, "seed": seed,
             "overrides": {key: value for key, value in overrides.items() if key != ARM_SEEDS}}
            for seed in study["seeds"] for setting, options in study["settings"].items()
            for arm, overrides in study["arms"].items()
            if seed in overrides.get(ARM_SEEDS, study["seeds"]) and arm in options.get("arms", study["arms"])]
    sweep = study.get("sweep")
    if sweep:
        for option, values in sweep["values"].items():
            for value in values:
                runs.append({"setting": sweep["setting"], "arm": f"sweep-{option}={value}", "seed": sweep["seed"],
                             "overrides": {**sweep.get("base", {}), option: value}})
    return runs


def run_one(study: dict, plan: dict, out_dir: Path) -> Path:
    """Pretrain (once per setting) and train one planned run; skipped when its summary exists."""
    setting = study["settings"][plan["setting"]]
    pretrain_options = {"out_dir": str(out_dir), "name": f"main-{plan['setting']}", **setting["pretrain"]}
    main_dir = out_dir / pretrain_options["name"]
    if not is_main_net_ready(main_dir):
        pretrain(PretrainConfig(**pretrain_options, resume="latest"))
    name = f"{plan['setting']}-{plan['arm']}-s{plan['seed']}"
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


def run_table(out_dir: Path, plans: list[dict]) -> pd.DataFrame:
    """One row per finished run: setting, arm, seed, convergence step, final metrics, seconds per step."""
    rows = []
    for plan in plans:
        run_dir = out_dir / f"{plan['setting']}-{plan['arm']}-s{plan['seed']}"
        summary = read_summary(run_dir)
        if not summary:
            continue
        config = read_run_config(run_dir, TrainConfig, "train")
        rows.append({"setting": plan["setting"], "arm": plan["arm"], "seed": plan["seed"], "run": run_dir.name,
                     "lr": config.lr, "lisa_weight": config.lisa_weight, "control_metric": summary["control_metric"], "convergence_step": summary["convergence_step"],
                     "steps": summary["steps"], "seconds_per_step": summary["seconds_per_step"],
                     **{f"final/{k}": v for k, v in summary["final"].items()}})
    return pd.DataFrame(rows)


def bootstrap_ci(values: np.ndarray, seed: int = 0, n: int = 2000) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean of ``values`` (n,)."""
    if len(values) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = rng.choice(values, size=(n, len(values)), replace=True).mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def convergence_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (setting, arm) of ``runs`` (``run_table``): mean convergence step (a run that never converged counts as
    its own total ``steps``, which an arm or sweep may override; ``n_converged`` says how many did converge),
    bootstrap CI, and the baseline / arm ratio of mean steps."""
    rows = []
    for (setting, arm), group in runs.groupby(["setting", "arm"]):
        steps = group["convergence_step"].astype(float).fillna(group["steps"].astype(float)).to_numpy()
        low, high = bootstrap_ci(steps)
        rows.append({"setting": setting, "arm": arm, "n_runs": len(group),
                     "n_converged": int(group["convergence_step"].notna().sum()), "mean_step": steps.mean(),
                     "ci_low": low, "ci_high": high})
    table = pd.DataFrame(rows)
    baseline = table[table["arm"] == "baseline"].set_index("setting")["mean_step"]
    table["speedup_vs_baseline"] = [baseline.get(s, np.nan) / m if m else np.nan
                                    for s, m in zip(table["setting"], table["mean_step"])]
    return table


def control_curves(curves: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``curves`` (long form) that hold each setting's control-fidelity metric."""
    metric_of = dict(zip(runs["setting"], runs["control_metric"]))
    return curves[[metric_of.get(s) == m for s, m in zip(curves["setting"], curves["metric"])]]


def onset_table(curves: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """One row per run: the logistic onset of its control-fidelity curve (``onset.fit_onset``: ``t50``, ``width``,
    ``low``, ``high``; ``t50`` NaN for a curve that did not rise or has fewer than 4 evaluations), its last step and
    final fidelity."""
    rows = []
    for (run, setting, arm, seed), curve in control_curves(curves, runs).groupby(["run", "setting", "arm", "seed"]):
        curve = curve.sort_values("step")
        steps, fidelity = curve["step"].to_numpy(dtype=float), curve["value"].to_numpy(dtype=float)
        onset = fit_onset(steps, fidelity) if len(curve) >= 4 else Onset(np.nan, np.nan, np.nan, np.nan)
        rows.append({"run": run, "setting": setting, "arm": arm, "seed": seed, "t50": onset.t50,
                     "width": onset.width, "low": onset.low, "high": onset.high, "last_step": steps[-1],
                     "final": fidelity[-1]})
    return pd.DataFrame(rows)


def onset_summary(onsets: pd.DataFrame, curves: pd.DataFrame, runs: pd.DataFrame,
                  fraction: float = 0.8) -> pd.DataFrame:
    """Per (setting, arm): runs, runs with an onset, mean ``t50`` over those with its bootstrap CI over seeds, and
    the speed-up against the setting's baseline arm three ways:

    * ``speedup_t50``: baseline mean t50 / arm mean t50;
    * ``step_to_level``: mean first step at which a run reaches ``fraction`` × the baseline's mean final fidelity (a
      run that never does counts its last step), with ``speedup_level`` = baseline's / arm's;
    * ``reach_baseline_final``: mean first step at which a run reaches the baseline's mean fidelity at the last
      step N, divided by N (1 for the baseline itself on average; < 1: sooner).
    """
    control = control_curves(curves, runs)
    rows = []
    for setting, group in onsets.groupby("setting"):
        base = group[group["arm"] == "baseline"]
        level = fraction * base["final"].mean()
        last = base["last_step"].max()
        target = control[(control["setting"] == setting) & (control["arm"] == "baseline")
                         & (control["step"] == last)]["value"].mean()
        for arm, arm_rows in group.groupby("arm"):
            found = arm_rows["t50"].dropna().to_numpy()
            low, high = bootstrap_ci(found)
            reach_level, reach_final = [], []
            for record in arm_rows.itertuples():
                curve = control[control["run"] == record.run].sort_values("step")
                steps, values = curve["step"].to_numpy(dtype=float), curve["value"].to_numpy(dtype=float)
                reach_level.append(np.nan_to_num(first_step_above(steps, values, level), nan=record.last_step))
                reach_final.append(np.nan_to_num(first_step_above(steps, values, target), nan=record.last_step))
            rows.append({"setting": setting, "arm": arm, "n_runs": len(arm_rows), "n_onset": len(found),
                         "t50": found.mean() if len(found) else np.nan, "t50_ci_low": low, "t50_ci_high": high,
                         "step_to_level": float(np.mean(reach_level)),
                         "reach_baseline_final": float(np.mean(reach_final)) / last})
    table = pd.DataFrame(rows)
    base = table[table["arm"] == "baseline"].set_index("setting")
    table["speedup_t50"] = [base["t50"].get(s, np.nan) / t for s, t in zip(table["setting"], table["t50"])]
    table["speedup_level"] = [base["step_to_level"].get(s, np.nan) / t
                              for s, t in zip(table["setting"], table["step_to_level"])]
    return table


def lr_sweep_table(study: dict, onsets: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """The runs of the learning-rate sweep (the baseline and every arm that changes only ``LR_SWEEP_OPTIONS``, at
    LISA weight 0): setting, arm, seed, lr and the run's onset ``t50`` (NaN: none)."""
    arms = [arm for arm, options in study["arms"].items()
            if set(options) <= LR_SWEEP_OPTIONS and not options.get("lisa_weight", 0.0)]
    table = onsets[onsets["arm"].isin(arms)].merge(runs[["run", "lr"]], on="run")
    return table[["setting", "arm", "seed", "lr", "t50"]].sort_values(["setting", "lr"]).reset_index(drop=True)


def probe_curves(out_dir: Path, runs: pd.DataFrame) -> pd.DataFrame:
    """Long table (run, setting, arm, seed, step, metric, value) of the onset probe's ``probe/*`` columns of every
    run's ``metrics.csv`` (rows where it was computed)."""
    rows = []
    for record in runs.itertuples():
        for logged in read_metrics(out_dir / record.run):
            rows += [{"run": record.run, "setting": record.setting, "arm": record.arm, "seed": record.seed,
                      "step": int(logged["step"]), "metric": name, "value": float(value)}
                     for name, value in logged.items() if name.startswith("probe/") and value not in ("", None)]
    return pd.DataFrame(rows, columns=["run", "setting", "arm", "seed", "step", "metric", "value"])


def onset_outputs(results: Path, study: dict, out_dir: Path, curves: pd.DataFrame,
                  runs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Write the onset tables (``onset.csv``, ``onset_summary.csv``, ``lr_sweep.csv``, ``probe_curves.csv``) and
    figures (``onset_fits.png``, ``t50_vs_lr.png``, ``probe_signals.png``); returns the tables."""
    onsets = onset_table(curves, runs)
    summary = onset_summary(onsets, curves, runs)
    sweep = lr_sweep_table(study, onsets, runs)
    probes = probe_curves(out_dir, runs)
    for name, table in (("onset", onsets), ("onset_summary", summary), ("lr_sweep", sweep),
                        ("probe_curves", probes)):
        table.to_csv(results / f"{name}.csv", index=False)
    if len(onsets):
        plot_onset_fits(control_curves(curves, runs), onsets, summary, results / "onset_fits.png")
    if sweep["lr"].nunique() >= 2:
        plot_t50_vs_lr(sweep, results / "t50_vs_lr.png")
    if len(probes):
        plot_probe_signals(probes, results / "probe_signals.png")
    return {"onset_summary": summary, "lr_sweep": sweep}


def curve_area_table(curves: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Per (setting, arm): control fidelity averaged over a run's evaluations (the area under its training curve
    divided by its length; threshold-free, higher = faster), mean over seeds with a bootstrap CI, and the arm's
    difference to the baseline's mean."""
    data = control_curves(curves, runs)
    per_run = data.groupby(["setting", "arm", "seed"])["value"].mean().reset_index()
    rows = []
    for (setting, arm), group in per_run.groupby(["setting", "arm"]):
        low, high = bootstrap_ci(group["value"].to_numpy())
        rows.append({"setting": setting, "arm": arm, "n_runs": len(group), "mean_fidelity": group["value"].mean(),
                     "ci_low": low, "ci_high": high})
    table = pd.DataFrame(rows)
    baseline = table[table["arm"] == "baseline"].set_index("setting")["mean_fidelity"]
    table["minus_baseline"] = [m - baseline.get(s, np.nan) for s, m in zip(table["setting"], table["mean_fidelity"])]
    return table


def readback_table(curves: pd.DataFrame) -> pd.DataFrame:
    """Per (setting, arm, factor): the read-back score of the samples at a run's last evaluation and of the main net
    alone (same noise, same prompts: the prior), means over seeds with the number of runs; accuracy for a
    categorical factor (higher: better), MAE for a continuous one (lower: better). What the side branch adds to the
    prior, factor by factor: in setting 5 the condition carries x, y, size and rotation, the prompt kind and hue."""
    rows = []
    for (run, setting, arm), curve in curves.groupby(["run", "setting", "arm"]):
        last = curve[curve["step"] == curve["step"].max()].set_index("metric")["value"]
        for metric, alone in curve[curve["metric"].str.startswith("main_alone/readback/")].groupby("metric"):
            factor = metric.rsplit("/", 1)[-1]
            rows.append({"setting": setting, "arm": arm, "factor": factor,
                         "final": last.get(f"readback/{factor}", np.nan), "main_alone": alone["value"].iloc[0]})
    if not rows:
        return pd.DataFrame(columns=["setting", "arm", "factor", "n_runs", "final", "main_alone"])
    table = pd.DataFrame(rows).groupby(["setting", "arm", "factor"])
    return table.size().rename("n_runs").to_frame().join(table.mean(numeric_only=True)).reset_index()


def training_curves(out_dir: Path, runs: pd.DataFrame) -> pd.DataFrame:
    """Long table (run, setting, arm, seed, step, metric, value) of every run's evaluations."""
    rows = []
    for record in runs.itertuples():
        for step, metrics in read_eval(out_dir / record.run).items():
            rows += [{"run": record.run, "setting": record.setting, "arm": record.arm, "seed": record.seed,
                      "step": step, "metric": metric, "value": value} for metric, value in metrics.items()]
    return pd.DataFrame(rows)


def plot_curves(curves: pd.DataFrame, runs: pd.DataFrame, path: Path) -> None:
    """Control fidelity vs step, one panel per setting, mean and 95% CI over seeds per arm."""
    import seaborn as sns

    data = control_curves(curves, runs)
    if data.empty:
        return
    grid = sns.relplot(data=data, x="step", y="value", hue="arm", col="setting", kind="line",
                       errorbar=("ci", 95), facet_kws={"sharex": False}, height=3)
    grid.set_ylabels("control fidelity")
    grid.savefig(path, dpi=120)


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
                 "![fitted onsets](onset_fits.png)", ""]
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
        _expect_names(settings, study["settings"], f"{path}: --settings", "settings")
        study["settings"] = {name: study["settings"][name] for name in settings}
        results_name = f"{study['name']}-{'+'.join(settings)}"
    out_dir = Path(study.get("out_dir", "runs")) / study["name"]
    results = Path(study.get("results_dir", "experiments/results")) / results_name
    features_dir = out_dir / "features"
    for directory in (out_dir, results, features_dir):
        directory.mkdir(parents=True, exist_ok=True)
    (results / "study.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    plans = planned_runs(study)
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
