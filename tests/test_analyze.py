"""``python -m lisa_probe.analyze`` end to end: the command on stores extracted from tiny trained runs (a LISA run, a
baseline, an untrained side net), and its errors."""


import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lisa_probe.analysis.report.tables import (
    TABLES,
)
from lisa_probe.analyze import main
from lisa_probe.diffusion.parameterization import Parameterization
from lisa_probe.extraction.config import ExtractConfig
from lisa_probe.extraction.extractor import extract
from lisa_probe.models import build_main, build_side, save_main
from lisa_probe.rundir import read_eval, resolved_path
from lisa_probe.store import FeatureStore, FeatureStoreWriter, make_layout
from lisa_probe.training.config import TrainConfig
from lisa_probe.training.side_net import train
from tests.analysis.synthetic_store import SCORE, TIMESTEPS, synthetic_rows

# ------------------------------------------------------------------------------------------ end to end


def train_run(main_dir: Path, root: Path, lisa_weight: float) -> Path:
    """A 2-step side-net run that evaluates for real at both steps (4 samples, 2 sampler steps), so the report's
    training curves come from the run's own eval.csv and summary.json."""
    return train(TrainConfig(main=str(main_dir), out_dir=str(root / "runs"), steps=2, batch_size=4, eval_samples=4,
                             eval_every=1, sample_steps=2, checkpoint_every=0, lisa_weight=lisa_weight))


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    """Extracted stores of a LISA run, a baseline run (both lisa_probe runs) and an untrained side net."""
    root = tmp_path_factory.mktemp("e2e")
    main_net = build_main("unet", "tiny", 16, seed=0)
    save_main(root / "main", "unet", main_net, Parameterization("eps"))
    build_side(main_net, "unet", cond_channels=1, seed=0).save_pretrained(root / "random-side")
    common = dict(samples=10, timesteps="2", batch_size=20, decompose=True)
    paths = {label: extract(ExtractConfig(out=str(root / f"{label}.h5"), ckpt=str(train_run(root / "main", root, w)),
                                          **common))
             for label, w in (("lisa", 0.2), ("baseline", 0.0))}
    paths["random"] = extract(ExtractConfig(out=str(root / "random.h5"), controlnet=str(root / "random-side"),
                                            main=str(root / "main"), **common))
    return paths


@pytest.mark.slow
def test_cli_writes_every_table_figure_and_the_report(stores, tmp_path):
    out = tmp_path / "report"
    main([str(stores["lisa"]), str(stores["baseline"]), "--random-reference", str(stores["random"]),
          "--out", str(out), "--sites", "mid", "--t-bins", "1", "--no-umap", "--dci-importance", "lasso",
          "--pca-components", "4", "--attribution-samples", "2", "--ig-steps", "8", "--shapley-samples", "4"])
    tables = {name: pd.read_csv(out / f"{name}.csv") for name in TABLES}
    for name, table in tables.items():
        assert len(table), name
        assert {"run", "value"} <= set(table.columns), name
    assert set(tables["alignment"]["run"]) == {"lisa", "baseline", "random-init"}
    assert set(tables["training"]["run"]) == {"lisa", "baseline"}
    for label in ("lisa", "baseline"):  # the curves are the runs' own evaluations, found through the store
        run_dir = resolved_path(FeatureStore(stores[label]).attrs["run"], stores[label].parent)
        evaluated = read_eval(run_dir)
        curve = tables["training"].query("run == @label").dropna(subset=["step"])
        assert sorted(set(curve["step"].astype(int))) == [1, 2] and len(curve) == sum(map(len, evaluated.values()))
        for row in curve.itertuples():
            assert row.value == pytest.approx(evaluated[int(row.step)][row.metric])
        assert "main_alone/edge_f1" in evaluated[1] and "main_alone/edge_f1" not in evaluated[2]
        assert 0 <= evaluated[2]["edge_f1"] <= 1
    report = (out / "report.md").read_text()
    linked = set(re.findall(r"\]\((figures/[^)]+\.png)\)", report))
    on_disk = {path.relative_to(out).as_posix() for path in (out / "figures").glob("*.png")}
    assert linked == on_disk and len(on_disk) >= 15
    page = (out / "report.html").read_text()  # the same report, self-contained: every figure embedded
    assert re.findall(r'<img[^>]+src="([^"]{0,30})', page) and all(
        src.startswith("data:image/png;base64,") for src in re.findall(r'<img[^>]+src="([^"]{0,30})', page))
    assert len(re.findall(r"<img", page)) == len(re.findall(r"!\[", report)) and "How to read this report" in page
    assert {"figures/embedding_lisa.png", "figures/training_curves.png",
            "figures/decomposition_model_lisa_alignment_integrated_gradients.png"} <= on_disk
    for text in ("lisa vs baseline vs random-init", FeatureStore(stores["lisa"]).attrs["checkpoint_hash"][:12],
                 "model-based decomposition skipped", "the model estimate is zero on every row", "| lisa ", "0.1.0"):
        assert text in report
    # the reloaded model at the rebuilt inputs reproduces the store's own add-one-in numbers on the same rows
    decomposition = tables["decomposition"].query("method == 'add_one_in' and objective == 'likelihood_projection'")
    by_source = {source: rows.set_index(["run", "example", "site"])["value"]
                 for source, rows in decomposition.groupby("source")}
    assert len(by_source["model"]) == 2 * 2 * 2 * 5  # 2 runs × 2 samples × 2 timesteps × 5 sites
    shared = by_source["model"].index.intersection(by_source["store"].index)
    assert len(shared) == 2 * 2 * 2  # the store decomposes the analysed site (mid) only
    np.testing.assert_allclose(by_source["model"][shared], by_source["store"][shared], rtol=1e-3, atol=1e-7)
    model_runs = tables["decomposition"].query("source == 'model'")
    assert set(model_runs.loc[model_runs["run"] == "lisa", "objective"]) == {"likelihood_projection", "lisa_alignment"}


