"""How lm-eval 0.4.13 learns the ``dynbench`` model and the ``dynbench_*`` tasks by name.

After ``pip install 'dynbench[lm-eval]'`` (editable or not) this works with nothing else to do::

    lm_eval --model dynbench --model_args task=shakespeare,method=layer_skip,budget=0.5 \
        --tasks dynbench_shakespeare_ppl --limit 20

What lm-eval 0.4.13 offers a third-party package, read from its source: a model registry that only
its own ``lm_eval.models`` fills (``MODEL_MAPPING``; no entry-point discovery, which upstream added
after 0.4.13 — hence the ``lm_eval.models`` entry point in pyproject.toml, kept for those releases),
and a ``TaskManager`` that indexes its own task folder plus ``--include_path``. No environment
variable, no plugin group, no config file. So the only way in, for a plain ``lm_eval`` command, is
code that runs in lm-eval's process before it looks a name up. The options:

- a ``sitecustomize.py``: one per environment, owned by the user or the distribution;
- patching lm-eval's files at install time: pip cannot, and a wheel must not;
- a ``.pth`` file with an ``import`` line (what coverage, setuptools' ``distutils-precedence.pth``
  and editable installs use): chosen. ``setup.py`` writes ``dynbench_lm_eval_hook.pth`` into
  site-packages, for a wheel and for an editable install alike, and it imports the tiny
  src/_dynbench_lm_eval_hook.py, which waits for lm-eval to be imported and then calls the two
  functions here. Costs and guards are described there.

What the two functions do to lm-eval:

- :func:`register_model`: once ``lm_eval.models`` has registered lm-eval's own models, register
  ``dynbench`` as a lazy placeholder (``"dynbench.integrations.lm_eval:DynbenchLM"``), the way
  lm-eval registers its own: torch and the model code load only when ``--model dynbench`` is used.
- :func:`add_task_folder`: wrap ``TaskManager.__init__`` so every task manager also indexes
  dynbench's task folder (:func:`tasks_dir`: two YAML files, indexed in milliseconds), placed after
  lm-eval's own tasks and before ``--include_path``, so a user's folder still overrides it. The
  wrapper changes nothing else; ``lm_eval ls tasks`` lists the ``dynbench_*`` tasks too.

Both are idempotent, and a no-op when the name or folder is already there (a later lm-eval that
reads the entry point, or ``bench lm-eval``, which adds the folder itself).
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from types import ModuleType
from typing import Any

MODEL_NAME = "dynbench"
"""The name of the model in lm-eval's registry (``--model dynbench``)."""
MODEL_TARGET = "dynbench.integrations.lm_eval:DynbenchLM"
"""Where the model class lives: lm-eval imports it on first use (a lazy placeholder)."""
WRAPPED = "__dynbench_tasks__"
"""Attribute that marks a ``TaskManager.__init__`` already wrapped by :func:`add_task_folder`."""


def tasks_dir() -> Path:
    """The folder of the lm-eval task YAMLs shipped with dynbench.

    Found next to this file rather than by importing ``dynbench.lm_eval_tasks``, whose import loads
    the model (and torch): every ``TaskManager`` calls this.
    """
    return Path(__file__).resolve().parent.parent / "lm_eval_tasks"


def register_model(models: ModuleType | None = None) -> None:
    """Register ``dynbench`` in lm-eval's model registry as a lazy placeholder, unless it is there.

    Args:
        models: the ``lm_eval.models`` module, just executed (unused: its import filled the
            registry, and registering after it keeps lm-eval's "import the models when the registry
            is empty" rule working).
    """
    from lm_eval.api.registry import model_registry

    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME, target=MODEL_TARGET)


def add_task_folder(manager: ModuleType) -> None:
    """Make every ``manager.TaskManager`` also index :func:`tasks_dir` (see the module docstring).

    Args:
        manager: the ``lm_eval.tasks.manager`` module, just executed.

    Raises:
        TypeError: this lm-eval's ``TaskManager`` takes no ``include_path`` (the hook turns this
            into a warning and lm-eval runs without the dynbench tasks).
    """
    cls = manager.TaskManager
    original = cls.__init__
    if getattr(original, WRAPPED, False):
        return
    signature = inspect.signature(original)
    if "include_path" not in signature.parameters:
        raise TypeError(
            f"lm-eval's TaskManager{signature} takes no include_path; dynbench's tasks need lm-eval 0.4.13 "
            "(pip install 'dynbench[lm-eval]'), or pass --include_path with the folder of tasks_dir()."
        )

    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        bound.arguments["include_path"] = with_tasks_dir(bound.arguments.get("include_path"))
        original(*bound.args, **bound.kwargs)

    setattr(__init__, WRAPPED, True)
    cls.__init__ = __init__


def with_tasks_dir(include_path: str | Path | list[str | Path] | tuple | None) -> list[str | Path]:
    """``include_path`` as a list with :func:`tasks_dir` first, unless it is in there already."""
    if include_path is None:
        paths: list[str | Path] = []
    else:
        paths = list(include_path) if isinstance(include_path, (list, tuple)) else [include_path]
    ours = tasks_dir()
    if any(Path(p).resolve() == ours for p in paths):
        return paths
    return [ours, *paths]
