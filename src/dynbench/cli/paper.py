"""``bench paper``: the seed papers' tables and claims, with their evidence tags.

``bench paper ls [ID]`` lists every paper (or one) with its tables and claims; each claim shows its
evidence tag (V: read in the paper or its code, A: abstract only, S: a secondary source), the
paper's value or the claim's shape, and whether our setting can be compared with the paper's.
"""

from __future__ import annotations

import argparse

from dynbench.cli.exit_codes import EXIT_OK


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench paper`` to the ``bench`` subparsers."""
    paper = subparsers.add_parser(
        "paper",
        help="the seed papers' tables and claims",
        epilog="examples:\n  bench paper ls\n  bench paper ls glavas",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = paper.add_subparsers(dest="action", required=True)
    ls = actions.add_parser("ls", help="list papers, their tables and claims with evidence tags")
    ls.add_argument("paper", nargs="?", default=None, help="one paper's id (default: all)")


def run(args: argparse.Namespace) -> int:
    """Run ``bench paper ACTION``."""
    from dynbench.papers.registry import TAGS, get_paper, load_papers

    papers = [get_paper(args.paper)] if args.paper else list(load_papers().values())
    lines: list[str] = []
    for p in papers:
        lines += [f"{p.id}  {p.title} — {p.authors}, {p.venue}, {p.url}", f"  setting: {p.paper_setting}",
                  f"  read: {p.sources}"]  # fmt: skip
        roles = ", ".join(f"{role}: {pair['quick']} (quick) / {pair['full']} (full)" for role, pair in p.tasks.items())
        lines.append(f"  tasks: {roles}")
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
