"""Write the benchmark report: per-task plots and tables, and the index pages linking them.

Layout under ``out_dir``::

    index.md, index.html
    <task>/pareto_flops.png, quality_layers.png, pareto_latency_<hw>.png, pareto_memory_<hw>.png,
    compute_hist.png,
           table.md

Everything written is a function of the rows and samples only (no "generated at" clock time), so
re-running the report on the same results gives the same files.
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from markdown_it import MarkdownIt

from dynbench.analysis.controls import WINS, compare_to_controls
from dynbench.analysis.method_pairs import pairs_markdown
from dynbench.analysis.paper_pages import paper_pages
from dynbench.analysis.plots import compute_histogram, pareto_plot
from dynbench.analysis.roofline_check import check_markdown
from dynbench.analysis.tables import (
    format_sig,
    profile_note,
    quality_formats,
    quality_scale,
    separate_variants,
    summary_frame,
    synthetic_tasks,
    task_markdown,
    upper_bound_mask,
)
from dynbench.stats import seed_interval

logger = logging.getLogger(__name__)

SYNTHETIC_NOTE = (
    "**Synthetic data**: this task's inputs were generated here (synthesized speech or seeded toy data), not "
    "recorded; its numbers compare methods on those inputs and say nothing by themselves about real data."
)

__all__ = ["write_report"]

_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; }
th { background: #f3f3f3; }
tr:nth-child(even) td { background: #fafafa; }
img { max-width: 100%; height: auto; display: block; margin: 1em 0; }
code { background: #f3f3f3; padding: 0 0.2em; }
"""


