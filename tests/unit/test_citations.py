"""Docstrings and comments cite only documents that are in the repository.

The design plan and the reference notes the project started from live outside the repository; a
reader of the code cannot open them, so the code must not send anyone there. Markdown files named in
prose must exist, except the files the report itself writes.
"""

from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted((ROOT / "src" / "dynbench").rglob("*.py"))
OUTSIDE = re.compile(r"DESIGN\s*§|\.\./shared|shared/reference|harness-anchors|statistics\.md|methods\.md|style\.md")
MARKDOWN = re.compile(r"(?<![\w/.-])([\w./-]+\.md)\b")
WRITTEN_BY_THE_REPORT = {"index.md", "table.md"}


def prose(path: Path) -> list[tuple[int, str]]:
    """``(line, text)`` of every comment and string token (docstrings included) of a module."""
    out = []
    for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        if tok.type in (tokenize.COMMENT, tokenize.STRING):
            out.append((tok.start[0], tok.string))
    return out


def test_no_citation_of_documents_outside_the_repository() -> None:
    bad = [f"{p.relative_to(ROOT)}:{line}" for p in SOURCES for line, text in prose(p) if OUTSIDE.search(text)]
    assert bad == [], f"cite files in the repository (README.md, docs/architecture.md) instead: {bad}"


def test_markdown_files_named_in_the_source_exist() -> None:
    known = {p.relative_to(ROOT).as_posix() for p in ROOT.glob("**/*.md") if ".venv" not in p.parts}
    names = {Path(k).name for k in known} | WRITTEN_BY_THE_REPORT
    bad = [
        f"{p.relative_to(ROOT)}:{line}: {name}"
        for p in SOURCES
        for line, text in prose(p)
        for name in MARKDOWN.findall(text)
        if name not in known and Path(name).name not in names
    ]
    assert bad == []
