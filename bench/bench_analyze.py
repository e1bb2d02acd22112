"""Benchmark the streamed alignment analysis of ``lisa_probe.analyze``: time and peak memory against store size.

    python bench/bench_analyze.py [--rows 2000 8000 32000] [--feature 64 16 16] [--score 3 32 32] [--dir DIR]
    python bench/bench_analyze.py --rows 2000 32000 250000 1000000 --feature 16 4 4 --score 1 8 8   # flat memory

Writes one synthetic store per row count (one site of float16 features, float32 target / main / full / decoded
scores, 8 timesteps, lzf, as ``lisa_probe.extract`` writes them), then runs ``open_run`` + ``stream_run`` +
``alignment_table`` on it in a fresh child process and reports the child's wall time, its RSS after the imports,
its peak RSS (``ru_maxrss``) over ``open_run`` and the pass, that peak against the first row count's, and the bytes
of the per-row summaries the pass keeps. The streamed accumulators do not grow with the rows, and the summaries are
kept for the summary sample only (``--summary-rows``, 20,000 rows by default), so peak memory is flat in the rows.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lisa_probe.store import FeatureStoreWriter, make_layout

ATTRS = {"config": {}, "checkpoint": "bench/controlnet", "checkpoint_hash": "", "code_version": "bench",
         "parameterization": "eps", "extract_args": {}, "lisa_site": "mid"}
TIMESTEPS = np.linspace(50, 950, 8, dtype=np.float32)
POOL = 512  # distinct rows generated, cycled through the store
BATCH = 256


def write_store(path: Path, rows: int, feature: tuple[int, ...], score: tuple[int, ...]) -> float:
    """A synthetic store of ``rows`` rows (sample-major, 8 timesteps per sample); returns its size in MB."""
    rng = np.random.default_rng(0)
    layout = make_layout({"mid": feature}, score, {"kind": {"kind": "categorical", "carried": True}}, decoded=True)
    pool = {"features/mid": rng.standard_normal((POOL, *feature), dtype=np.float32).astype(np.float16),
            **{f"scores/{kind}": rng.standard_normal((POOL, *score), dtype=np.float32)
               for kind in ("target", "main", "full", "decoded")}}
    with FeatureStoreWriter(path, layout, rows, ATTRS) as writer:
        for start in range(0, rows, BATCH):
            index = np.arange(start, min(start + BATCH, rows))
            sample = index // len(TIMESTEPS)
            batch = {name: values[index % POOL] for name, values in pool.items()}
            batch.update({"meta/sample_id": [f"s{i:06d}" for i in sample], "meta/t": TIMESTEPS[index % len(TIMESTEPS)],
                          "meta/noise_level": np.ones(len(index), np.float32),
                          "meta/draw": np.zeros(len(index), np.int32), "meta/factors/kind": sample % 4})
            writer.write_rows(start, batch)
    return path.stat().st_size / 1e6


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(store: str, chunk_rows: int | None) -> None:
    """Run the streamed alignment analysis on ``store`` and print a JSON line of measurements."""
    from threadpoolctl import threadpool_limits

    from lisa_probe.analysis.config import AnalyzeOptions
    from lisa_probe.analysis.report.selection import open_run
    from lisa_probe.analysis.report.streaming import stream_run
    from lisa_probe.analysis.report.tables import alignment_table

    options = AnalyzeOptions(chunk_rows=chunk_rows)
    before = peak_rss_mb()
    start = time.perf_counter()
    with threadpool_limits(limits=1, user_api="blas"):  # as ``analyze`` runs it
        run = open_run(store, "bench", options)
        streamed = stream_run(run, options)
        table = alignment_table(run, streamed, options)
    seconds = time.perf_counter() - start
    summaries = sum(a.nbytes for group in (streamed.pooled, streamed.coarse, streamed.add_one_in)
                    for a in group.values()) + streamed.effect.nbytes
    print(json.dumps({"seconds": seconds, "rss_before": before, "peak_rss": peak_rss_mb(),
                      "summaries_mb": summaries / 1e6, "table_rows": len(table)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[2000, 8000, 32000])
    parser.add_argument("--feature", type=int, nargs="+", default=[64, 16, 16], help="feature row shape")
    parser.add_argument("--score", type=int, nargs=3, default=[3, 32, 32], help="score row shape (C, H, W)")
    parser.add_argument("--dir", help="where to write the stores (default: a temporary directory)")
    parser.add_argument("--chunk-rows", type=int, help="analyze's --chunk-rows (default: ~16 MiB of rows)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.chunk_rows)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        print(f"feature {tuple(args.feature)} float16, scores 4 × {tuple(args.score)} float32, lzf, "
              f"chunks of {args.chunk_rows or '~16 MiB of'} rows")
        print(f"{'rows':>7} {'store MB':>9} {'seconds':>8} {'RSS after imports MB':>21} {'peak RSS MB':>12} "
              f"{'peak / first':>13} {'summaries MB':>13}")
        first = None
        for rows in args.rows:
            path = Path(tmp) / f"bench-{rows}.h5"
            size = write_store(path, rows, tuple(args.feature), tuple(args.score))
            chunk = ["--chunk-rows", str(args.chunk_rows)] if args.chunk_rows else []
            result = subprocess.run([sys.executable, __file__, "--child", str(path), *chunk], capture_output=True,
                                    text=True, check=True)
            m = json.loads(result.stdout.strip().splitlines()[-1])
            first = first or m["peak_rss"]
            print(f"{rows:>7} {size:>9.0f} {m['seconds']:>8.1f} {m['rss_before']:>21.0f} {m['peak_rss']:>12.0f} "
                  f"{m['peak_rss'] / first:>13.3f} {m['summaries_mb']:>13.1f}", flush=True)
            path.unlink()


if __name__ == "__main__":
    main()
