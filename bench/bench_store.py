"""Benchmark the feature store per compression: write/read MB/s and bytes per row on a realistic float16 block.

    python bench/bench_store.py [--rows 2048] [--batch 64] [--shape 64 16 16] [--dir DIR]

Feature content kinds: ``gaussian`` (i.i.d. normal, the incompressible worst case), ``silu`` (spatially smooth
fields through SiLU, like a conv block's output) and ``relu`` (the same through ReLU: half exact zeros). Scores are
normal float32 (4×8×8 × 3). Write MB/s counts the raw bytes of all datasets over the whole write, close included;
read MB/s is a full read of the feature dataset.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from lisa_probe.store import FeatureStore, FeatureStoreWriter, make_layout

ATTRS = {"config": {}, "checkpoint": "bench", "checkpoint_hash": "", "code_version": "bench",
         "parameterization": "eps", "extract_args": {}}
SCORE_SHAPE = (4, 8, 8)


def feature_rows(kind: str, n: int, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """``(n, *shape)`` float16 feature rows of the given content kind."""
    x = rng.standard_normal((n, *shape), dtype=np.float32)
    if kind != "gaussian":
        for axis in (-1, -2):  # 3-tap box blur along H and W: neighbouring pixels correlate
            x = (x + np.roll(x, 1, axis) + np.roll(x, -1, axis)) / np.sqrt(3)
        x = x / (1 + np.exp(-x)) if kind == "silu" else np.maximum(x, 0)
    return x.astype(np.float16)


def batches(layout: dict, rows: int, batch: int, features: np.ndarray, scores: np.ndarray):
    """Yield ``(start, batch dict)`` covering ``rows`` rows, cycling through the ``features`` / ``scores`` pools."""
    for start in range(0, rows, batch):
        n = min(batch, rows - start)
        index = np.arange(start, start + n) % len(features)
        data = {"meta/sample_id": [f"s{i}" for i in range(start, start + n)],
                "meta/t": np.full(n, 500.0, np.float32), "meta/noise_level": np.full(n, 0.5, np.float32),
                "meta/draw": np.zeros(n, np.int32), "features/mid": features[index]}
        data.update({name: scores[(index + i) % len(scores)] for i, name in enumerate(("scores/target",
                     "scores/main", "scores/full"))})
        yield start, data


def bench_one(path: Path, compression: str, rows: int, batch: int, features: np.ndarray,
              scores: np.ndarray) -> dict[str, float]:
    """Write and read back one store; returns write/read MB/s and on-disk / raw bytes per row."""
    layout = make_layout({"mid": features.shape[1:]}, SCORE_SHAPE, {})
    raw_row = sum(fld.row_nbytes for fld in layout.values())
    begin = time.perf_counter()
    with FeatureStoreWriter(path, layout, rows, ATTRS, compression=compression, overwrite=True) as writer:
        for start, data in batches(layout, rows, batch, features, scores):
            writer.write_rows(start, data)
    write_s = time.perf_counter() - begin
    begin = time.perf_counter()
    FeatureStore(path).read("features/mid")
    read_s = time.perf_counter() - begin
    feature_bytes = rows * layout["features/mid"].row_nbytes
    return {"write_mb_s": rows * raw_row / write_s / 1e6, "read_mb_s": feature_bytes / read_s / 1e6,
            "bytes_per_row": path.stat().st_size / rows, "raw_bytes_per_row": raw_row}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2048, help="rows written per compression (%(default)s)")
    parser.add_argument("--batch", type=int, default=64, help="rows per write call (%(default)s)")
    parser.add_argument("--shape", type=int, nargs="+", default=[64, 16, 16], help="row shape (%(default)s)")
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary directory)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((256, *SCORE_SHAPE), dtype=np.float32)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        print("| content | compression | write MB/s | read MB/s | bytes/row | raw bytes/row | ratio |")
        print("|---|---|---|---|---|---|---|")
        for kind in ("gaussian", "silu", "relu"):
            features = feature_rows(kind, 256, tuple(args.shape), rng)
            for compression in ("none", "lzf", "gzip"):
                path = Path(tmp) / f"{kind}-{compression}.h5"
                r = bench_one(path, compression, args.rows, args.batch, features, scores)
                print(f"| {kind} | {compression} | {r['write_mb_s']:.0f} | {r['read_mb_s']:.0f} | "
                      f"{r['bytes_per_row']:.0f} | {r['raw_bytes_per_row']} | "
                      f"{r['bytes_per_row'] / r['raw_bytes_per_row']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
