"""``bench compare BASE NEW``: what changed between two sets of results, and does it fail.

BASE and NEW are each a results folder (``bench run --out``) or a baseline file (``bench baseline
save``). Rows are aligned on (task, method label, budget, hardware, batch size, seed, metric) and
judged by their metric's rule (:mod:`dynbench.analysis.compare`): executed FLOPs, layers and
structure exactly, quality near-exactly, times by their intervals and a threshold. Exit 1 on a
failing change, 0 otherwise, 2 on bad input.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dynbench.cli.exit_codes import EXIT_FAILED, EXIT_OK, UsageError, write_output

FORMATS = ("text", "md", "json", "junit")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench compare`` to the ``bench`` subparsers."""
    p = subparsers.add_parser(
        "compare",
        help="compare two results folders or baselines; exit 1 on a regression",
        epilog="examples:\n  bench compare benchmarks/baselines/ci.jsonl R --suite suites/ci.yaml --strict\n"
        "  bench compare R1 R2 --format md   # a table to paste into a pull request",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("base", type=Path, help="results folder or baseline file to compare against")
    p.add_argument("new", type=Path, help="results folder or baseline file to judge")
    p.add_argument("--format", choices=FORMATS, default="text", help="text (terminal), md, json or junit")
    p.add_argument("--output", type=Path, default=None, help="write the chosen format here (text still prints)")
    p.add_argument("--suite", type=Path, default=None, help="a suite file whose gate: section sets the rules")
    p.add_argument(
        "--strict",
        action="store_true",
        help="the CI gate: any change of an exact or near metric (either direction) and any missing row fails",
    )
    p.add_argument(
        "--all",
        action="store_true",
        help="text: list every pair (default: what fails or warns; --format md lists every change)",
    )


def run(args: argparse.Namespace) -> int:
    """Compare, print, write; the exit code says whether anything fails."""
    from dynbench.analysis import compare_render as render
    from dynbench.analysis.compare import compare, failing, load_side

    gate = load_gate(args.suite)
    try:
        base, new = load_side(args.base), load_side(args.new)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    changes = compare(base, new, gate, strict=args.strict)
    text = {
        "md": lambda: render.markdown(changes, base, new),
        "json": lambda: render.as_json(changes, base, new),
        "junit": lambda: render.junit(changes),
    }
    if args.format == "text" or args.output is not None:
        print_table(changes, base, new, show_all=args.all)
    if args.format != "text":
        if args.output is None:
            print(text[args.format](), end="")
        else:
            write_output(text[args.format](), args.output)
            print(f"Wrote {args.output}")
    return EXIT_FAILED if failing(changes) else EXIT_OK


def load_gate(path: Path | None):  # noqa: ANN201 — GateConfig, imported lazily
    """The ``gate:`` section of a suite file (defaults without one).

    Raises:
        UsageError: the file is missing, not YAML, or its gate section is bad.
    """
    from dynbench.analysis.compare import GateConfig, gate_from_mapping

    if path is None:
        return GateConfig()
    import yaml

    if not path.is_file():
        raise UsageError(f"Suite file {path} does not exist. Give the suite file whose gate: section to use.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path} cannot be read as YAML ({exc}). Give a suite file.") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path} must hold a mapping (methods:, tasks:, gate:, …), got {type(data).__name__}.")
    try:
        return gate_from_mapping(data.get("gate"), f"{path}:gate")
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def print_table(changes: list, base, new, *, show_all: bool = False) -> None:  # noqa: ANN001 — analysis types
    """The terminal table of what fails or warns (every pair: ``show_all``), then the verdict."""
    from rich.markup import escape
    from rich.table import Table

    from dynbench.analysis import compare_render as render
    from dynbench.cli.display import console

    shown = (
        sorted(changes, key=lambda c: render.ORDER.index(c.status)) if show_all else render.listed(changes, quiet=True)
    )
    if shown:
        table = Table(title=f"{base.source} → {new.source}")
        for col in render.HEADER:
            table.add_column(col)
        for change in shown:
            table.add_row(*(escape(c) for c in render.cells(change)))
        console.print(table)
    console.print(render.headline(changes))