def _slug(name: str) -> str:
    """A file-name-safe version of a task or hardware name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._") or "unnamed"


def _distinct(rows: pd.DataFrame, column: str) -> str:
    """Sorted distinct non-null values of a provenance column, or ``unknown``."""
    if column not in rows.columns:
        return "unknown"
    values = sorted({str(v) for v in rows[column].dropna()})
    return ", ".join(values) if values else "unknown"


def _flag(value: object) -> bool:
    """Read a flag that may arrive as bool, number, string or missing (CSV round trips)."""
    if isinstance(value, str):
        return value.strip().lower() in {"true", "1", "yes", "dirty"}
    if value is None or pd.isna(value):
        return False
    return bool(value)


def _sample_gap(samples: pd.DataFrame, task: str) -> str | None:
    """Why the task gets no compute histogram, or None when it can have one."""
    if samples.empty or "task" not in samples.columns or not (samples["task"] == task).any():
        return "no per-sample records"
    missing = [c for c in ("method", "method_label", "budget", "flops") if c not in samples.columns]
    if missing:
        return f"per-sample records lack columns {missing}"
    flops = samples.loc[samples["task"] == task, "flops"].to_numpy(dtype=float)
    return None if np.isfinite(flops).any() else "no per-sample FLOPs"


def _provenance(rows: pd.DataFrame) -> str:
    """One line naming the code, versions, machine and run times behind ``rows``."""
    commits = "unknown"
    if "git_sha" in rows.columns:
        dirty = rows["dirty"] if "dirty" in rows.columns else pd.Series(False, index=rows.index)
        pairs = {(str(sha)[:12], _flag(flag)) for sha, flag in zip(rows["git_sha"], dirty) if not pd.isna(sha)}
        commits = ", ".join(f"`{sha}`" + (" (dirty)" if flag else "") for sha, flag in sorted(pairs)) or "unknown"
    started = sorted({str(v) for v in rows["started_at"].dropna()}) if "started_at" in rows.columns else []
    when = "unknown" if not started else started[0] if len(started) == 1 else f"{started[0]} – {started[-1]}"
    parts = [
        f"git {commits}",
        f"dynbench {_distinct(rows, 'dynbench_version')}",
        f"torch {_distinct(rows, 'torch_version')}",
        f"machine {_distinct(rows, 'machine')}",
        f"runs started {when}",
    ]
    return "Provenance: " + " · ".join(parts) + "."


def _has(frame: pd.DataFrame, metric: str) -> bool:
    """Whether some operating point has both quality and ``metric``."""
    both = np.isfinite(frame[metric].to_numpy(dtype=float)) & np.isfinite(frame["quality"].to_numpy(dtype=float))
    return bool(both.any())


def _figure(
    title: str, path: Path, rel: str, draw: Callable[[Path], Path], missing: str | None, written: list[Path]
) -> str:
    """Draw one figure (or explain why not) and return its markdown."""
    if missing is not None:
        return f"- **{title}:** not measured ({missing})."
    written.append(draw(path))
    return f"![{title}]({rel})"


def _depth_points(summary: pd.DataFrame) -> pd.DataFrame:
    """Dense and the depth methods.

    Depth methods: those whose executed layers fall below the task's most at some budget. Width- and
    token-adaptive methods (always every layer) would only add vertical lines to a layers plot.
    """
    layers = summary["mean_layers"].to_numpy(dtype=float)
    finite = np.isfinite(layers)
    if not finite.any():
        return summary.iloc[:0]
    shallower = pd.Series(layers < np.nanmax(layers) - 1e-9, index=summary.index)
    varies = shallower.groupby(summary["method_label"]).transform("any").astype(bool)
    return summary[finite & ((summary["method"] == "dense") | varies).to_numpy()]


def _over_seeds(rows: pd.DataFrame, metric: str) -> str:
    """`` [low, high] over N seeds`` (percent) of a per-run metric.

    Nothing when fewer than two seeds ran.
    """
    per_seed = rows[rows["metric"] == metric].groupby("seed")["value"].first()
    if len(per_seed) < 2:
        return ""
    ci = seed_interval(per_seed.to_numpy(dtype=float))
    return f" [{100 * ci.low:.1f}, {100 * ci.high:.1f}] (95% t-interval over {ci.n} seeds)"


def _upper_bound_notes(rows: pd.DataFrame) -> str | None:
    """For methods that saw the evaluation labels: matching budget and selection-bias control table.

    Reads the ``matching_budget``, ``matching_budget_heldout``, ``quality_selection_half`` and
    ``quality_heldout_half`` rows (means over seeds, the first hardware); ``None`` when there are
    none.
    """
    metrics = ("quality", "mean_layers", "quality_selection_half", "quality_heldout_half")
    upper = rows[upper_bound_mask(rows) & rows["metric"].isin((*metrics, "matching_budget", "matching_budget_heldout"))]
    if upper.empty or not upper["metric"].eq("matching_budget").any():
        return None
    upper = upper[upper["hardware"] == upper.groupby("method_label")["hardware"].transform("min")]
    parts = []
    for label, grp in upper.groupby("method_label", sort=True):
        mean = grp.groupby(["budget", "metric"])["value"].mean().unstack("metric")
        quality = grp[grp["metric"] == "quality"]
        unit = str(quality["unit"].iloc[0]) if len(quality) else "quality"
        higher = bool(quality["higher_is_better"].map(_flag).iloc[0]) if len(quality) else True
        factor, q_label = quality_scale(unit, mean[[m for m in metrics if m in mean and m != "mean_layers"]].stack())
        q_fmt, _ = quality_formats(factor)  # as in the task's table: one unit and one format per quality
        match = mean["matching_budget"].dropna()
        held = mean["matching_budget_heldout"].dropna() if "matching_budget_heldout" in mean else pd.Series()
        text = (
            f"**{label} (upper bound)** matches the full model's quality ({unit} {'≥' if higher else '≤'} the full "
            f"model's) with **{100 * match.iloc[0]:.1f}%**{_over_seeds(grp, 'matching_budget')} of the layers on "
            "average (smallest knapsack capacity; the allocation is chosen with the evaluation labels on the samples "
            "it is scored on)."
        )
        if len(held):
            text += (
                f" Selection-bias control: scored on the held-out half, the smallest solved budget that still matches "
                f"is **{100 * held.iloc[0]:.0f}%**{_over_seeds(grp, 'matching_budget_heldout')}."
            )
        else:
            text += (
                " **No selection-bias control**: the task has no second view of its inputs (its augmentation is the "
                "identity), so these figures are the in-sample best and overstate what an allocation could reach."
            )
        header = f"| budget | mean layers | {q_label} | {q_label}, selection half | {q_label}, held-out half |"
        lines = [text, "", header, "|---:|---:|---:|---:|---:|"]
        for budget, row in mean.sort_index(ascending=False).iterrows():
            cells = [f"{budget:.3g}", format_sig(row.get("mean_layers", np.nan))]
            cells += [_quality_cell(row.get(m, np.nan), q_fmt) for m in metrics if m != "mean_layers"]
            lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def _quality_cell(value: float, fmt: Callable[[float], str]) -> str:
    """A quality in a table cell: ``fmt`` of the value, ``–`` when missing."""
    return fmt(float(value)) if value is not None and np.isfinite(value) else "–"


def _control_notes(samples: pd.DataFrame, summary: pd.DataFrame, task: str) -> str | None:
    """Each learned controller against its static and random controls at equal FLOPs.

    ``None`` without pairs.
    """
    table = compare_to_controls(samples, summary, task)
    if table.empty:
        return None
    frame = summary[summary["task"] == task]
    unit = str(frame["quality_unit"].dropna().iloc[0]) if frame["quality_unit"].notna().any() else "quality"
    factor, q_label = quality_scale(unit, pd.concat([table["quality"], table["control_quality"]]).dropna())
    q_fmt, d_fmt = quality_formats(factor)
    parts = [
        "Each learned operating point against its controls — `static`: the best single fixed configuration at "
        "matched FLOPs, chosen on validation data; `random`: random allocation at matched FLOPs — at the same mean "
        "FLOPs per sample: between two control budgets the control is the mixture that runs a share of the samples "
        "at each (its per-sample scores mixed in the same proportion), so both sides are scored on the same "
        "samples. Δ > 0: learned better; `[low, high]` is its 95% interval (paired bootstrap over samples with one "
        "seed, t over per-seed differences with more); the verdict is better / worse only when the interval "
        f"excludes 0, else tie. {len(table)} comparisons here: among true ties about 1 in 20 reads better or worse "
        "by chance."
    ]
    for (learned, control), grp in table.groupby(["learned", "control"], sort=False):
        counts = grp["verdict"].value_counts()
        wins = int(grp["verdict"].isin(WINS).sum())
        worse = int(grp["verdict"].isin(["worse", "worse, more FLOPs"]).sum())
        lines = [
            f"**{learned}** vs **{control}** ({grp['kind'].iloc[0]} control): learned better at {wins} of "
            f"{len(grp)} budgets, worse at {worse}, tie at {int(counts.get('tie', 0))}"
            f"{_network_note(frame, learned)}.",
            "",
            f"| budget | FLOPs ratio | {q_label}, learned | {q_label}, control at equal FLOPs | Δ [95%] | seeds "
            "| verdict |",
            "|---:|---:|---:|---:|---:|---:|---|",
        ]
        for row in grp.sort_values("budget", ascending=False).itertuples():
            interval = f" [{d_fmt(row.ci_low)}, {d_fmt(row.ci_high)}]" if np.isfinite(row.ci_low) else ""
            cells = [f"{row.budget:.3g}", format_sig(row.flops_ratio), q_fmt(row.quality), q_fmt(row.control_quality)]
            cells += [f"{d_fmt(row.delta)}{interval}", str(row.seeds)]
            cells += [row.verdict]
            lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def _network_note(frame: pd.DataFrame, label: str) -> str:
    """``; all on <network>`` when the method's reference network is not the dense backbone."""
    if "reference" not in frame.columns:
        return ""
    names = {str(v) for v in frame.loc[frame["method_label"] == label, "reference"].dropna()} - {"", "dense backbone"}
    return f"; learned and controls all run {names.pop()}" if len(names) == 1 else ""


