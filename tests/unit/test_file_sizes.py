"""Every Python file over 500 lines gives its reason in docs/architecture.md (a table)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 500
FOLDERS = ("src", "tests", "benchmarks", "scripts")


def long_files() -> dict[str, int]:
    found = {}
    for folder in FOLDERS:
        for path in (ROOT / folder).rglob("*.py"):
            n = len(path.read_text(encoding="utf-8").splitlines())
            if n > LIMIT:
                found[path.relative_to(ROOT).as_posix()] = n
    return found


def documented() -> dict[str, str]:
    """``path → reason`` from the table in the section."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text.split("### Files over 500 lines", 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| `([^`]+)` \| [^|]* \| (.+?) \|$", section, flags=re.M)
    return dict(rows)


def test_every_long_file_gives_its_reason():
    reasons = documented()
    missing = sorted(set(long_files()) - set(reasons))
    assert not missing, f"over {LIMIT} lines without a reason in docs/architecture.md: {missing}"
    assert all(len(reason.split()) >= 5 for reason in reasons.values())


def test_the_table_lists_no_file_that_is_short_now():
    stale = sorted(set(documented()) - set(long_files()))
    assert not stale, f"listed in 'Files over 500 lines' but {LIMIT} lines or fewer now (or gone): {stale}"
