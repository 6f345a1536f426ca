"""Compare two sets of result rows — a results folder or a saved baseline — metric by metric.

``bench compare BASE NEW`` and the CI gate use this. Rows are aligned on (task, method label,
budget, hardware, batch size, seed, metric); each aligned pair is classified by the rule of its
metric's kind (:data:`DEFAULT_RULES`, overridable per metric and per benchmark by a suite file's
``gate:`` section, :class:`GateConfig`):

- ``exact``: executed compute and structure (``flops_per_sample``, ``mean_layers``, exit and route
  shares, resident bytes) — deterministic on the CPU, so any change beyond a relative tolerance of
  1e-9 is a change;
- ``near``: quality at a fixed seed and measured memory — deterministic on one machine type, up to
  float rounding across builds: relative tolerance 1e-4 (quality) or 1e-3 (memory);
- ``timing``: latency, throughput, realized speedup — noisy: a change counts only when the two 95%
  intervals (over the timed calls) do not overlap *and* the medians differ by more than the
  metric's threshold (default 5%). Absolute times (``same_machine``) are compared only when the
  two rows' machine fingerprints match; ratios to dense always;
- ``ignore``: spreads and process-wide figures (``latency_ms_iqr``, ``process_peak_bytes``).

A change is a *regression* when it is worse by the row's ``higher_is_better`` (for compute and
structure, more is worse) and an *improvement* otherwise. Rows only in BASE are *missing*, rows only
in NEW *new*. :func:`failing` says what fails a comparison: every regression whose rule has
``fail`` set, and with ``strict`` (the CI gate) also every change of an exact or near metric in
either direction and every missing row — a change of compute on purpose updates the baseline in
the same commit.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from dynbench.validation import check_choices, check_range

RuleKind = Literal["exact", "near", "timing", "ignore"]
Status = Literal["regression", "improvement", "unchanged", "skipped", "missing", "new"]
KEY = ("task", "method_label", "budget", "hardware", "batch_size", "seed", "metric")
"""The columns two rows must share to be compared."""
BASELINE_COLUMNS = (
    *KEY, "value", "unit", "higher_is_better", "ci_low", "ci_high", "n", "ci_over", "machine", "git_sha",
    "method", "method_version", "task_version", "profile", "limit", "run_key",
)  # fmt: skip
"""What a baseline keeps of a row: the key, the value and its interval, what it was measured with —
not the start time or the suite name, which change on every run and would make each save a diff."""
BASELINE_FORMAT = "dynbench-baseline"
BASELINE_VERSION = 1


@dataclass(frozen=True)
class Rule:
    """How one metric's change is judged."""

    kind: RuleKind = "near"  # exact / near (relative tolerance), timing (intervals + threshold), ignore
    rtol: float = 1e-6  # exact and near: relative change allowed (of the larger magnitude; 0 compares equal)
    threshold: float = 0.05  # timing: smallest relative change of the median that counts
    same_machine: bool = False  # timing: compare only when both rows come from one machine fingerprint
    fail: bool = True  # a regression fails the comparison (False: it is reported as a warning)

    def __post_init__(self) -> None:
        check_choices(self, {"kind": "Use exact, near, timing or ignore."})
        check_range("Rule.rtol", self.rtol, 0, advice="Use e.g. 1e-9 (exact) or 1e-4 (near).")
        check_range("Rule.threshold", self.threshold, 0, advice="Use e.g. 0.05 (5%).")


EXACT = Rule("exact", rtol=1e-9)
DEFAULT_RULES: tuple[tuple[str, Rule], ...] = (
    # executed compute and what ran: deterministic given the fit and the inputs
    ("flops_per_sample", EXACT),
    ("controller_flops_per_sample", EXACT),
    ("flops_ratio", EXACT),
    ("speedup_theoretical", EXACT),
    ("flops_count_gap", EXACT),
    ("mean_layers", EXACT),
    ("exit_rate", EXACT),
    ("train_flops", EXACT),
    ("resident_bytes", EXACT),
    # quality at a fixed seed: a CPU fit is reproducible on one machine type, up to rounding
    ("quality", Rule("near", rtol=1e-4)),
    ("quality_delta", Rule("near", rtol=1e-4)),
    ("next_token_accuracy", Rule("near", rtol=1e-4)),
    ("top5_accuracy", Rule("near", rtol=1e-4)),
    # memory the profiler measured: the same allocations, the allocator may round differently
    ("peak_mem_bytes", Rule("near", rtol=1e-3)),
    ("transient_mem_bytes", Rule("near", rtol=1e-3)),
    # times: absolute ones only on one machine; ratios to dense always
    ("latency_ms", Rule("timing", same_machine=True)),
    ("latency_ms_p90", Rule("timing", same_machine=True)),
    ("throughput", Rule("timing", same_machine=True)),
    ("controller_ms", Rule("timing", same_machine=True)),
    ("speedup_realized", Rule("timing")),
    ("realization", Rule("timing")),
    ("controller_share", Rule("timing")),
    # a spread, and a process-wide figure that every other allocation moves
    ("latency_ms_iqr", Rule("ignore")),
    ("process_peak_bytes", Rule("ignore")),
    # method metrics (route shares, learner shares, depths): deterministic, float means of traces
    ("*", Rule("near", rtol=1e-6)),
)


