"""``bench data list|prepare|verify``: which data sets are present, make them present, check them.

Exit codes: 0 all good; 1 a file failed its check; 2 a data set is unknown or cannot be found (the
message says how to get it). The work is done by :mod:`dynbench.tasks.data`; this module parses,
shows progress and prints.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dynbench.cache_dirs import data_root
from dynbench.cli.exit_codes import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from dynbench.tasks.data.catalog import (
    Dataset,
    DatasetCorruptError,
    DatasetMissingError,
    DataStatus,
    dataset_names,
    get_dataset,
)

if TYPE_CHECKING:  # rich is imported when a command runs, so `bench --help` stays quick
    from rich.console import Console

# Codes 1 and 2 here: a file failed its check; a data set cannot be found (or --path is wrong).
EXIT_BAD_FILE, EXIT_MISSING = EXIT_FAILED, EXIT_USAGE

DATA_EXAMPLES = """examples:
  bench data list                                   # every data set: present? where? size
  bench data prepare fashion-mnist                  # find it (Debian package, cache) or download it
  bench data prepare fashion-mnist --path ~/fmnist  # check a copy you have and put it in the cache
  bench data verify                                 # re-check the checksums of every present data set
data sets are cached in $DYNBENCH_DATA (default ~/.cache/dynbench/data)
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench data`` and its three subcommands to the ``bench`` subparsers."""
    data = subparsers.add_parser(
        "data",
        help="list, prepare and verify data sets",
        epilog=DATA_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = data.add_subparsers(dest="data_command", required=True)
    sub.add_parser("list", help="every registered data set: present? where? size")
    prep = sub.add_parser(
        "prepare",
        help="make data sets present: from --path, the cache, a system package, or a download",
        epilog=DATA_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    prep.add_argument("names", nargs="+", metavar="NAME", help="data sets to prepare (see `bench data list`)")
    prep.add_argument(
        "--path", type=Path, default=None, help="a directory holding the data set's files; copied into the cache"
    )
    ver = sub.add_parser("verify", help="re-check the checksums of present data sets (non-zero exit on a bad file)")
    ver.add_argument("names", nargs="*", metavar="NAME", help="data sets to verify (default: every present one)")


def run(args: argparse.Namespace) -> int:
    """Run ``bench data <list|prepare|verify>``; returns the exit code.

    Raises:
        RegistryError: an unknown data set name (the CLI prints it and exits 2).
    """
    if args.data_command == "list":
        return _list()
    if args.data_command == "prepare":
        return _prepare(args.names, args.path)
    return _verify(args.names)


def _console() -> Console:
    from rich.console import Console

    console = Console()
    if not console.is_terminal:  # pipes and CI logs: wide enough for paths
        console.width = 160
    return console


def _size(n: int) -> str:
    return f"{n / 1e6:,.1f} MB" if n else "–"


def _list() -> int:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"Data sets (cache: {data_root()})")
    for column in ("name", "title", "present", "source", "where", "size"):
        table.add_column(column)
    for name in dataset_names():
        ds = get_dataset(name)
        status = ds.status()
        present = "yes" if status.present else ("BAD" if status.corrupt else "no")
        where = status.where or status.problem.splitlines()[0]
        # Text: paths may hold brackets, which rich would read as markup
        table.add_row(name, ds.title, present, status.source, Text(where), _size(status.size))
    _console().print(table)
    return EXIT_OK


def _exit_code(missing: bool, bad: bool) -> int:
    return EXIT_MISSING if missing else EXIT_BAD_FILE if bad else EXIT_OK


def _say(console: Console, text: str) -> None:
    """Print plain text (paths may hold brackets, which rich would read as markup)."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _prepare(names: list[str], path: Path | None) -> int:
    datasets = [get_dataset(n) for n in names]  # every name checked before any work
    if path is not None and len(datasets) != 1:
        print(
            f"error: --path {path} is one data set's directory; give exactly one NAME, not {len(names)}.",
            file=sys.stderr,
        )
        return EXIT_MISSING
    if path is not None and not path.is_dir():
        print(f"error: --path {path} is not a directory. Give the directory that holds the files.", file=sys.stderr)
        return EXIT_MISSING
    if problem := _cache_problem(datasets, path):  # before any download or copy
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_MISSING
    missing = bad = False
    console = _console()
    for ds in datasets:
        try:
            status = _prepare_one(ds, path, console)
        except DatasetMissingError as exc:
            print(f"error: {exc}", file=sys.stderr)
            missing = True
        except OSError as exc:  # the data cache failed a write (a full disk): one line, not a traceback
            where = f" ({exc.filename})" if exc.filename else ""
            print(
                f"error: could not prepare {ds.name} in the data cache {data_root()}: {exc.strerror or exc}{where}. "
                "Free some space there, or set $DYNBENCH_DATA to a folder you can write to, then run it again.",
                file=sys.stderr,
            )
            missing = True
        except DatasetCorruptError as exc:
            print(f"error: {exc}", file=sys.stderr)
            bad = True
        else:
            _say(console, f"{ds.name}: ready, {_describe(status)}")
    return _exit_code(missing, bad)


