"""The tables of one run (``analysis.report.tables``) on the synthetic store."""


from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from lisa_probe.analysis.config import AnalyzeOptions
from lisa_probe.analysis.plots import Figures
from lisa_probe.analysis.report.selection import open_run
from lisa_probe.analysis.report.streaming import stream_run
from lisa_probe.analysis.report.tables import (
    disentanglement_tables,
    embed,
    run_tables,
    store_decomposition,
)
from lisa_probe.analysis.report.timing import StageTimes
from tests.analysis.synthetic_store import DECOMPOSE, FAST, values, write_synthetic


def test_probes_find_the_encoded_factor_only(analysed):
    run, streamed, _ = analysed
    probes, codes = disentanglement_tables(replace(run, sites=["factor"]), streamed, FAST)
    selectivity = probes[probes["metric"] == "selectivity"]
    assert (values(selectivity, site="factor", factor="encoded") > 0.5).all()
    assert (np.abs(values(selectivity, site="factor", factor="random")) < 0.2).all()
    assert {"dci", "mig", "sap"} <= set(codes["method"])
    assert set(codes["t_bin"]) == {0, 1}


def test_worker_processes_give_the_same_tables_and_factors_can_be_chosen(synthetic):
    run = open_run(synthetic, "synthetic", replace(FAST, sites=["factor"]))
    streamed = stream_run(run, FAST)
    one = disentanglement_tables(run, streamed, FAST)
    two = disentanglement_tables(run, streamed, replace(FAST, jobs=2))
    for a, b in zip(one, two):
        pd.testing.assert_frame_equal(a, b)
    assert set(one[0]["factor"]) == {"encoded", "random"}
    chosen = open_run(synthetic, "synthetic", replace(FAST, sites=["factor"], factors=["encoded"]))
    probes, codes = disentanglement_tables(chosen, streamed, FAST)
    assert set(probes["factor"]) == {"encoded"} and set(codes["factor"]) == {"encoded", "all"}
    with pytest.raises(ValueError, match=r"unknown factor\(s\) \['colour'\] .* its factors: encoded, random"):
        open_run(synthetic, "synthetic", replace(FAST, factors=["colour"]))


def test_store_decomposition_projects_each_site_on_the_score(analysed):
    run, streamed, _ = analysed
    table = store_decomposition(run, streamed)
    effect = values(table, method="all_sites", metric="effect")
    for site, share in DECOMPOSE.items():
        np.testing.assert_allclose(values(table, method="add_one_in", site=site), share * effect, rtol=1e-5)
    assert (effect > 0).all()
    assert list(table["example"][:4]) == [0, 1, 2, 3]


def test_a_store_without_factors_gets_alignment_and_decomposition_only(tmp_path):
    run = open_run(write_synthetic(tmp_path / "plain.h5", with_factors=False), "plain", replace(FAST, t_bins=1))
    tables = run_tables([run], FAST, Figures(tmp_path / "report"), StageTimes())
    assert tables["probes"].empty and tables["embedding"].empty and tables["carried_summary"].empty
    assert len(tables["alignment"]) and len(tables["decomposition"])
    assert "no (varying) generating factors" in run.notes[0]
    assert (tmp_path / "report" / "figures" / "embedding_plain.png").exists()


@pytest.mark.slow
def test_umap_embedding_is_scored_per_factor_and_timestep(analysed):
    """The one UMAP fit (numba JIT, ~20 s), which must leave torch's thread count as it was."""
    run, streamed, _ = analysed
    threads = torch.get_num_threads()
    table, figure = embed(run, streamed, AnalyzeOptions(embedding_site="factor"))
    assert torch.get_num_threads() == threads
    assert set(table["method"]) == {"umap"} and set(table["site"]) == {"factor"}
    accuracy = table[(table["metric"] == "knn_accuracy")].set_index("factor")["value"]
    assert accuracy["encoded"] > 0.9 and accuracy["random"] < 0.6
    assert table.loc[table["factor"] == "timestep", "carried"].isna().all()
    assert len(figure.axes) == 3  # encoded, random, t
