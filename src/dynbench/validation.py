"""Field checks for frozen config dataclasses: ``Literal`` choices and numeric bounds.

A config declares a choice as ``Literal[...]`` and calls :func:`check_choices` from
``__post_init__``, so a typo is caught the same way whether the config came from the command line
(``bench run --methods 'dht[policy=bandt]'``) or from Python (``DHTConfig(policy="bandt")``), with a
did-you-mean from :func:`dynbench.registry.suggest`, the same place that suggests plugin names.
Numeric limits go through :func:`check_range`. Both raise ``ValueError`` in the project's one error
shape: what failed, the value, what to do.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Sequence
from typing import Any, Literal

from dynbench.registry import suggest


def choice_message(where: str, value: Any, choices: Sequence[Any], advice: str = "") -> str:
    """The message for a value outside a ``Literal``'s choices (did-you-mean when one is close)."""
    close = suggest(str(value), [str(c) for c in choices])
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    tail = f" {advice}" if advice else ""
    return f"{where} must be one of {list(choices)}, got {value!r}.{hint}{tail}"


def literal_choices(hint: Any) -> tuple[Any, ...] | None:
    """The choices of a ``Literal[...]`` annotation (also inside ``Optional``), else ``None``."""
    if typing.get_origin(hint) is Literal:
        return typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            found = literal_choices(arg)
            if found is not None:
                return found
    return None


def check_choices(obj: Any, advice: dict[str, str] | None = None) -> None:
    """Raise ``ValueError`` if any ``Literal``-typed field of ``obj`` is outside its choices.

    Args:
        obj: a dataclass instance (call from its ``__post_init__``).
        advice: optional per-field sentence appended to the message (what each choice means).
    """
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        choices = literal_choices(hints.get(f.name))
        value = getattr(obj, f.name)
        if choices is None or value in choices or (value is None and type(None) in typing.get_args(hints[f.name])):
            continue
        where = f"{type(obj).__name__}.{f.name}"
        raise ValueError(choice_message(where, value, choices, (advice or {}).get(f.name, "")))


def check_range(
    where: str,
    value: float,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    advice: str = "",
) -> None:
    """Raise ``ValueError`` unless ``low (<|<=) value (<|<=) high``; a ``None`` side is unbounded.

    The message names the interval in mathematical notation — ``(0, 1]`` — or ``>= 1`` / ``> 0`` for
    a one-sided bound, then the value, then ``advice`` (e.g. ``"Use 0.2."``).
    """
    ok = not (isinstance(value, float) and math.isnan(value))
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if ok:
        return
    if low is not None and high is not None:
        span = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        span = f"{'>' if low_open else '>='} {low:g}"
    elif high is not None:
        span = f"{'<' if high_open else '<='} {high:g}"
    else:
        span = "a number"
    tail = f" {advice}" if advice else ""
    raise ValueError(f"{where} must be {span}, got {value!r}.{tail}")
