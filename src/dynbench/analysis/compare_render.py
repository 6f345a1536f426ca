"""``bench compare`` output: Markdown for a pull request, JSON, JUnit XML, the terminal's rows.

:mod:`dynbench.analysis.compare` decides; this module only writes.

Every format leads with the verdict and the counts; Markdown and the terminal list the changes
(regressions first, then improvements, missing and new rows) and leave the unchanged ones out, so a
reviewer sees what moved; JSON and JUnit hold every compared pair.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from xml.sax.saxutils import quoteattr

from dynbench.analysis.compare import KEY, Change, Side, failing

ORDER = ("regression", "improvement", "missing", "new", "skipped", "unchanged")
"""How changes are listed: what fails a review first."""


def headline(changes: Sequence[Change]) -> str:
    """``FAIL: 1 regression …`` or ``OK: …`` with every status's count."""
    counts = Counter(c.status for c in changes)
    tally = ", ".join(f"{counts[s]} {s}" for s in ORDER if counts[s])
    n_fail = len(failing(changes))
    verdict = f"FAIL ({n_fail} failing)" if n_fail else "OK"
    return f"{verdict}: {tally or 'nothing to compare'}"


def listed(changes: Sequence[Change], *, quiet: bool = False) -> list[Change]:
    """The changes worth showing, failing ones first, in :data:`ORDER`.

    With ``quiet`` (the terminal's default) only what fails or warns: failing changes, regressions
    that only warn and missing rows; improvements and new rows are counted in the headline.
    """
    shown = [c for c in changes if c.status not in ("unchanged", "skipped") or c.fails]
    if quiet:
        shown = [c for c in shown if c.fails or c.status in ("regression", "missing")]
    return sorted(shown, key=lambda c: (not c.fails, ORDER.index(c.status)))


def cells(change: Change) -> list[str]:
    """A table line: status, benchmark, budget, hardware, batch, seed, metric, base, new, Δ, why."""
    key = dict(zip(KEY, change.key))
    rel = change.relative
    status = change.status.upper() if change.fails else change.status
    return [
        status,
        f"{key['task']} / {key['method_label']}",
        f"{key['budget']:g}" if isinstance(key["budget"], float) else str(key["budget"]),
        str(key["hardware"]),
        str(key["batch_size"]),
        str(key["seed"]),
        str(key["metric"]),
        _num(change.base),
        _num(change.new),
        "–" if rel is None else f"{rel:+.3%}",
        change.note,
    ]


HEADER = ["status", "task / method", "budget", "hardware", "batch", "seed", "metric", "base", "new", "Δ", "rule"]


def _num(x: float | None) -> str:
    return "–" if x is None else f"{x:.6g}"


def markdown(changes: Sequence[Change], base: Side, new: Side) -> str:
    """A pull-request comment: verdict, the two sides, and a table of what changed."""
    lines = [
        f"**dynbench compare — {headline(changes)}**",
        "",
        f"BASE `{base.source}` ({_sha(base)}) → NEW `{new.source}` ({_sha(new)}).",
    ]
    if set(base.machines) != set(new.machines):
        lines.append("Machines differ: absolute times were not compared; ratios to dense were.")
    shown = listed(changes)
    if shown:
        lines += ["", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in cells(ch)) + " |" for ch in shown]
    else:
        lines += ["", "Nothing changed beyond its rule."]
    lines += [
        "",
        "Rules: executed FLOPs, layers and structure exact (rtol 1e-9); quality near (rtol 1e-4); times only when "
        "the 95% intervals are apart and the median moved more than the threshold. UPPER-CASE = fails.",
    ]
    return "\n".join(lines) + "\n"


def _sha(side: Side) -> str:
    return side.git_sha[:12] if side.git_sha else "commit unknown or mixed"


def as_json(changes: Sequence[Change], base: Side, new: Side) -> str:
    """Every compared pair, the verdict and both sides' provenance."""
    doc = {
        "verdict": "fail" if failing(changes) else "ok",
        "headline": headline(changes),
        "base": {"source": base.source, "git_sha": base.git_sha, "machines": list(base.machines)},
        "new": {"source": new.source, "git_sha": new.git_sha, "machines": list(new.machines)},
        "changes": [c.as_dict() for c in changes],
    }
    return json.dumps(doc, indent=1, default=str) + "\n"


def junit(changes: Sequence[Change]) -> str:
    """A ``<testcase>`` per compared pair (classname task.method; name budget, batch, seed, metric).

    A failing change is a ``<failure>``; a regression that only warns and a skipped pair are
    ``<skipped>`` with the reason, so CI dashboards show them without failing.
    """
    cases = []
    for c in changes:
        key = dict(zip(KEY, c.key))
        name = f"budget={key['budget']} batch={key['batch_size']} seed={key['seed']} {key['metric']}"
        classname = f"{key['task']}.{key['method_label']}"
        head = f"<testcase classname={quoteattr(classname)} name={quoteattr(name)}"
        message = f"{c.status}: base {_num(c.base)} → new {_num(c.new)} ({c.note})"
        if c.fails:
            cases.append(f"{head}><failure message={quoteattr(message)}/></testcase>")
        elif c.status in ("regression", "skipped"):
            cases.append(f"{head}><skipped message={quoteattr(message)}/></testcase>")
        else:
            cases.append(f"{head}/>")
    n_fail = len(failing(changes))
    n_skip = sum(1 for c in changes if not c.fails and c.status in ("regression", "skipped"))
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<testsuite name="dynbench-compare" tests="{len(changes)}" failures="{n_fail}" skipped="{n_skip}">\n'
        + "\n".join(cases)
        + "\n</testsuite>\n"
    )