def _task_figures(
    task: str, summary: pd.DataFrame, samples: pd.DataFrame, task_dir: Path, written: list[Path]
) -> list[str]:
    """Write one task's plots; markdown for each, with a "not measured" line for skipped ones."""
    rel = task_dir.name
    lines = []
    no_quality = "no `quality` rows" if not summary["quality"].notna().any() else None
    lines.append(
        _figure(
            "Quality vs FLOPs per sample",
            task_dir / "pareto_flops.png",
            f"{rel}/pareto_flops.png",
            lambda p: pareto_plot(summary, task, "flops_per_sample", hardware=None, out_path=p),
            no_quality or (None if _has(summary, "flops_per_sample") else "no `flops_per_sample` rows"),
            written,
        )
    )
    depth = _depth_points(summary)
    if no_quality is None and depth["method"].ne("dense").groupby(depth["method_label"]).any().sum() >= 2:
        lines.append(
            _figure(
                "Quality vs executed layers",
                task_dir / "quality_layers.png",
                f"{rel}/quality_layers.png",
                lambda p: pareto_plot(depth, task, "mean_layers", hardware=None, out_path=p),
                None,
                written,
            )
        )
    batch = int(summary["latency_batch_size"].iloc[0])
    for hardware, frame in summary.groupby("hardware", sort=False):
        hw, name = str(hardware), _slug(str(hardware))
        for metric, stem, what in (
            ("latency_ms", "latency", "latency"),
            ("peak_mem_bytes", "memory", "peak memory"),
        ):
            reason = no_quality or (
                None if _has(frame, metric) else f"no `{metric}` rows at batch size {batch} on {hw}"
            )
            lines.append(
                _figure(
                    f"Quality vs batch-{batch} {what} on {hw}",
                    task_dir / f"pareto_{stem}_{name}.png",
                    f"{rel}/pareto_{stem}_{name}.png",
                    lambda p, m=metric, h=hw: pareto_plot(summary, task, m, hardware=h, out_path=p),
                    reason,
                    written,
                )
            )
    lines.append(
        _figure(
            "Per-sample executed FLOPs",
            task_dir / "compute_hist.png",
            f"{rel}/compute_hist.png",
            lambda p: compute_histogram(samples, task, p, upper_bounds=_upper_bound_methods(summary)),
            _sample_gap(samples, task),
            written,
        )
    )
    return lines


