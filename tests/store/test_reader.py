"""FeatureStore: description, meta/select, fancy and pooled reads, bounded iteration, DataLoader workers, errors."""

from __future__ import annotations

import pickle
import shutil
import tracemalloc

import h5py
import numpy as np
import pytest

from lisa_probe.store import FeatureStore, FeatureStoreWriter, make_layout, partial_path
from lisa_probe.store.reader import iter_whole_sample_chunks, whole_sample_chunks

N_SAMPLES, N_T, N_DRAWS = 10, 2, 2
N_ROWS = N_SAMPLES * N_T * N_DRAWS
TIMESTEPS = np.array([800.0, 200.0], dtype=np.float32)
ATTRS = {"config": '{"b": 1, "a": {"x": [1, 2]}}', "checkpoint": "runs/b/side", "checkpoint_hash": "ff00",
         "code_version": "0.1.0", "parameterization": "flow", "extract_args": {"draws": 2}, "note": "extra"}
FACTORS = {"kind": {"kind": "categorical", "carried": True}, "hue": {"kind": "continuous", "carried": False}}
LAYOUT = make_layout({"down.2": (64, 16, 16), "block.1": (12, 8)}, (3, 4, 4), FACTORS)


def make_rows(start, stop):
    """Deterministic rows: sample r // 4, timestep (r // 2) % 2, draw r % 2; features depend on the row."""
    rows = np.arange(start, stop)
    samples = rows // (N_T * N_DRAWS)
    batch = {"meta/sample_id": [f"img{s}" for s in samples], "meta/t": TIMESTEPS[rows // N_DRAWS % N_T],
             "meta/noise_level": TIMESTEPS[rows // N_DRAWS % N_T] / 1000, "meta/draw": rows % N_DRAWS,
             "meta/factors/kind": samples % 3, "meta/factors/hue": samples / 10}
    rng = np.random.default_rng(start)
    for name, fld in LAYOUT.items():
        if name not in batch:
            batch[name] = rng.standard_normal((len(rows), *fld.shape)).astype(np.float32)
    batch["meta/draw"] = batch["meta/draw"].astype(np.int32)
    return batch


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    """A 40-row store with 32 KiB feature rows: 32-row (1 MiB) chunks, so reads cross chunk boundaries."""
    path = tmp_path_factory.mktemp("store") / "feats.h5"
    with FeatureStoreWriter(path, LAYOUT, N_ROWS, ATTRS) as writer:
        for start in range(0, N_ROWS, 8):
            writer.write_rows(start, make_rows(start, start + 8))
    return path


@pytest.fixture(scope="module")
def full(store_path):
    """Every dataset of the store read with h5py directly: the numpy reference."""
    with h5py.File(store_path, "r") as h5:
        return {name: h5[name][()] for name in LAYOUT}


def test_description(store_path):
    store = FeatureStore(store_path)
    assert store.n_rows == N_ROWS and store.sites == ["down.2", "block.1"]
    np.testing.assert_array_equal(store.timesteps, np.sort(TIMESTEPS))
    assert store.factors == {name: {**spec, "period": None, "levels": None} for name, spec in FACTORS.items()}
    assert store.attrs["config"] == {"a": {"x": [1, 2]}, "b": 1} and store.attrs["note"] == "extra"
    assert store.attrs["parameterization"] == "flow" and store.attrs["schema_version"] == "1"
    assert store.compression == "lzf"


def test_meta_and_select(store_path):
    store = FeatureStore(store_path)
    meta = store.meta()
    assert list(meta.columns) == ["sample_id", "t", "noise_level", "draw", "kind", "hue"]
    assert len(meta) == N_ROWS and meta["sample_id"].iloc[5] == "img1" and meta["t"].iloc[2] == 200.0
    np.testing.assert_array_equal(store.select(t=200), np.flatnonzero(meta["t"] == 200))
    np.testing.assert_array_equal(store.select(sample_ids=["img3", "img0"], t=[800.0]), [0, 1, 12, 13])
    np.testing.assert_array_equal(store.select(kind=0, hue=0.3), np.arange(12, 16))
    np.testing.assert_array_equal(store.select(kind=[1, 2], t=800),
                                  np.flatnonzero((meta["kind"] > 0) & (meta["t"] == 800)))
    assert store.select(kind=1, hue=0.3).size == 0
    with pytest.raises(KeyError, match="unknown factors"):
        store.select(colour=1)


@pytest.mark.parametrize("name", ["features/down.2", "features/block.1", "scores/full", "meta/draw"])
def test_fancy_rows_any_order(store_path, full, name):
    store = FeatureStore(store_path)
    rows = np.array([39, 3, 31, 32, 3, 0, 17])
    np.testing.assert_array_equal(store.read(name, rows), full[name][rows])
    np.testing.assert_array_equal(store.read(name), full[name])
    np.testing.assert_array_equal(store.read(name, slice(5, 35, 3)), full[name][5:35:3])
    mask = np.arange(N_ROWS) % 3 == 1
    np.testing.assert_array_equal(store.read(name, mask), full[name][mask])
    assert store.read(name, []).shape == (0, *LAYOUT[name].shape)
    with pytest.raises(IndexError, match=rf"must lie in 0..{N_ROWS - 1}, got min -2 and max {N_ROWS}"):
        store.read(name, [3, N_ROWS, -2])


def test_string_reads(store_path):
    ids = FeatureStore(store_path).read("meta/sample_id", [9, 0])
    assert ids.dtype == object and list(ids) == ["img2", "img0"]


@pytest.mark.parametrize("pool", ["mean", "max"])
def test_pooled_reads_match_numpy(store_path, full, pool):
    store = FeatureStore(store_path)
    reduce = np.mean if pool == "mean" else np.max
    rows = np.array([30, 2, 33])
    spatial = store.read("features/down.2", rows, pool=pool)
    assert spatial.shape == (3, 64) and spatial.dtype == np.float32
    np.testing.assert_allclose(spatial, reduce(full["features/down.2"][rows].astype(np.float32), axis=(2, 3)),
                               rtol=1e-6, atol=1e-6)
    tokens = store.read("features/block.1", pool=pool)
    assert tokens.shape == (N_ROWS, 8)
    np.testing.assert_allclose(tokens, reduce(full["features/block.1"].astype(np.float32), axis=1), rtol=1e-6,
                               atol=1e-6)
    assert store.read("features/down.2", [], pool=pool).shape == (0, 64)
    with pytest.raises(ValueError, match="pool"):
        store.read("features/down.2", pool="median")


def test_iter_chunks_is_bounded(store_path, full):
    store = FeatureStore(store_path)
    names = ["features/down.2", "meta/t"]
    chunks = list(store.iter_chunks(names, chunk_rows=6))
    assert [len(chunk["rows"]) for chunk in chunks] == [6] * 6 + [4]
    for name in names:
        np.testing.assert_array_equal(np.concatenate([chunk[name] for chunk in chunks]), full[name])
    rows = np.array([35, 1, 20, 2, 9])
    pooled = list(store.iter_chunks(["features/down.2"], rows=rows, chunk_rows=2, pool="mean"))
    np.testing.assert_array_equal(np.concatenate([chunk["rows"] for chunk in pooled]), rows)
    assert pooled[0]["features/down.2"].shape == (2, 64)
    store.read("meta/t")  # open the handles before measuring
    tracemalloc.start()
    for _ in store.iter_chunks(["features/down.2"], chunk_rows=4):
        pass
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    row_bytes = full["features/down.2"][0].nbytes  # 32 KiB; the whole dataset is 40 rows, 1.25 MiB
    assert peak < 12 * row_bytes  # two 4-row chunks alive (the loop's and the next) plus bookkeeping


def test_default_chunk_rows_follow_bytes(store_path, monkeypatch):
    monkeypatch.setattr("lisa_probe.store.reader.ITER_BYTES", 10 * 32768)
    chunks = list(FeatureStore(store_path).iter_chunks(["features/down.2"]))
    assert max(len(chunk["rows"]) for chunk in chunks) <= 10 and len(chunks) == 4


def test_torch_dataset_in_dataloader_workers(store_path, full):
    torch = pytest.importorskip("torch")
    store = FeatureStore(store_path)
    store.read("meta/t")  # a handle open in the parent must not be reused by the forked workers
    rows = np.arange(N_ROWS)[::-1]
    dataset = store.as_torch_dataset(["features/block.1", "meta/sample_id", "meta/t"], rows=rows)
    assert len(dataset) == N_ROWS and dataset[0]["row"] == N_ROWS - 1
    loader = torch.utils.data.DataLoader(dataset, batch_size=7, num_workers=2)
    batches = list(loader)
    features = torch.cat([batch["features/block.1"] for batch in batches]).numpy()
    np.testing.assert_array_equal(features, full["features/block.1"][rows])
    assert torch.cat([batch["row"] for batch in batches]).tolist() == rows.tolist()
    assert [i for batch in batches for i in batch["meta/sample_id"]] == [f"img{r // 4}" for r in rows]
    assert batches[0]["meta/t"].dtype == torch.float32
    pooled = store.as_torch_dataset(["features/down.2"], pool="max")[3]["features/down.2"]
    assert pooled.shape == (64,)


def test_pickled_store_reopens(store_path, full):
    store = FeatureStore(store_path)
    store.read("meta/t")
    clone = pickle.loads(pickle.dumps(store))
    np.testing.assert_array_equal(clone.read("scores/main", [4, 1]), full["scores/main"][[4, 1]])
    store.close()
    np.testing.assert_array_equal(store.read("meta/draw"), full["meta/draw"])


def test_not_a_store(tmp_path):
    with pytest.raises(ValueError, match="not a lisa_probe feature store: .*missing.h5"):
        FeatureStore(tmp_path / "missing.h5")
    with h5py.File(tmp_path / "foreign.h5", "w") as h5:
        h5["x"] = np.zeros(3)
    with pytest.raises(ValueError, match="not a lisa_probe feature store: .*foreign.h5"):
        FeatureStore(tmp_path / "foreign.h5")
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(ValueError, match="not a lisa_probe feature store: .*text.h5"):
        FeatureStore(tmp_path / "text.h5")


def test_truncated_and_unfinished_stores(tmp_path, store_path):
    cut = tmp_path / "cut.h5"
    data = store_path.read_bytes()
    cut.write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        FeatureStore(cut)
    path = tmp_path / "unfinished.h5"
    with pytest.raises(KeyboardInterrupt), FeatureStoreWriter(path, LAYOUT, N_ROWS, ATTRS) as writer:
        writer.write_rows(0, make_rows(0, 32))
        raise KeyboardInterrupt
    with pytest.raises(ValueError, match=r"incomplete \(truncated\).*32/40 rows"):
        FeatureStore(partial_path(path))
    shutil.copy(store_path, path)
    with h5py.File(path, "r+") as h5:
        h5.attrs["complete"] = False
    with pytest.raises(ValueError, match="incomplete"):
        FeatureStore(path)
    short = tmp_path / "short.h5"
    shutil.copy(store_path, short)
    with h5py.File(short, "r+") as h5:
        del h5["scores/full"]
        h5.create_dataset("scores/full", data=np.zeros((N_ROWS - 3, 3, 4, 4), dtype=np.float32))
    with pytest.raises(ValueError, match=rf"dataset scores/full has {N_ROWS - 3} rows, n_rows is {N_ROWS}"):
        FeatureStore(short)


def _drop_dataset(h5):
    del h5["scores/main"]


def _drop_layout(h5):
    del h5.attrs["layout"]


def _bad_layout_json(h5):
    h5.attrs["layout"] = "{not json"


def _foreign_layout(h5):
    h5.attrs["layout"] = '{"meta/t": {"shape": [], "dtype": "float32"}}'


def _bad_config_json(h5):
    h5.attrs["config"] = "{"


def _short_dataset(h5):
    data = h5["scores/full"][:5]
    del h5["scores/full"]
    h5["scores/full"] = data


@pytest.mark.parametrize("damage", [_drop_dataset, _drop_layout, _bad_layout_json, _foreign_layout, _bad_config_json,
                                    _short_dataset], ids=lambda f: f.__name__.strip("_"))
def test_damaged_stores_are_refused_by_name(store_path, tmp_path, damage):
    """A store damaged after the fact (a dataset or attr gone, attrs that are not our JSON, a short dataset) is
    refused with a ValueError naming the file, never a KeyError from deep inside."""
    path = tmp_path / "damaged.h5"
    shutil.copy(store_path, path)
    with h5py.File(path, "r+") as h5:
        damage(h5)
    with pytest.raises(ValueError, match=str(path)):
        FeatureStore(path)


def test_a_truncated_store_is_refused_by_name(store_path, tmp_path):
    path = tmp_path / "truncated.h5"
    path.write_bytes(store_path.read_bytes()[: store_path.stat().st_size // 2])
    with pytest.raises(ValueError, match=f"not a lisa_probe feature store: {path}"):
        FeatureStore(path)


@pytest.mark.parametrize(("block_rows", "chunk_rows", "min_samples"), [(5, 3, 2), (7, 10, 2), (64, 8, 1), (3, 1, 3)])
def test_whole_sample_chunks_read_a_block_at_a_time(block_rows, chunk_rows, min_samples):
    """Chunks from blocks of sample ids cover every row once, in order, hold whole samples (at least
    ``min_samples``) and return their ids; reads never exceed the (doubled when needed) block; with one block they
    equal ``whole_sample_chunks``."""
    sizes = np.random.default_rng(block_rows).integers(1, 5, 19)
    samples = np.repeat([f"s{i:02d}" for i in range(len(sizes))], sizes)
    reads = []

    def read(part):
        reads.append(part.stop - part.start)
        return samples[part]

    chunks = list(iter_whole_sample_chunks(read, len(samples), chunk_rows, min_samples, block_rows))
    assert np.array_equal(np.concatenate([np.arange(len(samples))[part] for part, _ in chunks]),
                          np.arange(len(samples)))
    for part, ids in chunks:
        np.testing.assert_array_equal(ids, samples[part])
        assert len(set(ids)) >= min_samples
        assert all((samples == s).sum() == (ids == s).sum() for s in set(ids))
    assert max(reads) < len(samples) or block_rows >= len(samples) // 2
    whole = list(iter_whole_sample_chunks(read, len(samples), chunk_rows, min_samples, len(samples)))
    assert [part for part, _ in whole] == whole_sample_chunks(samples, chunk_rows, min_samples)


def test_sample_chunks_hold_whole_samples():
    samples = np.repeat([f"s{i}" for i in range(7)], 4)
    cases = {10: [(0, 8), (8, 16), (16, 28)], 16: [(0, 16), (16, 28)], 1: [(0, 8), (8, 16), (16, 28)],
             100: [(0, 28)]}
    for chunk_rows, expected in cases.items():
        chunks = whole_sample_chunks(samples, chunk_rows, 2)
        assert [(part.start, part.stop) for part in chunks] == expected
        for part in chunks:
            inside = set(samples[part])
            assert len(inside) >= 2 and all((samples == s).sum() == (samples[part] == s).sum()
                                                            for s in inside)
