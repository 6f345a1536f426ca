"""The suite flags shared by ``bench run`` and ``bench validate``, and the suite they describe."""

from __future__ import annotations

import argparse
from pathlib import Path

from dynbench import api
from dynbench.config import SuiteSpec, apply_overrides, load_suite, parse_plugin_list


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


def add_suite_args(p: argparse.ArgumentParser, *, with_config: bool = True) -> None:
    """Add the flags that describe a suite (``--methods``, ``--tasks``, …, ``--set``) to ``p``.

    Args:
        p: the subcommand's parser.
        with_config: also add ``--config`` (``bench validate`` takes suite files as positionals).
    """
    p.add_argument("--methods", nargs="+", help="methods, comma/space separated; options in brackets: name[k=v]")
    p.add_argument("--tasks", nargs="+", help="tasks, comma/space separated")
    p.add_argument("--hardware", nargs="+", help="hardware targets (default: cpu)")
    p.add_argument("--seeds", type=_csv_ints, help="seeds, e.g. 0,1,2 (default: 0)")
    p.add_argument("--budgets", type=_csv_floats, help="override every dynamic method's budgets")
    p.add_argument("--batch-sizes", type=_csv_ints, help="batch sizes to time (default: 1,32)")
    p.add_argument("--limit", type=int, help="evaluate at most N samples per run (smoke runs)")
    p.add_argument(
        "--profile",
        choices=["quick", "full"],
        help="quick (default): the plugins' quick options — shorter fits and backbone training, fewer budgets, a "
        "sample of the eval split, lighter timing — where you set none; full: the plugins' own recipes",
    )
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


# Flags copied onto the suite as given: (SuiteSpec field, argparse dest).
_PLAIN_FIELDS = (
    ("hardware", "hardware"),
    ("seeds", "seeds"),
    ("budgets", "budgets"),
    ("batch_sizes", "batch_sizes"),
    ("limit", "limit"),
    ("name", "name"),
    ("profile", "profile"),
)


def suite_from_args(args: argparse.Namespace, base: SuiteSpec | None = None) -> tuple[SuiteSpec, bool]:
    """Build the suite from ``--config`` (or ``base``) and the flags; flags win over the file.

    Args:
        args: the parsed flags of :func:`add_suite_args`.
        base: a suite already loaded (``bench validate FILE``); ``None`` reads ``--config``, if any.

    Returns:
        ``(suite, is_default_suite)``: the second is true when neither a file nor ``--methods`` or
        ``--tasks`` chose the suite, so the default suite (and its report) runs.
    """
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
    for key, attr in _PLAIN_FIELDS:
        value = getattr(args, attr, None)
        if value is not None:
            fields[key] = parse_plugin_list(value) if key == "hardware" else value
    suite = SuiteSpec(**{**suite.__dict__, **fields})
    if args.overrides:
        suite = apply_overrides(suite, args.overrides)
    return suite, is_default