@dataclass(frozen=True)
class GateConfig:
    """A suite file's ``gate:`` section: rule overrides per metric and per benchmark.

    ``metrics`` maps a metric name or ``fnmatch`` pattern to rule fields (``{kind, rtol, threshold,
    same_machine, fail}``); ``benchmarks`` maps ``task/method_label`` (patterns allowed) to such a
    mapping of its own, applied over ``metrics``; ``timing_fail`` sets ``fail`` of every timing
    rule at once (the CI suite sets it False: timings warn on shared runners).
    """

    metrics: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # metric pattern → rule fields
    benchmarks: Mapping[str, Mapping[str, Mapping[str, Any]]] = field(default_factory=dict)  # task/method → …
    timing_fail: bool = True  # False: timing regressions warn instead of failing

    def rule(self, metric: str, task: str = "", method_label: str = "") -> Rule:
        """The rule for ``metric`` of the benchmark ``task/method_label``."""
        base = next(r for pattern, r in DEFAULT_RULES if fnmatch.fnmatchcase(metric, pattern))
        if base.kind == "timing":
            base = dataclasses.replace(base, fail=self.timing_fail)
        overrides: dict[str, Any] = {}
        for pattern, fields_ in self.metrics.items():
            if fnmatch.fnmatchcase(metric, pattern):
                overrides.update(fields_)
        for bench, per_metric in self.benchmarks.items():
            if fnmatch.fnmatchcase(f"{task}/{method_label}", bench):
                for pattern, fields_ in per_metric.items():
                    if fnmatch.fnmatchcase(metric, pattern):
                        overrides.update(fields_)
        return dataclasses.replace(base, **overrides) if overrides else base


def gate_from_mapping(data: Mapping[str, Any] | None, where: str = "gate") -> GateConfig:
    """Parse a ``gate:`` section strictly.

    Raises:
        ValueError: unknown keys or rule fields, or bad values — every problem in one message.
    """
    from dynbench.registry import suggest

    data = data or {}
    problems: list[str] = []
    allowed = ("metrics", "benchmarks", "timing_fail")
    for key in data:
        if key not in allowed:
            close = suggest(str(key), allowed)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            problems.append(f"Unknown key '{key}' in {where}.{hint} Allowed: {', '.join(allowed)}.")
    fields_ = [f.name for f in dataclasses.fields(Rule)]

    def check(rules: Any, at: str) -> dict[str, dict[str, Any]]:
        if not isinstance(rules, Mapping):
            problems.append(
                f"{at} must map metric names to rule fields, got {rules!r}. E.g. latency_ms: {{threshold: 0.2}}."
            )
            return {}
        out: dict[str, dict[str, Any]] = {}
        for metric, spec in rules.items():
            if not isinstance(spec, Mapping):
                problems.append(f"{at}.{metric} must be a mapping of rule fields ({', '.join(fields_)}), got {spec!r}.")
                continue
            for name in spec:
                if name not in fields_:
                    close = suggest(str(name), fields_)
                    hint = f" Did you mean: {', '.join(close)}?" if close else ""
                    problems.append(
                        f"Unknown rule field '{name}' in {at}.{metric}.{hint} Allowed: {', '.join(fields_)}."
                    )
            try:
                Rule(**{k: v for k, v in spec.items() if k in fields_})
            except (ValueError, TypeError) as exc:
                problems.append(f"{at}.{metric}: {exc}")
            out[str(metric)] = dict(spec)
        return out

    metrics = check(data.get("metrics", {}), f"{where}.metrics")
    benchmarks: dict[str, dict[str, dict[str, Any]]] = {}
    raw = data.get("benchmarks", {})
    if not isinstance(raw, Mapping):
        problems.append(f"{where}.benchmarks must map 'task/method' to metric rules, got {raw!r}.")
    else:
        for bench, rules in raw.items():
            if "/" not in str(bench):
                problems.append(f"{where}.benchmarks key '{bench}' must be 'task/method_label' (patterns allowed).")
            benchmarks[str(bench)] = check(rules, f"{where}.benchmarks.{bench}")
    timing_fail = data.get("timing_fail", True)
    if not isinstance(timing_fail, bool):
        problems.append(f"{where}.timing_fail must be true or false, got {timing_fail!r}.")
    if problems:
        raise ValueError(" ".join(problems))
    return GateConfig(metrics, benchmarks, bool(timing_fail))


