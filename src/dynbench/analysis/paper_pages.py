"""The report's Papers pages: each seed paper whose runs are in the results, with its claims judged.

A paper gets a page (``papers/<id>.md`` and ``.html``) when the results hold its quick or full
suite's runs (:func:`dynbench.papers.measures.suite_rows`); the page is ``bench paper table``'s
Markdown for it, and the index lists the pages with their verdict counts. A table's ``figure`` is
either one of the task's plots that the same report draws (shown from the task's folder) or a
figure drawn from the table's own rows (:mod:`dynbench.analysis.paper_figures`, written beside the
page). The main job's results (quick runs of the default tasks) match no paper suite, so its report
has no Papers section.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from dynbench.analysis.paper_figures import PAPER_FIGURES, draw
from dynbench.papers.measures import suite_rows
from dynbench.papers.registry import Paper, load_papers
from dynbench.papers.render import build, markdown


def paper_pages(
    rows: pd.DataFrame,
    samples: pd.DataFrame | None,
    out: Path,
    to_html: Callable[[str, str], str],
    task_folder: Callable[[str], str] = str,
) -> tuple[str | None, list[Path]]:
    """Write a page per paper with runs in ``rows``; return the index section (or None) and files.

    Args:
        rows: the result rows, with their original method labels.
        samples: their per-sample records (may be ``None``).
        out: the report folder; pages go to ``out/papers/``.
        to_html: ``(markdown, title) → html`` (the report's converter).
        task_folder: a task's folder name in the report, where its plots are (a table's ``figure``
            is shown under it when that plot was drawn).
    """
    samples = samples if samples is not None else pd.DataFrame()
    lines, written = [], []
    for paper in load_papers().values():
        if suite_rows(paper, rows)[1].empty:
            continue
        output = build(paper, rows, samples)
        folder = out / "papers"
        folder.mkdir(parents=True, exist_ok=True)
        figures, drawn = _figures(paper, output.suite, suite_rows(paper, rows)[1], out, task_folder)
        written += drawn
        text = f"# {paper.id}\n\n{markdown([output], figures)}"
        md_path, html_path = folder / f"{paper.id}.md", folder / f"{paper.id}.html"
        md_path.write_text(text, encoding="utf-8")
        html_path.write_text(to_html(text, f"{paper.id}: {paper.title}"), encoding="utf-8")
        written += [md_path, html_path]
        counts = Counter(r.verdict for r in output.claims)
        tally = ", ".join(f"{n} {verdict}" for verdict, n in sorted(counts.items()))
        lines.append(f"- [{paper.id}: {paper.title}](papers/{paper.id}.html) — {output.suite} suite; claims: {tally}")
    if not lines:
        return None, written
    intro = (
        "Each seed paper whose suite ran here (`bench paper run`), its claims beside our measurements with a verdict "
        "by one stated rule (`dynbench.papers.verdict`), and its tables regenerated from these rows."
    )
    return "\n\n".join(["## Papers", intro, "\n".join(lines)]), written


def _figures(
    paper: Paper, suite: str, rows: pd.DataFrame, out: Path, task_folder: Callable[[str], str]
) -> tuple[dict[str, str], list[Path]]:
    """Each table's figure: ``(table id → link from the page, PNGs drawn here)``.

    A paper figure is drawn from the suite's rows into ``papers/<paper>-<table>.png``; a task plot
    is linked when the report drew it.
    """
    links: dict[str, str] = {}
    drawn: list[Path] = []
    for table in paper.tables:
        if table.figure in PAPER_FIGURES:
            name = f"{paper.id}-{table.id}.png"
            path = draw(paper, table, suite, rows, out / "papers" / name)
            if path is not None:
                links[table.id] = name
                drawn.append(path)
            continue
        folder = task_folder(paper.task(table.task, suite))
        if table.figure and (out / folder / f"{table.figure}.png").is_file():
            links[table.id] = f"../{folder}/{table.figure}.png"
    return links, drawn
