"""``python -m lisa_probe.over_training features/<run>-steps.h5 --out reports/<run>-steps/``: features over training.

For a store extracted from a run's checkpoints (``extract --ckpt RUN --checkpoints all``): per checkpoint and site
the alignment of the pooled features with the score estimate, the factor probes and the CKA with the last
checkpoint, as ``over_training.csv`` and ``over_training.png``, with the run's fitted onset of control (t50, from its
``eval.csv`` when the run directory is beside the store) marked. How: ``lisa_probe.analysis.over_training``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from lisa_probe.options import option, parse_inputs, run_reporting

PROG = "python -m lisa_probe.over_training"


@dataclass
class OverTrainingConfig:
    out: str = field(default="", metadata=option("output directory (required)"))
    sites: str = field(default="all", metadata=option("comma-separated sites, or 'all'"))
    n_splits: int = field(default=5, metadata=option("cross-validation folds (grouped by sample)"))

    def __post_init__(self) -> None:
        if not self.out:
            raise ValueError("--out is required (a directory)")
        if self.n_splits < 2:
            raise ValueError(f"--n-splits must be >= 2, got {self.n_splits}")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    store, config, command = parse_inputs(PROG, __doc__, "store", "a feature store written with --checkpoints",
                                          OverTrainingConfig, argv)
    from lisa_probe.study.over_training import write_over_training  # once the options parsed: --help stays quick

    out = run_reporting(PROG, write_over_training, store, config, command)
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
