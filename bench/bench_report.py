"""Benchmark the whole ``python -m lisa_probe.analyze`` on three 256-row stores: the time of each stage.

    python bench/bench_report.py [--samples 32] [--timesteps 8] [--attribution-samples 4] [--dir DIR] [-- ANALYZE-ARGS]

Set-up (not timed): a tiny UNet main net (16 px), three side-net runs of 2 training steps on the default shapes
data (LISA λ 0.2 seeds 0 and 1, a baseline), each extracted to a store of ``--samples`` × ``--timesteps`` rows (256)
with every site (5) and the per-site decomposition; the stores carry the shapes data's eight generating factors.
Then ``analyze`` runs on the three stores in this process with its defaults (UMAP, DCI with gradient-boosted trees)
and ``--attribution-samples 4``, and the script prints the seconds of each stage summed over the stores
(``analysis.report.timing.StageTimes``: open, stream, alignment, probes, dci_mig_sap, embedding,
model_decomposition, figures, report) and the total. The goal (issue #28): the total ≤ 60 s on a quiet 2-core
machine with no stage over 20 s. Extra arguments after ``--`` go to ``analyze`` (e.g. ``-- --no-umap``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from pathlib import Path

import torch

from lisa_probe.analysis.config import AnalyzeOptions
from lisa_probe.analysis.report.report import report_stores
from lisa_probe.analysis.report.timing import StageTimes
from lisa_probe.analyze import parser as analyze_parser
from lisa_probe.diffusion.parameterization import Parameterization
from lisa_probe.extraction.config import ExtractConfig
from lisa_probe.extraction.extractor import extract
from lisa_probe.models import build_main, save_main
from lisa_probe.options import config_from_args
from lisa_probe.training.config import TrainConfig
from lisa_probe.training.side_net import train

RUNS = (("lisa-s0", 0.2, 0), ("baseline", 0.0, 0), ("lisa-s1", 0.2, 1))  # label, λ, seed


def make_stores(root: Path, samples: int, timesteps: int) -> list[Path]:
    """The three runs' stores under ``root`` (quietly: their progress bars go to a buffer)."""
    save_main(root / "main", "unet", build_main("unet", "tiny", 16, seed=0), Parameterization("eps"))
    stores = []
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        for label, weight, seed in RUNS:
            run = train(TrainConfig(main=str(root / "main"), out_dir=str(root / "runs"), name=label, steps=2,
                                    batch_size=4, eval_samples=0, checkpoint_every=0, lisa_weight=weight, seed=seed))
            stores.append(extract(ExtractConfig(out=str(root / f"{label}.h5"), ckpt=str(run), samples=samples,
                                                timesteps=str(timesteps), batch_size=64, decompose=True)))
    return stores


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--samples", type=int, default=32, help="samples per store (rows: samples × timesteps)")
    cli.add_argument("--timesteps", type=int, default=8)
    cli.add_argument("--attribution-samples", type=int, default=4)
    cli.add_argument("--dir", help="keep the runs and stores here and reuse them on the next call (default: a "
                     "temporary directory)")
    cli.add_argument("analyze_args", nargs="*", help="more options of analyze (after --)")
    args = cli.parse_args()
    torch.set_num_threads(1)  # as the tiny models run fastest
    with contextlib.ExitStack() as stack:
        root = Path(args.dir) if args.dir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        start = time.perf_counter()
        stores = [root / f"{label}.h5" for label, _, _ in RUNS]
        if not all(store.exists() for store in stores):
            stores = make_stores(root, args.samples, args.timesteps)
        print(f"set-up (3 runs, 3 stores of {args.samples * args.timesteps} rows): {time.perf_counter() - start:.1f} s")
        analyze_argv = [*map(str, stores), "--out", str(root / "report"), "--overwrite", "--attribution-samples",
                        str(args.attribution_samples), *args.analyze_args]
        options = config_from_args(AnalyzeOptions, analyze_parser().parse_args(analyze_argv))
        times = StageTimes()
        with contextlib.redirect_stderr(io.StringIO()):
            report_stores(stores, root / "report", options, overwrite=True, times=times)
        print(f"analyze {' '.join(args.analyze_args)}: seconds per stage, summed over the 3 stores")
        print(times.lines())
        slowest = max(times.seconds, key=times.seconds.get)
        total = sum(times.seconds.values())
        print(f"goal: total ≤ 60 s ({'met' if total <= 60 else 'missed'}), no stage over 20 s "
              f"({'met' if times.seconds[slowest] <= 20 else 'missed'}: slowest {slowest})")


if __name__ == "__main__":
    main()
