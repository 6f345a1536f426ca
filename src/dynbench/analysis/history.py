"""Metrics over successive commits, and the steps in them: ``bench history DIR...``.

Each input is a results folder or a baseline file from one commit (its rows carry ``git_sha``),
given oldest first. A *series* is one row key of :mod:`dynbench.analysis.compare` (task, method
label, budget, hardware, batch size, seed, metric) followed across the inputs.

Step detection, by the metric's compare rule (:class:`~dynbench.analysis.compare.GateConfig`):

- ``exact`` and ``near`` metrics (compute, structure, quality at a fixed seed) are deterministic, so
  a step is any consecutive change beyond the rule's relative tolerance;
- ``timing`` metrics are noisy: binary segmentation. The candidate split of a segment is the one
  that explains most of its variance (least squares); it is a step when the two sides' medians
  differ by more than the rule's threshold *and* every 95% interval on one side lies apart from
  every interval on the other (so one slow run among fast ones is not a step, a lasting shift is);
  each side is then searched again. Absolute times of different machine fingerprints are never put
  in one series (the machine is part of a timing series' key); ratios to dense are.

A step is a *regression* when it moves the metric the worse way (more compute, lower quality,
slower), else an *improvement*; ``bench history --fail-on-step`` exits 1 on a regression step whose
rule fails (timings warn under a gate with ``timing_fail: false``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from dynbench.analysis.compare import KEY, GateConfig, Rule, Side, finite_or_none, load_side, row_key

Direction = Literal["regression", "improvement"]


@dataclass(frozen=True)
class Point:
    """One input's value of a series."""

    commit: str  # short git sha, or the input's name when the sha is unknown or mixed
    value: float
    low: float | None  # the row's 95% interval (None: no interval)
    high: float | None


@dataclass(frozen=True)
class Step:
    """A detected change between two consecutive points of a series."""

    key: tuple  # the series' KEY values (and machine, for absolute times)
    index: int  # input position of the first point after the step
    previous: int  # input position of the last point before it (inputs lacking the series are skipped)
    before: float  # median before (within its segment)
    after: float  # median after
    direction: Direction
    fails: bool  # a regression whose rule fails

    @property
    def relative(self) -> float:
        """``(after − before) / |before|`` (inf when before is 0)."""
        return (self.after - self.before) / abs(self.before) if self.before else math.inf


@dataclass(frozen=True)
class History:
    """Every series and its steps, with the inputs' labels in order."""

    commits: list[str]
    series: dict[tuple, list[Point | None]]  # None where an input lacks the series
    higher_is_better: dict[tuple, bool]
    steps: list[Step]


def commit_label(side: Side, index: int) -> str:
    """The input's short sha, or ``#i`` (and its folder name) when its rows hold no single sha."""
    return side.git_sha[:8] if side.git_sha else f"#{index} {Path(side.source).name}"


def build(paths: Sequence[Path], gate: GateConfig | None = None) -> History:
    """Load the inputs in order and detect every series' steps.

    Raises:
        ValueError: fewer than two inputs, or an input that is not results or a baseline.
    """
    if len(paths) < 2:
        raise ValueError(
            f"bench history needs at least two results folders or baselines, oldest first; got {len(paths)}."
        )
    gate = gate or GateConfig()
    sides = [load_side(p) for p in paths]
    commits = [commit_label(s, i) for i, s in enumerate(sides)]
    commits = [f"{c} #{i}" if commits.count(c) > 1 else c for i, c in enumerate(commits)]  # one commit measured twice
    series: dict[tuple, list[Point | None]] = {}
    hib: dict[tuple, bool] = {}
    for i, side in enumerate(sides):
        for record in side.rows.to_dict(orient="records"):
            key = series_key(record, gate)
            if key is None:
                continue
            points = series.setdefault(key, [None] * len(sides))
            points[i] = Point(
                commits[i],
                float(record["value"]),
                finite_or_none(record.get("ci_low")),
                finite_or_none(record.get("ci_high")),
            )
            hib[key] = bool(record.get("higher_is_better") or False)
    steps = [s for key, pts in series.items() for s in detect(key, pts, gate.rule(key[6], key[0], key[1]), hib[key])]
    return History(commits, series, hib, steps)


