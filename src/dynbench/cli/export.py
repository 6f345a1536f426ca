"""``bench export``: every row of a results directory as one CSV or Parquet table."""

from __future__ import annotations

import argparse
from pathlib import Path

from dynbench import api
from dynbench.cli.exit_codes import EXIT_OK


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench export`` to the ``bench`` subparsers."""
    exp = subparsers.add_parser(
        "export",
        help="all rows as one CSV or Parquet table",
        epilog="examples:\n  bench export results --format csv --out rows.csv",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    exp.add_argument("results", type=Path)
    exp.add_argument(
        "--strict",
        action="store_true",
        help="a bad file under the results folder (truncated, foreign JSONL) is an error (exit 2), not skipped",
    )
    exp.add_argument("--format", choices=["csv", "parquet"], default="csv")
    exp.add_argument("--out", type=Path, required=True)


def run(args: argparse.Namespace) -> int:
    """Run ``bench export``: write the table to ``args.out``.

    A bad file under the results folder is skipped with a warning naming it; with ``--strict`` it is
    an error (``BadResultFile``, a ValueError: exit 2, nothing written).
    """
    path = api.export(args.results, args.out, args.format, strict=args.strict)
    print(f"Wrote {path}")
    return EXIT_OK
