"""``bench validate``: check suite files or flags without running anything; report every problem."""

from __future__ import annotations

import argparse
from pathlib import Path

from dynbench import api
from dynbench.cache_dirs import model_cache_dir
from dynbench.cli.exit_codes import EXIT_OK
from dynbench.cli.suite_args import add_suite_args, suite_from_args
from dynbench.config import ConfigError, load_suite
from dynbench.harness.preflight import Destinations

EXAMPLES = """examples:
  bench validate suite.yaml
  bench validate --methods mod --tasks digits
  bench validate --methods dense --tasks toy-vision --out R --cache-dir C   # as `bench run --out R ...` would
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench validate`` to the ``bench`` subparsers."""
    val = subparsers.add_parser(
        "validate",
        help="check suite files or flags without running anything",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    val.add_argument("files", nargs="*", type=Path, help="suite YAML files")
    add_suite_args(val, with_config=False)
    val.add_argument(
        "--out", type=Path, default=Path("results"), help="results folder to check (default: results, as bench run)"
    )
    val.add_argument(
        "--cache-dir", type=Path, default=None, help="cache to check (default: $DYNBENCH_CACHE or ~/.cache/dynbench)"
    )


def run(args: argparse.Namespace) -> int:
    """Run ``bench validate``: plan every file (or the flags alone) and report all problems at once.

    The checks are those of ``bench run`` before it starts (:func:`dynbench.api.plan` with the
    results folder and cache), so a suite that validates starts.

    Raises:
        ConfigError: every problem of every file (the CLI prints them and exits 2).
    """
    destinations = Destinations(args.out, args.cache_dir or model_cache_dir())
    problems: list[str] = []
    for path in args.files:
        try:
            suite, _ = suite_from_args(args, base=load_suite(path))
            api.plan(suite, destinations)
            print(f"OK  {path}: {len(suite.runs())} run(s)")
        except ConfigError as exc:
            problems.extend(f"{path}: {e}" for e in exc.errors)
    if not args.files:
        suite, _ = suite_from_args(args)
        api.plan(suite, destinations)
        print(f"OK  {len(suite.runs())} run(s)")
    if problems:
        raise ConfigError(problems)
    return EXIT_OK
