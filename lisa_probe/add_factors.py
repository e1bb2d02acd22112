"""``python -m lisa_probe.add_factors features/x.h5 --factor-columns a,b (--table F | --from-data)``: give a finished
feature store factor columns, by sample id, for the probes, DCI / MIG / SAP, UMAP colours and the causal analyses.

``--table FILE`` (CSV, parquet, jsonl, arrow) has a row per sample: its ``--id-column`` holds the store's sample id or
its last part (``000012`` of ``shapes/val/000012``; a folder store's file name; ``train-17`` of a captioned store's
``captioned/val/train-17``). ``--from-data`` reads the columns from the captioned dataset the store was extracted
from (its ``config`` attr's ``data_root``). Types are inferred as for the folder dataset's factors CSV; codes of a
categorical column come from all its rows, so stores of the same data agree. The store is rewritten beside itself
and replaces the old file only once every dataset reads back as written (``lisa_probe.store.factors``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lisa_probe.data.options import names_list
from lisa_probe.options import cli_errors

PROG = "python -m lisa_probe.add_factors"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Give a finished feature store factor columns, by sample id.")
    p.add_argument("store", help="a finished feature store (.h5) written by lisa_probe.extract")
    p.add_argument("--factor-columns", required=True, help="comma-separated columns to add as factors")
    p.add_argument("--carried-factors", default="", help="those of the factor columns the condition carries")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--table", help="a CSV / parquet / jsonl / arrow file with an id column and the factor columns")
    source.add_argument("--from-data", action="store_true",
                        help="read the columns from the captioned dataset the store was extracted from")
    p.add_argument("--id-column", default="sample_id", help="--table: the column naming each row's sample")
    p.add_argument("--replace", action="store_true", help="replace factors of these names the store already has")
    return p


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    cli = parser()
    args = cli.parse_args(argv)
    columns, carried = names_list(args.factor_columns), names_list(args.carried_factors)
    if not columns:
        cli.error(f"--factor-columns {args.factor_columns!r} names no column")
    stray = [name for name in carried if name not in columns]
    if stray:
        cli.error(f"--carried-factors {', '.join(stray)} not among --factor-columns {', '.join(columns)}")
    if args.from_data and args.id_column != "sample_id":
        cli.error("--id-column applies to --table; --from-data matches the dataset's rows by the store's sample ids")
    # the library is imported once the options parsed: --help stays quick
    from lisa_probe.data.factor_table import dataset_factors, table_factors
    from lisa_probe.provenance import file_digest
    from lisa_probe.rundir import resolved_path, stored_path
    from lisa_probe.store import FeatureStore
    from lisa_probe.store.factors import add_factors

    store_path = Path(args.store)
    with cli_errors(PROG):
        with FeatureStore(store_path) as store:
            config, sample_ids = store.attrs["config"], store.read("meta/sample_id").astype(str)
        if args.from_data:
            if config.get("dataset") != "captioned" or not config.get("data_root"):
                raise ValueError(f"--from-data reads a captioned dataset; {store_path} was extracted from "
                                 f"{config.get('dataset')!r} data: give its factors as --table")
            data_root = resolved_path(config["data_root"], store_path.parent)
            table_split = sample_ids[0].rsplit("/", 1)[-1].rsplit("-", 1)[0]
            table = dataset_factors(data_root, table_split, columns)
            table.source["source"] = stored_path(data_root, store_path.parent)
        else:
            table = table_factors(args.table, columns, args.id_column)
            table.source.update(source=stored_path(Path(args.table), store_path.parent),
                                sha256=file_digest(args.table))
        specs, levels = table.specs(carried)
        values = table.values_for(sample_ids, levels)
        add_factors(store_path, {name: {"kind": spec.kind, "carried": spec.carried, "levels": spec.levels}
                                 for name, spec in specs.items()}, values, table.source, replace=args.replace)
    described = ", ".join(f"{name} ({spec.kind}{f', {spec.n_classes} levels' if spec.n_classes else ''}"
                          f"{', carried' if spec.carried else ''})" for name, spec in specs.items())
    print(f"added {described} to {store_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
