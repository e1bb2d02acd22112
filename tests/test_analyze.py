"""``python -m lisa_probe.analyze``: known answers on a synthetic store, streamed = in-memory statistics, and the
command end to end on stores extracted from tiny trained runs (a LISA run, a baseline, an untrained side net)."""

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import lisa_probe.analysis.report as report_module
from lisa_probe.analysis.alignment import DecoderAlignmentSums, decoder_alignment, resample_to, spatial_ridge_readout
from lisa_probe.analysis.report import Figures, prepare_out, publish_out
from lisa_probe.analysis.report_tables import (
    TABLES,
    alignment_table,
    disentanglement_tables,
    embed,
    run_tables,
    store_decomposition,
)
from lisa_probe.analysis.selection import open_run, select_rows, time_bins
from lisa_probe.analysis.streaming import MIN_CHUNK_SAMPLES, shuffle_within, stream_run
from lisa_probe.analyze import main
from lisa_probe.configs import AnalyzeOptions, ExtractConfig, TrainConfig
from lisa_probe.extraction import extract
from lisa_probe.models import build_main, build_side, save_main
from lisa_probe.parameterization import Parameterization
from lisa_probe.rundir import read_eval, resolved_path
from lisa_probe.side_training import train
from lisa_probe.store import FeatureStore, FeatureStoreWriter, make_layout
from lisa_probe.store.reader import whole_sample_chunks

N_SAMPLES, TIMESTEPS, SCORE = 100, (100.0, 700.0), (1, 8, 8)
DECOMPOSE = {"spatial": 0.25, "pooled": 0.75}  # decompose/<site> = main + share · (full − main)
FAST = AnalyzeOptions(umap=False, dci_importance="lasso", pca_components=4)