def _upper_bound_methods(summary: pd.DataFrame) -> frozenset[str]:
    """Names of methods whose rows are flagged ``upper_bound`` (they saw the evaluation labels)."""
    return frozenset(summary.loc[summary["upper_bound"].astype(bool), "method"].astype(str))


def _join_blocks(items: list[str]) -> str:
    """Images as separate paragraphs, consecutive "not measured" bullets as one list."""
    out: list[str] = []
    for item in items:
        if out and item.startswith("- ") and out[-1].startswith("- "):
            out[-1] += "\n" + item
        else:
            out.append(item)
    return "\n\n".join(out)


def _write_task(
    task: str, rows: pd.DataFrame, summary: pd.DataFrame, samples: pd.DataFrame, out_dir: Path
) -> tuple[str, list[Path]]:
    """Write one task's plots and table; return its index section and the files written."""
    task_dir = out_dir / _slug(task)
    task_dir.mkdir(parents=True, exist_ok=True)
    task_rows = rows[rows["task"] == task]
    written: list[Path] = []
    figures = _task_figures(task, summary[summary["task"] == task], samples, task_dir, written)
    provenance = _provenance(task_rows)
    tables = task_markdown(task_rows, task, latency_batch_size=int(summary["latency_batch_size"].iloc[0]))
    table_path = task_dir / "table.md"
    table_path.write_text(f"# {task}\n\n{provenance}\n\n{tables}", encoding="utf-8")
    written.append(table_path)
    # Nest the table's hardware headings one level below the task heading of the index.
    nested = re.sub(r"^### ", "#### ", tables, flags=re.MULTILINE)
    section = "\n\n".join(
        [
            f"## {task}",
            *([SYNTHETIC_NOTE] if task in synthetic_tasks(task_rows) else []),
            provenance,
            "### Plots",
            _join_blocks(figures),
            *([f"### Upper bounds\n\n{notes}"] if (notes := _upper_bound_notes(task_rows)) else []),
            *([f"### Learned vs static vs random\n\n{cmp}"] if (cmp := _control_notes(samples, summary, task)) else []),
            *(
                [f"### Methods against each other\n\n{pairs}"]
                if (pairs := pairs_markdown(samples, summary, task))
                else []
            ),
            *([f"### Roofline model vs measured\n\n{check}"] if (check := check_markdown(task_rows, task)) else []),
            "### Tables",
            f"Also as [{task_dir.name}/table.md]({task_dir.name}/table.md).",
            nested.rstrip("\n"),
        ]
    )
    return section, written


def _samples_with_flags(samples: pd.DataFrame | None, rows: pd.DataFrame) -> pd.DataFrame:
    """Samples with a ``reconstructed`` column copied from the rows of the same run when absent."""
    if samples is None or samples.empty:
        return pd.DataFrame(columns=["task", "method", "method_label", "budget", "flops"])
    if "reconstructed" in samples.columns or "run_key" not in samples.columns or "reconstructed" not in rows.columns:
        return samples
    flags = rows.drop_duplicates("run_key").set_index("run_key")["reconstructed"].map(_flag)
    return samples.assign(reconstructed=samples["run_key"].map(flags).map(_flag))


