"""``python -m lisa_probe.extract --ckpt runs/<name>[/checkpoint-N] --out features/<name>.h5``.

Dumps hooked side-branch features and predictions to an HDF5 feature store (schema in ``lisa_probe.store``): one
row per (sample, timestep, noise draw), rows ordered sample-major, then timestep, then draw. Noise of a row is
drawn from a generator seeded by (seed, row), and rows are computed in fixed batches (rows ``[k * batch_size,
(k + 1) * batch_size)``) whatever the resume point or the number of processes, so a resumed extraction writes the
same values as an uninterrupted one, and a sharded one the same up to the last bits that other processes' kernels
may round differently.
A side net not trained by lisa_probe is probed with ``--controlnet DIR --main DIR`` instead of ``--ckpt``.
Under ``accelerate launch`` (or ``torchrun``) each process writes a shard of whole batches; process 0 merges them at
the end. On CPU-only machines launch several processes with ``accelerate launch --multi_gpu --num_processes N``
(accelerate's ``--cpu`` starts a single process unless given an MPI hostfile).
"""

from __future__ import annotations

import sys

from lisa_probe.config import cli_errors, parse_config
from lisa_probe.configs import ExtractConfig
from lisa_probe.engine import end_processes, process_state
from lisa_probe.extraction import extract


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    prog = "python -m lisa_probe.extract"
    config = parse_config(ExtractConfig, argv, prog, __doc__.splitlines()[0])
    with cli_errors(prog):
        out = extract(config)
    if process_state().is_main_process:
        print(f"features written to {out}")
    end_processes()
    return 0


if __name__ == "__main__":
    sys.exit(main())
