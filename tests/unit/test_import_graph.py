"""The package's import graph points one way: no two-module circles, no plugin imported by name.

Every module of ``src/dynbench`` is parsed with :mod:`ast` (nothing is imported), and every import
in it — absolute, relative, ``from pkg import module``, inside functions and under
``TYPE_CHECKING`` alike — becomes an edge to the dynbench modules it names. Three rules, checked on
that graph:

(a) no two modules import each other;
(b) ``dynbench.analysis`` and ``dynbench.harness`` import no plugin module by name: they reach
    methods, tasks and hardware targets through their registries and base classes only, so a new
    plugin never needs an edit there;
(c) no method plugin imports another plugin module: what several methods share lives in a private
    ``methods/_name.py`` module, so one method's results cannot change without its own version
    changing.

A plugin module is ``dynbench.methods.X``, ``dynbench.tasks.X`` or ``dynbench.hardware.X`` where
``X`` is not ``base`` and does not start with ``_``; ``dynbench.tasks.data`` (data-set code shared
by tasks) is not a plugin.
"""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pytest

import dynbench

PLUGIN_FAMILIES = ("methods", "tasks", "hardware")
"""The subpackages whose public modules are plugins (one file, one class, one decorator)."""


def package_modules(root: Path, package: str = "dynbench") -> dict[str, Path]:
    """``module name → source file`` of every module under ``root`` (itself named ``package``)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = (package, *path.relative_to(root).with_suffix("").parts)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def imported_modules(source: str, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``source`` (the text of ``module``) imports, wherever it does.

    ``import a.b`` names ``a.b``; ``from a import b`` names ``a`` and, when it is a module, ``a.b``;
    relative imports are resolved against ``module``'s package (``module`` itself when
    ``is_package``).
    """
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in found if m in known and m != module}


def import_graph() -> dict[str, set[str]]:
    """``module → the dynbench modules it imports`` for the installed source tree."""
    root = Path(dynbench.__file__).resolve().parent
    modules = package_modules(root)
    known = set(modules)
    return {
        name: imported_modules(path.read_text(encoding="utf-8"), name, path.name == "__init__.py", known)
        for name, path in modules.items()
    }


def is_plugin(module: str) -> bool:
    """``dynbench.<methods|tasks|hardware>.X``; ``X`` not ``base``, private or ``tasks.data``."""
    parts = module.split(".")
    if len(parts) != 3 or parts[0] != "dynbench" or parts[1] not in PLUGIN_FAMILIES:
        return False
    name = parts[2]
    return name != "base" and not name.startswith("_") and not (parts[1] == "tasks" and name == "data")


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_the_resolver_sees_every_kind_of_import():
    known = {"pkg", "pkg.sub", "pkg.sub.a", "pkg.sub.b", "pkg.c", "pkg.d", "pkg.e"}
    source = (
        "import pkg.c\n"
        "from . import b\n"  # relative, a module by name
        "from ..d import thing\n"  # relative to the parent package, a name inside a module
        "def late():\n"
        "    from pkg import e\n"  # function-level, `from package import module`
    )
    assert imported_modules(source, "pkg.sub.a", False, known) == {
        "pkg",
        "pkg.c",
        "pkg.sub",
        "pkg.sub.b",
        "pkg.d",
        "pkg.e",
    }
    assert imported_modules("from . import a", "pkg.sub", True, known) == {"pkg.sub.a"}


def test_the_graph_covers_the_package(graph: dict[str, set[str]]):
    assert len(graph) > 50
    assert {"dynbench.harness.measure", "dynbench.methods.base", "dynbench.tasks.data.catalog"} <= set(graph)
    assert "dynbench.registry" in graph["dynbench.methods.base"]
    assert is_plugin("dynbench.methods.layer_skip") and is_plugin("dynbench.hardware.cpu")
    assert not any(map(is_plugin, ("dynbench.methods.base", "dynbench.methods._gates", "dynbench.tasks.data")))
    assert not is_plugin("dynbench.tasks.data.espeak")


def test_no_two_modules_import_each_other(graph: dict[str, set[str]]):
    circles = [(a, b) for a, b in itertools.combinations(sorted(graph), 2) if b in graph[a] and a in graph[b]]
    assert circles == [], "modules that import each other (move the shared part into a module both import):"


def test_analysis_and_harness_import_no_plugin_by_name(graph: dict[str, set[str]]):
    layers = ("dynbench.analysis", "dynbench.harness")
    bad = sorted((a, b) for a in graph if a.startswith(layers) for b in graph[a] if is_plugin(b))
    assert bad == [], "reach plugins through their registry and base class instead:"


def test_no_method_plugin_imports_another_plugin(graph: dict[str, set[str]]):
    methods = [m for m in graph if is_plugin(m) and m.startswith("dynbench.methods.")]
    bad = sorted((a, b) for a in methods for b in graph[a] if is_plugin(b))
    assert bad == [], "move what several methods share into a private methods/_name.py module:"
