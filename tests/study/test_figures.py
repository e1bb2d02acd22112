"""The onset study's figures and learning-rate sweep, on curves with known onsets."""

import numpy as np
import pandas as pd
import pytest

from lisa_probe.study.figures import lr_slope, plot_onset_fits, plot_probe_signals, plot_t50_vs_lr
from lisa_probe.study.onset import logistic
from lisa_probe.study.tables import lr_sweep_table, onset_summary, onset_table

T50 = {"baseline": 200.0, "lisa": 100.0, "flat": None}


def known_curves() -> tuple[pd.DataFrame, pd.DataFrame]:
    """(curves, runs): two seeds per arm, evaluations every 20 steps to 600, logistic rises at T50 (flat: none)."""
    rows, runs = [], []
    for arm, t50 in T50.items():
        for seed in range(2):
            run = f"s-{arm}-s{seed}"
            runs.append({"setting": "s", "arm": arm, "seed": seed, "run": run, "control_metric": "mask_iou",
                         "lr": 1e-4})
            for step in range(20, 601, 20):
                value = 0.1 if t50 is None else float(logistic(np.array([step]), t50, 15.0, 0.1, 0.7)[0])
                rows.append({"run": run, "setting": "s", "arm": arm, "seed": seed, "step": step,
                             "metric": "mask_iou", "value": value})
    return pd.DataFrame(rows), pd.DataFrame(runs)


def test_onset_fits_figure_draws_each_arm_with_its_fit_and_t50(tmp_path):
    curves, runs = known_curves()
    onsets = onset_table(curves, runs)
    summary = onset_summary(onsets, curves, runs)
    figure = plot_onset_fits(curves, onsets, summary, tmp_path / "fits.png")
    axes = [ax for ax in figure.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["baseline (2/2 with onset)", "flat (0/2 with onset)",
                                               "lisa (2/2 with onset)"]
    for ax, arm in zip(axes, ("baseline", "flat", "lisa")):
        fits = [line for line in ax.lines if len(line.get_xdata()) == 200]
        assert len(fits) == (0 if arm == "flat" else 2)
        if T50[arm]:
            # the fitted curve is half way up (0.4) at the known onset, and the dashed line marks it
            x, y = fits[0].get_xdata(), fits[0].get_ydata()
            assert np.interp(T50[arm], x, y) == pytest.approx(0.4, abs=0.02)
            dashed = [line for line in ax.lines if line.get_linestyle() == "--"]
            assert dashed[0].get_xdata()[0] == pytest.approx(T50[arm], abs=5)
    assert (tmp_path / "fits.png").exists()


def test_t50_scaling_with_the_learning_rate(tmp_path):
    """t50 = 0.02 / lr (slope −1 on log–log axes) is recovered; a run without onset does not enter the fit."""
    sweep = pd.DataFrame({"lr": [1e-3, 3e-4, 1e-4, 3e-5], "t50": [20.0, 66.7, 200.0, np.nan]})
    assert lr_slope(sweep) == pytest.approx(-1.0, abs=0.01)
    assert np.isnan(lr_slope(sweep.iloc[[0, 3]]))
    figure = plot_t50_vs_lr(sweep, tmp_path / "t50.png")
    ax = figure.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    np.testing.assert_allclose(ax.lines[0].get_xdata(), [1e-3, 3e-4, 1e-4])
    assert "slope -1.00" in ax.get_legend().get_texts()[1].get_text().replace("−", "-")


def test_the_lr_sweep_holds_the_baseline_and_the_arms_that_change_only_the_lr():
    study = {"arms": {"baseline": {"lisa_weight": 0.0}, "lisa": {"lisa_weight": 0.2},
                      "fast": {"lisa_weight": 0.0, "lr": 1e-3, "steps": 100, "seeds": [0]},
                      "cubic": {"lisa_weight": 0.0, "timestep_sampling": "cubic"}}}
    onsets = pd.DataFrame({"run": ["b", "l", "f", "c"], "setting": "s", "arm": ["baseline", "lisa", "fast", "cubic"],
                           "seed": 0, "t50": [200.0, 100.0, 20.0, 150.0]})
    runs = pd.DataFrame({"run": ["b", "l", "f", "c"], "lr": [1e-4, 1e-4, 1e-3, 1e-4]})
    sweep = lr_sweep_table(study, onsets, runs)
    assert list(sweep["arm"]) == ["baseline", "fast"] and list(sweep["lr"]) == [1e-4, 1e-3]


def test_probe_figure_sums_the_sites_and_averages_the_seeds(tmp_path):
    rows = []
    for arm, scale in (("baseline", 1.0), ("lisa", 2.0)):
        for seed in range(2):
            for step in (10, 20):
                rows += [{"run": f"{arm}{seed}", "setting": "s", "arm": arm, "seed": seed, "step": step,
                          "metric": metric, "value": value * scale * (1 + seed)}
                         for metric, value in (("probe/explained", 0.1), ("probe/explained/t0", 9.0),
                                               ("probe/cosine", 0.2), ("probe/residual_norm/a", 1.0),
                                               ("probe/residual_norm/b", 2.0), ("probe/zero_weight_norm/a", 0.5))]
    figure = plot_probe_signals(pd.DataFrame(rows), tmp_path / "probe.png")
    explained, _, residual, _ = figure.axes
    lisa = [line for line in explained.lines if line.get_label() == "lisa"][0]
    np.testing.assert_allclose(lisa.get_ydata(), [0.1 * 2 * 1.5] * 2)  # the per-bin column is not added in
    lisa = [line for line in residual.lines if line.get_label() == "lisa"][0]
    np.testing.assert_allclose(lisa.get_ydata(), [3.0 * 2 * 1.5] * 2)  # sites summed, seeds averaged
