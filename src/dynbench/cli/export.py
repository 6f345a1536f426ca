"""``bench export``: every row of a results directory as one CSV or Parquet table."""

from __future__ import annotations

import argparse
from pathlib import Path

from dynbench import api
from dynbench.cli.exit_codes import EXIT_OK, UsageError
from dynbench.harness.preflight import file_problem, write_failure
from dynbench.harness.store import EXPORT_FORMATS, export_format

EXPORT_EXAMPLES = """examples:
  bench export results --out rows.csv        # the format follows the extension: .csv, .parquet or .pq
  bench export results --out rows.parquet
  bench export results --out rows.tsv.gz --format csv   # another extension: say the format
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench export`` to the ``bench`` subparsers."""
    exp = subparsers.add_parser(
        "export",
        help="all rows as one CSV or Parquet table",
        epilog=EXPORT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    exp.add_argument("results", type=Path)
    exp.add_argument(
        "--strict",
        action="store_true",
        help="a bad file under the results folder (truncated, foreign JSONL) is an error (exit 2), not skipped",
    )
    exp.add_argument(
        "--format",
        choices=sorted(set(EXPORT_FORMATS.values())),
        default=None,
        help=f"table format (default: from --out's extension, one of {', '.join(EXPORT_FORMATS)}); "
        "when given with a known extension, the two must agree",
    )
    exp.add_argument("--out", type=Path, required=True, help="the file to write (replaced if it exists)")


def run(args: argparse.Namespace) -> int:
    """Run ``bench export``: write the table to ``args.out``.

    The format and ``--out`` are checked before anything is read (exit 2, nothing written). A bad
    file under the results folder is skipped with a warning naming it; with ``--strict`` it is an
    error (``BadResultFile``, a ValueError: exit 2, nothing written).

    Raises:
        UsageError: ``--out`` cannot be written (a folder, under a file, not writable), or the
            write itself failed (a full disk; no file is left behind).
        ValueError: an unknown extension without ``--format``, or the two disagree.
    """
    if problem := file_problem(args.out, "--out"):
        raise UsageError(problem)
    fmt = export_format(args.out, args.format)
    try:
        path = api.export(args.results, args.out, fmt, strict=args.strict)
    except OSError as exc:
        raise UsageError(write_failure(args.out, exc, "--out")) from None
    print(f"Wrote {path}")
    return EXIT_OK
