"""The claims registry: each seed paper's tables and claims, read from one YAML file per paper.

A paper file (``papers/data/<id>.yaml``) declares, without code:

- the paper (title, authors, arXiv id, venue), its setting and what of it could be read;
- ``tasks``: roles (``text``, ``vision``, ``speech``) bound to a dynbench task for the quick suite
  (small, minutes; what CI runs) and for the full one (the paper-faithful recipes, ≥ 3 seeds where
  training is involved);
- ``suites``: the methods, seeds and profile of each suite (any field of a suite file except
  ``tasks``, which come from the roles);
- ``sweeps`` (optional): extra configurations of one role's task — model sizes for an isoFLOP
  study — each run with a few of the suites' methods (:class:`Sweep`); the role's own task is the
  sweep's reference point and its runs are reused;
- ``tables``: what to regenerate — a role (or a sweep over it), method labels and the row metrics;
- ``claims``: each headline claim with the paper's value or, when none is printed, the shape of the
  claim; the paper's setting and ours; an evidence tag (``V`` read in the paper or its code, ``A``
  abstract only, ``S`` a secondary source); whether the two settings are comparable at all and why
  not; how we measure it (:class:`Measure`) and what the claim predicts (:class:`Expectation`).

:func:`load_papers` parses every file strictly (every problem listed, as suite files are) and
checks that tables and claims name registered tasks and methods, metrics rows can hold, and roles
the suites run. The verdict rule is in :mod:`dynbench.papers.verdict`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatch
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from dynbench.config import ConfigError, SuiteSpec, build_dataclass, parse_plugin, suite_from_mapping
from dynbench.papers.sweeps import Sweep, parse_sweeps, sweep_problems, sweep_ref
from dynbench.registry import RegistryError, suggest, unknown_message
from dynbench.types import METRICS
from dynbench.validation import check_choices

Tag = Literal["V", "A", "S"]
MeasureKind = Literal["metric", "vs_dense", "paired", "isoflop", "missing"]
ExpectKind = Literal["near", "at_least", "at_most", "between", "positive", "negative", "tie"]
SuiteName = Literal["quick", "full"]
# the task's report plots (pareto_flops, quality_layers, compute_hist) or a figure drawn from the
# table's own rows (quality_layers_oracle, isoflop_bars: dynbench.analysis.paper_figures)
Figure = Literal[
    "", "pareto_flops", "quality_layers", "compute_hist", "quality_layers_oracle", "isoflop_bars", "learner_hist"
]

TAGS: Mapping[str, str] = {
    "V": "read in the paper or its official code",
    "A": "abstract only",
    "S": "a secondary source (notes, summaries)",
}
ROW_METRICS = frozenset(METRICS) | {"quality", "quality_delta", "mean_layers"}
"""Metrics every run's rows may hold; a method's own extras are its ``extra_metrics`` patterns."""


@dataclass(frozen=True)
class Measure:
    """How our number for a claim is read from stored rows."""

    # metric: a row metric; vs_dense: % change against dense; paired: Δ at equal FLOPs; isoflop: the
    # forward-FLOPs ratio of the best dense size to the cheapest MoD as good
    # (papers.measures.isoflop_point)
    kind: MeasureKind = "missing"
    task: str = ""  # a role of the paper's ``tasks``
    sweep: str = ""  # isoflop only: the sweep over the role's task (model sizes) whose runs are compared
    method: str = ""  # method label (``mod[router=random]``)
    against: str = ""  # paired: the other method's label; isoflop: the dense label
    metric: str = ""  # metric and vs_dense: the row metric
    budget: str = "lowest"  # a budget (``0.25``), ``lowest`` (below the full budget) or, paired, ``all``
    reason: str = ""  # missing only: which study is absent
    # a hardware target the suites run (``jetson-agx-xavier``: a modeled row); "" = the measured
    # targets, so a claim never mixes a modeled latency into a measured one
    hardware: str = ""

    def __post_init__(self) -> None:
        check_choices(self)


@dataclass(frozen=True)
class Expectation:
    """What the claim predicts of our measurement: a region of values (see :mod:`.verdict`)."""

    kind: ExpectKind = "positive"  # near: value ± tolerance; positive / negative: Δ > 0 / < 0; tie: Δ ≈ 0
    value: float = 0.0  # near, at_least, at_most: the paper's number in the measure's unit
    tolerance: float = 0.0  # near and tie: half-width of the region
    low: float = 0.0  # between: the region's ends
    high: float = 0.0

    def __post_init__(self) -> None:
        check_choices(self)


@dataclass(frozen=True)
class Claim:
    """One headline claim of a paper, with everything needed to judge it."""

    id: str
    text: str  # the claim as the paper states it (paraphrased to one sentence)
    tag: Tag  # evidence: V, A or S (see TAGS)
    paper_setting: str  # model, data, metric of the paper
    our_setting: str  # model, data, metric of our measurement
    measure: Measure
    expect: Expectation
    paper_value: float | None = None  # the printed number, in ``unit``; None when only a shape is claimed
    shape: str = ""  # the claim's shape when no number is printed ("A better than B at equal FLOPs")
    unit: str = ""  # unit of paper_value
    comparable: bool = True  # False: a verdict would compare different things (scale, model, metric)
    not_comparable_because: str = ""  # required when comparable is False

    def __post_init__(self) -> None:
        check_choices(self)


@dataclass(frozen=True)
class PaperTable:
    """A table (or figure) of the paper to regenerate from stored rows."""

    id: str
    title: str
    paper_ref: str  # where it is in the paper, and whether values are printed
    task: str  # a role of the paper's ``tasks``
    methods: tuple[str, ...]  # method labels, one block of rows each
    columns: tuple[str, ...]  # row metrics, one column each
    regenerable: bool = True  # False: the paper's table is not public; ours is shown beside its claim only
    figure: Figure = ""  # the report's plot of the task that goes with it on the Papers page ("" = none)
    sweep: str = ""  # a sweep of the paper: one block of rows per swept task (model size), "" = the role's task
    hardware: str = ""  # a hardware target the suites run (a modeled device's rows), "" = the measured targets

    def __post_init__(self) -> None:
        check_choices(self)


@dataclass(frozen=True)
class Paper:
    """One seed paper: its tables, its claims and the two suites that measure them."""

    id: str
    title: str
    authors: str
    arxiv: str
    venue: str
    paper_setting: str
    sources: str  # what of the paper could be read
    tasks: Mapping[str, Mapping[str, str]]  # role → {"quick": task, "full": task}
    suites: Mapping[str, SuiteSpec]  # "quick" and "full"
    tables: tuple[PaperTable, ...]
    claims: tuple[Claim, ...]
    sweeps: Mapping[str, Sweep]  # sweep id → Sweep (empty when the paper has none)
    path: Path

    @property
    def url(self) -> str:
        """The paper's arXiv page."""
        return f"https://arxiv.org/abs/{self.arxiv}"

    def task(self, role: str, suite: str) -> str:
        """The task spec that plays ``role`` in ``suite`` (``quick`` or ``full``)."""
        return self.tasks[role][suite]

    def sweep_tasks(self, sweep: str, suite: str) -> tuple[str, ...]:
        """The role's task of ``suite``, then the sweep's (the reference point first)."""
        s = self.sweeps[sweep]
        return (self.task(s.role, suite), *s.tasks(suite))

    def run_suites(self, suite: str) -> tuple[SuiteSpec, ...]:
        """What ``bench paper run`` runs for ``suite``: the suite, then one grid per sweep."""
        main = self.suites[suite]
        grids = tuple(
            dataclasses.replace(
                main,
                name=f"{main.name}-{sid}",
                tasks=tuple(parse_plugin(t) for t in sweep.tasks(suite)),
                methods=tuple(parse_plugin(m) for m in sweep.methods),
            )
            for sid, sweep in self.sweeps.items()
            if sweep.tasks(suite)
        )
        return (main, *grids)

    def suite_methods(self, suite: str) -> set[str]:
        """Every method label ``suite`` runs: the suite's and each sweep's."""
        return {m.label for m in self.suites[suite].methods} | {m for s in self.sweeps.values() for m in s.methods}

    def suite_tasks(self, suite: str) -> set[str]:
        """Every task label ``suite`` runs: each role's and each sweep's."""
        return {pair[suite] for pair in self.tasks.values()} | {t for s in self.sweeps.values() for t in s.tasks(suite)}