def write_report(
    rows: pd.DataFrame,
    samples: pd.DataFrame | None,
    out_dir: Path | str,
    *,
    latency_batch_size: int = 1,
    failures: list[dict] | None = None,
) -> list[Path]:
    """Write the full report of a set of results.

    Per task: ``pareto_flops.png``, ``quality_layers.png`` (quality vs mean executed layers, when
    two or more methods change their depth with the budget), ``pareto_latency_<hw>.png`` and
    ``pareto_memory_<hw>.png`` per hardware target, ``compute_hist.png`` and ``table.md``, for upper
    bounds (the oracle) their matching budget and selection-bias table, and for learned controllers
    run beside their random baseline (``policy=random``, ``router=random``) the comparison at equal
    FLOPs; then ``index.md`` and a self-contained ``index.html`` (relative image links) with every
    plot, every table and a provenance line per task. A plot whose metric was not measured is
    skipped and the index says "not measured" in its place.

    Args:
        rows: result rows (``dynbench.types.ROW_COLUMNS``).
        samples: per-sample records (may be empty or ``None``: no histograms then).
        out_dir: directory to write into (created if needed).
        latency_batch_size: batch size whose latency, speedup and memory the plots and tables show.
        failures: failure records of runs that have not finished (``ResultStore.failures``),
            listed in a "Failed runs" section.

    Returns:
        Paths of all files written, index files last.

    Raises:
        ValueError: if ``rows`` is empty, lacks required columns, or ``latency_batch_size`` < 1.
    """
    if rows is None or rows.empty:
        raise ValueError("No result rows to report: the rows table is empty. Run `bench run` first, then report.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    original = (rows, samples)  # the paper pages read the runs' own labels
    rows, samples = separate_variants(rows, samples)  # quick and --limit runs get their own labels
    summary = summary_frame(rows, latency_batch_size=latency_batch_size)
    samples = _samples_with_flags(samples, rows)
    tasks = sorted({str(t) for t in summary["task"]})
    written: list[Path] = []
    sections = []
    for task in tasks:
        section, files = _write_task(task, rows, summary, samples, out)
        sections.append(section)
        written += files
    papers, paper_files = paper_pages(*original, out, lambda text, title: markdown_to_html(text, title=title), _slug)
    intro = (
        f"{len(rows)} result rows, tasks: {', '.join(tasks)}. Points are means over seeds; error bars and "
        "`[low, high]` are 95% intervals (over seeds with two or more, else over evaluation samples or timed "
        "calls: each table says which). Upper bounds (oracle) are dashed "
        "and excluded from the Pareto front; `(reconstructed)` marks methods whose mechanism dynbench "
        "reconstructed from an incomplete paper."
    )
    intro = f"{profile_note(rows)}\n\n{intro}"
    failed = [_failed_runs(failures)] if failures else []
    index_md = "\n\n".join(["# dynbench report", intro, *failed, *([papers] if papers else []), *sections]) + "\n"
    md_path, html_path = out / "index.md", out / "index.html"
    md_path.write_text(index_md, encoding="utf-8")
    html_path.write_text(markdown_to_html(index_md, title="dynbench report"), encoding="utf-8")
    logger.info("wrote report for %d task(s) to %s", len(tasks), out)
    return [*written, *paper_files, md_path, html_path]


def _failed_runs(failures: list[dict]) -> str:
    """The "Failed runs" section: one table row per run that failed and has not finished since."""
    lines = [
        "## Failed runs",
        "",
        f"{len(failures)} run(s) failed and have no rows in this report; `bench run` with the same arguments "
        "retries them. The log holds each traceback.",
        "",
        "| run | phase | error | log | failed at | attempts |",
        "|---|---|---|---|---|---:|",
    ]
    for rec in failures:
        cells = [
            str(rec.get("title") or rec["run_key"]),
            str(rec["phase"]),
            str(rec["error"]),
            f"`{rec['log']}`",
            str(rec["time"]),
            str(rec.get("attempts", 1)),
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return "\n".join(lines)


# CommonMark plus pipe tables; raw HTML in the markdown is escaped, never passed through.
_MARKDOWN = MarkdownIt("commonmark", {"html": False}).enable("table")


def markdown_to_html(markdown: str, *, title: str) -> str:
    """The report's markdown as one self-contained HTML page (markdown-it-py: CommonMark, tables).

    Args:
        markdown: the markdown text.
        title: page title.

    Returns:
        A complete HTML document with inline CSS.
    """
    head = '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
    head += f"<title>{html.escape(title)}</title>"
    body = _MARKDOWN.render(markdown)
    return f"{head}\n<style>{_CSS}</style>\n</head>\n<body>\n{body}</body>\n</html>\n"
