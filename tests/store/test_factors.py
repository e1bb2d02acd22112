"""``store.factors.add_factors``: new factor columns by sample id, every other dataset and attr kept bit for bit, the
old store untouched on every refusal and on a failed write."""

import json

import h5py
import numpy as np
import pytest

from lisa_probe.store import FeatureStore
from lisa_probe.store.factors import FACTOR_SOURCES_ATTR, add_factors
from lisa_probe.store.writer import StoreWriteError
from tests.analysis.synthetic_store import N_SAMPLES, write_synthetic

SPECS = {"parity": {"kind": "categorical", "carried": True, "levels": ["even", "odd"]},
         "scale": {"kind": "continuous", "carried": False}}


def values_for(sample_ids):
    """parity and scale of every sample id ``sNNN``: parity NNN % 2, scale NNN / 10."""
    return {"parity": {sid: int(sid[1:]) % 2 for sid in sample_ids}, "scale": {sid: int(sid[1:]) / 10
                                                                              for sid in sample_ids}}


def contents(path):
    with h5py.File(path, "r") as h5:
        data = {}
        h5.visititems(lambda name, node: data.__setitem__(name, node[()]) if isinstance(node, h5py.Dataset) else None)
        return data


def test_factors_land_on_every_row_and_the_rest_is_kept(tmp_path):
    path = write_synthetic(tmp_path / "s.h5", with_factors=False)
    before, attrs_before = contents(path), FeatureStore(path).attrs
    ids = [f"s{i:03d}" for i in range(N_SAMPLES)]
    add_factors(path, SPECS, values_for(ids), {"source": "t.csv"}, progress=False)
    store = FeatureStore(path)
    sample_ids = store.read("meta/sample_id").astype(str)
    np.testing.assert_array_equal(store.read("meta/factors/parity"), [int(s[1:]) % 2 for s in sample_ids])
    np.testing.assert_allclose(store.read("meta/factors/scale"), [int(s[1:]) / 10 for s in sample_ids], rtol=1e-6)
    assert store.factors["parity"] == {"kind": "categorical", "carried": True, "period": None,
                                       "levels": ("even", "odd")}
    assert store.factors["scale"]["kind"] == "continuous" and not store.factors["scale"]["carried"]
    after = contents(path)
    for name, array in before.items():
        np.testing.assert_array_equal(after[name], array, err_msg=name)
    attrs = store.attrs
    assert json.loads(attrs.pop(FACTOR_SOURCES_ATTR)) == {"parity": {"source": "t.csv"}, "scale": {"source": "t.csv"}}
    assert attrs == attrs_before


def test_refusals_leave_the_store_untouched(tmp_path):
    path = write_synthetic(tmp_path / "s.h5")
    stamp = path.stat().st_mtime_ns
    ids = [f"s{i:03d}" for i in range(N_SAMPLES)]
    with pytest.raises(ValueError, match="already has factor.*encoded.*--replace"):
        add_factors(path, {"encoded": SPECS["scale"]}, {"encoded": values_for(ids)["scale"]}, {}, progress=False)
    with pytest.raises(ValueError, match=r"factor 'parity': 1 of the store's sample ids have no value, e\.g\. 's007'"):
        add_factors(path, SPECS, values_for([i for i in ids if i != "s007"]), {}, progress=False)
    with pytest.raises(ValueError, match="categorical: its values must be class codes"):
        add_factors(path, {"parity": SPECS["parity"]}, {"parity": values_for(ids)["scale"]}, {}, progress=False)
    with pytest.raises(ValueError, match="non-finite"):
        add_factors(path, {"scale": SPECS["scale"]}, {"scale": dict.fromkeys(ids, float("nan"))}, {}, progress=False)
    assert path.stat().st_mtime_ns == stamp and sorted(p.name for p in tmp_path.iterdir()) == ["s.h5"]


def test_replace_swaps_a_factor_and_keeps_the_others(tmp_path):
    path = write_synthetic(tmp_path / "s.h5")
    old_random = FeatureStore(path).read("meta/factors/random")
    ids = [f"s{i:03d}" for i in range(N_SAMPLES)]
    add_factors(path, {"encoded": SPECS["scale"]}, {"encoded": values_for(ids)["scale"]}, {"source": "a"},
                replace=True, progress=False)
    store = FeatureStore(path)
    assert store.factors["encoded"]["kind"] == "continuous"
    np.testing.assert_array_equal(store.read("meta/factors/random"), old_random)


def test_a_failed_write_keeps_the_old_store(tmp_path, monkeypatch):
    """A write that reads back different is not published: the old store stays whole under its name."""
    path = write_synthetic(tmp_path / "s.h5", with_factors=False)
    before = contents(path)
    import lisa_probe.store.writer as writer_module

    def corrupt(path_, names, chunk_rows):
        raise OSError(f"{path_} failed its read-back check: dataset scores/main reads back different")

    monkeypatch.setattr(writer_module, "verify_digests", corrupt)
    ids = [f"s{i:03d}" for i in range(N_SAMPLES)]
    with pytest.raises(StoreWriteError, match="not published"):
        add_factors(path, SPECS, values_for(ids), {}, progress=False)
    after = contents(path)
    assert after.keys() == before.keys() and FeatureStore(path).factors == {}