class PaperRegistryError(ConfigError):
    """A paper file is malformed or names things that do not exist; every problem is listed."""


DATA = "data"
_OPTIONAL = frozenset({"sweeps"})
_FIELDS = {f.name for f in dataclasses.fields(Paper)} - {"path"}


def paper_files() -> list[Path]:
    """Every paper file shipped with dynbench, sorted by name."""
    folder = Path(str(resources.files("dynbench.papers") / DATA))
    return sorted(folder.glob("*.yaml"))


def load_paper(path: Path) -> Paper:
    """Parse and check one paper file.

    Raises:
        PaperRegistryError: every problem in the file, each naming the file and the entry.
    """
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise PaperRegistryError([f"{path}: cannot be read as YAML ({exc})."]) from None
    if not isinstance(data, Mapping):
        raise PaperRegistryError([f"{path}: must hold a mapping (id:, title:, tables:, claims: …)."])
    errors: list[str] = []
    where = path.name
    unknown = sorted(set(data) - _FIELDS)
    missing = sorted(f for f in _FIELDS - _OPTIONAL if f not in data)
    for key in unknown:
        close = suggest(str(key), sorted(_FIELDS))
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        errors.append(f"{where}: unknown key {key!r}.{hint} Allowed: {', '.join(sorted(_FIELDS))}.")
    if missing:
        errors.append(f"{where}: missing keys {missing}.")
    if errors:
        raise PaperRegistryError(errors)
    tasks = _tasks(data["tasks"], where, errors)
    suites = _suites(data["suites"], tasks, where, errors)
    tables = tuple(t for t in (_table(t, where, errors) for t in data.get("tables") or ()) if t is not None)
    claims = tuple(c for c in (_claim(c, where, errors) for c in data.get("claims") or ()) if c is not None)
    sweeps = parse_sweeps(data.get("sweeps") or {}, where, errors)
    paper = Paper(
        id=str(data["id"]), title=str(data["title"]), authors=str(data["authors"]), arxiv=str(data["arxiv"]),
        venue=str(data["venue"]), paper_setting=str(data["paper_setting"]), sources=str(data["sources"]),
        tasks=tasks, suites=suites, tables=tables, claims=claims, sweeps=sweeps, path=path,
    )  # fmt: skip
    if paper.id != path.stem:
        errors.append(f"{where}: id {paper.id!r} differs from the file name; name the file {paper.id}.yaml.")
    errors += check_paper(paper)
    if errors:
        raise PaperRegistryError(errors)
    return paper


