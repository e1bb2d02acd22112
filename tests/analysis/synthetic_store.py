"""A synthetic feature store with known answers, shared by the analysis tests."""

from pathlib import Path

import numpy as np
import pandas as pd

from lisa_probe.analysis.alignment import resample_to
from lisa_probe.analysis.config import AnalyzeOptions
from lisa_probe.store import FeatureStoreWriter, make_layout

N_SAMPLES, TIMESTEPS, SCORE = 100, (100.0, 700.0), (1, 8, 8)
DECOMPOSE = {"spatial": 0.25, "pooled": 0.75}  # decompose/<site> = main + share · (full − main)
FAST = AnalyzeOptions(umap=False, dci_importance="lasso", pca_components=4, jobs=1)


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



def values(table: pd.DataFrame, **equal) -> np.ndarray:
    mask = np.logical_and.reduce([table[column] == value for column, value in equal.items()])
    return table.loc[mask, "value"].to_numpy()