@dataclass(frozen=True)
class Change:
    """One aligned (or unmatched) row pair and its verdict."""

    key: tuple  # the KEY columns' values
    status: Status
    base: float | None
    new: float | None
    rule: RuleKind
    fails: bool  # this change fails the comparison
    note: str = ""  # why (tolerance, intervals, machines differ)

    @property
    def relative(self) -> float | None:
        """``(new − base) / |base|``, or None when either is missing or base is 0."""
        if self.base is None or self.new is None or self.base == 0:
            return None
        return (self.new - self.base) / abs(self.base)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able record."""
        out = dict(zip(KEY, self.key))
        out.update(status=self.status, base=self.base, new=self.new, relative=self.relative, rule=self.rule)
        out.update(fails=self.fails, note=self.note)
        return out


@dataclass(frozen=True)
class Side:
    """One side of a comparison: its rows and where they came from."""

    rows: pd.DataFrame
    source: str  # the folder or baseline file
    git_sha: str  # the commit the rows were measured at ("" when unknown or mixed)
    machines: tuple[str, ...]  # every machine fingerprint among the rows


def load_side(path: Path) -> Side:
    """Rows of a results folder or a baseline file (:func:`save_baseline`).

    Raises:
        ValueError: the path does not exist, or holds no rows, or is not a baseline.
    """
    if path.is_dir():
        from dynbench import api

        rows, _ = api.load_results(path)
        if rows.empty:
            raise ValueError(
                f"Results folder {path} holds no finished runs. Give a folder bench run wrote, or a baseline file."
            )
    elif path.is_file():
        rows = read_baseline(path)
    else:
        raise ValueError(
            f"{path} does not exist. Give a results folder (bench run --out) or a baseline file (bench baseline save)."
        )
    shas = sorted(set(rows["git_sha"].dropna().astype(str))) if "git_sha" in rows else []
    machines = tuple(sorted(set(rows["machine"].dropna().astype(str)))) if "machine" in rows else ()
    return Side(rows, str(path), shas[0] if len(shas) == 1 else "", machines)


def save_baseline(results: Path, out: Path) -> int:
    """Write the rows of ``results`` as a baseline file: a header line, then one row per line.

    The header records the format, the git sha(s) and machine fingerprint(s) the rows carry and when
    it was saved. Written to a temporary name and renamed: an interrupted save leaves the old file.

    Returns:
        The number of rows written.

    Raises:
        ValueError: ``results`` is not a results folder with runs.
    """
    import datetime

    if not results.is_dir():
        raise ValueError(f"{results} is not a results folder. Save a baseline from the --out folder of bench run.")
    side = load_side(results)
    rows = side.rows.sort_values(list(KEY), kind="stable")
    rows = rows[[c for c in BASELINE_COLUMNS if c in rows.columns]]
    header = {
        "format": BASELINE_FORMAT,
        "version": BASELINE_VERSION,
        "git_sha": sorted(set(rows["git_sha"].dropna().astype(str))),
        "machines": list(side.machines),
        "saved_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "rows": len(rows),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(json.dumps(header, sort_keys=True) + "\n")
        for record in rows.to_dict(orient="records"):
            f.write(json.dumps({k: _plain(v) for k, v in record.items()}, sort_keys=True) + "\n")
    tmp.replace(out)
    return len(rows)


def _plain(value: Any) -> Any:
    """JSON-able: NaN → None, numpy scalars → Python ones."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def read_baseline(path: Path) -> pd.DataFrame:
    """The rows of a baseline file.

    Raises:
        ValueError: not a baseline file (no header, another format, a newer version, bad JSON).
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    try:
        header = json.loads(lines[0]) if lines else {}
        records = [json.loads(line) for line in lines[1:] if line.strip()]
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{path} is not a baseline file (bad JSON: {exc}). Make one with bench baseline save R --out FILE."
        ) from None
    if not isinstance(header, dict) or header.get("format") != BASELINE_FORMAT:
        raise ValueError(
            f"{path} is not a baseline file (no '{BASELINE_FORMAT}' header). "
            "Make one with bench baseline save R --out FILE."
        )
    if int(header.get("version", 0)) > BASELINE_VERSION:
        raise ValueError(
            f"{path} is baseline version {header['version']}; this dynbench reads {BASELINE_VERSION}. Upgrade dynbench."
        )
    if not records:
        raise ValueError(f"Baseline {path} holds no rows. Save it again from a results folder with finished runs.")
    return pd.DataFrame.from_records(records)


def compare(base: Side, new: Side, gate: GateConfig | None = None, *, strict: bool = False) -> list[Change]:
    """Every aligned metric's :class:`Change`, then the missing and the new rows, in key order."""
    gate = gate or GateConfig()
    b, n = _indexed(base.rows), _indexed(new.rows)
    changes: list[Change] = []
    for key in sorted(set(b) | set(n), key=lambda k: tuple(str(x) for x in k)):
        if key not in n:
            changes.append(Change(key, "missing", _value(b[key]), None, "exact", strict, "only in BASE"))
        elif key not in b:
            changes.append(Change(key, "new", None, _value(n[key]), "exact", False, "only in NEW"))
        else:
            rule = gate.rule(str(key[KEY.index("metric")]), str(key[0]), str(key[1]))
            changes.append(judge(key, b[key], n[key], rule, strict=strict))
    return changes


