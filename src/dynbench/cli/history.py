"""``bench history DIR...``: each metric across successive commits, with its steps found.

The inputs are results folders or baselines, oldest first (one per commit: nightly runs, or the
baselines of successive releases). Steps are found per series by its metric's rule
(:mod:`dynbench.analysis.history`): any change of a deterministic metric, a lasting shift of a
timing beyond its threshold. ``--report OUT`` draws every benchmark's metrics against the commits
with the steps marked; ``--fail-on-step`` exits 1 on a regression step (for nightly jobs).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dynbench.cli.exit_codes import EXIT_FAILED, EXIT_OK, UsageError, write_output


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench history`` to the ``bench`` subparsers."""
    p = subparsers.add_parser(
        "history",
        help="metrics across successive commits' results, with change points",
        epilog="examples:\n  bench history nightly/2026-12-01 nightly/2026-12-02 nightly/2026-12-03 --report H\n"
        "  bench history nightly/* --suite suites/ci.yaml --fail-on-step",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", type=Path, nargs="+", help="results folders or baseline files, oldest first")
    p.add_argument("--suite", type=Path, default=None, help="a suite file whose gate: section sets the rules")
    p.add_argument("--report", type=Path, default=None, help="write index.html with a plot per benchmark here")
    p.add_argument("--format", choices=("text", "md", "csv"), default="text", help="how the steps are printed")
    p.add_argument("--output", type=Path, default=None, help="write the steps (md or csv) here instead of printing")
    p.add_argument("--fail-on-step", action="store_true", help="exit 1 when a step makes a metric worse")


def run(args: argparse.Namespace) -> int:
    """Build the history, print or write its steps, draw the report; exit 1 on a failing step."""
    from dynbench.analysis.history import build, steps_frame, steps_markdown, write_report
    from dynbench.cli.compare import load_gate

    gate = load_gate(args.suite)
    try:
        history = build(args.inputs, gate)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    steps = steps_frame(history)
    if args.format == "csv":
        text = steps.to_csv(index=False)
    else:
        text = "\n".join(steps_markdown(steps))
    if args.output is not None:
        write_output(text, args.output)
        print(f"Wrote {args.output}")
    else:
        print(text)
    if args.report is not None:
        files = write_report(history, args.report)
        print(f"Wrote {args.report / 'index.html'} ({len(files) - 2} plot(s))")
    n_fail = int(steps["fails"].sum()) if not steps.empty else 0
    print(f"{len(history.commits)} inputs, {len(history.series)} series, {len(steps)} step(s), {n_fail} failing")
    return EXIT_FAILED if args.fail_on_step and n_fail else EXIT_OK
