import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from scipy import stats

from lisa_probe.analysis import plots

RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def drawn(fig, tmp_path, name) -> bool:
    """The figure renders to a PNG of its own size (every artist drawable)."""
    path = tmp_path / f"{name}.png"
    fig.savefig(path)
    return plt.imread(path).shape[:2] == tuple(np.round(fig.get_size_inches()[::-1] * fig.dpi).astype(int))


MAX_PIXELS = 2000  # no figure wider than this at the report's dpi


def saved_width(fig, tmp_path, name) -> int:
    """Pixel width of the figure as the report saves it (dpi 90, tight bounding box)."""
    plots.Figures(tmp_path).save("s", name, fig, "")
    return plt.imread(tmp_path / "figures" / f"{name}.png").shape[1]


def alignment_rows(arms: dict, sites=("down.0", "down.1", "down.2", "down.3", "mid"), ts=(100.0, 500.0, 900.0)):
    """An alignment-like table: ``arms = {arm: [run, ...]}``, a value per (run, site, t, control)."""
    return pd.DataFrame([
        {"run": run, "arm": arm, "site": site, "t": t, "method": "ridge", "control": control, "metric": "r2",
         "value": (0.5 if control == "none" else 0.02) + 0.1 * RNG.normal()}
        for arm, runs in arms.items() for run in runs for site in sites for t in ts
        for control in ("none", "shuffled_pairs")
    ])


def test_alignment_overlays_the_arms_with_their_control_on_shared_axes(tmp_path):
    table = alignment_rows({"baseline": ["b-s0", "b-s1", "b-s2"], "lisa": ["l-s0", "l-s1", "l-s2"]})
    fig = plots.plot_alignment_vs_t(table)
    assert drawn(fig, tmp_path, "alignment") and saved_width(fig, tmp_path, "alignment") <= MAX_PIXELS
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["down.0", "down.1", "down.2", "down.3", "mid"]  # wrapped after 4
    assert len({round(ax.get_position().y0, 3) for ax in panels}) == 2
    assert len({ax.get_ylim() for ax in panels}) == 1  # shared y-axis, which includes the origin
    assert panels[0].get_ylim()[0] <= 0 <= panels[0].get_ylim()[1]
    assert all(ax.get_xlabel() in ("", plots.NOISE_LABEL) for ax in panels) and "high noise" in plots.NOISE_LABEL
    legend = [text.get_text() for text in fig.legends[0].get_texts()]
    assert legend == ["baseline", "lisa", "baseline · shuffled pairs", "lisa · shuffled pairs"]
    # each panel: one line per arm and control through the means over the arm's seeds, with t-interval bars
    mid = panels[-1]
    lines = [container.lines[0] for container in mid.containers]  # errorbar containers: (line, caps, bars)
    assert len(lines) == 4 and [line.get_linestyle() for line in lines] == ["-", "-", "--", "--"]
    per_run = table.query("site == 'mid' and arm == 'lisa' and control == 'none'").pivot(
        index="run", columns="t", values="value")
    np.testing.assert_allclose(lines[1].get_ydata(), per_run.mean().to_numpy())
    half = stats.t.ppf(0.975, 2) * per_run.std(ddof=1) / np.sqrt(3)
    segments = mid.containers[1].lines[2][0].get_segments()  # the lisa line's error bars
    bars = np.array([segment[1, 1] - segment[0, 1] for segment in segments]) / 2
    np.testing.assert_allclose(bars, half.to_numpy())


def test_a_single_runs_points_carry_their_interval_across_folds(tmp_path):
    """One run, one value per point: the error bar is the row's own ``half`` (across cross-validation folds)."""
    table = alignment_rows({"lisa": ["lisa"]}, sites=("mid",)).assign(half=0.125)
    fig = plots.plot_alignment_vs_t(table)
    segments = fig.axes[0].containers[0].lines[2][0].get_segments()
    np.testing.assert_allclose([(segment[1, 1] - segment[0, 1]) / 2 for segment in segments], 0.125)
    assert "cross-validation folds" in plots.ERROR_BARS
    points = plots.arm_points(table.drop(columns="half"), ["site", "t", "control"])
    assert points["half"].isna().all()  # without the column there is nothing to draw: no invented bars


def test_missing_and_flagged_points_are_gaps_not_joined_lines(tmp_path):
    table = alignment_rows({"lisa": ["lisa"]}, sites=("mid",), ts=(100.0, 500.0, 900.0))
    table.loc[(table["t"] == 500.0) & (table["control"] == "none"), "value"] = np.nan
    fig = plots.plot_alignment_vs_t(table)
    line = fig.axes[0].containers[0].lines[0]
    assert np.isnan(line.get_ydata()[1]) and drawn(fig, tmp_path, "gap")  # matplotlib breaks the line there
    single = plots.plot_alignment_vs_t(table[table["control"] == "none"])  # one run: no interval, no bars
    assert np.isnan(single.axes[0].containers[0].lines[2][0].get_segments()).all()
    ends = table.assign(value=table["value"].where(table["t"] == 100.0))  # only the first timestep defined
    assert plots.plot_alignment_vs_t(ends).axes[0].get_xlim()[1] > 900.0  # the axis still spans every timestep
    with pytest.raises(ValueError, match="no rows"):
        plots.plot_alignment_vs_t(table.assign(value=np.nan))


