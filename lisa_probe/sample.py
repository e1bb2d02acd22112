"""``python -m lisa_probe.sample runs/a runs/b path/to/controlnet --out samples/<name>/``: samples side by side.

Every source (a run, a checkpoint-N directory or a diffusers ControlNet directory; ControlNets need ``--main``) and
the main net alone draw from the same noise, conditions and prompts. Writes ``images/<row>/<k>.png``, ``grid.png``
(rows: condition, main alone, each source at each ``--conditioning-scale``; columns: the samples, with their
prompts above), ``fidelity.csv`` (control fidelity per sample and row, where the condition kind has a metric) and
``sample.json`` (config, code version, command, the sources' SHA-256, sample ids, prompts, the noise). How rows are
drawn: ``lisa_probe.generation.comparison``.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from lisa_probe.generation.config import SampleConfig
from lisa_probe.options import add_dataclass_arguments, cli_errors, config_from_args

PROG = "python -m lisa_probe.sample"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0].split(": ", 1)[1])
    p.add_argument("sources", nargs="+", help="runs, checkpoint-N directories or diffusers ControlNet directories")
    add_dataclass_arguments(p, SampleConfig)
    return p


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    cli = parser()
    args = cli.parse_args(argv)
    sources = args.__dict__.pop("sources")
    try:
        config = config_from_args(SampleConfig, args)
    except ValueError as error:
        cli.error(str(error))
    command = shlex.join(["python", "-m", "lisa_probe.sample", *(sys.argv[1:] if argv is None else argv)])
    from lisa_probe.generation.comparison import draw_comparison  # once the options parsed: --help stays quick

    with cli_errors(PROG):
        out, lines = draw_comparison(sources, config, command)
    print("\n".join(lines))
    print(f"samples written to {out} (grid: {out / 'grid.png'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