def _tasks(data: Any, where: str, errors: list[str]) -> dict[str, dict[str, str]]:
    """``role → {quick, full}``, each a task spec string."""
    out: dict[str, dict[str, str]] = {}
    if not isinstance(data, Mapping) or not data:
        errors.append(f"{where}: tasks must map roles to {{quick: TASK, full: TASK}}.")
        return out
    for role, pair in data.items():
        if not isinstance(pair, Mapping) or set(pair) != {"quick", "full"}:
            errors.append(f"{where}: tasks.{role} must give exactly quick: and full:, got {pair!r}.")
            continue
        try:  # rows name a task by its label (options sorted), so the registry does too
            out[str(role)] = {k: parse_plugin(str(v)).label for k, v in pair.items()}
        except ConfigError as exc:
            errors += [f"{where}: tasks.{role}: {e}" for e in exc.errors]
    return out


def _suites(data: Any, tasks: Mapping[str, Mapping[str, str]], where: str, errors: list[str]) -> dict[str, SuiteSpec]:
    """The quick and full suites, with each suite's tasks taken from the roles."""
    out: dict[str, SuiteSpec] = {}
    if not isinstance(data, Mapping) or set(data) != {"quick", "full"}:
        errors.append(f"{where}: suites must have exactly quick: and full:.")
        return out
    for name, body in data.items():
        if not isinstance(body, Mapping) or "tasks" in body:
            errors.append(f"{where}: suites.{name} must be a suite mapping without tasks: (they come from tasks:).")
            continue
        mapping = {"name": f"paper-{Path(where).stem}-{name}", **body}
        mapping["tasks"] = sorted({pair[name] for pair in tasks.values()})
        try:
            out[str(name)] = suite_from_mapping(mapping, where=f"{where} suites.{name}")
        except ConfigError as exc:
            errors += list(exc.errors)
    return out


