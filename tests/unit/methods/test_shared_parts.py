"""Shared method parts: a part's version feeds the recorded version of every method that uses it.

That no plugin imports another plugin, and that no two modules import each other, is
tests/unit/test_import_graph.py's to check.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

import dynbench.methods
from dynbench.methods.base import METHODS, Method, recorded_version

METHODS_DIR = Path(dynbench.methods.__file__).parent
PACKAGE = "dynbench.methods"


def method_modules() -> dict[str, Path]:
    """``dynbench.methods.<name>`` → its file, for every module of the package."""
    return {f"{PACKAGE}.{p.stem}": p for p in sorted(METHODS_DIR.glob("*.py")) if p.stem != "__init__"}


def is_plugin(module: str) -> bool:
    """A plugin module: ``methods/<name>.py`` without a leading underscore, other than ``base``."""
    stem = module.rsplit(".", 1)[-1]
    return not stem.startswith("_") and stem != "base"


def imported_methods_modules(path: Path) -> set[str]:
    """The ``dynbench.methods`` modules ``path`` imports anywhere (top level or in functions)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            if node.module == PACKAGE:  # `from dynbench.methods import _exit_heads`
                found.update(f"{PACKAGE}.{alias.name}" for alias in node.names)
    return {m for m in found if m.startswith(PACKAGE + ".")}


def versioned(module: str) -> bool:
    """A private shared module with a ``VERSION`` (a part a method lists in ``shared_parts``)."""
    return not is_plugin(module) and hasattr(importlib.import_module(module), "VERSION")


@pytest.mark.parametrize("name", METHODS.names())
def test_shared_parts_are_exactly_the_versioned_modules_the_plugin_imports(name: str) -> None:
    """A part the plugin uses but does not list would change its results without changing its
    version."""
    cls = METHODS.get(name)
    module = cls.__module__
    imported = {m for m in imported_methods_modules(method_modules()[module]) if versioned(m)}
    assert {part.__name__ for part in cls.shared_parts} == imported
    assert len(set(cls.shared_parts)) == len(cls.shared_parts)


def versions() -> dict[str, str]:
    return {name: METHODS.get(name).version for name in METHODS.names()}


def shared_modules() -> list[ModuleType]:
    return [importlib.import_module(m) for m in method_modules() if versioned(m)]


def test_parts_at_their_first_version_leave_recorded_versions_as_the_methods_own() -> None:
    for name in METHODS.names():
        cls = METHODS.get(name)
        if all(part.VERSION == "1" for part in cls.shared_parts):
            assert cls.version == cls.own_version == cls().version


@pytest.mark.parametrize("part", shared_modules(), ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_bumping_a_part_changes_the_version_of_every_method_using_it_and_no_other(
    part: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = versions()
    users = {name for name in METHODS.names() if part in METHODS.get(name).shared_parts}
    assert users, f"{part.__name__} declares a VERSION but no method lists it in shared_parts"
    monkeypatch.setattr(part, "VERSION", str(int(part.VERSION) + 1))
    after = versions()
    changed = {name for name in before if before[name] != after[name]}
    assert changed == users
    for name in users:  # rows, run keys and fit-cache keys all read Method.version, from class or instance
        cls = METHODS.get(name)
        assert cls().version == after[name] != before[name]
        assert f"+{part.__name__.rsplit('.', 1)[-1].lstrip('_')}{part.VERSION}" in after[name]


def test_recorded_version_names_only_bumped_parts() -> None:
    heads = SimpleNamespace(__name__="dynbench.methods._exit_heads", VERSION="2")
    sets = SimpleNamespace(__name__="dynbench.methods._layer_sets", VERSION="1")
    assert recorded_version("3", []) == "3"
    assert recorded_version("3", [heads, sets]) == "3+exit_heads2"


def test_a_subclass_keeps_its_own_version_and_inherits_its_parents_parts() -> None:
    part = SimpleNamespace(__name__="dynbench.methods._toy_part", VERSION="1")

    class Toy(Method):
        version = "7"
        shared_parts = (part,)

        def wrap(self, backbone):  # type: ignore[no-untyped-def]
            raise NotImplementedError

        def budgets(self, n_blocks: int) -> tuple[float, ...]:
            return (1.0,)

    class Variant(Toy):
        pass

    assert Toy.version == Variant.version == "7" and Toy.own_version == "7"
    part.VERSION = "3"
    assert Toy.version == Variant.version == Toy().version == "7+toy_part3"
