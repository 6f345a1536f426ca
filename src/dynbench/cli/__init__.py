"""``bench`` (alias ``dynbench``): run | ls | validate | report | export | data | paper | lm-eval.

The CLI parses arguments, builds a suite and calls :mod:`dynbench.api`; it holds no measurement
logic. Bad input exits with code 2, a clear message and nothing written; failed runs exit with
code 1 (:mod:`dynbench.cli.exit_codes` holds the codes and the errors that map to them).

One module per subcommand, each exposing the same two functions:

- ``add_parser(subparsers) -> None`` adds the subcommand's parser (flags, help, worked examples);
- ``run(args) -> int`` does the work and returns the exit code; user errors are raised.

A module that sets ``RAW_ARGV = True`` (:mod:`~dynbench.cli.lm_eval`) gets the rest of the
command line unparsed, as ``args.argv``. The shared parts are modules named for what they hold:
:mod:`~dynbench.cli.suite_args` (the suite flags of run and validate, and ``suite_from_args``),
:mod:`~dynbench.cli.display` (progress bars and tables) and :mod:`~dynbench.cli.exit_codes`.

Adding a subcommand (``bench paper``, ``compare``, ``baseline``, ``history``) is one new module with
``add_parser`` and ``run`` plus one line (its module name) in :data:`SUBCOMMANDS`;
``tests/unit/test_cli_package.py`` checks every module of the package against that shape.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from types import ModuleType

from dynbench.cli.exit_codes import run_handler

# Every subcommand, in the order `bench --help` lists them: the name of its module in dynbench.cli.
SUBCOMMANDS: tuple[ModuleType, ...] = tuple(
    importlib.import_module(f"dynbench.cli.{name}")
    for name in (
        "lm_eval",
        "run",
        "ls",
        "validate",
        "report",
        "export",
        "data",
        "paper",
        "compare",
        "baseline",
        "history",
    )
)


def _version_line() -> str:
    """``bench 0.1.0 (torch 2.13.0+cpu, Python 3.11.7)``: what a bug report needs first."""
    import platform

    import torch

    from dynbench import __version__

    return f"bench {__version__} (torch {torch.__version__}, Python {platform.python_version()})"


def _assemble() -> tuple[argparse.ArgumentParser, dict[str, ModuleType]]:
    """The ``bench`` parser and, for each subcommand name, the module that added it."""
    parser = argparse.ArgumentParser(prog="bench", description="Benchmark dynamic-compute methods in transformers.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens (training, fits, caches)")
    parser.add_argument("--version", action="version", version=_version_line())
    subparsers = parser.add_subparsers(dest="command", required=True)
    commands: dict[str, ModuleType] = {}
    for module in SUBCOMMANDS:
        known = set(subparsers.choices)
        module.add_parser(subparsers)
        commands.update({name: module for name in subparsers.choices if name not in known})
    return parser, commands


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    return _assemble()[0]


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point (``bench``, ``dynbench``); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, commands = _assemble()
    raw = commands.get(argv[0]) if argv else None
    # A raw subcommand's further arguments are another tool's (lm-eval's): argparse must skip them.
    if raw is not None and getattr(raw, "RAW_ARGV", False):
        return raw.run(argparse.Namespace(command=argv[0], verbose=False, argv=argv[1:]))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    return run_handler(commands[args.command].run, args)
