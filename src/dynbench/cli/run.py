"""``bench run``: plan a suite, measure every run not yet in the results, print the summary."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dynbench import api
from dynbench.cache_dirs import model_cache_dir
from dynbench.cli.exit_codes import EXIT_FAILED, EXIT_OK
from dynbench.cli.suite_args import add_suite_args, suite_from_args
from dynbench.config import ConfigError, SuiteSpec
from dynbench.harness.dask_executor import parse_executor
from dynbench.harness.preflight import Destinations

RUN_EXAMPLES = """examples:
  bench run                                            # the default suite, quick profile; report in reports/
  bench run --profile full                             # the same suite with the plugins' own (paper) recipes
  bench run --methods dense,early_exit,layer_skip --tasks digits --seeds 0 --out R
  bench run --methods 'layer_skip[pattern=uniform]' --tasks digits --budgets 1,0.5 --batch-sizes 1,32
  bench run --config suite.yaml --set measure.min_time_s=0.2 --limit 64
  bench run --methods dense --tasks digits --hardware 'cpu[threads=1]'
  bench run --executor dask --methods dense,early_exit,layer_skip --tasks toy-vision,toy-text --seeds 0,1
  bench run --executor 'dask[address=tcp://scheduler-host:8786]' --tasks digits   # a running scheduler
"""


def _executor(text: str) -> str:
    """Check an ``--executor`` value (name, Dask options) as it is parsed: a typo exits 2."""
    try:
        parse_executor(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError("; ".join(exc.errors)) from None
    return text


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench run`` to the ``bench`` subparsers."""
    run = subparsers.add_parser(
        "run", help="run a suite", epilog=RUN_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_suite_args(run)
    add_execution_args(run)
    run.add_argument(
        "--report",
        type=Path,
        default=None,
        help="also write the report here (the default suite writes reports/)",
    )


def add_execution_args(parser: argparse.ArgumentParser) -> None:
    """The flags ``--out``, ``--force``, ``--executor``, ``--cache-dir``: how a suite runs."""
    parser.add_argument("--out", type=Path, default=Path("results"), help="results directory (default: results)")
    parser.add_argument("--force", action="store_true", help="re-run runs already in the results directory")
    parser.add_argument(
        "--executor",
        type=_executor,
        default=None,
        metavar="{inline,subprocess,dask[...]}",
        help="inline (this process), subprocess (one fresh process per run; default when memory is measured) or "
        "dask: a task graph on a local Dask cluster, dask[workers=N], or an existing one, dask[address=tcp://host:port]",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="backbone/fit cache (default: $DYNBENCH_CACHE or ~/.cache/dynbench)",
    )


def run(args: argparse.Namespace) -> int:
    """Run ``bench run``; returns :data:`EXIT_FAILED` when any run failed (the others are kept)."""
    suite, is_default = suite_from_args(args)
    report_dir = args.report or (Path("reports") if is_default else None)
    return execute(suite, args, report_dir)


def execute(suite: SuiteSpec, args: argparse.Namespace, report_dir: Path | None) -> int:
    """Plan ``suite``, run what is not in ``args.out`` yet, print the summary; the exit code.

    ``args`` holds :func:`add_execution_args`' flags.
    """
    from dynbench.cli.display import RunDisplay, print_summary  # rich, pandas: once a run starts

    destinations = Destinations(args.out, args.cache_dir or model_cache_dir(), report_dir)
    plans = api.plan(suite, destinations)  # validates everything, folders included, before anything is written
    executor = args.executor or ("subprocess" if suite.measure.memory else "inline")
    options = api.RunOptions(out=args.out, cache_dir=args.cache_dir, executor=executor, force=args.force)
    live = api.LiveReport(args.out, report_dir) if report_dir is not None else None  # rewritten as runs finish
    done = set() if args.force else api.finished_runs(plans, args.out)
    eta = api.estimate(plans, args.cache_dir, done, executor)
    on_finished = None if live is None else (lambda plan: live.update())
    with RunDisplay(plans, done, eta, on_finished=on_finished) as display:
        outcome = api.run_suite(suite, options, progress=display.run_progress)
    print(
        f"{len(outcome.done)} run(s) measured, {len(outcome.skipped)} already in {args.out}, "
        f"{len(outcome.failed)} failed."
    )
    rows, _ = api.load_results(args.out)
    keys = {p.run_key for p in plans}
    print_summary(rows[rows["run_key"].isin(keys)] if not rows.empty else rows)
    if live is not None and not rows.empty:
        files = live.update(final=True)
        print(f"Report: {live.out_dir / 'index.html'} ({len(files)} files)")
    for key, holder in outcome.elsewhere.items():  # a concurrent sweep into the same folder computes these
        print(f"NOT RUN {key}: being computed by {holder}; run again once it is done", file=sys.stderr)
    for message in outcome.failed.values():
        print(f"FAILED {message}", file=sys.stderr)
    return EXIT_FAILED if outcome.failed else EXIT_OK
