"""The startup hook that lets lm-eval's own ``lm_eval`` command find dynbench's model and tasks.

src/_dynbench_lm_eval_hook.py waits for lm-eval's modules; src/dynbench/integrations/
lm_eval_registration.py says what to do with them. The hook's mechanics are tested on a throwaway
package, so these tests need no lm-eval; the installed hook and the real registration are tested
where lm-eval is installed.
"""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

import _dynbench_lm_eval_hook as hook
from dynbench.integrations import lm_eval_registration as reg

HAVE_LM_EVAL = importlib.util.find_spec("lm_eval") is not None
needs_lm_eval = pytest.mark.skipif(
    not HAVE_LM_EVAL, reason="lm-eval is not installed (pip install 'dynbench[lm-eval]')"
)


@pytest.fixture
def watched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``watched(actions)``: a throwaway package ``fakelm`` (and ``.models``) behind a hook."""
    pkg = tmp_path / "fakelm"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "models.py").write_text("REGISTRY = {'own': 1}\nSEEN_LOADER = __loader__\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("fakelm", "fakelm.models", "fakelm.missing"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setattr(hook, "WARNED", [])

    def install(actions: dict) -> hook.PostImportHook:
        finder = hook.PostImportHook(actions)
        monkeypatch.setattr(sys, "meta_path", [finder, *sys.meta_path])
        return finder

    return install


def test_the_action_runs_once_the_watched_module_has_executed(watched) -> None:
    seen = []
    watched({"fakelm.models": lambda m: seen.append(dict(m.REGISTRY))})
    import fakelm.models

    assert seen == [{"own": 1}]  # the module's own code had run: its registry was full
    real = type(fakelm.models.__spec__.loader).__name__
    assert real != "RunAfterExec" and type(fakelm.models.__loader__).__name__ == real
    assert type(fakelm.models.SEEN_LOADER).__name__ == real  # not even the module's own code sees the wrapper
    import fakelm.models as again  # already imported: no second action

    assert again is fakelm.models and len(seen) == 1


def test_a_failing_action_leaves_the_import_working_with_one_warning(watched, caplog) -> None:
    def broken(module: ModuleType) -> None:
        raise ImportError("No module named 'dynbench.integrations.lm_eval_registration'")

    watched({"fakelm.models": broken, "fakelm": broken})
    with caplog.at_level(logging.WARNING, logger="dynbench"):
        import fakelm.models

    assert fakelm.models.REGISTRY == {"own": 1}
    warnings = [r.getMessage() for r in caplog.records if r.name == "dynbench"]
    assert len(warnings) == 1 and "runs without them" in warnings[0] and "lm_eval_registration" in warnings[0]


def test_a_missing_module_fails_as_it_would_without_the_hook(watched) -> None:
    watched({"fakelm.missing": lambda m: None})
    with pytest.raises(ModuleNotFoundError, match="fakelm.missing"):
        import fakelm.missing  # noqa: F401


def test_a_broken_finder_falls_back_to_the_normal_import(watched, monkeypatch: pytest.MonkeyPatch) -> None:
    finder = watched({"fakelm.models": lambda m: None})
    monkeypatch.setattr(finder, "_spec_after_me", lambda *a: 1 / 0)
    import fakelm.models

    assert fakelm.models.REGISTRY == {"own": 1}


def test_the_task_folder_comes_after_lm_evals_own_and_before_the_users() -> None:
    calls = []

    class TaskManager:
        def __init__(self, verbosity=None, include_path=None, include_defaults=True, metadata=None):
            calls.append((include_path, include_defaults, metadata))

    manager = SimpleNamespace(TaskManager=TaskManager)
    reg.add_task_folder(manager)
    reg.add_task_folder(manager)  # idempotent
    ours = reg.tasks_dir()
    TaskManager()
    TaskManager(None, "mine", False)
    TaskManager(include_path=["a", str(ours)], metadata={"k": 1})
    assert calls == [([ours], True, None), ([ours, "mine"], False, None), (["a", str(ours)], True, {"k": 1})]
    assert sorted(p.name for p in ours.glob("*.yaml")) == [
        "dynbench_shakespeare_cloze.yaml",
        "dynbench_shakespeare_ppl.yaml",
    ]
    with pytest.raises(TypeError, match="include_path"):
        reg.add_task_folder(SimpleNamespace(TaskManager=type("TaskManager", (), {"__init__": lambda self: None})))


def test_the_installed_hook_loads_at_startup_and_imports_nothing_until_lm_eval_does() -> None:
    """`pip install` (editable or not) put dynbench_lm_eval_hook.pth in site-packages."""
    code = "import sys; print(*(m in sys.modules for m in ('_dynbench_lm_eval_hook', 'dynbench', 'lm_eval')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "False", "False"]


@needs_lm_eval
def test_lm_eval_finds_the_model_and_tasks_by_name_in_a_fresh_process() -> None:
    code = textwrap.dedent("""
        import sys
        from lm_eval.api.registry import get_model, model_registry
        from lm_eval.tasks import TaskManager
        print(sorted(TaskManager(include_defaults=False).all_tasks))
        print('torch' in sys.modules)  # registering cost nothing: the model is a lazy placeholder
        print(get_model('dummy').__name__, get_model('dynbench').__name__)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == [
        "['dynbench_shakespeare_cloze', 'dynbench_shakespeare_ppl']",
        "False",
        "DummyLM DynbenchLM",
    ]
