"""Start-up time of every command line: ``python bench/bench_help.py [--runs 5]``.

Runs ``python -m lisa_probe.<command> --help`` in fresh processes and prints, per command, the median wall time, its
ratio to a bare interpreter started the same way in the same run (``python -c pass``: the floor), and the goal
(<= 1.5 s on a 2-core machine). The command lines parse their options before importing the library, so ``--help``
loads no torch (``tests/test_layout.py`` checks that).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = ("train", "pretrain", "extract", "analyze", "study")
GOAL_SECONDS = 1.5


def median_seconds(argv: list[str], runs: int) -> float:
    """Median wall time of ``runs`` fresh processes running ``argv``."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="processes per command (median)")
    args = parser.parse_args()
    floor = median_seconds([sys.executable, "-c", "pass"], args.runs)
    print(f"bare interpreter: {floor:.3f} s (median of {args.runs})")
    for command in COMMANDS:
        seconds = median_seconds([sys.executable, "-m", f"lisa_probe.{command}", "--help"], args.runs)
        verdict = "meets" if seconds <= GOAL_SECONDS else "misses"
        print(f"{command:9s} --help {seconds:.3f} s  ({seconds / floor:.1f}x the bare interpreter; {verdict} the "
              f"{GOAL_SECONDS} s goal)")


if __name__ == "__main__":
    main()
