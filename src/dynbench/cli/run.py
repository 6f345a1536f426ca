"""``bench run``: plan a suite, measure every run not yet in the results, print the summary."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dynbench import api
from dynbench.cli.exit_codes import EXIT_FAILED, EXIT_OK
from dynbench.cli.suite_args import add_suite_args, suite_from_args

RUN_EXAMPLES = """examples:
  bench run                                            # the default suite, then the report in reports/
  bench run --methods dense,early_exit,layer_skip --tasks digits --seeds 0 --out R
  bench run --methods 'layer_skip[pattern=uniform]' --tasks digits --budgets 1,0.5 --batch-sizes 1,32
  bench run --config suite.yaml --set measure.min_time_s=0.2 --limit 64
  bench run --methods dense --tasks digits --hardware 'cpu[threads=1]'
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench run`` to the ``bench`` subparsers."""
    run = subparsers.add_parser(
        "run", help="run a suite", epilog=RUN_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_suite_args(run)
    run.add_argument("--out", type=Path, default=Path("results"), help="results directory (default: results)")
    run.add_argument("--force", action="store_true", help="re-run runs already in the results directory")
    run.add_argument(
        "--executor",
        choices=["inline", "subprocess"],
        default=None,
        help="inline (this process) or subprocess (one fresh process per run; default when memory is measured)",
    )
    run.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="backbone/fit cache (default: $DYNBENCH_CACHE or ~/.cache/dynbench)",
    )
    run.add_argument(
        "--report",
        type=Path,
        default=None,
        help="also write the report here (the default suite writes reports/)",
    )


def run(args: argparse.Namespace) -> int:
    """Run ``bench run``; returns :data:`EXIT_FAILED` when any run failed (the others are kept)."""
    from dynbench.cli.display import RunDisplay, print_summary  # rich, pandas: once a run starts

    suite, is_default = suite_from_args(args)
    plans = api.plan(suite)  # validates everything before anything is written
    executor = args.executor or ("subprocess" if suite.measure.memory else "inline")
    options = api.RunOptions(out=args.out, cache_dir=args.cache_dir, executor=executor, force=args.force)
    with RunDisplay(len(plans)) as display:
        outcome = api.run_suite(suite, options, progress=display.run_progress)
    print(
        f"{len(outcome.done)} run(s) measured, {len(outcome.skipped)} already in {args.out}, "
        f"{len(outcome.failed)} failed."
    )
    rows, _ = api.load_results(args.out)
    keys = {p.run_key for p in plans}
    print_summary(rows[rows["run_key"].isin(keys)] if not rows.empty else rows)
    report_dir = args.report or (Path("reports") if is_default else None)
    if report_dir is not None and not rows.empty:
        files = api.write_report(args.out, report_dir)
        print(f"Report: {report_dir / 'index.html'} ({len(files)} files)")
    for message in outcome.failed.values():
        print(f"FAILED {message}", file=sys.stderr)
    return EXIT_FAILED if outcome.failed else EXIT_OK
