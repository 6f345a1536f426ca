"""Build step that pyproject.toml cannot express: the lm-eval startup hook in site-packages.

Everything else about the package is in pyproject.toml. This file adds two things, both for
``lm_eval --model dynbench --tasks dynbench_…`` with lm-eval 0.4.13, which has no plugin discovery
(why a startup hook: src/dynbench/integrations/lm_eval_registration.py):

- the top-level module ``_dynbench_lm_eval_hook`` (src/_dynbench_lm_eval_hook.py), which imports
  nothing and acts only when lm-eval is imported;
- ``dynbench_lm_eval_hook.pth``, written to the root of the wheel — site-packages once installed —
  whose one ``import`` line loads that module at Python startup (lines of a ``.pth`` file that start
  with ``import`` are executed by ``site``).

Both install modes get the ``.pth`` file: a wheel (``pip install .``) through ``build_py``'s output
folder, whose contents are the wheel's root; an editable install (``pip install -e .``, PEP 660),
whose ``build_py`` output is not packed, by writing it to the editable wheel's root instead, the
folder that setuptools' ``editable_wheel`` command sets as ``install_lib`` and packs. The name sorts
after setuptools' ``__editable__.*.pth``, so ``src/`` is already on ``sys.path`` when it runs.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PTH_NAME = "dynbench_lm_eval_hook.pth"
# One `import` line; the try keeps Python's startup silent if the module has gone (a moved source
# tree).
PTH_TEXT = (
    "# dynbench: lets lm-eval's own `lm_eval` command find `--model dynbench` and the dynbench_* tasks.\n"
    "# Imports nothing until lm-eval is imported; see dynbench/integrations/lm_eval_registration.py.\n"
    'import sys; exec("try:\\n    import _dynbench_lm_eval_hook\\nexcept Exception:\\n    pass")\n'
)


class BuildPyWithPth(build_py):
    """``build_py`` that also writes :data:`PTH_NAME` where the wheel's root is made."""

    def run(self) -> None:
        """Build as usual, then write the ``.pth`` file."""
        super().run()
        root = self.get_finalized_command("install").install_lib if self.editable_mode else self.build_lib
        target = Path(root, PTH_NAME)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(PTH_TEXT)
        self._pth_outputs = [str(target)]

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        """The usual outputs and the ``.pth`` file (install records it, uninstall removes it)."""
        return [*super().get_outputs(include_bytecode), *getattr(self, "_pth_outputs", [])]


setup(py_modules=["_dynbench_lm_eval_hook"], cmdclass={"build_py": BuildPyWithPth})
