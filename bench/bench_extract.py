"""Benchmark the extraction: forward passes alone vs forward passes + writing the feature store, per compression.

    python bench/bench_extract.py [--rows 384] [--batch 32] [--repeats 3] [--families unet dit] [--threads 1]

For the ``small`` presets at 32 px (unet + eps, dit + flow; side nets with perturbed zero modules so that residuals
and ``pred_full - pred_main`` are not zero), in one process: ``forward`` times ``Extractor.rows`` over all rows
(data, noise, side + main + main-alone passes, hooks, copies to numpy) without writing; ``write/<compression>``
times the extraction's own write loop (``lisa_probe.extract.write_rows``) into a ``FeatureStoreWriter``, close and
rename included. Default extraction settings otherwise (all sites, float16 features, 8 timesteps, 1 draw). Modes
are interleaved and each is repeated ``--repeats`` times; the best counts. Times are CPU seconds of this process (one
torch thread by default), so that other jobs on the shared cores disturb the comparison less than wall time would.
Bytes per row are the final file's size over its rows. Prints a markdown table; the goal is writing overhead <= 10%
over the forward passes with extract's default compression (``--compression``, none).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from lisa_probe.data import build_dataset
from lisa_probe.diffusion.parameterization import Parameterization
from lisa_probe.extraction.config import ExtractConfig
from lisa_probe.extraction.extractor import Extractor, parse_sites, parse_timesteps, write_rows
from lisa_probe.models import build_main, build_side, make_dual_branch
from lisa_probe.models.build import null_context_for
from lisa_probe.store import FeatureStoreWriter
from lisa_probe.store.schema import COMPRESSIONS

PREDICTION = {"unet": "eps", "dit": "flow"}
ATTRS = {"config": {}, "checkpoint": "bench", "checkpoint_hash": "", "code_version": "bench",
         "extract_args": {}}
DEFAULT_COMPRESSION = ExtractConfig.__dataclass_fields__["compression"].default


def make_extractor(family: str, rows: int, batch: int) -> Extractor:
    """An Extractor over the small preset of ``family`` at 32 px with ``rows`` rows (8 timesteps, 1 draw)."""
    main = build_main(family, "small", 32, seed=0)
    side = build_side(main, family, cond_channels=1, seed=0)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in side.parameters():
            parameter.add_(0.02 * torch.randn(parameter.shape, generator=generator))
    model = make_dual_branch(family, main, side, Parameterization(PREDICTION[family]), null_context_for(main, family))
    model.eval()
    config = ExtractConfig(out="bench.h5", controlnet="bench", main="bench", samples=rows // 8, timesteps="8",
                           batch_size=batch)
    dataset = build_dataset("shapes", split="val", resolution=32)
    return Extractor(model, None, dataset, parse_sites("all", model), parse_timesteps("8", model), config)


def time_forward(extractor: Extractor) -> float:
    """CPU seconds to compute every row block without writing."""
    batch = extractor.config.batch_size
    begin = time.process_time()
    for start in range(0, extractor.n_rows, batch):
        extractor.rows(range(start, min(start + batch, extractor.n_rows)), None)
    return time.process_time() - begin


def time_write(extractor: Extractor, path: Path, compression: str) -> tuple[float, int]:
    """(CPU seconds, file bytes) of the extraction's write loop into a fresh store at ``path``."""
    parameterization = extractor.model.parameterization.prediction_type
    begin = time.process_time()
    with FeatureStoreWriter(path, extractor.layout(None), extractor.n_rows, ATTRS | {"parameterization":
                            parameterization}, compression=compression, overwrite=True) as writer, \
            tqdm(total=extractor.n_rows, disable=True) as progress:
        write_rows(writer, extractor, range(extractor.n_rows), None, progress)
    return time.process_time() - begin, path.stat().st_size


def bench_family(family: str, rows: int, batch: int, repeats: int, directory: Path) -> list[dict]:
    """Best-of-``repeats`` rows per CPU second and bytes per row, forward-only and per compression (interleaved)."""
    extractor = make_extractor(family, rows, batch)
    extractor.rows(range(batch), None)  # warm-up
    best = {mode: float("inf") for mode in ("forward", *COMPRESSIONS)}
    size = {}
    for _ in range(repeats):
        best["forward"] = min(best["forward"], time_forward(extractor))
        for compression in COMPRESSIONS:
            seconds, size[compression] = time_write(extractor, directory / f"{family}-{compression}.h5", compression)
            best[compression] = min(best[compression], seconds)
    results = []
    for mode, seconds in best.items():
        results.append({"family": family, "mode": "forward only" if mode == "forward" else f"+ write ({mode})",
                        "rows_s": extractor.n_rows / seconds,
                        "bytes_row": size[mode] / extractor.n_rows if mode in size else None,
                        "overhead": seconds / best["forward"] - 1})
    return results


def markdown(results: list[dict]) -> str:
    """The results as a markdown table."""
    lines = ["| backbone | mode | rows/CPU-s | bytes/row | overhead vs forward |", "|---|---|---:|---:|---:|"]
    for r in results:
        size = "" if r["bytes_row"] is None else f"{r['bytes_row']:,.0f}"
        overhead = "" if r["mode"] == "forward only" else f"{100 * r['overhead']:+.1f}%"
        lines.append(f"| {r['family']} | {r['mode']} | {r['rows_s']:.1f} | {size} | {overhead} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=384, help="rows per pass (a multiple of 8)")
    parser.add_argument("--batch", type=int, default=32, help="rows per forward pass (the CLI default)")
    parser.add_argument("--repeats", type=int, default=3, help="passes per mode; the median is reported (%(default)s)")
    parser.add_argument("--families", nargs="+", default=list(PREDICTION), choices=list(PREDICTION),
                        help="backbones (%(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads; 0 keeps torch's default (on 2 "
                        "shared cores, 2 threads thrash: ~10x slower forwards)")
    parser.add_argument("--dir", default=None, help="where to write the stores (default: a temporary directory)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        results = [r for family in args.families
                   for r in bench_family(family, args.rows, args.batch, args.repeats, Path(tmp))]
    print(f"small presets, 32 px, batch {args.batch}, {args.rows} rows, best of {args.repeats}, "
          f"{torch.get_num_threads()} torch threads\n")
    print(markdown(results))
    for family in args.families:
        lzf = next(r for r in results if r["family"] == family and r["mode"] == f"+ write ({DEFAULT_COMPRESSION})")
        verdict = "meets" if lzf["overhead"] <= 0.10 else "misses"
        print(f"\n{family}: writing with the default ({DEFAULT_COMPRESSION}) costs {100 * lzf['overhead']:+.1f}% "
              f"over the forward passes: {verdict} the <= 10% goal")


if __name__ == "__main__":
    main()