def test_probe_selectivity_is_small_multiples_with_defined_bars(tmp_path):
    sites = [f"down.{i}" for i in range(7)]
    table = pd.DataFrame([
        {"run": run, "arm": run[:-3], "site": site, "factor": factor, "carried": factor in "ab", "t_bin": b,
         "method": "logistic", "metric": "selectivity", "value": RNG.uniform()}
        for run in ("base-s0", "lisa-s0") for site in sites for factor in "abcd" for b in range(2)
    ])
    fig = plots.plot_probe_selectivity(table)
    assert drawn(fig, tmp_path, "selectivity") and saved_width(fig, tmp_path, "selectivity") <= MAX_PIXELS
    assert [ax.get_title() for ax in fig.axes] == ["carried factors", "not carried factors"]
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == sites and ax.get_ylabel() == "selectivity"
    assert ax.get_ylim()[0] <= 0
    heights = [bar.get_height() for bar in ax.patches]
    expected = table[table["carried"]].groupby(["arm", "site"], sort=False)["value"].mean()
    np.testing.assert_allclose(sorted(heights), sorted(expected))  # one run per arm: across factors × bins
    assert [t.get_text() for t in fig.axes[-1].get_legend().get_texts()] == ["base", "lisa"]


def test_plot_umap_grid(tmp_path):
    labels = {"shape": RNG.integers(0, 3, 50), "size": RNG.uniform(size=50), "colour": np.array(list("rgbbr") * 10),
              "filled": RNG.uniform(size=50) > 0.5}
    points = RNG.normal(size=(50, 2))
    fig = plots.plot_umap_grid(points, labels)
    assert isinstance(fig, Figure) and len(fig.axes) == 4 and drawn(fig, tmp_path, "umap")
    assert [ax.get_title() for ax in fig.axes] == list(labels)
    for ax in fig.axes:  # every panel scatters all points where the embedding puts them
        np.testing.assert_allclose(ax.collections[0].get_offsets(), points)
    assert len(fig.axes[2].get_legend().get_texts()) == 3  # the categorical label: one legend entry per value
    named = plots.plot_umap_grid(points, {"shape": labels["shape"]}, levels={"shape": ("circle", "square",
                                                                                       "star")})
    assert [t.get_text() for t in named.axes[0].get_legend().get_texts()] == ["circle", "square", "star"]


@pytest.fixture
def decomposition():
    return pd.DataFrame([
        {"run": run, "t": 100.0 * (t + 1), "method": "integrated_gradients", "example": i, "site": site,
         "metric": "attribution", "value": RNG.normal()}
        for run in ("base", "lisa", "lisa_l1") for t in range(4) for i in range(3) for site in ("down.0", "mid", "up")
    ])


def test_plot_decomposition_heatmap(decomposition, tmp_path):
    fig = plots.plot_decomposition_heatmap(decomposition)
    assert len(fig.axes) == 3 + 1 and drawn(fig, tmp_path, "heatmap")  # + colour bar
    cells = fig.axes[0].images[0].get_array().reshape(3, 4)  # sites x t, the run's mean attribution
    means = decomposition[decomposition["run"] == "base"].pivot_table(index="site", columns="t", values="value")
    np.testing.assert_allclose(cells, means.loc[["down.0", "mid", "up"]].to_numpy())
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["down.0", "mid", "up"]
    assert all(t.get_rotation() == 0 for t in ax.get_yticklabels())  # site names horizontal, never run together
    assert [t.get_text() for t in ax.get_xticklabels()] == ["100", "200", "300", "400"]  # values, at the cells
    np.testing.assert_allclose(ax.get_xticks(), [0, 1, 2, 3])
    assert ax.get_xlabel() == plots.NOISE_LABEL


def test_plot_decomposition_bars(decomposition, tmp_path):
    fig = plots.plot_decomposition_bars(decomposition)
    assert len(fig.axes) == 3 and drawn(fig, tmp_path, "bars")
    assert all(len([bar for bar in ax.patches if bar.get_height()]) > 0 for ax in fig.axes)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["100", "200", "300", "400"]


def test_training_curves_have_no_single_point_panels_and_overlay_arms(tmp_path):
    metrics = pd.DataFrame([
        {"run": run, "step": step, "metric": metric, "value": np.exp(-step / 100) + 0.01 * RNG.normal()}
        for run in ("base", "lisa") for step in range(0, 500, 50) for metric in ("diffusion_loss", "edge_f1")
    ] + [{"run": "base", "step": 1, "metric": "main_alone/edge_f1", "value": 0.3}])
    fig = plots.plot_training_curves(metrics, {"base": 300, "lisa": 120})
    assert drawn(fig, tmp_path, "curves")
    assert [ax.get_title() for ax in fig.axes] == ["diffusion_loss", "edge_f1"]  # the one-point metric: no panel
    assert all(len(ax.lines) == 2 + 2 for ax in fig.axes)  # two curves + two convergence markers
    with pytest.raises(ValueError, match="two or more finite points"):
        plots.plot_training_curves(metrics[metrics["metric"] == "main_alone/edge_f1"])
