"""``python -m lisa_probe <command> [options]``: every command line of the toolkit under one name.

``python -m lisa_probe --help`` lists the commands; ``python -m lisa_probe <command> --help`` shows a command's
options. ``python -m lisa_probe <command> ...`` is the same as ``python -m lisa_probe.<module> ...``.
"""

from __future__ import annotations

import importlib
import sys

# command -> (module whose main(argv) runs it, what it does); light: nothing is imported to list them
COMMANDS = {
    "pretrain": ("lisa_probe.pretrain", "train a main net on a built-in dataset"),
    "train": ("lisa_probe.train", "train a side net (ControlNet / SD3 ControlNet) with or without LISA"),
    "extract": ("lisa_probe.extract", "dump hooked side-branch features and predictions to an HDF5 store"),
    "add-factors": ("lisa_probe.add_factors", "give a finished store factor columns, by sample id"),
    "analyze": ("lisa_probe.analyze", "alignment, probes, disentanglement and decompositions of stores"),
    "sample": ("lisa_probe.sample", "runs and ControlNets side by side from the same noise"),
    "intervene": ("lisa_probe.intervene", "where and when the side branch steers: maps, interventions, patching"),
    "dictionary": ("lisa_probe.dictionary", "a sparse autoencoder of one site's features, its latents ranked"),
    "over-training": ("lisa_probe.over_training", "features over a run's checkpoints, with its onset of control"),
    "study": ("lisa_probe.study.cli", "run a study file (experiments/*.yaml): pretrain, train, extract, analyse"),
    "notebooks": ("lisa_probe.notebook_runs", "execute the notebooks on your stores"),
}
PROG = "python -m lisa_probe"


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"usage: {PROG} <command> [options]   ({PROG} <command> --help for its options)", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a command's ``main``; returns its exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"{usage()}\n{PROG}: error: unknown command {command!r}; choose from {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    return importlib.import_module(COMMANDS[command][0]).main(rest)


if __name__ == "__main__":
    sys.exit(main())
