"""What each exit code of ``bench`` means, the error that means "bad input", and the mapping.

Every subcommand returns one of these codes; :func:`run_handler` turns the errors a user can trigger
(an unknown name, a bad option, a missing data set) into code 2 with a one-line message, so a
subcommand may raise them rather than print them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from dynbench.config import ConfigError
from dynbench.registry import RegistryError
from dynbench.tasks.data.catalog import DataError

EXIT_OK = 0
EXIT_FAILED = 1  # a run failed, or a data file failed its check; finished work is kept
EXIT_USAGE = 2  # bad input (flags, names, files, a data set not found); nothing was written
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT


class UsageError(Exception):
    """Bad command-line input (exit code 2)."""


# The errors that mean the input was wrong, not the code: reported as `error: …` with exit code 2.
USAGE_ERRORS: tuple[type[Exception], ...] = (ConfigError, RegistryError, UsageError, ValueError, DataError)


def run_handler(handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Call a subcommand's ``run(args)`` and map the errors a user can trigger to exit codes.

    Args:
        handler: the subcommand's ``run`` function.
        args: the parsed command line.

    Returns:
        The handler's exit code; :data:`EXIT_USAGE` on a usage error; :data:`EXIT_INTERRUPTED` on
        Ctrl-C.
    """
    try:
        return handler(args)
    except USAGE_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted; finished runs are kept, run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED


def write_output(text: str, path: Path) -> None:
    """Write a command's ``--output`` file (its folder made), or fail as a usage error.

    Raises:
        UsageError: the path cannot be written.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"Cannot write {path} ({exc.strerror or exc}). Give a writable --output path.") from None
