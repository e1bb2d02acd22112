"""``python -m lisa_probe.pretrain``: train a main net unconditionally on a built-in dataset.

The run directory is itself a diffusers-layout main-net directory (``unet/`` or ``transformer/`` + ``scheduler/``)
that ``python -m lisa_probe.train --main <dir>`` and diffusers' own ``from_pretrained`` load. It also holds
``config.yaml``, checkpoints, ``metrics.csv``, ``eval.csv`` and ``samples/step-<N>.png``.
"""

from __future__ import annotations

import sys

from lisa_probe.options import cli_errors, parse_config
from lisa_probe.training.config import PretrainConfig


def main(argv: list[str] | None = None) -> int:
    prog = "python -m lisa_probe.pretrain"
    config = parse_config(PretrainConfig, argv, prog, __doc__.splitlines()[0])
    # the library is imported once the options parsed: --help stays quick
    from lisa_probe.training.engine import end_processes, is_main_process
    from lisa_probe.training.main_net import pretrain

    with cli_errors(prog):
        run_dir = pretrain(config)
    if is_main_process():
        print(f"main net written to {run_dir}")
    end_processes()
    return 0


if __name__ == "__main__":
    sys.exit(main())

