"""The study runner end to end on tiny settings (the --quick path with tiny models)."""

import json

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import yaml

from lisa_probe.rundir import read_eval
from lisa_probe.study.cli import main as study_main
from lisa_probe.study.onset import logistic
from lisa_probe.study.runner import plan_text, run_name, run_study
from lisa_probe.study.spec import load_study, planned_runs
from lisa_probe.study.tables import convergence_table, curve_area_table, onset_summary, onset_table, t_interval
from tests.conftest import REPO

TINY_STUDY = {
    "name": "tiny",
    "settings": {
        "unet": {"pretrain": {"backbone": "unet", "preset": "tiny", "resolution": 16, "steps": 2, "batch_size": 4,
                              "eval_samples": 8, "sample_steps": 2},
                 "train": {"steps": 4, "batch_size": 4, "eval_every": 2, "checkpoint_every": 2, "eval_samples": 8,
                           "sample_steps": 2, "convergence_threshold": 0.3}},
    },
    "arms": {"baseline": {"lisa_weight": 0.0}, "lisa": {"lisa_weight": 0.2}},
    "seeds": [0, 1],
    "extract": {"samples": 4, "timesteps": 2, "batch_size": 4},
    "quick": {"seeds": [0], "train": {"steps": 2}},
}


def write_study(tmp_path, **changes):
    study = {**TINY_STUDY, "out_dir": str(tmp_path / "runs"), "results_dir": str(tmp_path / "results"), **changes}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def test_quick_overrides(tmp_path):
    study = load_study(write_study(tmp_path), quick=True)
    assert study["seeds"] == [0] and study["settings"]["unet"]["train"]["steps"] == 2
    assert study["name"] == "tiny-quick"


@pytest.mark.slow
def test_study_trains_every_arm_and_seed_and_summarises(tmp_path, capsys):
    results = run_study(write_study(tmp_path), analyze=False)
    assert ("study tiny: 4 runs (0 finished, reused), 16 training steps to go, 1 main net(s) to pretrain first; "
            "no estimate until a run has finished") in capsys.readouterr().out
    runs = pd.read_csv(results / "runs.csv")
    assert sorted(zip(runs["arm"], runs["seed"])) == [("baseline", 0), ("baseline", 1), ("lisa", 0), ("lisa", 1)]
    convergence = pd.read_csv(results / "convergence.csv")
    assert set(convergence["arm"]) == {"baseline", "lisa"}
    # each run's convergence step, recomputed from its own eval.csv at the study's threshold (0.3 of edge F1;
    # a run that never reaches it counts its 4 steps), and the arm means of those
    expected = {}
    for row in runs.itertuples():
        evaluated = read_eval(tmp_path / "runs" / "tiny" / row.run)
        reached = [step for step in sorted(evaluated) if evaluated[step]["edge_f1"] >= 0.3]
        assert (reached[0] if reached else None) == (None if pd.isna(row.convergence_step) else row.convergence_step)
        expected.setdefault(row.arm, []).append(reached[0] if reached else 4)
    for arm, steps in expected.items():
        assert convergence.set_index("arm").loc[arm, "mean_step"] == pytest.approx(np.mean(steps))
    readme = (results / "README.md").read_text()
    assert convergence.to_markdown(index=False, floatfmt=".3g") in readme
    assert set(pd.read_csv(results / "curve_area.csv")["arm"]) == {"baseline", "lisa"}
    # an interrupted/finished study continues: nothing is retrained
    stamp = (tmp_path / "runs" / "tiny" / "unet-lisa-s0" / "summary.json").stat().st_mtime
    run_study(write_study(tmp_path), analyze=False)
    assert (tmp_path / "runs" / "tiny" / "unet-lisa-s0" / "summary.json").stat().st_mtime == stamp
    again = capsys.readouterr().out
    assert "4 runs (4 finished, reused), 0 training steps to go, 0 main net(s) to pretrain first; nothing to train" \
        in again


def test_t_interval_and_never_converged_runs():
    """The t-interval of a mean is scipy's (independent computation); with 3 seeds it is ~2.5x wider than their
    range-sized percentile bootstrap would be."""
    values = np.array([68.9, 73.0, 76.4])
    low, high = t_interval(values)
    expected = scipy.stats.t.interval(0.95, 2, loc=values.mean(), scale=scipy.stats.sem(values))
    assert (low, high) == pytest.approx(expected, rel=1e-12)
    assert high - low > 2.4 * (values.max() - values.min())
    runs = pd.DataFrame({"setting": ["s"] * 4, "arm": ["baseline", "baseline", "lisa", "lisa"],
                         "convergence_step": [100, None, 50, 50], "steps": [300, 300, 300, 300]})
    table = convergence_table(runs).set_index("arm")
    assert table.loc["baseline", "mean_step"] == 200 and table.loc["baseline", "n_converged"] == 1
    assert table.loc["lisa", "speedup_vs_baseline"] == 4


