"""``bench report``: Pareto plots, histograms and tables from a results directory."""

from __future__ import annotations

import argparse
from pathlib import Path

from dynbench import api
from dynbench.cli.exit_codes import EXIT_OK, UsageError
from dynbench.harness.preflight import folder_problem, write_failure


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench report`` to the ``bench`` subparsers."""
    rep = subparsers.add_parser(
        "report",
        help="Pareto plots, histograms and tables from results",
        epilog="examples:\n  bench report results --out reports\n  bench report results --strict  # a bad file: exit 2",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rep.add_argument("results", type=Path)
    rep.add_argument(
        "--strict",
        action="store_true",
        help="a bad file under the results folder (truncated, foreign JSONL) is an error (exit 2), not skipped",
    )
    rep.add_argument("--out", type=Path, default=Path("reports"))


def run(args: argparse.Namespace) -> int:
    """Run ``bench report``: write the report of ``args.results`` into ``args.out``.

    A bad file under the results folder is skipped with a warning naming it (``--strict``: an error,
    exit 2). Failed runs are listed in the report's "Failed runs" section.

    Raises:
        UsageError: the results directory does not exist, ``--out`` cannot be written (checked
            before anything is read), or the write itself failed (a full disk: the files of an
            earlier report stay as they were, no temporary file is left). The CLI prints it and
            exits 2.
        BadResultFile: with ``--strict``, a bad file (a ValueError: exit 2, nothing written).
    """
    if not args.results.exists():
        raise UsageError(
            f"Results directory {args.results} does not exist. Run `bench run --out {args.results}` first."
        )
    if problem := folder_problem(args.out, "--out"):
        raise UsageError(problem)
    try:
        files = api.write_report(args.results, args.out, strict=args.strict)
    except OSError as exc:
        raise UsageError(write_failure(args.out, exc, "--out")) from None
    print(f"Wrote {len(files)} files; open {args.out / 'index.html'}")
    return EXIT_OK
