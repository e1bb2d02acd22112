"""``python -m lisa_probe.extract --ckpt runs/<name>[/checkpoint-N] --out features/<name>.h5``: dump hooked
side-branch features and predictions to an HDF5 feature store.

``--controlnet DIR --main DIR`` probes a side net lisa_probe did not train. Under ``accelerate launch`` each
process writes a shard and process 0 merges them. What a store holds and how rows are made:
``lisa_probe.extraction.extractor``.
"""

from __future__ import annotations

import sys

from lisa_probe.extraction.config import ExtractConfig
from lisa_probe.options import cli_errors, parse_config


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    prog = "python -m lisa_probe.extract"
    config = parse_config(ExtractConfig, argv, prog, __doc__.splitlines()[0])
    # the library is imported once the options parsed: --help stays quick
    from lisa_probe.extraction.extractor import extract
    from lisa_probe.training.engine import end_processes, process_state

    with cli_errors(prog):
        out = extract(config)
    if process_state().is_main_process:
        print(f"features written to {out}")
    end_processes()
    return 0


if __name__ == "__main__":
    sys.exit(main())
