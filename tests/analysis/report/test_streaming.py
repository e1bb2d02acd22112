"""The streamed pass (``analysis.streaming``): known answers on a synthetic store, streamed = in-memory statistics,
the summary sample, the shuffled-pair control."""


from dataclasses import replace

import numpy as np
import pytest

from lisa_probe.analysis.alignment import DecoderAlignmentSums, decoder_alignment, spatial_ridge_readout
from lisa_probe.analysis.report.selection import grid_bins, open_run
from lisa_probe.analysis.report.streaming import shuffle_within, stream_run
from lisa_probe.analysis.report.tables import (
    alignment_table,
)
from lisa_probe.store import FeatureStore
from tests.analysis.synthetic_store import FAST, N_SAMPLES, TIMESTEPS, values


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
    assert list(table.columns) == ["run", "site", "t", "t_bin", "estimate", "method", "control", "half", "metric",
                                   "value"]
    assert (table["half"] > 0).all()  # every point has its interval across the folds
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


def chunk_meta(n_samples: int, t_bins: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(sample ids, t bins) of a streamed chunk of whole samples: 8 timesteps x 4 draws per sample, rows ordered
    sample, timestep, draw, the timesteps merged into ``t_bins`` bins."""
    samples = np.repeat([f"s{i:02d}" for i in np.random.default_rng(seed).permutation(n_samples)], 8 * 4)
    bin_of_t = grid_bins(np.linspace(50.0, 950.0, 8), t_bins)[0]
    return samples, np.tile(np.repeat(bin_of_t, 4), n_samples)


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


def test_tiny_chunks_still_pair_other_samples(synthetic):
    """Chunks of one row's worth are widened to two whole samples: the shuffled decoder pairs stay unaligned (a
    row paired with itself would have cosine 1)."""
    options = replace(FAST, chunk_rows=1, t_bins=1, sites=["spatial"])
    run = open_run(synthetic, "tiny-chunks", options)
    table = alignment_table(run, stream_run(run, options), options)
    shuffled = values(table, method="decoder", metric="cosine", estimate="model", control="shuffled_pairs")
    assert abs(shuffled[0]) < 0.15
    assert values(table, method="decoder", metric="cosine", estimate="model", control="none")[0] > 0.99


def test_the_shuffled_pairs_control_does_not_depend_on_the_chunking(synthetic):
    """The control pairs each row with a partner drawn once over all rows (seeded), so streaming in chunks of 1,
    30 or all rows gives the same control rows (they differed by up to 0.044 in R² when pairs were drawn per
    chunk)."""
    tables = []
    for chunk_rows in (1, 30, 10_000):
        options = replace(FAST, chunk_rows=chunk_rows, t_bins=1, sites=["spatial"])
        run = open_run(synthetic, f"chunks-{chunk_rows}", options)
        table = alignment_table(run, stream_run(run, options), options)
        tables.append(table[table["control"] == "shuffled_pairs"].sort_values(
            ["method", "site", "estimate", "metric"])["value"].to_numpy())
    assert len(tables[0]) > 0
    for other in tables[1:]:
        np.testing.assert_allclose(other, tables[0], rtol=1e-6, atol=1e-9)
