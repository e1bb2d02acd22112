"""``python -m lisa_probe.sample runs/a runs/b path/to/controlnet --out samples/<name>/``: samples side by side.

Every source (a run, a checkpoint-N directory or a diffusers ControlNet directory; ControlNets need ``--main``) and
the main net alone draw from the same noise, conditions and prompts. Writes ``images/<row>/<k>.png``, ``grid.png``
(rows: condition, main alone, each source at each ``--conditioning-scale``; columns: the samples, with their
prompts above), ``fidelity.csv`` (control fidelity per sample and row, where the condition kind has a metric) and
``sample.json`` (config, code version, command, the sources' SHA-256, sample ids, prompts, the noise). How rows are
drawn: ``lisa_probe.generation.comparison``.
"""

from __future__ import annotations

import sys

from lisa_probe.generation.config import SampleConfig
from lisa_probe.options import parse_inputs, run_reporting

PROG = "python -m lisa_probe.sample"


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    sources, config, command = parse_inputs(PROG, __doc__, "sources", "runs, checkpoint-N directories or diffusers "
                                            "ControlNet directories", SampleConfig, argv, nargs="+")
    from lisa_probe.generation.comparison import draw_comparison  # once the options parsed: --help stays quick

    out = run_reporting(PROG, draw_comparison, sources, config, command)
    print(f"samples written to {out} (grid: {out / 'grid.png'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
