"""FeatureStoreWriter: round trip, overwrite/partial rules, SIGKILL + resume, resume checks, shards and merging.

Run as a script (``python test_writer.py <mode> <path> <batches>``) it is the child process the kill tests SIGKILL.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from lisa_probe.files import OutputBusyError, lock_path
from lisa_probe.store import (
    FeatureStore,
    FeatureStoreWriter,
    make_layout,
    merge_shards,
    partial_path,
    shard_path,
    shard_range,
    validate_layout,
)
from lisa_probe.store.integrity import DIGEST_ATTR
from lisa_probe.store.writer import StoreWriteError, check_finished_store

N_SAMPLES, N_T, N_DRAWS = 5, 3, 2
ROWS_PER_SAMPLE = N_T * N_DRAWS
N_ROWS = N_SAMPLES * ROWS_PER_SAMPLE
BATCH = 4
CHUNK_BYTES = 2048  # 256-byte widest rows -> 8-row chunks, so small stores have several chunks
CHUNK = 8
TIMESTEPS = np.array([999.0, 500.0, 1.0], dtype=np.float32)
FACTORS = {"shape": {"kind": "categorical", "carried": True}, "hue": {"kind": "continuous", "carried": False}}
ATTRS = {"config": {"model": {"family": "unet"}, "lisa": {"lambda": 0.2}}, "checkpoint": "runs/a/side",
         "checkpoint_hash": "abc123", "code_version": "0.1.0+gtest", "parameterization": "eps",
         "extract_args": {"timesteps": [999, 500, 1], "draws": 2}}


def make_test_layout(sample_id_dtype="str"):
    """All dataset kinds: a spatial and a token site, a residual, decoded scores, a decomposition, two factors."""
    return make_layout({"down.1": (8, 4, 4), "block.0": (6, 5)}, (2, 4, 4), FACTORS,
                       residual_shapes={"down.1": (8, 4, 4)}, decoded=True, decompose_sites=["down.1"],
                       sample_id_dtype=sample_id_dtype)


def make_rows(layout, start, stop):
    """Deterministic content of rows [start, stop): every value is a function of its row index."""
    rows = np.arange(start, stop)
    batch = {"meta/sample_id": [f"s{r // ROWS_PER_SAMPLE:03d}" for r in rows],
             "meta/t": TIMESTEPS[rows // N_DRAWS % N_T], "meta/noise_level": TIMESTEPS[rows // N_DRAWS % N_T] / 1000,
             "meta/draw": (rows % N_DRAWS).astype(np.int32),
             "meta/factors/shape": rows // ROWS_PER_SAMPLE % 3, "meta/factors/hue": (rows // ROWS_PER_SAMPLE) * 0.25}
    for name, fld in layout.items():
        if name not in batch:
            base = np.arange(np.prod(fld.shape)).reshape(fld.shape) * 0.01
            batch[name] = np.sin(rows.reshape(-1, *[1] * len(fld.shape)) * 0.37 + base).astype(np.float32)
    return batch


def write_store(path, layout=None, rows=range(N_ROWS), batch=BATCH, **kwargs):
    """Write ``rows`` of the deterministic content in batches; returns the final path."""
    layout = layout or make_test_layout()
    kwargs.setdefault("chunk_bytes", CHUNK_BYTES)
    with FeatureStoreWriter(path, layout, len(rows), ATTRS, **kwargs) as writer:
        for start in range(0, len(rows), batch):
            stop = min(start + batch, len(rows))
            writer.write_rows(start, make_rows(layout, rows[start], rows[start] + stop - start))
    return Path(path)


def h5_contents(path):
    """{dataset name: values} and root attrs of an HDF5 file."""
    with h5py.File(path, "r") as h5:
        data = {}
        h5.visititems(lambda name, obj: data.setdefault(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
        return data, dict(h5.attrs)


def assert_same_store(path_a, path_b):
    data_a, attrs_a = h5_contents(path_a)
    data_b, attrs_b = h5_contents(path_b)
    assert data_a.keys() == data_b.keys()
    for name in data_a:
        assert data_a[name].dtype == data_b[name].dtype, name
        np.testing.assert_array_equal(data_a[name], data_b[name], err_msg=name)
    assert attrs_a == attrs_b


@pytest.mark.parametrize("sample_id_dtype", ["str", "S8"])
def test_round_trip_all_dataset_kinds(tmp_path, sample_id_dtype):
    layout = make_test_layout(sample_id_dtype)
    path = write_store(tmp_path / "feats.h5", layout, batch=7)
    expected = make_rows(layout, 0, N_ROWS)
    store = FeatureStore(path)
    assert store.n_rows == N_ROWS and store.sites == ["down.1", "block.0"]
    assert store.attrs == {"schema_version": "1", **ATTRS}
    assert store.factors == {name: {**spec, "period": None, "levels": None} for name, spec in FACTORS.items()}
    for name, fld in layout.items():
        values = store.read(name)
        assert values.shape == (N_ROWS, *fld.shape), name
        if fld.is_string:
            assert list(values) == expected[name]
        else:
            assert values.dtype == np.dtype(fld.dtype), name
            np.testing.assert_array_equal(values, np.asarray(expected[name]).astype(fld.dtype), err_msg=name)
    with h5py.File(path, "r") as h5:
        assert h5.attrs["complete"] and h5.attrs["rows_done"] == N_ROWS
        assert h5["features/down.1"].dtype == np.float16 and h5["meta/draw"].dtype == np.int32
        assert h5["features/down.1"].compression == "lzf"
        assert h5["meta/factors/shape"].attrs["kind"] == "categorical" and h5["meta/factors/hue"].dtype == np.float32


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_compression_choices_round_trip(tmp_path, compression):
    path = write_store(tmp_path / "feats.h5", compression=compression)
    with h5py.File(path, "r") as h5:
        assert h5["features/down.1"].compression == (None if compression == "none" else compression)
    np.testing.assert_array_equal(FeatureStore(path).read("scores/full"), make_rows(make_test_layout(), 0, N_ROWS)
                                  ["scores/full"])


def test_chunks_are_about_one_mib(tmp_path):
    layout = validate_layout({**make_test_layout(), "features/big": ((64, 16, 16), "float16")})
    with h5py.File(write_store(tmp_path / "f.h5", layout, rows=range(100), batch=50, chunk_bytes=1 << 20), "r") as h5:
        assert h5["features/big"].chunks == (32, 64, 16, 16)  # 32 KiB rows -> 1 MiB chunks
        assert h5["meta/t"].chunks == (32,) and h5["meta/sample_id"].chunks == (32,)


def test_partial_file_until_close_and_refuse_overwrite(tmp_path):
    path = tmp_path / "feats.h5"
    layout = make_test_layout()
    with FeatureStoreWriter(path, layout, N_ROWS, ATTRS) as writer:
        writer.write_rows(0, make_rows(layout, 0, N_ROWS))
        assert partial_path(path).exists() and not path.exists()
    assert path.exists() and not partial_path(path).exists()
    with pytest.raises(FileExistsError, match=r"feats\.h5.*--overwrite"):
        FeatureStoreWriter(path, layout, N_ROWS, ATTRS)
    with FeatureStoreWriter(path, layout, N_ROWS, {**ATTRS, "checkpoint": "other"}, overwrite=True) as writer:
        writer.write_rows(0, make_rows(layout, 0, N_ROWS))
        assert FeatureStore(path).attrs["checkpoint"] == "runs/a/side"  # the old store stays until close
    assert FeatureStore(path).attrs["checkpoint"] == "other"


def test_interrupted_writer_keeps_partial_only(tmp_path):
    path = tmp_path / "feats.h5"
    layout = make_test_layout()
    with pytest.raises(KeyboardInterrupt), FeatureStoreWriter(path, layout, N_ROWS, ATTRS,
                                                              chunk_bytes=CHUNK_BYTES) as writer:
        for start in range(0, 3 * BATCH, BATCH):
            writer.write_rows(start, make_rows(layout, start, start + BATCH))
        assert (writer.rows_done, writer.next_row) == (CHUNK, 3 * BATCH)  # rows 8..11 wait for a full chunk
        raise KeyboardInterrupt
    assert partial_path(path).exists() and not path.exists()
    with pytest.raises(FileExistsError, match="--resume"):
        FeatureStoreWriter(path, layout, N_ROWS, ATTRS)
    writer = FeatureStoreWriter(path, layout, N_ROWS, ATTRS, resume=True)
    assert writer.rows_done == writer.next_row == CHUNK and writer.chunk_rows == CHUNK
    with pytest.raises(RuntimeError, match=f"{CHUNK}/{N_ROWS} rows"):
        writer.close()
    assert not path.exists()


def test_write_rows_checks_order_names_and_shapes(tmp_path):
    layout = make_test_layout()
    with pytest.raises(RuntimeError), FeatureStoreWriter(tmp_path / "f.h5", layout, N_ROWS, ATTRS) as writer:
        with pytest.raises(ValueError, match="in order"):
            writer.write_rows(4, make_rows(layout, 4, 8))
        with pytest.raises(ValueError, match="missing.*features/block.0"):
            writer.write_rows(0, {k: v for k, v in make_rows(layout, 0, 4).items() if k != "features/block.0"})
        with pytest.raises(ValueError, match="features/down.1: batch shape"):
            writer.write_rows(0, {**make_rows(layout, 0, 4), "features/down.1": np.zeros((4, 8, 4, 5))})
        with pytest.raises(TypeError):  # float -> int is not a same-kind cast
            writer.write_rows(0, {**make_rows(layout, 0, 4), "meta/draw": np.zeros(4)})
        assert writer.rows_done == 0


def test_layout_and_attrs_validation(tmp_path):
    layout = make_test_layout()
    with pytest.raises(ValueError, match="scores/main"):
        validate_layout({k: v for k, v in layout.items() if k != "scores/main"})
    with pytest.raises(ValueError, match="not part of"):
        validate_layout({**layout, "extra/x": ((1,), "float32")})
    with pytest.raises(ValueError, match="kind"):
        validate_layout({**layout, "meta/factors/size": ((), "float32", {"kind": "ordinal", "carried": True})})
    with pytest.raises(ValueError, match="parameterization"):
        FeatureStoreWriter(tmp_path / "f.h5", layout, N_ROWS, {**ATTRS, "parameterization": "x0"})
    with pytest.raises(ValueError, match="missing"):
        FeatureStoreWriter(tmp_path / "f.h5", layout, N_ROWS, {k: v for k, v in ATTRS.items() if k != "config"})


# ----------------------------------------------------------------------------- kill and resume
def run_child(mode, path, batches):
    """Start this file as a writer process that stops (or dies) after ``batches`` committed batches."""
    return subprocess.Popen([sys.executable, __file__, mode, str(path), str(batches)], stdout=subprocess.PIPE,
                            text=True)


def resume_and_finish(path):
    """Resume the unfinished store at ``path`` and write the remaining rows; returns rows_done found on resume."""
    layout = make_test_layout()
    with FeatureStoreWriter(path, layout, N_ROWS, ATTRS, resume=True) as writer:
        found = writer.rows_done
        for start in range(found, N_ROWS, BATCH):
            writer.write_rows(start, make_rows(layout, start, min(start + BATCH, N_ROWS)))
    return found


def test_sigkill_then_resume_is_identical(tmp_path):
    reference = write_store(tmp_path / "reference.h5")
    path = tmp_path / "feats.h5"
    child = run_child("stall", path, 3)
    assert child.stdout.readline().strip() == "stalled"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert partial_path(path).exists() and not path.exists()
    assert resume_and_finish(path) == 3 * BATCH // CHUNK * CHUNK
    assert_same_store(path, reference)


def test_rows_done_committed_only_after_data_flush(tmp_path):
    reference = write_store(tmp_path / "reference.h5")
    path = tmp_path / "feats.h5"
    child = run_child("die-before-commit", path, 2)
    child.wait()
    assert child.returncode == -signal.SIGKILL
    with h5py.File(partial_path(path), "r") as h5:
        assert h5.attrs["rows_done"] == 2 * CHUNK  # chunk 3 was flushed but not committed
        np.testing.assert_array_equal(h5["scores/full"][2 * CHUNK:3 * CHUNK],
                                      make_rows(make_test_layout(), 2 * CHUNK, 3 * CHUNK)["scores/full"])
    assert resume_and_finish(path) == 2 * CHUNK
    assert_same_store(path, reference)


@pytest.mark.parametrize("batches_seen", [1, 3, 6])
def test_sigkill_while_writing_always_resumes(tmp_path, batches_seen):
    """SIGKILL a writer that keeps writing (after it reported ``batches_seen`` batches, wherever it then is: a
    chunk write, a flush, a commit): the partial always resumes to the uninterrupted store (committed rows are
    copied into a rebuilt partial, so nothing written after the last commit matters)."""
    reference = write_store(tmp_path / "reference.h5")
    path = tmp_path / "feats.h5"
    child = run_child("loop", path, 0)
    for _ in range(batches_seen):
        child.stdout.readline()
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert partial_path(path).exists() and not path.exists()
    resume_and_finish(path)
    assert_same_store(path, reference)


def test_resume_refuses_other_attrs_or_layout(tmp_path):
    path = tmp_path / "feats.h5"
    layout = make_test_layout()
    with pytest.raises(KeyboardInterrupt), FeatureStoreWriter(path, layout, N_ROWS, ATTRS):
        raise KeyboardInterrupt
    before = partial_path(path).read_bytes()
    other_config = {**ATTRS, "config": {**ATTRS["config"], "lisa": {"lambda": 0.5}}}
    with pytest.raises(ValueError, match=r"attr 'config' differs \(keys \['lisa'\]\).*--overwrite"):
        FeatureStoreWriter(path, layout, N_ROWS, other_config, resume=True)
    with pytest.raises(ValueError, match="attr 'layout' differs"):
        FeatureStoreWriter(path, make_test_layout("S8"), N_ROWS, ATTRS, resume=True)
    with pytest.raises(ValueError, match="attr 'n_rows' differs"):
        FeatureStoreWriter(path, layout, N_ROWS + 1, ATTRS, resume=True)
    assert partial_path(path).read_bytes() == before  # a refused resume opens the partial read-only
    assert FeatureStoreWriter(path, layout, N_ROWS, ATTRS, resume=True).rows_done == 0


def test_resume_names_a_misshaped_dataset_and_its_shape(tmp_path):
    path = tmp_path / "feats.h5"
    with pytest.raises(KeyboardInterrupt), FeatureStoreWriter(path, make_test_layout(), N_ROWS, ATTRS):
        raise KeyboardInterrupt
    with h5py.File(partial_path(path), "r+") as h5:
        del h5["scores/main"]
        h5.create_dataset("scores/main", shape=(N_ROWS, 2, 4, 3), dtype=np.float32)
    with pytest.raises(StoreWriteError, match=rf"corrupt \(dataset scores/main: shape \({N_ROWS}, 2, 4, 3\), expected "
                                           rf"\({N_ROWS}, 2, 4, 4\)"):
        FeatureStoreWriter(path, make_test_layout(), N_ROWS, ATTRS, resume=True)


def test_check_finished_store_names_every_differing_attr(tmp_path):
    shard = write_store(tmp_path / "feats.h5", rows=range(12, 30), shard=(1, 2))
    check_finished_store(shard, make_test_layout(), 18, ATTRS, shard=(1, 2))  # the same extraction: no error
    other = {**ATTRS, "extract_args": {**ATTRS["extract_args"], "draws": 3}}
    with pytest.raises(ValueError, match=r"made by another extraction: attr '(extract_args|n_rows)'") as error:
        check_finished_store(shard, make_test_layout(), 24, other, shard=(1, 2))
    assert "attr 'extract_args' differs (keys ['draws'])" in str(error.value)
    assert "attr 'n_rows' differs: file has '18', now '24'" in str(error.value)
    with pytest.raises(ValueError, match="attr 'shard_rank' differs: file has '1', now '0'"):
        check_finished_store(shard, make_test_layout(), 18, ATTRS, shard=(0, 2))
    with pytest.raises(ValueError, match="not a lisa_probe feature store"):
        check_finished_store(tmp_path / "missing.h5", make_test_layout(), 18, ATTRS)


def test_resume_of_corrupt_partial_suggests_overwrite(tmp_path):
    path = tmp_path / "feats.h5"
    partial_path(path).write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    with pytest.raises(StoreWriteError, match="cannot resume.*corrupt.*--overwrite"):
        FeatureStoreWriter(path, make_test_layout(), N_ROWS, ATTRS, resume=True)
    write_store(path, overwrite=True)
    assert FeatureStore(path).n_rows == N_ROWS


# ----------------------------------------------------------------------------- shards
def write_shards(tmp_path, world_size):
    """One shard per rank, splitting the samples with shard_range; returns the shard paths."""
    paths = []
    for rank in range(world_size):
        samples = shard_range(N_SAMPLES, rank, world_size)
        rows = range(samples.start * ROWS_PER_SAMPLE, samples.stop * ROWS_PER_SAMPLE)
        paths.append(write_store(shard_path(tmp_path / "feats.h5", rank, world_size), rows=rows,
                                 shard=(rank, world_size)))
    return paths


def test_shard_path_and_range():
    assert shard_path("out/feats.h5", 1, 4) == Path("out/feats.shard-1-of-4.h5")
    ranges = [shard_range(10, rank, 3) for rank in range(3)]
    assert [list(r) for r in ranges] == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]


def test_merge_shards_equals_single_write(tmp_path):
    reference = write_store(tmp_path / "reference.h5")
    shards = write_shards(tmp_path, 3)
    merged = merge_shards(shards[::-1], tmp_path / "merged.h5", chunk_rows=4)
    assert_same_store(merged, reference)
    as_one = FeatureStore([shards[2], shards[0], shards[1]])
    assert as_one.n_rows == N_ROWS and "shard_rank" not in as_one.attrs
    rows = np.array([29, 0, 13, 7, 7])
    np.testing.assert_array_equal(as_one.read("features/down.1", rows), FeatureStore(reference).read(
        "features/down.1", rows))
    with pytest.raises(FileExistsError):
        merge_shards(shards, merged)


def test_shards_must_belong_together(tmp_path):
    shards = write_shards(tmp_path, 2)
    with pytest.raises(ValueError, match="ranks 0..1"):
        FeatureStore([shards[1], shards[1]])
    other = write_store(tmp_path / "other.h5", rows=range(18, 30), shard=(1, 2), compression="none",
                        layout=make_test_layout("S8"))
    with pytest.raises(ValueError, match="differ in attr 'layout'"):
        merge_shards([shards[0], other], tmp_path / "merged.h5")


# ----------------------------------------------------------------------------- one writer, checked data
def test_a_second_writer_of_the_same_output_is_refused(tmp_path):
    """Even with overwrite, a second writer of an output being written is refused before it opens anything; the
    first finishes a readable store, and the lock goes with it."""
    path = tmp_path / "feats.h5"
    layout = make_test_layout()
    with FeatureStoreWriter(path, layout, N_ROWS, ATTRS, chunk_bytes=CHUNK_BYTES) as first:
        first.write_rows(0, make_rows(layout, 0, 2 * CHUNK))
        before = partial_path(path).read_bytes()
        for options in ({"overwrite": True}, {"resume": True}, {}):
            with pytest.raises(OutputBusyError, match=rf"being written by another process \(pid {os.getpid()} on "
                                                      rf".*lock {lock_path(path)}\)"):
                FeatureStoreWriter(path, layout, N_ROWS, ATTRS, **options)
        assert partial_path(path).read_bytes() == before
        for start in range(2 * CHUNK, N_ROWS, BATCH):
            first.write_rows(start, make_rows(layout, start, min(start + BATCH, N_ROWS)))
    assert_same_store(path, write_store(tmp_path / "reference.h5"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feats.h5", "reference.h5"]
    write_store(path, overwrite=True)  # the lock is gone with the first writer


def test_data_that_reads_back_different_is_not_published(tmp_path):
    """A chunk lost on the way to disk (here: overwritten behind the writer's back) fails the read-back check at
    close: the store keeps its partial name, and resuming it is refused."""
    path = tmp_path / "feats.h5"
    layout = make_test_layout()
    with pytest.raises(StoreWriteError, match="dataset scores/main reads back different.*not published"):
        with FeatureStoreWriter(path, layout, N_ROWS, ATTRS, chunk_bytes=CHUNK_BYTES) as writer:
            for start in range(0, N_ROWS, BATCH):
                writer.write_rows(start, make_rows(layout, start, min(start + BATCH, N_ROWS)))
                if start + BATCH == CHUNK:  # the first chunk is on disk
                    writer._file["scores/main"][:CHUNK] = 0.0
    assert not path.exists() and partial_path(path).exists()
    with pytest.raises(StoreWriteError, match="corrupt.*failed its read-back check.*--overwrite"):
        FeatureStoreWriter(path, layout, N_ROWS, ATTRS, resume=True)
    write_store(path, overwrite=True)
    with h5py.File(path, "r") as h5:  # a published store carries its digests
        assert all(len(h5[name].attrs[DIGEST_ATTR]) == 64 for name in layout)


def test_a_kill_while_the_file_is_created_leaves_no_partial(tmp_path):
    """The partial's structure is built under another name: a kill part way leaves nothing that --resume would
    choke on; the next run (with --resume or without) starts afresh."""
    path = tmp_path / "feats.h5"
    child = run_child("die-in-create", path, 0)
    child.wait()
    assert child.returncode == -signal.SIGKILL
    assert not partial_path(path).exists() and not path.exists()
    assert resume_and_finish(path) == 0
    assert_same_store(path, write_store(tmp_path / "reference.h5"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feats.h5", "reference.h5"]


def test_a_kill_before_the_first_commit_leaves_nothing_that_blocks_a_plain_rerun(tmp_path):
    """Killed after the partial was made but before any row was committed: the partial holds nothing, so a rerun
    without --resume or --overwrite replaces it instead of refusing."""
    path = tmp_path / "feats.h5"
    child = run_child("die-before-commit", path, 0)
    child.wait()
    assert child.returncode == -signal.SIGKILL and partial_path(path).exists()
    write_store(path)
    assert_same_store(path, write_store(tmp_path / "reference.h5"))


@pytest.mark.slow
def test_a_full_disk_never_publishes_a_store(tmp_path):
    """The disk fills up (a file-size limit on the writer process) at points from early to the very end: the
    writer reports it, nothing is published, and the partial resumes to the right store once there is room, or is
    refused with --overwrite named."""
    reference = write_store(tmp_path / "reference.h5")
    size = reference.stat().st_size
    outcomes = []
    for fraction in (0.2, 0.5, 0.7, 0.85, 0.95, 0.999, 1.01):
        path = tmp_path / f"full-{fraction}.h5"
        child = run_child("full-disk", path, int(size * fraction))
        out, _ = child.communicate(timeout=60)
        if fraction > 1:  # room enough: the limit itself is not what fails
            assert child.returncode == 0 and out.strip() == "written", out
            assert_same_store(path, reference)
            continue
        assert child.returncode == 3 and "is the disk full?" in out and "not published" in out, out
        assert not path.exists()
        try:
            resume_and_finish(path)
        except StoreWriteError as error:
            assert "--overwrite" in str(error)
            outcomes.append("refused")
        else:
            assert_same_store(path, reference)
            outcomes.append("resumed")
    assert "resumed" in outcomes  # failures before the last commit resume


def child_main(mode, path, batches):
    """Writer process for the kill tests: ``stall`` after ``batches`` batches; ``die-before-commit`` kills itself
    after flushing chunk ``batches + 1`` but before committing it; ``loop`` writes slowly until killed;
    ``die-in-create`` kills itself while the file's datasets are created; ``full-disk`` writes the whole store
    under a file-size limit of ``batches`` bytes (Python ignores SIGXFSZ, so a write past it fails with EFBIG, as
    on a full disk) and exits 3 with the writer's error."""
    if mode == "full-disk":
        resource.setrlimit(resource.RLIMIT_FSIZE, (batches, batches))
        try:
            write_store(path)
        except StoreWriteError as error:
            print(error, flush=True)
            sys.exit(3)
        print("written", flush=True)
        return
    if mode == "die-in-create":
        create = h5py.Group.create_dataset

        def create_or_die(group, name, *args, **kwargs):
            if len(group.file) == 3:  # part way through the datasets
                os.kill(os.getpid(), signal.SIGKILL)
            return create(group, name, *args, **kwargs)

        h5py.Group.create_dataset = create_or_die
    layout = make_test_layout()
    writer = FeatureStoreWriter(path, layout, N_ROWS, ATTRS, chunk_bytes=CHUNK_BYTES)
    commit = writer._commit

    def commit_or_die(rows_done):
        if mode == "die-before-commit" and rows_done > batches * CHUNK:
            os.kill(os.getpid(), signal.SIGKILL)
        commit(rows_done)

    writer._commit = commit_or_die
    for start in range(0, N_ROWS, BATCH):
        if mode == "stall" and start == batches * BATCH:
            print("stalled", flush=True)
            time.sleep(60)
        writer.write_rows(start, make_rows(layout, start, min(start + BATCH, N_ROWS)))
        if mode == "loop":
            print(start, flush=True)
            time.sleep(0.02)


if __name__ == "__main__":
    child_main(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]))