def _table(data: Any, where: str, errors: list[str]) -> PaperTable | None:
    if not isinstance(data, Mapping):
        errors.append(f"{where}: every table must be a mapping, got {data!r}.")
        return None
    fields = {**data, "methods": tuple(data.get("methods") or ()), "columns": tuple(data.get("columns") or ())}
    table, problems = build_dataclass(PaperTable, fields, f"{where} table {data.get('id', '?')}")
    errors += problems
    return table


def _claim(data: Any, where: str, errors: list[str]) -> Claim | None:
    if not isinstance(data, Mapping):
        errors.append(f"{where}: every claim must be a mapping, got {data!r}.")
        return None
    here = f"{where} claim {data.get('id', '?')}"
    measure, p1 = build_dataclass(Measure, data.get("measure") or {}, f"{here}.measure")
    expect, p2 = build_dataclass(Expectation, data.get("expect") or {}, f"{here}.expect")
    fields = {k: v for k, v in data.items() if k not in ("measure", "expect")}
    for key in ("measure", "expect"):
        if key not in data:
            errors.append(f"{here}: missing {key}:.")
    errors += p1 + p2
    if measure is None or expect is None:
        return None
    fields["measure"], fields["expect"] = measure, expect
    claim, p3 = build_dataclass(Claim, fields, here)
    errors += p3
    return claim


def method_metrics(label: str) -> tuple[str, ...]:
    """Patterns of the metrics the method behind ``label`` adds to rows: its ``extra_metrics``."""
    from dynbench.methods.base import METHODS

    return tuple(METHODS.get(parse_plugin(label).name).extra_metrics)


def metric_known(metric: str, labels: tuple[str, ...]) -> bool:
    """Whether rows of runs of ``labels`` can hold ``metric``."""
    patterns = [p for label in labels for p in method_metrics(label)]
    return metric in ROW_METRICS or any(fnmatch(metric, p) for p in patterns)


def check_paper(paper: Paper) -> list[str]:
    """What a parsed paper names that does not exist, or claims without what a verdict needs."""
    from dynbench.methods.base import METHODS
    from dynbench.tasks.base import TASKS

    where = paper.path.name
    errors: list[str] = []
    for role, pair in paper.tasks.items():
        for suite, spec in pair.items():
            try:
                TASKS.get(parse_plugin(spec).name)
            except RegistryError as exc:
                errors.append(f"{where}: tasks.{role}.{suite}: {exc}")
    ran = {n: {s.label for s in suite.methods} for n, suite in paper.suites.items()}
    errors += sweep_problems(paper.sweeps, paper.tasks, where)

    def labels_ok(what: str, labels: tuple[str, ...], sweep: str = "") -> bool:
        ok = True
        extra = set(paper.sweeps[sweep].methods) if sweep in paper.sweeps else set()
        for label in labels:
            try:
                METHODS.get(parse_plugin(label).name)
            except RegistryError as exc:
                errors.append(f"{where}: {what}: {exc}")
                ok = False
            for suite, names in ran.items():
                if label not in names | extra:
                    errors.append(f"{where}: {what} needs {label!r}, which suites.{suite} does not run. Add it there.")
        return ok

    for table in paper.tables:
        what = f"table {table.id}"
        errors += _hardware_problems(paper, what, table.hardware)
        if table.task not in paper.tasks:
            errors.append(f"{where}: {what}: task role {table.task!r} is not in tasks: {sorted(paper.tasks)}.")
        errors += sweep_ref(paper.sweeps, where, what, table.sweep, table.task, required=False)
        if labels_ok(what, table.methods, table.sweep):
            for metric in table.columns:
                if not metric_known(metric, table.methods):
                    errors.append(f"{where}: {what}: no run of {list(table.methods)} writes metric {metric!r}.")
    for claim in paper.claims:
        errors += _hardware_problems(paper, f"claim {claim.id}", claim.measure.hardware)
        errors += _claim_problems(paper, claim, labels_ok)
        if claim.measure.kind == "isoflop":
            errors += sweep_ref(
                paper.sweeps, where, f"claim {claim.id}", claim.measure.sweep, claim.measure.task, required=True
            )
    ids = [t.id for t in paper.tables] + [c.id for c in paper.claims]
    if len(ids) != len(set(ids)):
        errors.append(f"{where}: table and claim ids must be unique, got {sorted(ids)}.")
    return errors