def _indexed(rows: pd.DataFrame) -> dict[tuple, Mapping[str, Any]]:
    """Rows by their KEY (a repeated key keeps the last row: a re-measured run)."""
    missing = [c for c in KEY if c not in rows.columns]
    if missing:
        raise ValueError(
            f"Rows lack the column(s) {missing}: not dynbench result rows. Give a results folder or baseline."
        )
    out: dict[tuple, Mapping[str, Any]] = {}
    for record in rows.to_dict(orient="records"):
        key = row_key(record)
        out[key] = record
    return out


def row_key(record: Mapping[str, Any]) -> tuple:
    """A row's KEY values; budgets rounded to 9 digits, so 0.1 + 0.2 and 0.3 are one budget."""
    return tuple(round(record[c], 9) if isinstance(record[c], float) else record[c] for c in KEY)


def _value(row: Mapping[str, Any]) -> float | None:
    return finite_or_none(row.get("value"))


def _worse(row: Mapping[str, Any], delta: float) -> bool:
    """Whether a change by ``delta`` is worse for this row's metric (more compute is worse)."""
    hib = row.get("higher_is_better")
    higher_is_better = bool(hib) if hib is not None and not (isinstance(hib, float) and math.isnan(hib)) else False
    return delta < 0 if higher_is_better else delta > 0


def judge(key: tuple, base: Mapping[str, Any], new: Mapping[str, Any], rule: Rule, *, strict: bool = False) -> Change:
    """One aligned pair under ``rule`` (the module docstring's kinds)."""
    b, n = _value(base), _value(new)
    if rule.kind == "ignore":
        return Change(key, "skipped", b, n, rule.kind, False, "not compared (a spread or a process-wide figure)")
    if b is None or n is None:
        status: Status = "unchanged" if b is None and n is None else "regression"
        return Change(key, status, b, n, rule.kind, status != "unchanged" and rule.fail, "a value is missing")
    if rule.kind == "timing":
        return _judge_timing(key, base, new, rule)
    scale = max(abs(b), abs(n))
    if abs(n - b) <= rule.rtol * scale:
        return Change(key, "unchanged", b, n, rule.kind, False, f"within rtol {rule.rtol:g}")
    worse = _worse(new, n - b)
    status = "regression" if worse else "improvement"
    fails = (worse and rule.fail) or strict
    return Change(key, status, b, n, rule.kind, fails, f"beyond rtol {rule.rtol:g}")


def _judge_timing(key: tuple, base: Mapping[str, Any], new: Mapping[str, Any], rule: Rule) -> Change:
    b, n = float(base["value"]), float(new["value"])
    if rule.same_machine and base.get("machine") != new.get("machine"):
        return Change(key, "skipped", b, n, rule.kind, False, "absolute time on different machines")
    bl, bh, nl, nh = (
        finite_or_none(base.get("ci_low")),
        finite_or_none(base.get("ci_high")),
        finite_or_none(new.get("ci_low")),
        finite_or_none(new.get("ci_high")),
    )
    if None in (bl, bh, nl, nh):
        return Change(key, "skipped", b, n, rule.kind, False, "no interval on one side")
    apart = nl > bh or nh < bl  # type: ignore[operator]
    rel = abs(n - b) / abs(b) if b else math.inf
    if not apart or rel <= rule.threshold:
        why = "intervals overlap" if not apart else f"within {rule.threshold:.0%}"
        return Change(key, "unchanged", b, n, rule.kind, False, why)
    worse = _worse(new, n - b)
    status: Status = "regression" if worse else "improvement"
    note = f"intervals apart, beyond {rule.threshold:.0%}" + ("" if rule.fail or not worse else " (warning only)")
    return Change(key, status, b, n, rule.kind, worse and rule.fail, note)


def finite_or_none(x: Any) -> float | None:
    """``x`` as a float; None when missing, not a number or NaN (a row's optional interval)."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def failing(changes: Sequence[Change]) -> list[Change]:
    """The changes that fail the comparison (exit 1)."""
    return [c for c in changes if c.fails]
