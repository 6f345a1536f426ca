"""``bench`` (alias ``dynbench``): run | ls | validate | report | export | data | lm-eval.

The CLI parses arguments, builds a suite and calls :mod:`dynbench.api`; it holds no measurement logic.
Bad input exits with code 2, a clear message and nothing written; failed runs exit with code 1.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from dynbench import api
from dynbench.cli_data import add_data_parser, cmd_data
from dynbench.config import ConfigError, SuiteSpec, apply_overrides, load_suite, parse_plugin_list
from dynbench.registry import RegistryError
from dynbench.tasks.data.catalog import DataError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

RUN_EXAMPLES = """examples:
  bench run                                            # the default suite, then the report in reports/
  bench run --methods dense,early_exit,layer_skip --tasks digits --seeds 0 --out R
  bench run --methods 'layer_skip[pattern=uniform]' --tasks digits --budgets 1,0.5 --batch-sizes 1,32
  bench run --config suite.yaml --set measure.min_time_s=0.2 --limit 64
  bench run --methods dense --tasks digits --hardware 'cpu[threads=1]'
"""

LM_EVAL_HELP = """bench lm-eval ARGS…: lm-eval's own command line with the dynbench model registered, e.g.
  bench lm-eval --model dynbench --model_args task=shakespeare,method=layer_skip,budget=0.5 \\
      --tasks dynbench_shakespeare_ppl,dynbench_shakespeare_cloze --limit 20
