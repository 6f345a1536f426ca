"""``bench paper``: the seed papers' tables and claims — list, run, render with verdicts.

- ``bench paper ls [ID]``: every paper (or one) with its tables and claims; each claim shows its
  evidence tag (V: read in the paper or its code, A: abstract only, S: a secondary source), the
  paper's value or the claim's shape, and whether our setting can be compared with the paper's.
- ``bench paper run ID|all [--quick] [--out R]``: the suites the paper's tables need (full: the
  paper-faithful recipes and seeds; quick: small tasks, minutes), resumable like ``bench run``.
- ``bench paper table ID|all R [--format md|latex|csv] [--output FILE]``: every table and claim from
  the rows stored in ``R`` — ours ± 95% interval beside the paper's value, the settings, a verdict.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dynbench.cli.exit_codes import EXIT_FAILED, EXIT_OK, write_output


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench paper`` to the ``bench`` subparsers."""
    paper = subparsers.add_parser(
        "paper",
        help="the seed papers' tables and claims",
        epilog="examples:\n  bench paper ls\n  bench paper run glavas --quick --out R\n"
        "  bench paper table glavas R --format latex",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = paper.add_subparsers(dest="action", required=True)
    ls = actions.add_parser("ls", help="list papers, their tables and claims with evidence tags")
    ls.add_argument("paper", nargs="?", default=None, help="one paper's id (default: all)")
    from dynbench.cli.run import add_execution_args

    run = actions.add_parser("run", help="run the suites a paper's tables need (resumable)")
    run.add_argument("paper", help="a paper's id, or all")
    run.add_argument("--quick", action="store_true", help="the quick suite: small tasks and short fits (minutes)")
    add_execution_args(run)
    table = actions.add_parser("table", help="render a paper's tables and claims from stored rows")
    table.add_argument("paper", help="a paper's id, or all")
    table.add_argument("results", type=Path, help="the results folder of bench paper run")
    table.add_argument("--format", choices=["md", "latex", "csv"], default="md", help="output format (default md)")
    table.add_argument("--output", type=Path, default=None, help="write here instead of printing")


def _papers(paper_id: str | None) -> list:
    """The papers ``paper_id`` names: one, or every one for ``all`` / ``None``."""
    from dynbench.papers.registry import get_paper, load_papers

    return list(load_papers().values()) if paper_id in (None, "all") else [get_paper(paper_id)]


def run(args: argparse.Namespace) -> int:
    """Run ``bench paper ACTION``."""
    return {"ls": _ls, "run": _run, "table": _table}[args.action](args)


def _run(args: argparse.Namespace) -> int:
    """Each paper's quick or full suite into ``args.out``; runs already there are skipped."""
    from dynbench.cli.run import execute

    codes = []
    for paper in _papers(args.paper):
        name = "quick" if args.quick else "full"
        print(f"== {paper.id}: {paper.title} ({name} suite)")
        for suite in paper.run_suites(name):  # the suite, then each sweep's grid (runs shared with it are skipped)
            codes.append(execute(suite, args, None))
    return EXIT_FAILED if any(code != EXIT_OK for code in codes) else EXIT_OK


def _table(args: argparse.Namespace) -> int:
    """Render from stored rows only; nothing runs."""
    from dynbench import api
    from dynbench.cli.exit_codes import UsageError
    from dynbench.papers.render import build, render

    papers = _papers(args.paper)
    if not args.results.is_dir():
        raise UsageError(f"Results folder {args.results} does not exist. Give the --out folder of bench paper run.")
    rows, samples = api.load_results(args.results)
    text = render([build(p, rows, samples) for p in papers], args.format)
    if args.output is None:
        print(text)
    else:
        write_output(text, args.output)
        print(f"Wrote {args.output}")
    return EXIT_OK


def _ls(args: argparse.Namespace) -> int:
    """Papers, tables and claims with their evidence tags."""
    from dynbench.papers.registry import TAGS

    papers = _papers(args.paper)
    lines: list[str] = []
    for p in papers:
        lines += [f"{p.id}  {p.title} — {p.authors}, {p.venue}, {p.url}", f"  setting: {p.paper_setting}",
                  f"  read: {p.sources}"]  # fmt: skip
        roles = ", ".join(f"{role}: {pair['quick']} (quick) / {pair['full']} (full)" for role, pair in p.tasks.items())
        lines.append(f"  tasks: {roles}")
        for sid, sweep in p.sweeps.items():
            lines.append(f"  sweep {sid} of {sweep.role}: {', '.join(sweep.quick)} (quick) / {', '.join(sweep.full)} "
                         f"(full), each with {', '.join(sweep.methods)}")  # fmt: skip
        for t in p.tables:
            public = "" if t.regenerable else "  [the paper's table is not public: ours only]"
            lines.append(f"  table {t.id}: {t.title} ({t.paper_ref}){public}")
        for c in p.claims:
            value = f"paper: {c.paper_value:g} {c.unit}".rstrip() if c.paper_value is not None else f"shape: {c.shape}"
            comparable = "" if c.comparable else f"  [not comparable: {c.not_comparable_because}]"
            lines.append(f"  claim {c.id} [{c.tag}] {c.text} ({value}){comparable}")
        lines.append("")
    legend = ", ".join(f"[{tag}] {meaning}" for tag, meaning in TAGS.items())
    print("\n".join([*lines, f"Evidence tags: {legend}."]))
    return EXIT_OK