def series_key(record: dict[str, Any], gate: GateConfig) -> tuple | None:
    """A row's series: its KEY, plus its machine for absolute times; None when not followed."""
    value = finite_or_none(record.get("value"))
    if value is None:
        return None
    key = row_key(record)
    rule = gate.rule(str(record["metric"]), str(record["task"]), str(record["method_label"]))
    if rule.kind == "ignore":
        return None
    return (*key, str(record.get("machine", ""))) if rule.same_machine else (*key, "")


def detect(key: tuple, points: Sequence[Point | None], rule: Rule, higher_is_better: bool) -> list[Step]:
    """The steps of one series under ``rule`` (the module docstring); missing points are skipped."""
    where = [i for i, p in enumerate(points) if p is not None]
    values = [points[i] for i in where]
    found: list[tuple[int, float, float]] = []  # (position in `values`, before, after)
    if rule.kind in ("exact", "near"):
        for j in range(1, len(values)):
            a, b = values[j - 1].value, values[j].value  # type: ignore[union-attr]
            if abs(b - a) > rule.rtol * max(abs(a), abs(b)):
                found.append((j, a, b))
    elif rule.kind == "timing":
        _segment(values, 0, len(values), rule.threshold, found)  # type: ignore[arg-type]
    steps = []
    for j, before, after in sorted(found):
        worse = (after < before) if higher_is_better else (after > before)
        direction: Direction = "regression" if worse else "improvement"
        steps.append(Step(key, where[j], where[j - 1], before, after, direction, worse and rule.fail))
    return steps


def _segment(points: list[Point], lo: int, hi: int, threshold: float, found: list) -> None:
    """Binary segmentation of ``points[lo:hi]`` (module docstring): append accepted splits."""
    if hi - lo < 2:
        return
    values = np.array([p.value for p in points[lo:hi]])
    best = None
    for k in range(lo + 1, hi):
        left, right = values[: k - lo], values[k - lo :]
        # the split that explains most of the segment's variance (least squares, as binary
        # segmentation does): n1·n2/n · (mean1 − mean2)²; it favours balanced, lasting shifts
        score = len(left) * len(right) / len(values) * (left.mean() - right.mean()) ** 2
        if best is None or score > best[0]:
            best = (score, k, float(np.median(left)), float(np.median(right)))
    assert best is not None  # hi - lo >= 2 gives at least one split
    _, k, left, right = best
    rel = abs(right - left) / abs(left) if left else math.inf
    if rel > threshold and _apart(points[lo:k], points[k:hi]):
        found.append((k, left, right))
        _segment(points, lo, k, threshold, found)
        _segment(points, k, hi, threshold, found)


def _apart(a: Sequence[Point], b: Sequence[Point]) -> bool:
    """Every interval of ``a`` lies apart from every interval of ``b`` (no interval: the value)."""
    a_lo, a_hi = (
        min(p.low if p.low is not None else p.value for p in a),
        max(p.high if p.high is not None else p.value for p in a),
    )
    b_lo, b_hi = (
        min(p.low if p.low is not None else p.value for p in b),
        max(p.high if p.high is not None else p.value for p in b),
    )
    return a_hi < b_lo or b_hi < a_lo


def steps_frame(history: History) -> pd.DataFrame:
    """One row per step: the series, where (commit before → after), the values, the direction."""
    records = []
    for s in history.steps:
        rec = dict(zip(KEY, s.key))
        rec.update(
            from_commit=history.commits[s.previous],
            to_commit=history.commits[s.index],
            before=s.before,
            after=s.after,
            relative=s.relative,
            direction=s.direction,
            fails=s.fails,
        )
        records.append(rec)
    columns = [*KEY, "from_commit", "to_commit", "before", "after", "relative", "direction", "fails"]
    return pd.DataFrame.from_records(records, columns=columns)


DEFAULT_PLOT_METRICS = ("flops_per_sample", "quality", "speedup_realized", "latency_ms")
"""What the history report draws per benchmark: compute, quality, realized speedup, latency."""


