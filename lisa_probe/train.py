"""``python -m lisa_probe.train``: train a side net (ControlNet / SD3 ControlNet) with or without LISA.

With no arguments this is the toolkit's main job on the embedded default: the default main net (UNet,
v-prediction, shapes 32 px) is pretrained first if missing, then a ControlNet is trained with LISA on shapes with
edge conditions, evaluated, and written to ``runs/<name>/``: ``config.yaml``, ``controlnet/`` (plain diffusers ControlNetModel),
``lisa_decoder/`` (safetensors, never needed to sample), checkpoints, ``metrics.csv``, ``eval.csv``, sample grids
(condition | main alone | controlled) and ``summary.json``. ``--lisa-weight 0`` trains the baseline: identical
except that it builds no decoder and adds no LISA term.
"""

from __future__ import annotations

import sys

from lisa_probe.options import cli_errors, parse_config
from lisa_probe.training.config import TrainConfig


def main(argv: list[str] | None = None) -> int:
    prog = "python -m lisa_probe.train"
    config = parse_config(TrainConfig, argv, prog, __doc__.splitlines()[0])
    # the library (torch, diffusers, accelerate) is imported once the options parsed: --help stays quick
    from lisa_probe.rundir import read_summary
    from lisa_probe.training.control_evaluation import summary_lines
    from lisa_probe.training.engine import end_processes, is_main_process
    from lisa_probe.training.side_net import train

    with cli_errors(prog):
        run_dir = train(config)
    if is_main_process():
        summary = read_summary(run_dir)
        print(f"side net written to {run_dir}")
        print("\n".join(summary_lines(summary)))
    end_processes()
    return 0


if __name__ == "__main__":
    sys.exit(main())
