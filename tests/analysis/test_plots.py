import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

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


def test_plot_alignment_vs_t(tmp_path):
    table = pd.DataFrame([
        {"run": run, "site": site, "t_bin": t, "method": "ridge", "control": control, "metric": "r2",
         "value": RNG.uniform()}
        for run in ("base", "lisa") for site in ("mid", "down.5") for t in range(3)
        for control in ("none", "shuffled_pairs") for _ in range(3)
    ])
    fig = plots.plot_alignment_vs_t(table)
    assert isinstance(fig, Figure) and len(fig.axes) == 2 and drawn(fig, tmp_path, "alignment")
    assert [ax.get_title() for ax in fig.axes] == ["run = base", "run = lisa"]
    assert fig.axes[0].get_ylabel() == "ridge r2" and fig.axes[0].get_xlabel() == "t_bin"
    # each panel draws one line per (site, control), through the means of the rows at each t_bin
    for ax, run in zip(fig.axes, ("base", "lisa")):
        means = table[table["run"] == run].groupby(["site", "control", "t_bin"])["value"].mean()
        drawn_means = sorted(np.round(line.get_ydata(), 10).tolist() for line in ax.lines if len(line.get_ydata()) == 3)
        expected = sorted(np.round(means.xs((site, control), level=["site", "control"]).to_numpy(), 10).tolist()
                          for site in ("mid", "down.5") for control in ("none", "shuffled_pairs"))
        assert drawn_means == expected
    with pytest.raises(ValueError, match="no rows"):
        plots.plot_alignment_vs_t(table, metric="cka")


def test_plot_probe_selectivity(tmp_path):
    table = pd.DataFrame({
        "run": np.repeat(["base", "lisa"], 6), "factor": list("abcdef") * 2, "carried": [True, True, False] * 4,
        "method": "logistic", "metric": "selectivity", "value": RNG.uniform(size=12),
    })
    fig = plots.plot_probe_selectivity(table)
    assert isinstance(fig, Figure) and len(fig.axes) == 1 and drawn(fig, tmp_path, "selectivity")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["carried", "not carried"] and ax.get_ylabel() == "selectivity"
    heights = sorted(round(bar.get_height(), 10) for bar in ax.patches if bar.get_height())
    expected = table.groupby(["run", "carried"])["value"].mean()
    assert heights == sorted(round(v, 10) for v in expected)


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


@pytest.fixture
def decomposition():
    return pd.DataFrame([
        {"run": run, "t_bin": t, "method": "integrated_gradients", "example": i, "site": site,
         "metric": "attribution", "value": RNG.normal()}
        for run in ("base", "lisa", "lisa_l1") for t in range(4) for i in range(3) for site in ("down.0", "mid", "up")
    ])


def test_plot_decomposition_heatmap(decomposition, tmp_path):
    fig = plots.plot_decomposition_heatmap(decomposition)
    assert isinstance(fig, Figure) and len(fig.axes) == 3 + 1 and drawn(fig, tmp_path, "heatmap")  # + colour bar
    cells = fig.axes[0].collections[0].get_array().reshape(3, 4)  # sites x t_bins, the run's mean attribution
    means = decomposition[decomposition["run"] == "base"].pivot_table(index="site", columns="t_bin", values="value")
    np.testing.assert_allclose(cells, means.loc[["down.0", "mid", "up"]].to_numpy())
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["down.0", "mid", "up"]


def test_plot_decomposition_bars(decomposition, tmp_path):
    fig = plots.plot_decomposition_bars(decomposition)
    assert isinstance(fig, Figure) and len(fig.axes) == 3 and drawn(fig, tmp_path, "bars")
    assert all(len([bar for bar in ax.patches if bar.get_height()]) > 0 for ax in fig.axes)


def test_plot_training_curves(tmp_path):
    metrics = pd.DataFrame([
        {"run": run, "step": step, "metric": metric, "value": np.exp(-step / 100) + 0.01 * RNG.normal()}
        for run in ("base", "lisa") for step in range(0, 500, 50) for metric in ("loss", "edge_f1", "lisa_loss")
    ])
    fig = plots.plot_training_curves(metrics, {"base": 300, "lisa": 120})
    assert isinstance(fig, Figure) and len(fig.axes) == 3 and drawn(fig, tmp_path, "curves")
    assert all(len(ax.lines) >= 2 + 2 for ax in fig.axes)  # two curves + two convergence markers


def test_undefined_values_are_left_out(tmp_path):
    """NaN measurements (DCI of codes that predict nothing) are not drawn; a panel of only NaN is not an error,
    a figure of only NaN is."""
    table = pd.DataFrame([{"run": run, "site": "mid", "t_bin": t, "method": "dci", "metric": "disentanglement",
                           "value": np.nan if run == "random" else 0.1 * t} for run in ("lisa", "random")
                          for t in range(3)])
    fig = plots.plot_alignment_vs_t(table, "disentanglement", "dci")
    assert [ax.get_title() for ax in fig.axes] == ["run = lisa"] and drawn(fig, tmp_path, "nan")
    with pytest.raises(ValueError, match="no rows"):
        plots.plot_alignment_vs_t(table[table["run"] == "random"], "disentanglement", "dci")