def test_cli_errors_are_clear(synthetic, tmp_path, capsys):
    fake = tmp_path / "fake.h5"
    fake.write_text("not hdf5")
    cases = [([str(fake)], "not a lisa_probe feature store"),
             ([str(synthetic), "--sites", "spatial,nope"], "valid sites: spatial, pooled, factor"),
             ([str(synthetic), str(synthetic)], "run labels must be unique"),
             ([str(synthetic), "--t-bins", "0"], "--t-bins must be >= 1, got 0"),
             ([str(synthetic), "--chunk-rows", "0"], "--chunk-rows must be >= 1, got 0"),
             ([str(synthetic), "--attribution-samples", "-1"], "--attribution-samples must be >= 0, got -1"),
             ([str(synthetic), "--pca-components", "0"], "--pca-components must be >= 1, got 0"),
             ([str(synthetic), "--ig-steps", "0"], "--ig-steps must be >= 1, got 0"),
             ([str(synthetic), "--n-splits", "1"], "--n-splits must be >= 2, got 1"),
             ([str(synthetic), "--seed", "-1"], "--seed must be a finite number in [0, "),
             ([str(tmp_path / "missing.h5")], "no such file")]
    for args, message in cases:
        with pytest.raises(SystemExit) as error:
            main([*args, "--out", str(tmp_path / "report")])
        assert error.value.code == 2 and message in capsys.readouterr().err
        assert not (tmp_path / "report").exists()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit):
        main([str(synthetic), "--out", str(busy)])
    assert "--overwrite" in capsys.readouterr().err and (busy / "notes.txt").exists()


def test_a_store_with_too_few_samples_is_refused_by_name(tmp_path, capsys):
    """One sample cannot be cross-validated over samples: the error names the store, the count and the fixes, and no
    report directory appears (not a raw scikit-learn message from deep inside)."""
    rows = synthetic_rows(np.random.default_rng(0))
    one = {name: values[: len(TIMESTEPS)] for name, values in rows.items()}  # the first sample's rows
    layout = make_layout({"spatial": (3, 8, 8)}, SCORE, {}, decoded=False, feature_dtype="float32")
    attrs = {"config": {}, "checkpoint": "run/controlnet", "checkpoint_hash": "none", "code_version": "test",
             "parameterization": "eps", "extract_args": {}}
    path = tmp_path / "one.h5"
    with FeatureStoreWriter(path, layout, len(TIMESTEPS), attrs) as writer:
        writer.write_rows(0, {name: one[name] for name in layout})
    with pytest.raises(SystemExit) as stop:
        main([str(path), "--out", str(tmp_path / "report")])
    error = capsys.readouterr().err
    assert stop.value.code == 2 and f"{path} holds 1 sample(s)" in error and "--n-splits (5)" in error
    assert not (tmp_path / "report").exists()


