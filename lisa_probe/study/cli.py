"""``python -m lisa_probe.study experiments/<study>.yaml [--quick]``: the command line of the study runner
(``lisa_probe.study.runner``, imported once the options parsed so that ``--help`` is quick)."""

from __future__ import annotations

import argparse
from pathlib import Path

from lisa_probe.data.options import names_list
from lisa_probe.options import SEED_MAX, cli_errors


def seed_list(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]`` (argparse reports a bad list, or a seed outside [0, SEED_MAX], as an invalid
    seed list)."""
    seeds = [int(value) for value in text.split(",")]
    if any(not 0 <= seed <= SEED_MAX for seed in seeds):
        raise ValueError(text)
    return seeds


seed_list.__name__ = "seed list"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lisa_probe.study", description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path, help="study file, e.g. experiments/lisa_claims.yaml")
    parser.add_argument("--quick", action="store_true", help="apply the file's quick overrides (one seed, few steps)")
    parser.add_argument("--no-analysis", action="store_true", help="train and summarise only")
    parser.add_argument("--seeds", type=seed_list,
                        help="comma-separated seeds replacing the file's (finished runs are reused)")
    parser.add_argument("--settings", type=names_list,
                        help="comma-separated settings to run (results in <name>-<settings>/; runs are shared)")
    args = parser.parse_args(argv)
    from lisa_probe.study.runner import run_study

    with cli_errors(parser.prog):
        results = run_study(args.study, args.quick, not args.no_analysis, args.seeds,
                            list(args.settings) if args.settings else None)
    print(f"results in {results}")
    return 0
