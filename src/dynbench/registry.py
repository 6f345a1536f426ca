"""A small generic registry for plugins: methods, tasks and hardware targets.

A plugin registers itself with a decorator in its own file (``@register_method("mod")``). The
registry finds built-in plugins by importing every module of its package on first use, and
third-party plugins through an entry-point group (``dynbench.methods`` …), so adding a plugin never
edits a list.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import logging
import pkgutil
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T", bound=type)


class RegistryError(KeyError):
    """An unknown or conflicting plugin name. ``str()`` gives the full user-facing message."""

    def __str__(self) -> str:  # KeyError quotes its message; a user should read it plainly.
        return str(self.args[0]) if self.args else ""


def suggest(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """Close matches of ``name`` among ``choices``, best first."""
    return difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5)


def unknown_message(kind: str, name: str, available: Iterable[str], aliases: Iterable[str] = ()) -> str:
    """The one shape of an unknown-name error: what failed, the value, what to do.

    Aliases count as matches.
    """
    available = sorted(available)
    msg = f"Unknown {kind} '{name}'."
    close = suggest(name, [*available, *aliases])
    if close:
        msg += f" Did you mean: {', '.join(close)}?"
    msg += f" Available: {', '.join(available) if available else '(none registered)'}"
    return msg


class Registry(Generic[T]):
    """Name → plugin class, with discovery, a base-class check and did-you-mean errors.

    Args:
        kind: what the registry holds, used in messages ("method", "task", "hardware target").
        base_cls: every registered class must subclass it.
        package: dotted package whose modules are imported to find built-in plugins.
        entry_point_group: entry-point group scanned for third-party plugins.
    """

    def __init__(self, kind: str, base_cls: type, package: str, entry_point_group: str) -> None:
        self.kind = kind
        self.base_cls = base_cls
        self.package = package
        self.entry_point_group = entry_point_group
        self._items: dict[str, type] = {}
        self._aliases: dict[str, str] = {}
        self._discovered = False

    def register(self, name: str, *, aliases: Iterable[str] = ()) -> Callable[[T], T]:
        """Class decorator registering a plugin under ``name`` (and optional aliases).

        Raises:
            TypeError: the class does not subclass the registry's base class.
            RegistryError: the name is already taken by another class.
        """

        def decorate(cls: T) -> T:
            if not (isinstance(cls, type) and issubclass(cls, self.base_cls)):
                raise TypeError(
                    f"Cannot register {cls!r} as {self.kind} '{name}': it must subclass "
                    f"{self.base_cls.__module__}.{self.base_cls.__qualname__}."
                )
            for key in (name, *aliases):
                existing = self._items.get(key) or self._items.get(self._aliases.get(key, ""))
                if existing is not None and existing.__qualname__ != cls.__qualname__:
                    raise RegistryError(
                        f"Cannot register {self.kind} '{key}' for {cls.__module__}.{cls.__qualname__}: "
                        f"already taken by {existing.__module__}.{existing.__qualname__}. Pick another name."
                    )
            self._items[name] = cls
            for alias in aliases:
                self._aliases[alias] = name
            cls.name = name  # the registry key is the plugin's name; no second place to keep it in sync
            return cls

        return decorate

    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        pkg = importlib.import_module(self.package)
        for info in pkgutil.iter_modules(pkg.__path__):
            if info.name.startswith("_") or info.name == "base":
                continue
            importlib.import_module(f"{self.package}.{info.name}")
        for ep in importlib.metadata.entry_points(group=self.entry_point_group):
            try:
                ep.load()  # the loaded module registers itself through the decorator
            except Exception as exc:  # a broken third-party plugin must not take the suite down
                logger.warning("Could not load %s plugin %r from %s: %s", self.kind, ep.name, ep.value, exc)

    def get(self, name: str) -> T:
        """The class registered as ``name`` (or an alias of it).

        Raises:
            RegistryError: no such plugin, with close matches and the full list.
        """
        self._discover()
        key = self._aliases.get(name, name)
        if key not in self._items:
            raise RegistryError(unknown_message(self.kind, name, self.names(), self._aliases))
        return self._items[key]  # type: ignore[return-value]

    def names(self) -> list[str]:
        """Sorted registered names (aliases excluded)."""
        self._discover()
        return sorted(self._items)

    def aliases_of(self, name: str) -> list[str]:
        """Aliases that resolve to ``name``."""
        return sorted(a for a, target in self._aliases.items() if target == name)

    def __contains__(self, name: str) -> bool:
        self._discover()
        return self._aliases.get(name, name) in self._items
