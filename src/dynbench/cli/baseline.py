"""``bench baseline save R --out FILE``: freeze a results folder's rows as a committed baseline.

The file (JSON lines: a header with the format, git sha(s), machine fingerprint(s) and date, then
one row per line, sorted) is what ``bench compare FILE R`` and the CI gate compare against.
Changing a method's compute on purpose means saving the baseline again in the same commit, so the
diff shows the change.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dynbench.cli.exit_codes import EXIT_OK, UsageError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench baseline`` to the ``bench`` subparsers."""
    p = subparsers.add_parser(
        "baseline",
        help="save a results folder as a baseline file for bench compare",
        epilog="example:\n  bench run --config suites/ci.yaml --out R\n"
        "  bench baseline save R --out benchmarks/baselines/ci.jsonl",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(dest="action", required=True)
    save = actions.add_parser("save", help="write the rows of a results folder as a baseline file")
    save.add_argument("results", type=Path, help="the results folder (bench run --out)")
    save.add_argument(
        "--out", type=Path, required=True, help="the baseline file to write, e.g. benchmarks/baselines/ci.jsonl"
    )


def run(args: argparse.Namespace) -> int:
    """Save the baseline; bad input is a usage error (exit 2) and writes nothing."""
    from dynbench.analysis.compare import save_baseline

    if not args.results.is_dir():
        raise UsageError(f"Results folder {args.results} does not exist. Give the --out folder of bench run.")
    try:
        n = save_baseline(args.results, args.out)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"Cannot write {args.out} ({exc.strerror or exc}). Give a writable --out path.") from None
    print(f"Saved {n} rows of {args.results} to {args.out}")
    return EXIT_OK
