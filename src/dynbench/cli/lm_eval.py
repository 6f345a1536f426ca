"""``bench lm-eval ARGS…``: lm-eval's own command line with the dynbench model and tasks registered.

Every argument after ``lm-eval`` belongs to lm-eval, so this subcommand sets :data:`RAW_ARGV`:
``bench`` does not parse them and hands them over unchanged as ``args.argv``.
"""

from __future__ import annotations

import argparse
import sys

from dynbench.cli.exit_codes import EXIT_USAGE

# `bench` passes the rest of the command line through unparsed (argparse would reject lm-eval's).
RAW_ARGV = True

LM_EVAL_HELP = """bench lm-eval ARGS…: lm-eval's own command line with the dynbench model registered, e.g.
  bench lm-eval --model dynbench --model_args task=shakespeare,method=layer_skip,budget=0.5 \\
      --tasks dynbench_shakespeare_ppl,dynbench_shakespeare_cloze --limit 20
The shipped tasks (dynbench_shakespeare_ppl, dynbench_shakespeare_cloze) run offline; lm-eval's own tasks are
indexed only when one is named (10-20 s saved). lm-eval's own `lm_eval` command takes the same arguments: the
model and the tasks are known to it by name once dynbench is installed. FLOPs and latency per task are logged
as a table and stored under config.dynbench in the results (--output_path). Needs `pip install 'dynbench[lm-eval]'`.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench lm-eval`` to the ``bench`` subparsers (listed in ``bench --help``)."""
    parser = subparsers.add_parser(
        "lm-eval", help="lm-eval's command line with the dynbench model (bench lm-eval --help)"
    )
    # argparse reaches this parser only as `bench -v lm-eval` (no arguments left for lm-eval)
    parser.set_defaults(argv=[])


def run(args: argparse.Namespace) -> int:
    """Hand ``args.argv`` to lm-eval's CLI; without arguments print how to use it and return 2."""
    argv: list[str] = args.argv
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