def synthetic_rows(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Rows (sample-major, then timestep) whose features encode the model estimate Δ = full − main and a factor:
    ``spatial`` (3, 8, 8) = [Δ, 0.5 − Δ, noise]; ``pooled`` (16, 1, 1) = Δ area-averaged to 4×4; ``factor`` (4, 2, 2)
    carries ``encoded`` in channel 0; ``random`` is in no feature; the oracle is Δ plus noise, the decoder Δ plus a
    little noise."""
    n = N_SAMPLES * len(TIMESTEPS)
    sample = np.repeat(np.arange(N_SAMPLES), len(TIMESTEPS))
    encoded, random = rng.integers(0, 3, N_SAMPLES)[sample], rng.integers(0, 3, N_SAMPLES)[sample]
    main, delta = rng.normal(size=(n, *SCORE)), rng.normal(size=(n, *SCORE))
    noise = rng.normal(size=(n, 1, 8, 8))
    factor = rng.normal(scale=0.1, size=(n, 4, 2, 2))
    factor[:, 0] += 2.0 * encoded[:, None, None]
    rows = {
        "meta/sample_id": [f"s{i:03d}" for i in sample], "meta/t": np.tile(TIMESTEPS, N_SAMPLES),
        "meta/noise_level": np.ones(n), "meta/draw": np.zeros(n, dtype=np.int32), "meta/factors/encoded": encoded,
        "meta/factors/random": random, "features/spatial": np.concatenate([delta, 0.5 - delta, noise], axis=1),
        "features/pooled": resample_to(delta, (4, 4)).reshape(n, 16, 1, 1), "features/factor": factor,
        "scores/main": main, "scores/full": main + delta, "scores/target": main + delta + rng.normal(size=(n, *SCORE)),
        "scores/decoded": delta + 0.05 * rng.normal(size=(n, *SCORE)),
    }
    rows.update({f"decompose/{site}": main + share * delta for site, share in DECOMPOSE.items()})
    return rows


def write_synthetic(path: Path, with_factors: bool = True) -> Path:
    """The synthetic rows as a store, written in chunks of 64 rows (``with_factors=False``: without its factors)."""
    factors = {"encoded": {"kind": "categorical", "carried": True},
               "random": {"kind": "categorical", "carried": False}}
    layout = make_layout({"spatial": (3, 8, 8), "pooled": (16, 1, 1), "factor": (4, 2, 2)}, SCORE,
                         factors if with_factors else {}, decoded=True, decompose_sites=list(DECOMPOSE),
                         feature_dtype="float32")
    attrs = {"config": {"name": "synthetic"}, "checkpoint": str(path.parent / "run" / "controlnet"),
             "checkpoint_hash": "none", "code_version": "test", "parameterization": "eps", "extract_args": {},
             "lisa_site": "spatial"}
    rows = {name: values for name, values in synthetic_rows(np.random.default_rng(0)).items() if name in layout}
    with FeatureStoreWriter(path, layout, len(rows["meta/t"]), attrs, chunk_bytes=64 * 3 * 64 * 4) as writer:
        writer.write_rows(0, rows)
    return path


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """A store written directly with known answers."""
    return write_synthetic(tmp_path_factory.mktemp("synthetic") / "synthetic.h5")


@pytest.fixture(scope="module")
def analysed(synthetic):
    """(run, streamed, alignment table) of the synthetic store, streamed in chunks of 50 rows."""
    options = replace(FAST, chunk_rows=50)
    run = open_run(synthetic, "synthetic", options)
    streamed = stream_run(run, options)
    return run, streamed, alignment_table(run, streamed, options)


def values(table: pd.DataFrame, **equal) -> np.ndarray:
    mask = np.logical_and.reduce([table[column] == value for column, value in equal.items()])
    return table.loc[mask, "value"].to_numpy()


def test_readouts_of_features_that_encode_the_score(analysed):
    _, _, table = analysed
    bins = len(TIMESTEPS)
    spatial = dict(method="spatial_ridge", site="spatial", metric="r2")
    assert (values(table, **spatial, estimate="model", control="none") > 0.99).sum() == bins
    assert (values(table, **spatial, estimate="model", control="shuffled_pairs") < 0.1).all()
    oracle = values(table, **spatial, estimate="oracle", control="none")
    assert (oracle < 0.9).all() and (oracle > 0.2).all()  # Δ explains half of the oracle's variance
    pooled = dict(method="ridge", site="pooled", metric="r2", estimate="model")
    assert (values(table, **pooled, control="none") > 0.99).sum() == bins
    assert (values(table, **pooled, control="shuffled_pairs") < 0.1).all()
    assert (values(table, method="cka", site="pooled", estimate="model", control="none") > 0.99).all()
    decoder = dict(method="decoder", metric="cosine", estimate="model")
    assert (values(table, **decoder, control="none") > 0.99).all()
    assert (np.abs(values(table, **decoder, control="shuffled_pairs")) < 0.2).all()
    assert set(table.loc[table["method"] == "decoder", "site"]) == {"spatial"}
    assert list(table.columns) == ["run", "site", "t", "t_bin", "estimate", "method", "control", "metric", "value"]
    np.testing.assert_array_equal(np.unique(table["t"]), TIMESTEPS)


def test_streamed_statistics_equal_the_in_memory_functions(synthetic):
    options = replace(FAST, chunk_rows=30, t_bins=1, sites=["spatial"])
    run = open_run(synthetic, "one-bin", options)
    table = alignment_table(run, stream_run(run, options), options)
    store = FeatureStore(synthetic)
    delta = store.read("scores/full") - store.read("scores/main")
    expected = spatial_ridge_readout(store.read("features/spatial"), delta, store.read("meta/sample_id"),
                                     folds_by="order")
    streamed = values(table, method="spatial_ridge", estimate="model", control="none")
    np.testing.assert_allclose(streamed, [expected], rtol=1e-6)
    decoded = store.read("scores/decoded")
    sums = DecoderAlignmentSums()
    for part in np.array_split(np.arange(len(delta)), 3):
        sums.update(decoded[part], delta[part])
    for metric, value in decoder_alignment(decoded, delta).items():
        assert sums.metrics()[metric] == pytest.approx(value, rel=1e-9)
        assert values(table, method="decoder", metric=metric, estimate="model", control="none")[0] == \
            pytest.approx(value, rel=1e-9)


def test_a_summary_sample_bounds_the_row_analyses_not_the_streamed_ones(synthetic, analysed):
    """With ``summary_rows`` 40 of 200 rows: the summary sample is whole samples drawn with the seed (about 40
    rows), its per-row summaries are those of the full pass at the same rows, and the streamed read-outs still cover
    every row (equal to the full pass's)."""
    options = replace(FAST, chunk_rows=50, summary_rows=40)
    run = open_run(synthetic, "summary", options)
    streamed = stream_run(run, options)
    full_run, full, full_table = analysed
    assert 20 <= len(run.rows) <= 80 and np.all(np.diff(run.rows) > 0)
    assert run.n_stream_rows == 200 and run.n_samples == N_SAMPLES
    ids = run.meta["sample_id"].to_numpy()
    assert all((ids == s).sum() == len(TIMESTEPS) for s in set(ids))  # whole samples
    np.testing.assert_array_equal(run.meta["t"], full_run.meta["t"].to_numpy()[run.rows])
    at = np.searchsorted(full_run.rows, run.rows)
    for site in full.pooled:
        np.testing.assert_allclose(streamed.pooled[site], full.pooled[site][at], rtol=1e-6)
    np.testing.assert_allclose(streamed.effect, full.effect[at], rtol=1e-6)
    table = alignment_table(run, streamed, options)
    for method in ("spatial_ridge", "decoder"):
        np.testing.assert_allclose(values(table, method=method), values(full_table, method=method), rtol=1e-9)
    other = open_run(synthetic, "other-seed", replace(options, seed=1))
    assert not np.array_equal(other.rows, run.rows)


def test_decoder_sums_r2_is_nan_for_a_constant_estimate():
    rng = np.random.default_rng(5)
    decoded = rng.normal(size=(6, *SCORE))
    for constant in (0.0, 0.3):
        estimate = np.full((6, *SCORE), constant)
        sums = DecoderAlignmentSums()
        for part in np.array_split(np.arange(6), 3):
            sums.update(decoded[part], estimate[part])
        assert np.isnan(sums.metrics()["r2"]) and np.isnan(decoder_alignment(decoded, estimate)["r2"])
        assert sums.metrics()["rel_error"] == pytest.approx(decoder_alignment(decoded, estimate)["rel_error"])


def chunk_meta(n_samples: int, t_bins: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(sample ids, t bins) of a streamed chunk of whole samples: 8 timesteps x 4 draws per sample, rows ordered
    sample, timestep, draw, the timesteps merged into ``t_bins`` bins."""
    samples = np.repeat([f"s{i:02d}" for i in np.random.default_rng(seed).permutation(n_samples)], 8 * 4)
    t = np.tile(np.repeat(np.linspace(50.0, 950.0, 8), 4), n_samples)
    return samples, time_bins(t, t_bins)[0]


@pytest.mark.parametrize(("n_samples", "t_bins"), [(2, None), (3, 3), (7, 1)])
def test_shuffled_pairs_are_other_samples_in_the_same_bin(n_samples, t_bins):
    samples, bins = chunk_meta(n_samples, t_bins)
    perm = shuffle_within(bins, samples, np.random.default_rng(0))
    np.testing.assert_array_equal(np.sort(perm), np.arange(len(perm)))  # a permutation ...
    np.testing.assert_array_equal(bins[perm], bins)  # ... within bins ...
    assert not np.any(samples[perm] == samples)  # ... that never pairs a row with its own sample
    np.testing.assert_array_equal(perm, shuffle_within(bins, samples, np.random.default_rng(0)))
    assert not np.array_equal(perm, shuffle_within(bins, samples, np.random.default_rng(1)))


def test_shuffled_pairs_with_unequal_samples_and_the_impossible_case():
    samples = np.array(list("aaabbc" * 2))  # per bin: a holds 3 of 6 rows, exactly half
    bins = np.repeat([0, 1], 6)
    for seed in range(20):
        perm = shuffle_within(bins, samples, np.random.default_rng(seed))
        assert not np.any(samples[perm] == samples) and np.array_equal(bins[perm], bins)
    with pytest.raises(ValueError, match=r"t_bin 0 of this chunk: .*sample 'a' holds 3 of 5 rows"):
        shuffle_within(np.zeros(5, dtype=int), np.array(list("aaabc")), np.random.default_rng(0))


def test_sample_chunks_hold_whole_samples():
    samples = np.repeat([f"s{i}" for i in range(7)], 4)
    cases = {10: [(0, 8), (8, 16), (16, 28)], 16: [(0, 16), (16, 28)], 1: [(0, 8), (8, 16), (16, 28)],
             100: [(0, 28)]}
    for chunk_rows, expected in cases.items():
        chunks = whole_sample_chunks(samples, chunk_rows, MIN_CHUNK_SAMPLES)
        assert [(part.start, part.stop) for part in chunks] == expected
        for part in chunks:
            inside = set(samples[part])
            assert len(inside) >= MIN_CHUNK_SAMPLES and all((samples == s).sum() == (samples[part] == s).sum()
                                                            for s in inside)


def test_tiny_chunks_still_pair_other_samples(synthetic):
    """Chunks of one row's worth are widened to two whole samples: the shuffled decoder pairs stay unaligned (a
    row paired with itself would have cosine 1)."""
    options = replace(FAST, chunk_rows=1, t_bins=1, sites=["spatial"])
    run = open_run(synthetic, "tiny-chunks", options)
    table = alignment_table(run, stream_run(run, options), options)
    shuffled = values(table, method="decoder", metric="cosine", estimate="model", control="shuffled_pairs")
    assert abs(shuffled[0]) < 0.15
    assert values(table, method="decoder", metric="cosine", estimate="model", control="none")[0] > 0.99


def test_probes_find_the_encoded_factor_only(analysed):
    run, streamed, _ = analysed
    probes, codes = disentanglement_tables(replace(run, sites=["factor"]), streamed, FAST)
    selectivity = probes[probes["metric"] == "selectivity"]
    assert (values(selectivity, site="factor", factor="encoded") > 0.5).all()
    assert (np.abs(values(selectivity, site="factor", factor="random")) < 0.2).all()
    assert {"dci", "mig", "sap"} <= set(codes["method"])
    assert set(codes["t_bin"]) == {0, 1}


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
    tables = run_tables([run], FAST, Figures(tmp_path / "report"))
    assert tables["probes"].empty and tables["embedding"].empty and tables["carried_summary"].empty
    assert len(tables["alignment"]) and len(tables["decomposition"])
    assert "no (varying) generating factors" in run.notes[0]
    assert (tmp_path / "report" / "figures" / "embedding_plain.png").exists()


def test_overwrite_replaces_only_a_previous_report(tmp_path):
    out = tmp_path / "report"
    (out / "figures").mkdir(parents=True)
    for name in ("figures/old.png", "alignment.csv", "report.md", "mine.txt"):
        (out / name).write_text("x")
    with pytest.raises(FileExistsError, match="--overwrite"):
        prepare_out(out, overwrite=False)
    staging = prepare_out(out, overwrite=True)
    assert sorted(path.name for path in out.rglob("*")) == ["alignment.csv", "figures", "mine.txt", "old.png",
                                                             "report.md"]  # nothing deleted before the analysis
    (staging / "figures").mkdir()
    (staging / "report.md").write_text("new")
    publish_out(staging, out)
    assert sorted(path.name for path in out.rglob("*")) == ["figures", "mine.txt", "report.md"]
    assert (out / "report.md").read_text() == "new" and not staging.exists()


def test_a_failing_analysis_keeps_the_previous_report(tmp_path, monkeypatch, capsys):
    """--overwrite replaces the report only once the new one is whole: an analysis that fails (here an OSError
    deep inside) leaves the old report as it was, no staging directory, and a one-line error (exit 2)."""
    store = write_synthetic(tmp_path / "a.h5")
    out = tmp_path / "report"
    out.mkdir()
    (out / "report.md").write_text("old report")

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(report_module, "run_tables", fail)
    with pytest.raises(SystemExit) as stop:
        main([str(store), "--out", str(out), "--overwrite", "--no-umap"])
    assert stop.value.code == 2 and "error: disk full" in capsys.readouterr().err
    assert (out / "report.md").read_text() == "old report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.h5", "report"]


def test_time_bins_and_row_selection():
    bins, bin_t = time_bins(np.array([3.0, 1.0, 4.0, 2.0, 1.0]), 2)
    np.testing.assert_array_equal(bins, [1, 0, 1, 0, 0])
    np.testing.assert_allclose(bin_t, [1.5, 3.5])
    np.testing.assert_array_equal(time_bins(np.array([5.0, 1.0]), None)[0], [1, 0])
    ids = np.repeat([f"s{i}" for i in range(10)], 3)
    rows = select_rows(ids, 16, 5, seed=0)
    assert len(rows) == 15 and all((ids[rows] == s).sum() == 3 for s in np.unique(ids[rows]))
    np.testing.assert_array_equal(select_rows(ids, None, 5, 0), np.arange(30))
    with pytest.raises(ValueError, match="cross-validation needs at least 5"):
        select_rows(ids, 10, 5, 0)


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