def _hardware_problems(paper: Paper, what: str, hardware: str) -> list[str]:
    """A table's or claim's ``hardware``: a registered target that every suite of the paper runs."""
    from dynbench.hardware.base import HARDWARE

    if not hardware:
        return []
    where = paper.path.name
    try:
        HARDWARE.get(hardware)
    except RegistryError as exc:
        return [f"{where}: {what}: hardware: {exc}"]
    return [
        f"{where}: {what} reads hardware {hardware!r}, which suites.{name} does not run. "
        "Add it to that suite's hardware:."
        for name, suite in paper.suites.items()
        if hardware not in {h.name for h in suite.hardware}
    ]


def _claim_problems(paper: Paper, claim: Claim, labels_ok: Any) -> list[str]:
    """Problems of one claim: what a verdict needs, and names that must exist."""
    where, what = paper.path.name, f"claim {claim.id}"
    errors: list[str] = []
    if claim.paper_value is None and not claim.shape:
        errors.append(f"{where}: {what}: give paper_value (the printed number) or shape (the claim's form).")
    if not claim.paper_setting or not claim.our_setting:
        errors.append(f"{where}: {what}: paper_setting and our_setting must both be given.")
    if not claim.comparable and not claim.not_comparable_because:
        errors.append(f"{where}: {what}: comparable is false; say why in not_comparable_because.")
    m = claim.measure
    if m.kind == "missing":
        if not m.reason:
            errors.append(f"{where}: {what}: a missing measure must say which study is absent (reason:).")
        return errors
    if m.task not in paper.tasks:
        errors.append(f"{where}: {what}: task role {m.task!r} is not in tasks: {sorted(paper.tasks)}.")
    labels = (m.method, m.against) if m.kind in ("paired", "isoflop") else (m.method,)
    if m.kind in ("paired", "isoflop") and not m.against:
        errors.append(f"{where}: {what}: a {m.kind} measure needs against: (the other method's label).")
        return errors
    if m.kind == "isoflop":
        labels_ok(what, labels, m.sweep)
        return errors
    if m.kind == "vs_dense":
        labels = (*labels, "dense")
    if labels_ok(what, labels) and m.kind in ("metric", "vs_dense") and not metric_known(m.metric, labels):
        errors.append(f"{where}: {what}: no run of {m.method!r} writes metric {m.metric!r}.")
    if m.budget not in ("lowest", "all"):
        try:
            float(m.budget)
        except ValueError:
            errors.append(f"{where}: {what}: budget {m.budget!r} must be a number, 'lowest' or (paired) 'all'.")
    elif m.budget == "all" and m.kind != "paired":
        errors.append(f"{where}: {what}: budget 'all' is for paired measures; give a number or 'lowest'.")
    return errors


def load_papers() -> dict[str, Paper]:
    """Every shipped paper, by id.

    Raises:
        PaperRegistryError: the problems of every malformed file, together.
    """
    papers: dict[str, Paper] = {}
    errors: list[str] = []
    for path in paper_files():
        try:
            paper = load_paper(path)
        except PaperRegistryError as exc:
            errors += list(exc.errors)
            continue
        papers[paper.id] = paper
    if errors:
        raise PaperRegistryError(errors)
    return papers


def get_paper(paper_id: str) -> Paper:
    """The paper ``paper_id``.

    Raises:
        PaperRegistryError: no such paper (with close matches and the list).
    """
    papers = load_papers()
    if paper_id not in papers:
        raise PaperRegistryError([unknown_message("paper", paper_id, papers)])
    return papers[paper_id]
