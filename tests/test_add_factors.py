"""``python -m lisa_probe.add_factors``: factors from a table by sample id (whole or its last part) and from the
captioned dataset a store was extracted from; bad input is one line, exit 2, and the store is left as it was."""

import json
import re
import shutil

import datasets
import numpy as np
import pytest

from lisa_probe.add_factors import main
from lisa_probe.provenance import file_digest
from lisa_probe.store import FeatureStore
from lisa_probe.store.factors import FACTOR_SOURCES_ATTR


@pytest.fixture
def shapes_store(foreign_stores, tmp_path):
    return shutil.copy(foreign_stores["shapes"], tmp_path / "shapes.h5")


def test_factors_from_a_csv_matched_by_the_last_part_of_the_sample_id(shapes_store, tmp_path, capsys):
    ids = sorted(set(FeatureStore(shapes_store).read("meta/sample_id").astype(str)))
    table = tmp_path / "labels.csv"
    rows = [(sample_id.rsplit("/", 1)[-1], "odd" if index % 2 else "even", index * 0.25)
            for index, sample_id in enumerate(ids)] + [("999999", "even", 1.0)]  # a row of no sample: fine
    table.write_text("sample_id,parity,weight\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows))
    assert main([str(shapes_store), "--table", str(table), "--factor-columns", "parity,weight",
                 "--carried-factors", "parity"]) == 0
    assert "added parity (categorical, 2 levels, carried), weight (continuous)" in capsys.readouterr().out
    store = FeatureStore(shapes_store)
    by_id = {sample_id: index for index, sample_id in enumerate(ids)}
    row_index = np.array([by_id[s] for s in store.read("meta/sample_id").astype(str)])
    np.testing.assert_array_equal(store.read("meta/factors/parity"), row_index % 2)  # levels sorted: even, odd
    np.testing.assert_allclose(store.read("meta/factors/weight"), row_index * 0.25)
    assert store.factors["parity"]["levels"] == ("even", "odd") and store.factors["parity"]["carried"]
    assert "kind" in store.factors and "size" in store.factors  # the store's own factors are kept
    source = json.loads(store.attrs[FACTOR_SOURCES_ATTR])["weight"]
    assert source == {"source": "labels.csv", "sha256": file_digest(table), "id_column": "sample_id"}


def test_factors_from_the_captioned_dataset_of_the_store(foreign_stores, captioned_data, tmp_path):
    """--from-data reads the columns of the dataset named by the store's config (its data_root is relative to the
    store's directory, so the copy sits beside the original)."""
    path = foreign_stores["captioned"].with_name(f"copy-{tmp_path.name}.h5")
    shutil.copy(foreign_stores["captioned"], path)
    try:
        assert main([str(path), "--from-data", "--factor-columns", "colour,size", "--carried-factors", "size"]) == 0
        store = FeatureStore(path)
        table = datasets.load_dataset(str(captioned_data))["train"]
        rows = [int(s.rsplit("-", 1)[1]) for s in store.read("meta/sample_id").astype(str)]
        levels = sorted(set(table["colour"]))
        assert store.factors["colour"]["levels"] == tuple(levels) and not store.factors["colour"]["carried"]
        np.testing.assert_array_equal(store.read("meta/factors/colour"),
                                      [levels.index(table["colour"][r]) for r in rows])
        np.testing.assert_allclose(store.read("meta/factors/size"), [table["size"][r] for r in rows], rtol=1e-6)
        assert store.factors["size"]["carried"] and store.factors["size"]["kind"] == "continuous"
    finally:
        path.unlink(missing_ok=True)


@pytest.mark.parametrize("argv, message", [
    (["--table", "{table}", "--factor-columns", "nope"], "column 'nope' is not in .*labels.csv; its columns: "
                                                         "sample_id, parity"),
    (["--table", "{table}", "--factor-columns", "parity", "--id-column", "file"], "id column 'file' is not in"),
    (["--table", "{partial}", "--factor-columns", "parity"], r"1 of the store's 12 samples have no row in .*e\.g\."),
    (["--table", "{table}", "--factor-columns", "parity", "--carried-factors", "size"],
     "--carried-factors size not among --factor-columns parity"),
    (["--table", "{table}", "--factor-columns", "kind"], "already has factor.*kind.*--replace"),
    (["--from-data", "--factor-columns", "parity"], "--from-data reads a captioned dataset; .* 'shapes' data"),
    (["--table", "{tmp}/missing.csv", "--factor-columns", "parity"], "missing.csv does not exist"),
])
def test_bad_input_is_one_line_and_leaves_the_store(shapes_store, tmp_path, capsys, argv, message):
    ids = sorted(set(FeatureStore(shapes_store).read("meta/sample_id").astype(str)))
    table, partial = tmp_path / "labels.csv", tmp_path / "partial.csv"
    table.write_text("sample_id,parity\n" + "".join(f"{s},{i % 2}\n" for i, s in enumerate(ids)))
    partial.write_text("sample_id,parity\n" + "".join(f"{s},{i % 2}\n" for i, s in enumerate(ids[1:])))
    if "kind" in argv:
        table.write_text("sample_id,kind\n" + "".join(f"{s},{i % 2}\n" for i, s in enumerate(ids)))
    stamp, files = shapes_store.stat().st_mtime_ns, sorted(tmp_path.iterdir())
    argv = [arg.format(table=table, partial=partial, tmp=tmp_path) for arg in argv]
    with pytest.raises(SystemExit) as stop:
        main([str(shapes_store), *argv])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.strip().splitlines()[-1]) > 0
    assert re.search(message, err), err
    assert shapes_store.stat().st_mtime_ns == stamp and sorted(tmp_path.iterdir()) == files
