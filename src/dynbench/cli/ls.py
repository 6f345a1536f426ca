"""``bench ls``: the registered methods, tasks or hardware targets."""

from __future__ import annotations

import argparse

from dynbench import api
from dynbench.cli.exit_codes import EXIT_OK


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench ls`` to the ``bench`` subparsers."""
    ls = subparsers.add_parser(
        "ls",
        help="list registered plugins",
        epilog="examples:\n  bench ls methods\n  bench ls tasks",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ls.add_argument("kind", choices=["methods", "tasks", "hardware"])


def run(args: argparse.Namespace) -> int:
    """Run ``bench ls``: print one table of the plugins of ``args.kind``."""
    from dynbench.cli.display import print_plugins  # rich: only once the command runs

    print_plugins(args.kind, api.plugin_table(args.kind))
    return EXIT_OK
