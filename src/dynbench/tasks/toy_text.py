"""Toy text: seeded synthetic token sequences for unit and contract tests (2 blocks, d=32).

Sequences come from a random sparse first-order Markov chain over 16 tokens, so next-token
prediction is learnable and perplexity has a known floor. Not a benchmark: the data is made up.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dynbench.models.gpt import GPT, GPTConfig
from dynbench.models.training import TrainConfig
from dynbench.tasks.base import Perplexity, Split, Task, TensorSplit, register_task
from dynbench.validation import check_range


@dataclass(frozen=True)
class ToyTextConfig:
    """Synthetic Markov-chain text and a tiny GPT."""

    n_train: int = 512  # training sequences
    n_test: int = 128  # validation and (another draw) evaluation sequences
    seq_len: int = 16  # tokens per sequence (inputs); targets are the next tokens
    vocab_size: int = 16  # distinct tokens
    successors: int = 3  # each token is followed by one of this many tokens: lower = more predictable
    data_seed: int = 1234  # the data never changes with the training seed
    model: GPTConfig = GPTConfig(vocab_size=16, block_size=16, d_model=32, n_layers=2, n_heads=2)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=150, batch_size=64, lr=3e-3, warmup_steps=10))

    def __post_init__(self) -> None:
        for name in ("n_train", "n_test", "seq_len"):
            check_range(f"ToyTextConfig.{name}", getattr(self, name), 1)
        check_range("ToyTextConfig.vocab_size", self.vocab_size, 2, advice="Use 16.")
        check_range("ToyTextConfig.successors", self.successors, 1, self.vocab_size, advice="Use 3.")


@register_task("toy-text")
class ToyText(Task):
    """Next-token prediction on a synthetic Markov chain; quality = perplexity."""

    modality = "text"
    synthetic = True
    description = "synthetic Markov-chain sequences, 2-block GPT (tests only)"
    size = "512 train / 128 val / 128 test sequences of 16 tokens (generated)"
    metric = Perplexity()
    Config = ToyTextConfig

    def build_backbone(self) -> GPT:
        """A 2-block, d=32 GPT."""
        return GPT(self.config.model)

    def load_split(self, split: Split) -> TensorSplit:
        """Sample sequences from the chain: inputs 0..T-1, targets 1..T.

        The splits are separately seeded draws.
        """
        cfg = self.config
        n = cfg.n_train if split == "train" else cfg.n_test
        g = torch.Generator().manual_seed(cfg.data_seed)
        V = cfg.vocab_size
        succ = torch.stack([torch.randperm(V, generator=g)[: cfg.successors] for _ in range(V)])  # (V, s)
        g.manual_seed(cfg.data_seed + {"train": 1, "val": 2, "test": 3}[split])
        seqs = torch.empty(n, cfg.seq_len + 1, dtype=torch.long)
        seqs[:, 0] = torch.randint(V, (n,), generator=g)
        for t in range(cfg.seq_len):
            choice = torch.randint(cfg.successors, (n,), generator=g)
            seqs[:, t + 1] = succ[seqs[:, t], choice]
        return TensorSplit(seqs[:, :-1].contiguous(), seqs[:, 1:].contiguous())