def test_never_converged_runs_count_their_own_steps():
    """An arm or sweep that overrides ``steps``: its unconverged runs count the steps they ran, not the setting's."""
    runs = pd.DataFrame({"setting": ["s"] * 5, "arm": ["baseline"] * 2 + ["long"] * 2 + ["sweep-lr=1"],
                         "convergence_step": [100, None, None, 200, None], "steps": [300, 300, 900, 900, 50]})
    table = convergence_table(runs).set_index("arm")
    assert table.loc["baseline", "mean_step"] == (100 + 300) / 2
    assert table.loc["long", "mean_step"] == (900 + 200) / 2 and table.loc["long", "n_converged"] == 1
    assert table.loc["sweep-lr=1", "mean_step"] == 50 and table.loc["sweep-lr=1", "n_converged"] == 0


def test_planned_runs_put_seeds_outermost(tmp_path):

    study = load_study(write_study(tmp_path))
    plans = planned_runs(study)
    assert [(p["seed"], p["arm"]) for p in plans] == [(0, "baseline"), (0, "lisa"), (1, "baseline"), (1, "lisa")]


def test_an_arm_runs_at_its_own_seeds_and_quick_mode_picks_arms(tmp_path):
    """An arm with ``seeds`` runs only at those (seeds still outermost); quick mode keeps the arms it names and runs
    them at its own seeds."""

    arms = {"baseline": {"lisa_weight": 0.0}, "lisa": {"lisa_weight": 0.2},
            "fast": {"lisa_weight": 0.0, "lr": 1e-3, "seeds": [1]}}
    path = write_study(tmp_path, arms=arms, quick={"seeds": [0], "arms": ["baseline", "fast"]})
    plans = planned_runs(load_study(path))
    # (write_study's YAML lists the arms alphabetically)
    assert [(p["seed"], p["arm"]) for p in plans] == [(0, "baseline"), (0, "lisa"), (1, "baseline"), (1, "fast"),
                                                      (1, "lisa")]
    assert plans[3]["overrides"] == {"lisa_weight": 0.0, "lr": 1e-3}
    quick = planned_runs(load_study(path, quick=True))
    assert [(p["seed"], p["arm"]) for p in quick] == [(0, "baseline"), (0, "fast")]


def test_a_setting_runs_its_own_arms_and_settings_run_apart_share_their_runs(tmp_path, capsys):
    """A setting with ``arms`` runs those only; ``--settings`` runs a subset into ``<name>-<setting>/`` while the
    runs stay under the study's own run directory (so the whole study skips them); an unknown one is refused."""

    settings = {"unet": TINY_STUDY["settings"]["unet"],
                "second": {**TINY_STUDY["settings"]["unet"], "arms": ["baseline"]}}
    path = write_study(tmp_path, settings=settings, seeds=[0])
    assert [(p["setting"], p["arm"]) for p in planned_runs(load_study(path))] == [
        ("second", "baseline"), ("unet", "baseline"), ("unet", "lisa")]  # (write_study's YAML sorts the keys)
    with pytest.raises(SystemExit) as stop:
        study_main([str(path), "--settings", "third", "--no-analysis"])
    assert stop.value.code == 2 and "--settings names unknown settings ['third']" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    results = run_study(path, analyze=False, settings=["second"])
    assert results == tmp_path / "results" / "tiny-second"
    runs = pd.read_csv(results / "runs.csv")
    assert list(zip(runs["setting"], runs["arm"])) == [("second", "baseline")]
    assert (tmp_path / "runs" / "tiny" / "second-baseline-s0" / "summary.json").exists()
    assert "--settings second" in (results / "README.md").read_text()


def test_readback_table_sets_the_final_samples_beside_the_main_net_alone():
    from lisa_probe.study.tables import readback_table

    rows = []
    for seed, (x_final, kind_final) in enumerate([(0.10, 0.5), (0.20, 0.7)]):
        run = f"s-baseline-s{seed}"
        rows += [(run, "s", "baseline", seed, 10, "main_alone/readback/x", 0.30),
                 (run, "s", "baseline", seed, 10, "main_alone/readback/kind", 0.25),
                 (run, "s", "baseline", seed, 10, "readback/x", 0.29), (run, "s", "baseline", seed, 20, "readback/x",
                                                                          x_final),
                 (run, "s", "baseline", seed, 20, "readback/kind", kind_final)]
    curves = pd.DataFrame(rows, columns=["run", "setting", "arm", "seed", "step", "metric", "value"])
    table = readback_table(curves).set_index("factor")
    assert table.loc["x", "final"] == pytest.approx(0.15) and table.loc["x", "main_alone"] == pytest.approx(0.30)
    assert table.loc["kind", "final"] == pytest.approx(0.6) and table.loc["kind", "n_runs"] == 2
    assert readback_table(curves[~curves["metric"].str.startswith("main_alone")]).empty


