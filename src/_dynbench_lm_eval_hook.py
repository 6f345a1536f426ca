"""Startup hook: lm-eval's own ``lm_eval`` command knows dynbench's model and tasks by name.

A one-line ``dynbench_lm_eval_hook.pth`` that ``setup.py`` puts in site-packages imports this
module when Python starts (``site`` runs ``import`` lines of ``.pth`` files). Why a startup hook:
lm-eval 0.4.13 has no plugin discovery — no entry points, no environment variable, no task path
other than ``--include_path`` — so dynbench can only join a process that lm-eval starts by being
imported before lm-eval looks things up (the options are weighed in
src/dynbench/integrations/lm_eval_registration.py).

What it costs a process that never imports lm-eval: this module, which imports nothing (``sys`` is
loaded already), and one dictionary lookup per module imported. dynbench itself is imported only
after lm-eval's own ``lm_eval.models`` or ``lm_eval.tasks.manager`` has been imported, and then
only its light registration module (no torch): the model is registered as a lazy placeholder.

Robustness: every step is guarded. If anything fails — dynbench broken or half uninstalled, an
lm-eval whose internals moved — lm-eval imports and runs as if dynbench were absent, and one
warning on the ``dynbench`` logger says why. Without lm-eval nothing happens at all.
"""

import sys

WATCHED = {
    # lm-eval module → the function of REGISTRATION that runs on it right after it has executed
    "lm_eval.models": "register_model",  # lm-eval fills its model registry here: add `dynbench`
    "lm_eval.tasks.manager": "add_task_folder",  # TaskManager: also index dynbench's task folder
}
REGISTRATION = "dynbench.integrations.lm_eval_registration"


class PostImportHook:
    """A ``sys.meta_path`` finder that runs an action after a watched module has executed.

    It finds nothing itself: for a watched name it asks the finders after it for the module's
    spec, and wraps that spec's loader so the action runs once the module's code has run.

    Args:
        actions: module name → ``action(module)``.
    """

    def __init__(self, actions: dict) -> None:
        self.actions = actions

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> object:
        """The other finders' spec of ``fullname``, its loader wrapped; ``None`` when unwatched."""
        action = self.actions.get(fullname)
        if action is None:
            return None
        try:
            spec = self._spec_after_me(fullname, path, target)
            if spec is not None and hasattr(spec.loader, "exec_module"):
                spec.loader = RunAfterExec(spec.loader, action)
            return spec
        except Exception:  # noqa: BLE001 — anything here must fall back to the normal import
            return None

    def _spec_after_me(self, fullname: str, path: object, target: object) -> object:
        later = sys.meta_path[sys.meta_path.index(self) + 1 :] if self in sys.meta_path else sys.meta_path
        for finder in later:
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                return spec
        return None


class RunAfterExec:
    """A loader that runs the real loader, puts it back on the module, then runs ``action``."""

    def __init__(self, loader: object, action: object) -> None:
        self.loader = loader
        self.action = action

    def create_module(self, spec: object) -> object:
        """The real loader's module (``None``: the default one)."""
        return self.loader.create_module(spec)

    def exec_module(self, module: object) -> None:
        """Execute the module with the real loader, then run the action on it (never raising)."""
        module.__loader__ = module.__spec__.loader = self.loader  # the module never sees the wrapper
        self.loader.exec_module(module)
        run_guarded(self.action, module)


WARNED = []  # holds True once the one warning has been given


def run_guarded(action: object, module: object) -> None:
    """``action(module)``; an exception becomes one warning, and lm-eval runs without dynbench."""
    try:
        action(module)
    except Exception as exc:  # noqa: BLE001 — a broken dynbench must not break lm-eval
        if WARNED:
            return
        WARNED.append(True)
        import logging

        logging.getLogger("dynbench").warning(
            "dynbench could not add its model and tasks to lm-eval (%s: %s); lm-eval runs without them. "
            "Reinstall dynbench (pip install 'dynbench[lm-eval]') or remove dynbench_lm_eval_hook.pth "
            "from site-packages.",
            type(exc).__name__,
            exc,
        )


def registration_action(name: str) -> object:
    """``action(module)`` that calls ``REGISTRATION.<name>(module)``, importing it only then."""

    def action(module: object) -> None:
        __import__(REGISTRATION)
        getattr(sys.modules[REGISTRATION], name)(module)

    return action


def install() -> None:
    """Put the hook on ``sys.meta_path`` once; act at once on watched modules already imported."""
    if any(isinstance(f, PostImportHook) for f in sys.meta_path):
        return
    actions = {module: registration_action(name) for module, name in WATCHED.items()}
    sys.meta_path.insert(0, PostImportHook(actions))
    for module, action in actions.items():
        if module in sys.modules:
            run_guarded(action, sys.modules[module])


try:
    install()
except Exception:  # noqa: BLE001, S110 — Python must start whatever happens here
    pass
