"""Reading a cached state dict that may be damaged: an entry that cannot be used is a cache miss.

The model caches — dense backbones (``tasks/base.py``: ``trained_backbone``), method fits
(``harness/fit_cache.py``) and converted pretrained weights (``tasks/smollm2.py``) — write through a
temporary file renamed into place (``models/training.py``: ``atomic_torch_save``), so dynbench never
leaves a half-written entry. A file can still be damaged later: a copy cut short, a disk error, a
file edited by hand or left by another version. Reading one must not end a run with a traceback,
and what a user wants is the model, so :func:`read_state` and :func:`state_mismatch` tell whether
an entry can be used; one that cannot is moved aside to ``<name>.corrupt`` (:func:`set_aside`: kept
for a look, never read again) with a warning naming the file, and the caller trains, fits or
converts again, which writes a fresh entry.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

CORRUPT_SUFFIX = ".corrupt"
"""Appended to the name of a cache file that could not be used."""
REASON_CHARS = 300
"""A reason longer than this is cut (a state dict's key list can run to thousands of characters)."""


def set_aside(path: Path, what: str, reason: str, redo: str) -> Path | None:
    """Move an unusable cache file to ``<name>.corrupt`` and warn, naming it, why, and what follows.

    Args:
        path: the cache file.
        what: what it holds, for the message (``cached backbone``).
        reason: why it cannot be used.
        redo: what the caller does instead (``training it again``).

    Returns:
        Where it was moved; ``None`` when it could not be moved (another process moved it first,
        or the folder refuses: then the fresh entry replaces it).
    """
    reason = reason if len(reason) <= REASON_CHARS else reason[: REASON_CHARS - 1] + "…"
    target = path.with_name(path.name + CORRUPT_SUFFIX)
    try:
        os.replace(path, target)
    except FileNotFoundError:  # another process set it aside (or replaced it) first
        logger.warning("%s %s cannot be used: %s; %s.", what.capitalize(), path, reason, redo)
        return None
    except OSError as exc:
        logger.warning(
            "%s %s cannot be used: %s; it could not be moved aside (%s); %s.",
            what.capitalize(), path, reason, exc.strerror or exc, redo,
        )  # fmt: skip
        return None
    logger.warning("%s %s cannot be used: %s. Moved it to %s; %s.", what.capitalize(), path, reason, target.name, redo)
    return target


def _first_line(exc: BaseException) -> str:
    """``Type: the message's first line``."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def read_state(path: Path, what: str, redo: str) -> dict[str, Tensor] | None:
    """The state dict cached at ``path``; ``None`` when it is missing or cannot be read.

    A file that cannot be read (truncated, empty, random bytes, a pickle torch refuses, not a
    ``str → Tensor`` mapping) is moved aside with a warning (:func:`set_aside`).

    Args:
        path: the cache file (written by ``torch.save``).
        what: what it holds, for the warning (``cached backbone``).
        redo: what the caller does instead, for the warning (``training it again``).
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        return None
    except Exception as exc:  # a damaged file fails in many ways: zip, pickle, EOF, unsupported global
        set_aside(path, what, f"it cannot be read ({_first_line(exc)})", redo)
        return None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        set_aside(path, what, f"it holds a {type(state).__name__}, not a state dict of tensors", redo)
        return None
    return state


def read_tensors(
    path: Path, expected: Mapping[str, tuple[tuple[int, ...], torch.dtype]], what: str, redo: str
) -> dict[str, Tensor] | None:
    """The tensors ``expected`` names, from the dict cached at ``path`` (one load); else ``None``.

    A file that cannot be read, lacks an entry or holds another shape or dtype is moved aside with
    a warning (:func:`set_aside`); a missing file is a plain miss.

    Args:
        path: the cache file (written by ``torch.save`` of a dict of tensors).
        expected: ``key → (shape, dtype)`` of every entry the caller needs.
        what: what it holds, for the warning (``cached spoken-commands features``).
        redo: what the caller does instead, for the warning (``recomputing them``).
    """
    state = read_state(path, what, redo)
    if state is None:
        return None
    for key, (shape, dtype) in expected.items():
        value = state.get(key)
        if value is None or tuple(value.shape) != shape or value.dtype != dtype:
            found = "no such entry" if value is None else f"{tuple(value.shape)} {value.dtype}"
            set_aside(path, what, f"{key!r} is {found}, not {shape} {dtype}", redo)
            return None
    return {key: state[key] for key in expected}


def read_tensor(
    path: Path, key: str, shape: tuple[int, ...], dtype: torch.dtype, what: str, redo: str
) -> Tensor | None:
    """Tensor ``key`` of the dict cached at ``path`` if of ``shape`` and ``dtype``, else None."""
    found = read_tensors(path, {key: (shape, dtype)}, what, redo)
    return None if found is None else found[key]


def state_mismatch(
    reference: Mapping[str, Tensor], state: Mapping[str, Tensor], *, may_lack: Callable[[str], bool] | None = None
) -> str | None:
    """Why ``state`` cannot be loaded into a module whose state dict is ``reference``, or ``None``.

    Checked before loading, because ``load_state_dict`` copies the tensors that fit before it
    raises about those that do not, which would leave the module half loaded. A reference tensor
    with no elements is a placeholder that its module resizes on load (a tree ensemble's arrays
    before the fit): its shape is not compared.

    Args:
        reference: the target module's ``state_dict()`` (a meta-device build will do: only keys
            and shapes are read).
        state: the cached state dict.
        may_lack: keys ``state`` may leave out (a method fit stores only what the fit changed).
    """
    unexpected = [k for k in state if k not in reference]
    missing = [k for k in reference if k not in state and not (may_lack is not None and may_lack(k))]
    shapes = [
        f"{k} {tuple(state[k].shape)} instead of {tuple(v.shape)}"
        for k, v in reference.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape) and v.numel() > 0
    ]
    parts = [
        f"{label} {', '.join(items[:3])}{f' and {len(items) - 3} more' if len(items) > 3 else ''}"
        for label, items in (("unexpected keys", unexpected), ("missing keys", missing), ("shapes", shapes))
        if items
    ]
    return "; ".join(parts) or None


def load_cached(module: torch.nn.Module, path: Path, what: str, redo: str) -> bool:
    """Load the state dict cached at ``path`` into a fresh ``module``; ``False``: it cannot be used.

    Every key and shape must match (:func:`state_mismatch`) and every floating tensor be finite
    (nothing NaN is used); a file that cannot be read, does not fit or holds NaN/Inf is moved aside
    with a warning (:func:`set_aside`). A refused load may leave ``module`` half loaded, so pass a
    module built for this call and drop it on ``False``.

    Args:
        module: the freshly built target.
        path: the cache file.
        what: what it holds, for the warning (``cached backbone``).
        redo: what the caller does instead (``training it again``).
    """
    state = read_state(path, what, redo)
    if state is None:
        return False
    try:
        if (mismatch := state_mismatch(module.state_dict(), state)) is not None:
            raise ValueError(mismatch)
        module.load_state_dict(state)
    except (ValueError, RuntimeError) as exc:
        set_aside(path, what, f"it does not fit the model ({_first_line(exc)})", redo)
        return False
    bad = [k for k, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        set_aside(path, what, f"it holds NaN/Inf in {', '.join(bad[:3])}", redo)
        return False
    return True