def test_curve_area_is_the_mean_fidelity_over_evaluations():
    runs = pd.DataFrame({"setting": ["s", "s"], "arm": ["baseline", "lisa"], "seed": [0, 0],
                         "control_metric": ["edge_f1", "edge_f1"]})
    curves = pd.DataFrame({"setting": ["s"] * 6, "arm": ["baseline"] * 3 + ["lisa"] * 3, "seed": [0] * 6,
                           "step": [10, 20, 10, 10, 20, 10], "metric": ["edge_f1"] * 2 + ["fd"] + ["edge_f1"] * 2 + ["fd"],
                           "value": [0.2, 0.4, 99.0, 0.4, 0.8, 99.0]})
    table = curve_area_table(curves, runs).set_index("arm")
    assert table.loc["baseline", "mean_fidelity"] == pytest.approx(0.3)
    assert table.loc["lisa", "mean_fidelity"] == pytest.approx(0.6)
    assert abs(table.loc["lisa", "minus_baseline"] - 0.3) < 1e-12


@pytest.mark.parametrize("change,message", [
    ({"seeds": "zero"}, "seeds must be list, got 'zero'"),
    ({"seeds": [0, "one"]}, "seeds must be a list of integer seeds"),
    ({"seeds": []}, "seeds is empty"),
    ({"settings": []}, "settings must be dict, got []"),
    ({"arms": {"lisa": {"lisa_weight": "high"}}}, "lisa_weight must be float, got 'high'"),
    ({"arms": {"lisa": {"lisa_wieght": 0.2}}}, "unknown key(s) 'lisa_wieght'"),
    ({"arms": {"lisa": {"lisa_weight": -1.0}}}, "--lisa-weight must be a finite number"),
    ({"settings": {"unet": {"pretrain": {"steps": 2}}}}, "settings.unet lacks 'train'"),
    ({"settings": {"unet": {**TINY_STUDY["settings"]["unet"], "extract": {}}}}, "settings.unet: unknown key(s) 'extract'; allowed: pretrain, train, arms"),
    ({"settings": {"unet": {**TINY_STUDY["settings"]["unet"], "arms": ["lsia"]}}},
     "settings.unet.arms names unknown arms ['lsia']"),
    ({"extract": {"sample": 4}}, "extract: unknown key(s) 'sample'; allowed: samples"),
    ({"quick": {"settings": ["dit"]}}, "quick.settings names unknown settings ['dit']"),
    ({"quick": {"arms": ["lsia"]}}, "quick.arms names unknown arms ['lsia']"),
    ({"extract": {"arms": ["lsia"]}}, "extract.arms names unknown arms ['lsia']"),
    ({"arms": {"lisa": {"lisa_weight": 0.2, "seeds": [5]}}}, "arms.lisa.seeds [5] are not among the study's seeds"),
    ({"arms": {"lisa": {"lisa_weight": 0.2, "seeds": 1}}}, "arms.lisa.seeds must be a list of seeds"),
    ({"sweep": {"setting": "dit", "seed": 0, "values": {}}}, "sweep.setting 'dit' is not a setting"),
    ({"surprise": 1}, "unknown key(s) 'surprise'; allowed: name, settings"),
    ({"quick": {"seed": [0]}}, "quick: unknown key(s) 'seed'; allowed: settings, arms, seeds"),
    ({"sweep": {"setting": "unet", "seed": "zero", "values": {}}}, "sweep: seed must be int, got 'zero'"),
    ({"name": 3}, "name must be str, got 3"),
    ({"arms": {"lisa": {"lisa_weight": 0.2, "lisa_site": "down.99"}}}, "train: unknown site 'down.99'; valid sites"),
    ({"arms": {"lisa": {"lisa_weight": 0.2, "resolution": 15}}}, "train: --resolution 15 does not fit this main net"),
    ({"arms": {"lisa": {"lisa_weight": 0.2, "proportion_empty_prompts": 0.5}}},
     "--proportion-empty-prompts 0.5 needs captions")])