def _cache_problem(datasets: list[Dataset], path: Path | None) -> str | None:
    """Why the data cache cannot take what ``prepare`` would write there, or ``None``.

    Data sets already present write nothing, so an unwritable cache is only a problem for one that
    is missing or copied from ``--path``.
    """
    from dynbench.harness.preflight import folder_problem

    if path is None and all(ds.status().present for ds in datasets):
        return None
    problem = folder_problem(data_root(), "The data cache")
    return problem and f"{problem} $DYNBENCH_DATA moves the data cache (default ~/.cache/dynbench/data)."


def _prepare_one(ds: Dataset, path: Path | None, console: Console) -> DataStatus:
    """Prepare one data set with a progress bar per downloaded file."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    bars = Progress(
        TextColumn("  {task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=console,
        transient=False,
    )
    tasks: dict[str, Any] = {}

    def progress(what: str, done: int, total: int | None) -> None:
        if not tasks:
            bars.start()  # only once bytes move: a data set found locally prints no empty bar
        if what not in tasks:
            tasks[what] = bars.add_task(f"{ds.name}: {what}", total=total)
        bars.update(tasks[what], completed=done, total=total)

    try:
        return ds.prepare(path, progress=progress)
    finally:
        if tasks:
            bars.stop()


def _describe(status: DataStatus) -> str:
    how = {
        "path": "copied into the cache at",
        "cache": "in the cache at",
        "system": "system copy at",
        "download": "downloaded into",
        "recorded": "recorded (used in place, not copied) at",
        "synthesized": "synthesized into",
    }.get(status.source, f"{status.source}:")
    return f"{how} {status.where} ({_size(status.size)}, checks passed)"


def _verify(names: list[str]) -> int:
    explicit = bool(names)
    datasets = [get_dataset(n) for n in (names or dataset_names())]
    missing = bad = False
    console = _console()
    for ds in datasets:
        try:
            checks = ds.verify()
        except DatasetMissingError as exc:
            if explicit:
                print(f"error: {exc}", file=sys.stderr)
                missing = True
            else:
                _say(console, f"{ds.name}: not present (skipped)")
            continue
        for c in checks:
            _say(console, f"  {'BAD' if c.problem else 'OK '} {c.path}{': ' + c.problem if c.problem else ''}")
        n_bad = sum(1 for c in checks if c.problem)
        if n_bad:
            bad = True
            print(
                f"error: {n_bad} file(s) of {ds.name} failed the check. Delete them and run "
                f"`bench data prepare {ds.name}`, or reinstall the package that installed them.",
                file=sys.stderr,
            )
        else:
            _say(console, f"{ds.name}: {len(checks)} file(s) OK")
    return _exit_code(missing, bad)
