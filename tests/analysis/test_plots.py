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


def saved(fig, tmp_path, name):
    path = tmp_path / f"{name}.png"
    fig.savefig(path)
    return path.stat().st_size > 0


def test_plot_alignment_vs_t(tmp_path):
    table = pd.DataFrame([
        {"run": run, "site": site, "t_bin": t, "method": "ridge", "control": control, "metric": "r2",
         "value": RNG.uniform()}
        for run in ("base", "lisa") for site in ("mid", "down.5") for t in range(3)
        for control in ("none", "shuffled_pairs") for _ in range(3)
    ])
    fig = plots.plot_alignment_vs_t(table)
    assert isinstance(fig, Figure) and len(fig.axes) == 2 and saved(fig, tmp_path, "alignment")
    with pytest.raises(ValueError, match="no rows"):
        plots.plot_alignment_vs_t(table, metric="cka")


def test_plot_probe_selectivity(tmp_path):
    table = pd.DataFrame({
        "run": np.repeat(["base", "lisa"], 6), "factor": list("abcdef") * 2, "carried": [True, True, False] * 4,
        "method": "logistic", "metric": "selectivity", "value": RNG.uniform(size=12),
    })
    fig = plots.plot_probe_selectivity(table)
    assert isinstance(fig, Figure) and len(fig.axes) == 1 and saved(fig, tmp_path, "selectivity")


def test_plot_umap_grid(tmp_path):
    labels = {"shape": RNG.integers(0, 3, 50), "size": RNG.uniform(size=50), "colour": np.array(list("rgbbr") * 10),
              "filled": RNG.uniform(size=50) > 0.5}
    fig = plots.plot_umap_grid(RNG.normal(size=(50, 2)), labels)
    assert isinstance(fig, Figure) and len(fig.axes) == 4 and saved(fig, tmp_path, "umap")


@pytest.fixture
def decomposition():
    return pd.DataFrame([
        {"run": run, "t_bin": t, "method": "integrated_gradients", "example": i, "site": site,
         "metric": "attribution", "value": RNG.normal()}
        for run in ("base", "lisa", "lisa_l1") for t in range(4) for i in range(3) for site in ("down.0", "mid", "up")
    ])


def test_plot_decomposition_heatmap(decomposition, tmp_path):
    fig = plots.plot_decomposition_heatmap(decomposition)
    assert isinstance(fig, Figure) and len(fig.axes) == 3 + 1 and saved(fig, tmp_path, "heatmap")  # + colour bar
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["down.0", "mid", "up"]


def test_plot_decomposition_bars(decomposition, tmp_path):
    fig = plots.plot_decomposition_bars(decomposition)
    assert isinstance(fig, Figure) and len(fig.axes) == 3 and saved(fig, tmp_path, "bars")


def test_plot_training_curves(tmp_path):
    metrics = pd.DataFrame([
        {"run": run, "step": step, "metric": metric, "value": np.exp(-step / 100) + 0.01 * RNG.normal()}
        for run in ("base", "lisa") for step in range(0, 500, 50) for metric in ("loss", "edge_f1", "lisa_loss")
    ])
    fig = plots.plot_training_curves(metrics, {"base": 300, "lisa": 120})
    assert isinstance(fig, Figure) and len(fig.axes) == 3 and saved(fig, tmp_path, "curves")
    assert all(len(ax.lines) >= 2 + 2 for ax in fig.axes)  # two curves + two convergence markers