def test_a_bad_study_file_is_refused_before_anything_is_made(tmp_path, capsys, change, message):
    """The file is checked whole (shape, then every run's configs) before any main net is pretrained: exit 2, the
    file and key named, and no run or results directory."""
    with pytest.raises(SystemExit) as stop:
        study_main([str(write_study(tmp_path, **change)), "--no-analysis"])
    error = capsys.readouterr().err
    assert stop.value.code == 2 and message in error and "Traceback" not in error, error
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()


@pytest.mark.parametrize("text,message", [("", "must be a mapping"), ("- a\n- b\n", "must be a mapping"),
                                          ("name: [unclosed\n", "is not valid YAML"),
                                          ("name: !!python/object/apply:os.system ['true']\n", "is not valid YAML")])
def test_a_study_file_that_is_not_a_study(tmp_path, capsys, text, message):
    path = tmp_path / "study.yaml"
    path.write_text(text)
    with pytest.raises(SystemExit) as stop:
        study_main([str(path)])
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_onsets_and_speedups_from_curves_with_known_onsets():
    """Baseline curves rise at step 200, LISA's at 100 (three seeds each, evaluations every 20 steps to 600): t50
    per run within one evaluation interval, the t50 speed-up ≈ 2, LISA reaches 80 % of the baseline's final fidelity
    and the baseline's final fidelity sooner; a flat run has no onset and is counted."""
    rows, runs = [], []
    for arm, t50 in (("baseline", 200.0), ("lisa", 100.0), ("flat", None)):
        for seed in range(3):
            run = f"s-{arm}-s{seed}"
            runs.append({"setting": "s", "arm": arm, "seed": seed, "run": run, "control_metric": "mask_iou"})
            for step in range(20, 601, 20):
                value = 0.1 if t50 is None else float(logistic(np.array([step]), t50 + 5 * seed, 15.0, 0.1, 0.7)[0])
                rows.append({"run": run, "setting": "s", "arm": arm, "seed": seed, "step": step,
                             "metric": "mask_iou", "value": value})
    curves, runs = pd.DataFrame(rows), pd.DataFrame(runs)
    onsets = onset_table(curves, runs).set_index("run")
    assert onsets.loc["s-baseline-s1", "t50"] == pytest.approx(205, abs=20)
    assert onsets.loc["s-lisa-s0", "t50"] == pytest.approx(100, abs=20) and np.isnan(onsets.loc["s-flat-s0", "t50"])
    summary = onset_summary(onsets.reset_index(), curves, runs).set_index("arm")
    assert summary.loc["lisa", "speedup_t50"] == pytest.approx(205 / 105, rel=0.1)
    assert summary.loc["flat", "n_onset"] == 0 and summary.loc["flat", "n_runs"] == 3
    assert summary.loc["lisa", "speedup_level"] == pytest.approx(205 / 105, rel=0.15)
    # the same curve 100 steps earlier reaches the baseline's step-600 value about 100 steps before 600
    assert summary.loc["lisa", "reach_baseline_final"] == pytest.approx((600 - 100) / 600, abs=0.05)
    assert summary.loc["baseline", "reach_baseline_final"] == pytest.approx(1.0, abs=0.05)
    assert summary.loc["baseline", "t50_ci_low"] <= summary.loc["baseline", "t50"] <= summary.loc["baseline", "t50_ci_high"]


@pytest.mark.parametrize("quick", [False, True])
def test_the_committed_study_files_are_valid(quick):
    """Every run of the committed studies builds its configs (the file's shape, options and values are checked
    before anything is trained), in full and in quick mode."""
    for path in sorted((REPO / "experiments").glob("*.yaml")):
        study = load_study(path, quick=quick)
        assert study["seeds"] and study["arms"], path


@pytest.mark.parametrize("path", sorted((REPO / "experiments").glob("*.yaml")), ids=lambda path: path.stem)
def test_every_committed_study_file_loads_and_plans(path):
    """The study files in experiments/ pass the spec and every run's config checks, whole and in quick mode."""
    for quick in (False, True):
        assert planned_runs(load_study(path, quick=quick))


def test_the_plan_estimates_the_remaining_training_from_the_finished_runs(tmp_path):
    """Two of four runs finished at 0.5 s/step: the other two's 8 steps take about 0 min (4 s) — and the text says
    which rate it used."""
    study = load_study(write_study(tmp_path))
    plans = planned_runs(study)
    out_dir = tmp_path / "runs" / "tiny"
    for plan in plans[:2]:
        (out_dir / run_name(plan)).mkdir(parents=True)
        (out_dir / run_name(plan) / "summary.json").write_text(json.dumps({"seconds_per_step": 0.5}))
    text = plan_text(study, plans, out_dir)
    assert "4 runs (2 finished, reused), 8 training steps to go, 1 main net(s)" in text
    assert "about 0 min of training at the finished runs' 0.50 s/step" in text
