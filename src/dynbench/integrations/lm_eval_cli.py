r"""``bench lm-eval``: lm-eval's own command line, faster when only dynbench's tasks are asked for.

    bench lm-eval --model dynbench \
        --model_args task=shakespeare,method=layer_skip,budget=0.5 \
        --tasks dynbench_shakespeare_ppl,dynbench_shakespeare_cloze --limit 20

Every argument is lm-eval's (``lm_eval --help``), and so is the output, with the model's FLOPs and
latency table in the log. Since installing dynbench also lets lm-eval's own ``lm_eval`` command find
the model and the tasks by name (:mod:`dynbench.integrations.lm_eval_registration`), this wrapper
is a convenience, not a requirement. For the duration of the call it changes two things:

- the shipped task folder (:func:`tasks_dir`) is added to lm-eval's task search path, so the
  ``dynbench_*`` tasks are found even where the startup hook is not installed (a source tree on
  ``PYTHONPATH``, ``python -S``);
- when every task asked for is a shipped one (or a YAML file or folder), lm-eval's built-in tasks
  are not indexed (``TaskManager(include_defaults=False)``), which saves 10-20 s a run (lm-eval
  0.4.13 indexes its ~14,700 task names for every run). Ask for any other task name and they are.

It also holds what a Python caller needs for the same: :func:`task_manager` over the shipped tasks.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock


def tasks_dir() -> Path:
    """The folder of the lm-eval task YAMLs shipped with dynbench."""
    from dynbench.integrations.lm_eval_registration import tasks_dir as shipped_dir

    return shipped_dir()


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

    import dynbench.integrations.lm_eval  # noqa: F401 — registers `dynbench` where the startup hook is absent

    args = list(sys.argv[1:] if argv is None else argv)
    include_all = needs_lm_eval_tasks(requested_tasks(args), shipped_task_names())
    saved = sys.argv
    try:
        sys.argv = ["lm_eval", *args]
        with shipped_tasks_visible(include_all):
            cli_evaluate()
    finally:
        sys.argv = saved
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
