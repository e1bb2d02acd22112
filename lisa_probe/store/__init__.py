"""HDF5 feature store (schema in ``schema.py`` and docs/DESIGN.md, "Feature store"): one row per (sample, timestep,
noise draw) with meta, hooked features and predictions; written by ``FeatureStoreWriter``, read by ``FeatureStore``.
"""

from lisa_probe.store.reader import FeatureDataset, FeatureStore
from lisa_probe.store.schema import SCHEMA_VERSION, Field, make_layout, validate_layout
from lisa_probe.store.writer import FeatureStoreWriter, merge_shards, partial_path, shard_path, shard_range

__all__ = [
    "SCHEMA_VERSION",
    "FeatureDataset",
    "FeatureStore",
    "FeatureStoreWriter",
    "Field",
    "make_layout",
    "merge_shards",
    "partial_path",
    "shard_path",
    "shard_range",
    "validate_layout",
]
