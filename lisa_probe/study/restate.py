"""``python -m lisa_probe.study.restate experiments/results/<study> [...]``: recompute a finished study's onset
tables (``onset.csv``, ``onset_summary.csv``, ``onset_paired.csv``) from the ``curves.csv`` and ``runs.csv`` it
wrote, without its runs: how results made before a change to the statistics (censored onsets, t-intervals, the
paired table) are restated. The README's prose is not rewritten; the tables say what changed."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lisa_probe.options import cli_errors


def restate_onsets(results: Path) -> dict:
    """Rewrite the onset tables of ``results`` from its ``curves.csv`` and ``runs.csv``; returns them by name."""
    import pandas as pd

    from lisa_probe.study.tables import onset_summary, onset_table, paired_onset_table

    results = Path(results)
    missing = [name for name in ("curves.csv", "runs.csv") if not (results / name).is_file()]
    if missing:
        raise ValueError(f"{results} is not a study's results directory: it lacks {', '.join(missing)}")
    curves, runs = pd.read_csv(results / "curves.csv"), pd.read_csv(results / "runs.csv")
    onsets = onset_table(curves, runs)
    tables = {"onset": onsets, "onset_summary": onset_summary(onsets, curves, runs),
              "onset_paired": paired_onset_table(onsets)}
    for name, table in tables.items():
        table.to_csv(results / f"{name}.csv", index=False)
    return tables


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lisa_probe.study.restate", description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, nargs="+", help="a study's results directory (experiments/results/…)")
    args = parser.parse_args(argv)
    with cli_errors(parser.prog):
        for results in args.results:
            paired = restate_onsets(results)["onset_paired"]
            print(f"{results}: onset tables rewritten ({len(paired)} paired comparisons)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