The shipped tasks (dynbench_shakespeare_ppl, dynbench_shakespeare_cloze) run offline; lm-eval's own tasks are
indexed only when one is named. Needs `pip install 'dynbench[lm-eval]'`.
"""


class UsageError(Exception):
    """Bad command-line input (exit code 2)."""


def _csv_ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.replace(" ", ",").split(",") if x)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from None


def _csv_floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.replace(" ", ",").split(",") if x)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got '{text}'") from None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    p = argparse.ArgumentParser(prog="bench", description="Benchmark dynamic-compute methods in transformers.")
    p.add_argument("-v", "--verbose", action="store_true", help="log what happens (training, fits, caches)")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("lm-eval", help="lm-eval's command line with the dynbench model (bench lm-eval --help)")

    run = sub.add_parser(
        "run", help="run a suite", epilog=RUN_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    _suite_args(run)
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

    ls = sub.add_parser(
        "ls",
        help="list registered plugins",
        epilog="examples:\n  bench ls methods\n  bench ls tasks",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ls.add_argument("kind", choices=["methods", "tasks", "hardware"])

    val = sub.add_parser(
        "validate",
        help="check suite files or flags without running anything",
        epilog="examples:\n  bench validate suite.yaml\n  bench validate --methods mod --tasks digits",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    val.add_argument("files", nargs="*", type=Path, help="suite YAML files")
    _suite_args(val, with_config=False)

    rep = sub.add_parser(
        "report",
        help="Pareto plots, histograms and tables from results",
        epilog="examples:\n  bench report results --out reports",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rep.add_argument("results", type=Path)
    rep.add_argument("--out", type=Path, default=Path("reports"))

    exp = sub.add_parser(
        "export",
        help="all rows as one CSV or Parquet table",
        epilog="examples:\n  bench export results --format csv --out rows.csv",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    exp.add_argument("results", type=Path)
    exp.add_argument("--format", choices=["csv", "parquet"], default="csv")
    exp.add_argument("--out", type=Path, required=True)
    add_data_parser(sub)
    return p


def _suite_args(p: argparse.ArgumentParser, *, with_config: bool = True) -> None:
    p.add_argument("--methods", nargs="+", help="methods, comma/space separated; options in brackets: name[k=v]")
    p.add_argument("--tasks", nargs="+", help="tasks, comma/space separated")
    p.add_argument("--hardware", nargs="+", help="hardware targets (default: cpu)")
    p.add_argument("--seeds", type=_csv_ints, help="seeds, e.g. 0,1,2 (default: 0)")
    p.add_argument("--budgets", type=_csv_floats, help="override every dynamic method's budgets")
    p.add_argument("--batch-sizes", type=_csv_ints, help="batch sizes to time (default: 1,32)")
    p.add_argument("--limit", type=int, help="evaluate at most N samples per run (smoke runs)")
    p.add_argument("--name", help="suite name recorded in rows")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a suite field, e.g. measure.min_time_s=0.2 (repeatable)",
    )
    if with_config:
        p.add_argument("--config", type=Path, help="suite YAML; flags given on the command line win")


def suite_from_args(args: argparse.Namespace, base: SuiteSpec | None = None) -> tuple[SuiteSpec, bool]:
    """Build the suite from ``--config`` and flags. Returns ``(suite, is_default_suite)``."""
    config = getattr(args, "config", None)
    if base is None and config is not None:
        base = load_suite(config)
    is_default = base is None and not args.methods and not args.tasks
    suite = base or api.default_suite()
    fields: dict = {}
    if args.methods:
        fields["methods"] = parse_plugin_list(args.methods)
    if args.tasks:
        fields["tasks"] = parse_plugin_list(args.tasks)
    if base is None and (args.methods or args.tasks):
        fields.setdefault("methods", suite.methods)
        fields.setdefault("tasks", suite.tasks)
        fields.setdefault("name", "cli")
    for key, attr in (
        ("hardware", "hardware"),
        ("seeds", "seeds"),
        ("budgets", "budgets"),
        ("batch_sizes", "batch_sizes"),
        ("limit", "limit"),
        ("name", "name"),
    ):
        value = getattr(args, attr, None)
        if value is not None:
            fields[key] = parse_plugin_list(value) if key == "hardware" else value
    suite = SuiteSpec(**{**suite.__dict__, **fields})
    if args.overrides:
        suite = apply_overrides(suite, args.overrides)
    return suite, is_default


def cmd_run(args: argparse.Namespace) -> int:
    """``bench run``."""
    from dynbench.cli_display import RunDisplay, print_summary

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


def cmd_ls(args: argparse.Namespace) -> int:
    """``bench ls``."""
    from dynbench.cli_display import print_plugins

    print_plugins(args.kind, api.plugin_table(args.kind))
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    """``bench validate``: every file and the flags, all problems reported."""
    problems: list[str] = []
    for path in args.files:
        try:
            suite, _ = suite_from_args(args, base=load_suite(path))
            api.plan(suite)
            print(f"OK  {path}: {len(suite.runs())} run(s)")
        except ConfigError as exc:
            problems.extend(f"{path}: {e}" for e in exc.errors)
    if not args.files:
        suite, _ = suite_from_args(args)
        api.plan(suite)
        print(f"OK  {len(suite.runs())} run(s)")
    if problems:
        raise ConfigError(problems)
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    """``bench report``."""
    if not args.results.exists():
        raise UsageError(
            f"Results directory {args.results} does not exist. Run `bench run --out {args.results}` first."
        )
    files = api.write_report(args.results, args.out)
    print(f"Wrote {len(files)} files; open {args.out / 'index.html'}")
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    """``bench export``."""
    path = api.export(args.results, args.out, args.format)
    print(f"Wrote {path}")
    return EXIT_OK


COMMANDS = {
    "run": cmd_run,
    "ls": cmd_ls,
    "validate": cmd_validate,
    "report": cmd_report,
    "export": cmd_export,
    "data": cmd_data,
}


def cmd_lm_eval(argv: list[str]) -> int:
    """``bench lm-eval``: hand the arguments to lm-eval's CLI with the dynbench model and tasks registered."""
    if not argv or argv[0] in ("-h", "--help"):
        print(LM_EVAL_HELP)
        if not argv:
            return EXIT_USAGE
    try:
        from dynbench.integrations.lm_eval_cli import main as lm_eval_main
    except ImportError as exc:
        print(f"error: bench lm-eval needs lm-eval ({exc}). Install: pip install 'dynbench[lm-eval]'.", file=sys.stderr)
        return EXIT_USAGE
    return lm_eval_main(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "lm-eval":  # every further argument is lm-eval's, so argparse must not see them
        return cmd_lm_eval(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return COMMANDS[args.command](args)
    except (ConfigError, RegistryError, UsageError, ValueError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted; finished runs are kept, run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
