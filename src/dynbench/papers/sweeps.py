"""Paper sweeps: extra configurations of one role's task (model sizes), each run with a few methods.

A paper file's optional ``sweeps:`` maps ids to :class:`Sweep`; :mod:`dynbench.papers.registry`
parses them (:func:`parse_sweeps`), checks them (:func:`sweep_problems`, :func:`sweep_ref`), and
``Paper.run_suites`` turns each into one more grid of runs. MoD's isoFLOP study (table M1) is one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dynbench.config import ConfigError, build_dataclass, parse_plugin
from dynbench.registry import RegistryError, unknown_message


@dataclass(frozen=True)
class Sweep:
    """Extra configurations of one role's task (e.g. model sizes), each run with a few methods.

    The role's own task is the sweep's reference point: its runs come from the suite and are
    reused, so a sweep lists only the configurations it adds. Each suite runs its sweeps as one
    more grid (the sweep's tasks × the sweep's methods, the suite's seeds and profile).
    """

    role: str = ""  # the role whose task is swept (a key of the paper's ``tasks``)
    methods: tuple[str, ...] = ()  # method labels run on every swept task (dense and one MoD, not every control)
    quick: tuple[str, ...] = ()  # task specs the quick suite adds (the role's quick task with options)
    full: tuple[str, ...] = ()  # task specs the full suite adds (the role's full task with options)

    def tasks(self, suite: str) -> tuple[str, ...]:
        """The task labels ``suite`` (``quick`` or ``full``) adds."""
        return tuple(parse_plugin(spec).label for spec in (self.quick if suite == "quick" else self.full))


def parse_sweeps(data: Any, where: str, errors: list[str]) -> dict[str, Sweep]:
    """``sweep id → Sweep`` from a paper file's ``sweeps:``, parsed strictly (with did-you-mean)."""
    if not isinstance(data, Mapping):
        errors.append(f"{where}: sweeps must map ids to {{role:, methods:, quick: [...], full: [...]}}, got {data!r}.")
        return {}
    out: dict[str, Sweep] = {}
    for sid, body in data.items():
        if not isinstance(body, Mapping):
            errors.append(f"{where}: sweeps.{sid} must be a mapping (role:, methods:, quick:, full:), got {body!r}.")
            continue
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in body.items()}
        sweep, problems = build_dataclass(Sweep, fields, f"{where} sweeps.{sid}")
        errors += problems
        if sweep is not None:
            try:
                sweep.tasks("quick"), sweep.tasks("full")
                out[str(sid)] = sweep
            except ConfigError as exc:
                errors += [f"{where}: sweeps.{sid}: {e}" for e in exc.errors]
    return out


def sweep_problems(sweeps: Mapping[str, Sweep], tasks: Mapping[str, Mapping[str, str]], where: str) -> list[str]:
    """A sweep must vary its role's task (same task, other options) and name methods that exist.

    Args:
        sweeps: the paper's sweeps.
        tasks: the paper's roles, ``role → {quick: task, full: task}``.
        where: the paper file's name, for the messages.
    """
    from dynbench.methods.base import METHODS
    from dynbench.tasks.base import TASKS

    errors: list[str] = []
    for sid, sweep in sweeps.items():
        what = f"sweeps.{sid}"
        if sweep.role not in tasks:
            errors.append(f"{where}: {what}: {unknown_message('task role', sweep.role, tasks)}")
            continue
        if not sweep.methods:
            errors.append(
                f"{where}: {what}: methods is empty; list the methods to run on each size, e.g. [dense, mod]."
            )
        for label in sweep.methods:
            try:
                METHODS.get(parse_plugin(label).name)
            except RegistryError as exc:
                errors.append(f"{where}: {what}: {exc}")
        for suite in ("quick", "full"):
            base = parse_plugin(tasks[sweep.role][suite]).name
            for label in sweep.tasks(suite):
                spec = parse_plugin(label)
                if spec.name != base:
                    errors.append(f"{where}: {what}.{suite}: {label!r} is not the role's task {base!r}; a sweep "
                                  f"varies that task's options, e.g. {base}[model.d_model=64].")  # fmt: skip
                    continue
                try:
                    cls = TASKS.get(spec.name)
                except RegistryError:
                    continue  # the role's own task is unknown: reported with the roles
                _, problems = build_dataclass(cls.Config, spec.options_dict(), f"{where} {what}.{suite} task {label}")
                errors += problems
    return errors


def sweep_ref(
    sweeps: Mapping[str, Sweep], where: str, what: str, sweep: str, role: str, *, required: bool
) -> list[str]:
    """Problems of a table's or claim's ``sweep:`` (it must exist and sweep the same role)."""
    if not sweep:
        return [f"{where}: {what}: an isoflop measure needs sweep: (one of {sorted(sweeps)})."] if required else []
    if sweep not in sweeps:
        return [f"{where}: {what}: {unknown_message('sweep', sweep, sweeps)}"]
    if sweeps[sweep].role != role:
        return [f"{where}: {what}: sweep {sweep!r} sweeps role {sweeps[sweep].role!r}, not {role!r}."]
    return []