@pytest.mark.slow
def test_a_foreign_controlnets_store_and_a_factorless_captioned_store_are_analysed(foreign_stores, tmp_path):
    out = tmp_path / "report"
    main([str(foreign_stores["shapes"]), str(foreign_stores["captioned"]), "--out", str(out), "--no-umap",
          "--dci-importance", "lasso", "--attribution-samples", "1", "--jobs", "1"])
    tables = {name: pd.read_csv(out / f"{name}.csv") for name in TABLES}
    assert set(tables["alignment"]["run"]) == {"theirs-shapes", "theirs-captioned"}
    assert set(tables["probes"]["run"]) == {"theirs-shapes"}  # the captioned store has no factors
    report = (out / "report.md").read_text()
    assert "model-based decomposition skipped: the store is of a side net extracted with --controlnet" in report
    assert "no (varying) generating factors" in report
    assert set(tables["decomposition"]["source"]) == {"store"}


@pytest.mark.slow
def test_causal_analyses_of_a_run_and_a_foreign_controlnet(stores, foreign_stores, tmp_path):
    """--causal draws each store's side net anew (a lisa_probe run, and a ControlNet with its main net from the
    store's config): the tables as causal_<name>.csv with each run, the report's section with its figures."""
    out = tmp_path / "report"
    main([str(stores["lisa"]), str(foreign_stores["shapes"]), "--out", str(out), "--sites", "mid", "--t-bins", "1",
          "--no-umap", "--dci-importance", "lasso", "--jobs", "1", "--causal", "maps,interventions,patching",
          "--causal-samples", "2", "--causal-steps", "2"])
    interventions = pd.read_csv(out / "causal_interventions.csv")
    assert set(interventions["run"]) == {"lisa", "theirs-shapes"} and "full" in set(interventions["intervention"])
    assert set(pd.read_csv(out / "causal_maps_summary.csv")["run"]) == {"lisa", "theirs-shapes"}
    assert (out / "causal_patching.csv").exists()
    assert_maps_at_the_store_rows(pd.read_csv(out / "causal_maps.csv").query("run == 'lisa'"), stores["lisa"])
    report = (out / "report.md").read_text()
    assert "## Causal analyses" in report and "### theirs-shapes" in report
    assert "(figures/lisa_interventions.png)" in report and (out / "figures" / "lisa_interventions.png").exists()


def assert_maps_at_the_store_rows(maps: pd.DataFrame, store_path) -> None:
    """The causal maps were taken at the store's own rows: the ``full`` and ``oracle`` maps' shares inside the
    condition equal those of the store's recorded ``scores/full − scores/main`` and ``scores/target −
    scores/main`` at the same rows (float32 predictions recomputed in another batch: within 1e-4)."""
    from lisa_probe.causal.maps import cell_fractions, condition_support, inside_fraction
    from lisa_probe.data import build_dataset

    store = FeatureStore(store_path)
    rows = np.sort(maps["row"].unique())
    assert len(rows) >= 2 and set(maps["t"].unique()) <= set(store.meta()["t"])
    args = store.attrs["extract_args"]
    dataset = build_dataset("shapes", split=args["split"], resolution=16)
    samples = [dataset[int(row // (store.n_rows // args["samples"]))] for row in rows]  # as the extraction drew them
    assert [sample["id"] for sample in samples] == list(store.meta()["sample_id"].to_numpy()[rows])
    cond = np.stack([sample["cond"].numpy() for sample in samples])
    main_scores = store.read("scores/main", rows)
    for method, scores in (("full", store.read("scores/full", rows)), ("oracle", store.read("scores/target", rows))):
        norms = np.linalg.norm(scores.astype(np.float64) - main_scores, axis=1)
        expected = inside_fraction(norms, cell_fractions(condition_support(cond), norms.shape[-2:]))
        found = maps.query("method == @method").set_index("row").loc[rows, "value"].to_numpy()
        np.testing.assert_allclose(found, expected, atol=1e-4)


def test_an_unknown_causal_analysis_is_refused(synthetic, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main([str(synthetic), "--out", str(tmp_path / "r"), "--causal", "maps,nope"])
    assert stop.value.code == 2 and "--causal 'maps,nope': choose from maps, interventions" in capsys.readouterr().err
