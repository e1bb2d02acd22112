"""The study's tables from its runs: the run table, convergence with bootstrap CIs, control curves, onsets and
their summary, the lr sweep, curve areas, read-back and training curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import scipy.stats

from lisa_probe.rundir import read_eval, read_metrics, read_run_config, read_summary
from lisa_probe.study.onset import Onset, first_step_above, fit_onset
from lisa_probe.study.spec import LR_SWEEP_OPTIONS
from lisa_probe.training.config import TrainConfig


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


EQUIVALENCE_MARGIN = 0.10  # |arm / baseline − 1| of t50 within which two arms count as equivalent
POWER = 0.80  # the power at which the minimum detectable effect is stated


def t_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean of ``values`` (n,) (NaN for n < 2): with 3 seeds a percentile bootstrap has
    10 distinct resamples and is just the seeds' range."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return float("nan"), float("nan")
    half = scipy.stats.t.ppf(0.5 + level / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return float(values.mean() - half), float(values.mean() + half)


def paired_log_ratio_test(differences: np.ndarray, margin: float = EQUIVALENCE_MARGIN, alpha: float = 0.05) -> dict:
    """Paired comparison of an arm with the baseline from per-seed differences of log t50 (n,): the mean ratio
    ``exp(mean)`` with its paired t-interval, the paired t-test's p-value, a two one-sided tests (TOST) p-value
    for equivalence within ``±margin`` of the ratio (equivalent when < ``alpha``), and the minimum detectable
    effect at ``POWER`` (as a ratio − 1, two-sided ``alpha``): ``(t_{1−α/2} + t_{POWER}) · sd / √n``."""
    d = np.asarray(differences, dtype=np.float64)
    n = len(d)
    if n < 2:
        return {"n_pairs": n, "ratio": float(np.exp(d.mean())) if n else np.nan, "ratio_ci_low": np.nan,
                "ratio_ci_high": np.nan, "p_difference": np.nan, "p_equivalence": np.nan, "equivalent": False,
                "mde": np.nan}
    mean, se = d.mean(), d.std(ddof=1) / np.sqrt(n)
    low, high = t_interval(d, 1 - alpha)
    dist = scipy.stats.t(n - 1)
    if se == 0:
        p_difference = 0.0 if mean else 1.0
        p_equivalence = 0.0 if abs(mean) < np.log1p(margin) else 1.0
    else:
        p_difference = float(2 * dist.sf(abs(mean) / se))
        lower, upper = np.log1p(-margin), np.log1p(margin)  # the margin on the log scale (of the ratio)
        p_equivalence = float(max(dist.sf((mean - lower) / se), dist.cdf((mean - upper) / se)))
    mde = (dist.ppf(1 - alpha / 2) + dist.ppf(POWER)) * d.std(ddof=1) / np.sqrt(n)
    return {"n_pairs": n, "ratio": float(np.exp(mean)), "ratio_ci_low": float(np.exp(low)),
            "ratio_ci_high": float(np.exp(high)), "p_difference": p_difference, "p_equivalence": p_equivalence,
            "equivalent": bool(p_equivalence < alpha), "mde": float(np.expm1(mde))}


def paired_onset_table(onsets: pd.DataFrame, margin: float = EQUIVALENCE_MARGIN) -> pd.DataFrame:
    """Per (setting, arm other than the baseline): the seeds where both it and the baseline have an observed onset,
    the per-seed ratios arm / baseline of t50 and ``paired_log_ratio_test`` of their logs (same seed: same data
    order and noise), with the margin the equivalence was tested at. Censored or missing onsets are counted, not
    paired."""
    rows = []
    for setting, group in onsets.groupby("setting"):
        base = group[group["arm"] == "baseline"].set_index("seed")["t50"]
        for arm, arm_rows in group[group["arm"] != "baseline"].groupby("arm"):
            paired = arm_rows.set_index("seed")["t50"].to_frame("arm").join(base.rename("baseline"), how="inner")
            both = paired.dropna()
            ratios = both["arm"] / both["baseline"]
            rows.append({"setting": setting, "arm": arm, "seeds": ",".join(str(int(s)) for s in both.index),
                         "unpaired": len(paired) - len(both),
                         "ratios": ",".join(f"{r:.3f}" for r in ratios), "margin": margin,
                         **paired_log_ratio_test(np.log(ratios.to_numpy()), margin)})
    return pd.DataFrame(rows)


def convergence_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (setting, arm) of ``runs`` (``run_table``): mean convergence step (a run that never converged counts as
    its own total ``steps``, which an arm or sweep may override; ``n_converged`` says how many did converge), its
    95 % t-interval over seeds, and the baseline / arm ratio of mean steps."""
    rows = []
    for (setting, arm), group in runs.groupby(["setting", "arm"]):
        steps = group["convergence_step"].astype(float).fillna(group["steps"].astype(float)).to_numpy()
        low, high = t_interval(steps)
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
                     "censored": onset.censored, "width": onset.width, "low": onset.low, "high": onset.high,
                     "last_step": steps[-1], "final": fidelity[-1]})
    return pd.DataFrame(rows)


def onset_summary(onsets: pd.DataFrame, curves: pd.DataFrame, runs: pd.DataFrame,
                  fraction: float = 0.8) -> pd.DataFrame:
    """Per (setting, arm): runs, runs with an observed onset, right-censored runs (onset after the last step), the
    geometric mean ``t50`` over the observed ones with its 95 % t-interval on log t50 and their seeds, and the
    speed-up against the setting's baseline arm three ways:

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
            observed = arm_rows.dropna(subset=["t50"])
            found = observed["t50"].to_numpy()
            low, high = np.exp(t_interval(np.log(found))) if len(found) else (np.nan, np.nan)
            reach_level, reach_final = [], []
            for record in arm_rows.itertuples():
                curve = control[control["run"] == record.run].sort_values("step")
                steps, values = curve["step"].to_numpy(dtype=float), curve["value"].to_numpy(dtype=float)
                reach_level.append(np.nan_to_num(first_step_above(steps, values, level), nan=record.last_step))
                reach_final.append(np.nan_to_num(first_step_above(steps, values, target), nan=record.last_step))
            rows.append({"setting": setting, "arm": arm, "n_runs": len(arm_rows), "n_onset": len(found),
                         "n_censored_right": int((arm_rows.get("censored", pd.Series(dtype=str)) == "right").sum()),
                         "seeds": ",".join(str(int(seed)) for seed in observed["seed"]),
                         "t50": float(np.exp(np.log(found).mean())) if len(found) else np.nan,
                         "t50_ci_low": low, "t50_ci_high": high,
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


def curve_area_table(curves: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Per (setting, arm): control fidelity averaged over a run's evaluations (the area under its training curve
    divided by its length; threshold-free, higher = faster), mean over seeds with its 95 % t-interval, and the arm's
    difference to the baseline's mean."""
    data = control_curves(curves, runs)
    per_run = data.groupby(["setting", "arm", "seed"])["value"].mean().reset_index()
    rows = []
    for (setting, arm), group in per_run.groupby(["setting", "arm"]):
        low, high = t_interval(group["value"].to_numpy())
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
