"""``python -m lisa_probe.analyze features/a.h5 [features/b.h5 ...] --out reports/<name>/``: dissect feature stores.

Every store is one *run* (labelled by its file stem, or ``--labels``; ``--random-reference`` adds a store of an
untrained side net as ``random-init``). Per run, site and timestep bin it measures

* **alignment** of the side features with the two likelihood-score estimates in prediction units, ``model`` =
  ``full − main`` and ``oracle`` = ``target − main``: the LISA decoder's output against each estimate (when the store
  has ``scores/decoded``), a ridge read-out and linear CKA of mean-pooled features against the estimate on a
  ``READOUT_GRID``² grid, and a spatial ridge read-out (one map shared by all positions) — each beside its shuffled-
  pairs reference (features paired with another row's estimate in the same timestep bin; in the streamed spatial
  read-out and decoder alignment always another sample's, ``shuffle_within``); a randomly initialised side net is
  the other reference;
* **disentanglement**: linear probes for every factor beside a control task (a chance baseline, see
  ``lisa_probe.analysis.probes``), carried vs not-carried summary, DCI / MIG / SAP on pooled features reduced by a PCA
  fitted on DCI's and SAP's training rows, and a 2-D embedding (UMAP, or PCA with ``--no-umap``) of one site;
* **per-site decomposition** of the score: add-one-in from the store's ``decompose/<site>`` rows, and with
  ``--attribution-samples K`` leave-one-out / add-one-in / integrated gradients / Shapley of the reloaded model
  (``lisa_probe.analysis.report.attribution``) at the inputs of K of the store's samples;
* **training curves** from the run directory's ``eval.csv`` and ``summary.json``.

Outputs in ``--out``: ``alignment.csv``, ``probes.csv``, ``carried_summary.csv``, ``disentanglement.csv``,
``embedding.csv``, ``decomposition.csv``, ``training.csv`` (long form, each with the run's ``arm``), ``figures/*.png``,
``report.md`` and ``report.html`` (the same report as one self-contained page: figures embedded, how to read each
metric, provenance).

Memory: one streamed pass per store reads ~16 MiB of rows at a time (``--chunk-rows``), in whole samples, at least
``MIN_CHUNK_SAMPLES`` per chunk. It fills accumulators whose size does not depend on the number of rows (the spatial
read-out's ``RidgeSufficientStats`` and the decoder alignment's sums, per site, bin, estimate and control) and per-row
summaries about 100x smaller than the rows (pooled features, the coarse estimates, the add-one-in projections); the
in-memory analyses run on those summaries. ``--max-rows`` caps the rows.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from lisa_probe.analysis.config import RANDOM_LABEL, AnalyzeOptions
from lisa_probe.options import add_dataclass_arguments, cli_errors, config_from_args


def parser() -> argparse.ArgumentParser:
    """The command line: the stores, ``--out`` and what the report is written as, then one option per
    ``AnalyzeOptions`` field (``options.add_dataclass_arguments``, as every command builds its options)."""
    p = argparse.ArgumentParser(prog="python -m lisa_probe.analyze", description=__doc__.splitlines()[0])
    p.add_argument("stores", nargs="+", help="feature stores (.h5) written by lisa_probe.extract")
    p.add_argument("--out", required=True, help="report directory (e.g. reports/<name>/)")
    p.add_argument("--labels", help="comma-separated run labels (default: the stores' file stems)")
    p.add_argument("--random-reference", help=f"store of an untrained side net, analysed as {RANDOM_LABEL!r}")
    p.add_argument("--overwrite", action="store_true", help="replace the report in a non-empty --out")
    add_dataclass_arguments(p, AnalyzeOptions)
    return p


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    cli = parser()
    args = cli.parse_args(argv)
    try:
        options = config_from_args(AnalyzeOptions, args)
    except ValueError as error:
        cli.error(str(error))
    command = shlex.join(["python", "-m", "lisa_probe.analyze", *(sys.argv[1:] if argv is None else argv)])
    from lisa_probe.analysis.report.report import report_stores  # once the options parsed: --help stays quick

    with cli_errors(cli.prog):
        report = report_stores(args.stores, args.out, options, args.labels, args.random_reference, args.overwrite,
                               command)
    print(f"report written to {report} and {report.with_name('report.html')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
