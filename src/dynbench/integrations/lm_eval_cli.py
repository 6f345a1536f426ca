r"""lm-eval's own command line, in a process that knows the ``dynbench`` model and shipped tasks.

    python -m dynbench.integrations.lm_eval_cli --model dynbench \
        --model_args task=shakespeare,method=layer_skip,budget=0.5 \
        --tasks dynbench_shakespeare_ppl,dynbench_shakespeare_cloze --limit 20

Every argument is lm-eval's (``lm_eval --help``); the output is lm-eval's, followed by dynbench's
FLOPs table. This module also holds what a Python caller needs for the same: :func:`task_manager`
over the shipped tasks and :func:`format_summary` for the FLOPs summary that
:class:`~dynbench.integrations.lm_eval.DynbenchLM` reports.

How lm-eval finds ``--model dynbench``: lm-eval 0.4.13 looks models up in a registry that only its
own modules fill and has no plugin discovery (lm-eval issue #1621), so a third-party model is known
only in a process that imported its module. Three ways, from the most to the least convenient today:

- this wrapper: lm-eval's CLI, unchanged, after importing :mod:`dynbench.integrations.lm_eval`
  (which registers ``dynbench``); any task name works;
- lm-eval's own ``lm_eval --model dynbench --tasks <path>``, when the shipped tasks are given by
  path (the folder of :func:`tasks_dir` or YAML files): lm-eval resolves their ``!function`` hooks
  before it builds the model, and importing :mod:`dynbench.lm_eval_tasks` registers it. Task *names*
  fail there (resolved after the model), and lm-eval indexes its own ~10k tasks first;
- the ``lm_eval.models`` entry point (``pyproject.toml``): the group that lm-eval's entry-point
  discovery (upstream PR #4013, merged after the 0.4.13 release) reads, so later releases need
  neither trick.

For the duration of the call the wrapper also changes two things:

- the shipped task folder (:func:`tasks_dir`) is added to lm-eval's task search
  path, so ``--include_path`` is not needed for the ``dynbench_*`` tasks;
- when every task asked for is a shipped one (or a YAML file or folder), lm-eval's built-in tasks
  are not indexed (``TaskManager(include_defaults=False)``), which saves about 16 s a run. Ask for
  any other task name and they are.
"""

from __future__ import annotations

import importlib.resources
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock


def tasks_dir() -> Path:
    """The folder of the lm-eval task YAMLs shipped with dynbench."""
    return Path(str(importlib.resources.files("dynbench.lm_eval_tasks")))


def shipped_task_names() -> tuple[str, ...]:
    """Names of the shipped lm-eval tasks (each YAML file is named after its task)."""
    return tuple(sorted(p.stem for p in tasks_dir().glob("*.yaml")))


def task_manager(
    include_lm_eval_tasks: bool = False, include_path: Iterable[str | Path] = (), metadata: dict | None = None
) -> Any:
    """An lm-eval ``TaskManager`` over the shipped tasks (and ``include_path``).

    Args:
        include_lm_eval_tasks: also index lm-eval's own ~10k task YAMLs (about 16 s).
        include_path: more task folders.
        metadata: passed to every task (the CLI passes the model arguments, so the documents can
            follow ``task.test_plays``).
    """
    from lm_eval.tasks import TaskManager

    paths = [str(tasks_dir()), *(str(p) for p in include_path)]
    return TaskManager(include_path=paths, include_defaults=include_lm_eval_tasks, metadata=metadata)