def write_report(history: History, out: Path, metrics: Sequence[str] = DEFAULT_PLOT_METRICS) -> list[Path]:
    """Write ``out/index.md`` and ``.html``: the steps, then a figure per task and method.

    Each figure draws ``metrics`` against the commits, a line per budget, steps marked (red worse,
    green better).

    Returns:
        The files written.
    """
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    from dynbench.analysis.plots import PLOT_DPI, PLOT_MARKERS, PLOT_RC
    from dynbench.analysis.report import markdown_to_html

    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    steps = steps_frame(history)
    lines = [
        "# dynbench history",
        "",
        f"{len(history.commits)} inputs, oldest first: " + ", ".join(f"`{c}`" for c in history.commits),
        "",
    ]
    lines += steps_markdown(steps)
    benches = sorted({(k[0], k[1]) for k in history.series if k[6] in metrics})
    x = np.arange(len(history.commits))
    for task, method in benches:
        shown = [m for m in metrics if any(k[0] == task and k[1] == method and k[6] == m for k in history.series)]
        with mpl.rc_context(PLOT_RC):
            fig, axes = plt.subplots(len(shown), 1, figsize=(8, 2.2 * len(shown) + 0.6), sharex=True, squeeze=False)
            for ax, metric in zip(axes[:, 0], shown):
                keys = sorted(
                    (k for k in history.series if k[0] == task and k[1] == method and k[6] == metric), key=str
                )
                for i, key in enumerate(keys):
                    pts = history.series[key]
                    ys = [p.value if p is not None else np.nan for p in pts]
                    label = f"b={key[2]:g}" + (f" bs={key[4]}" if metric in ("latency_ms", "speedup_realized") else "")
                    ax.plot(x, ys, marker=PLOT_MARKERS[i % len(PLOT_MARKERS)], ms=4, lw=1.2, label=label)
                for s in history.steps:
                    if s.key in keys:
                        ax.axvline(
                            s.index - 0.5, color="tab:red" if s.direction == "regression" else "tab:green", lw=1, ls=":"
                        )
                ax.set_ylabel(metric)
                ax.grid(alpha=0.3)
            axes[0, 0].set_title(f"{task} / {method}")
            axes[0, 0].legend(fontsize=7, ncol=4, loc="best")
            axes[-1, 0].set_xticks(x, history.commits, rotation=30, ha="right")
            fig.tight_layout()
            name = f"{task}__{method}".replace("/", "_").replace("[", "(").replace("]", ")") + ".png"
            fig.savefig(out / name, dpi=PLOT_DPI)
            plt.close(fig)
        written.append(out / name)
        lines += [f"## {task} / {method}", "", f"![{task} / {method}]({name})", ""]
    text = "\n".join(lines) + "\n"
    (out / "index.md").write_text(text, encoding="utf-8")
    (out / "index.html").write_text(markdown_to_html(text, title="dynbench history"), encoding="utf-8")
    return [out / "index.md", out / "index.html", *written]


def steps_markdown(steps: pd.DataFrame) -> list[str]:
    """The steps as a Markdown table (failing ones first), or a line saying there are none."""
    if steps.empty:
        return ["No steps: every series holds steady under its rule.", ""]
    header = "| direction | task / method | budget | batch | seed | metric | from → to | before | after | Δ |"
    out = [f"## Steps ({len(steps)})", "", header, "|---|---|---|---|---|---|---|---|---|---|"]
    for r in steps.sort_values(["fails", "direction"], ascending=[False, False]).itertuples():
        flag = r.direction.upper() if r.fails else r.direction
        rel = f"{r.relative:+.2%}" if math.isfinite(r.relative) else "–"
        out.append(f"| {flag} | {r.task} / {r.method_label} | {r.budget:g} | {r.batch_size} | {r.seed} | {r.metric} | "
                   f"`{r.from_commit}` → `{r.to_commit}` | {r.before:.6g} | {r.after:.6g} | {rel} |")  # fmt: skip
    return [*out, ""]