def format_summary(summary: dict[str, Any]) -> str:
    """The FLOPs summary as a text table, one row per lm-eval task and a total."""
    head = f"dynbench FLOPs — {summary['method']} on {summary['task']}, budget {summary['budget']:g} "
    head += f"({summary['budget_meaning']}), max_length {summary['max_length']}"
    cols = ("task", "inputs", "tokens in", "tokens out", "FLOPs", "dense FLOPs", "ratio", "FLOPs/token out", "layers")
    rows = [cols]
    for name, u in [*summary["by_task"].items(), ("total", summary["total"])]:
        rows.append(
            (
                name,
                str(u["sequences"]),
                str(u["tokens_processed"]),
                str(u["tokens_scored"] + u["tokens_generated"]),
                si(u["flops"]),
                si(u["dense_flops"]),
                "-" if u["flops_ratio"] is None else f"{u['flops_ratio']:.3f}",
                "-" if u["flops_per_token"] is None else si(u["flops_per_token"]),
                "-" if u["mean_layers"] is None else f"{u['mean_layers']:.2f}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join([head, *lines])


def si(value: float) -> str:
    """``value`` with an SI prefix and 4 significant digits: ``2.38e8`` → ``238 M``."""
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.4g} {prefix}"
    return f"{value:.4g}"


def requested_tasks(argv: Sequence[str]) -> list[str] | None:
    """The task names of an lm-eval command line, parsed by lm-eval's own parser.

    ``None`` when it is not a run command.
    """
    from lm_eval._cli import HarnessCLI

    saved = sys.argv
    try:
        sys.argv = ["lm_eval", *argv]
        cli = HarnessCLI()
        args = cli.parse_args()  # inserts the default `run` subcommand, as lm-eval does
    finally:
        sys.argv = saved
    tasks = getattr(args, "tasks", None)
    if tasks is None:
        return None
    names = tasks.split(",") if isinstance(tasks, str) else [t for item in tasks for t in item.split(",")]
    return [t.strip() for t in names if t.strip()]


def needs_lm_eval_tasks(tasks: list[str] | None, shipped: Sequence[str]) -> bool:
    """Whether a run must index lm-eval's built-in tasks.

    It must for a task name (not a path) that dynbench does not ship.
    """
    if tasks is None:
        return True  # e.g. `ls tasks`: show everything
    return any(t not in shipped and not t.endswith(".yaml") and not Path(t).is_dir() for t in tasks)


@contextmanager
def shipped_tasks_visible(include_lm_eval_tasks: bool) -> Iterator[None]:
    """Within the block, every lm-eval ``TaskManager`` also searches the shipped task folder."""
    import lm_eval.tasks
    from lm_eval.tasks import TaskManager

    class WithShippedTasks(TaskManager):
        def __init__(self, *args: Any, include_path: Any = None, include_defaults: bool = True, **kw: Any) -> None:
            extra = [] if include_path is None else [include_path] if isinstance(include_path, str) else include_path
            paths = [str(tasks_dir()), *(str(p) for p in extra)]
            super().__init__(
                *args, include_path=paths, include_defaults=include_defaults and include_lm_eval_tasks, **kw
            )

    # lm-eval's CLI imports TaskManager from lm_eval.tasks when it builds one, so this reaches it.
    with mock.patch.object(lm_eval.tasks, "TaskManager", WithShippedTasks):
        yield


def main(argv: Sequence[str] | None = None) -> int:
    """Run lm-eval's CLI with ``argv`` (default: this process's arguments); 0 on success.

    Raises:
        SystemExit: lm-eval's own exits (``--help``, argument errors).
    """
    from lm_eval.__main__ import cli_evaluate

    from dynbench.integrations.lm_eval import DynbenchLM

    args = list(sys.argv[1:] if argv is None else argv)
    include_all = needs_lm_eval_tasks(requested_tasks(args), shipped_task_names())
    DynbenchLM.last_summary = None
    saved = sys.argv
    try:
        sys.argv = ["lm_eval", *args]
        with shipped_tasks_visible(include_all):
            cli_evaluate()
    finally:
        sys.argv = saved
    if DynbenchLM.last_summary is not None:
        sys.stdout.write("\n" + format_summary(DynbenchLM.last_summary) + "\n")  # this is a command line's output
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
