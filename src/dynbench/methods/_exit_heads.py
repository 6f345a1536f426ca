"""Exit heads: a prediction read out after an inner block of a frozen backbone.

Shared by early_exit, oracle (its early-exit candidates) and transformer_inverse, which put one exit
head after each of blocks ``0 … L-2``. Three kinds:

- ``"copy"``: a copy of the backbone's readout, trained with the summed task loss of every exit
  (:func:`train_exit_heads`).
- ``"tuned"``: the backbone's own, frozen readout after an affine *translator* ``h ↦ h + W h + b``
  into the last block's output space: the "tuned lens" of Belrose et al., "Eliciting Latent
  Predictions from Transformers with the Tuned Lens", https://arxiv.org/abs/2303.08112. They train
  it by gradient descent on a KL loss; we fit it in closed form, by ridge-regularised least squares
  (:func:`fit_translators`), so no pass goes through the head.
- ``"shared"``: the readout itself after every block, untrained (the "logit lens").

``"auto"`` picks ``tuned`` for a head of more than :data:`SHARED_HEAD_PARAMS` weights (an LM's
unembedding, too large to copy per exit) and ``copy`` otherwise.

:data:`VERSION` feeds the recorded version of every method that lists this module in
:attr:`~dynbench.methods.base.Method.shared_parts`: bump it when a change here changes any result.
"""

from __future__ import annotations

import copy
import typing
from collections.abc import Iterator
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dynbench.methods.base import freeze
from dynbench.models.backbone import Backbone, Readout
from dynbench.models.training import TrainConfig, endless, fit_loop
from dynbench.tasks.base import Task
from dynbench.types import Batch

__all__ = [
    "HEAD_KINDS",
    "HEAD_TRAINING",
    "RIDGE",
    "SHARED_HEAD_PARAMS",
    "TUNED_SAMPLES",
    "VERSION",
    "HeadKind",
    "SharedExit",
    "TunedExit",
    "build_exit_heads",
    "exit_inputs",
    "exit_kind",
    "fit_translators",
    "train_exit_heads",
]

VERSION = "1"
"""Version of the exit heads; part of the recorded version of every method that uses them."""

HeadKind = Literal["auto", "copy", "shared", "tuned"]
"""An exit-head kind as a config names it; :func:`exit_kind` resolves ``auto``."""
HEAD_KINDS: tuple[str, ...] = typing.get_args(HeadKind)
SHARED_HEAD_PARAMS = 1_000_000
"""Above this many head weights ``auto`` gives tuned exits (tinv: shared ones), not head copies."""
TUNED_SAMPLES = 256
"""Training samples the translators' least squares reads by default."""
RIDGE = 1e-3
"""Default ridge strength of the translators, relative to the mean feature energy."""
HEAD_TRAINING = TrainConfig(
    steps=300,  # enough for the heads of a 6-block ViT on digits to converge
    batch_size=64,  # as the backbone recipes use
    lr=3e-3,  # peak AdamW learning rate: heads are small linear layers started from the final head
    weight_decay=0.01,  # mild, so the heads do not drift far from the final head they start as
    warmup_steps=20,  # short linear warm-up before the cosine decay
)
"""Default recipe of :func:`train_exit_heads` (copied heads)."""


class SharedExit(nn.Module):
    """An exit that applies the backbone's own readout (final norm, pooling, head); no weights.

    The readout is held outside the module tree, so the state dict does not repeat the head per
    exit, and the head runs as ``F.linear`` here, so the FLOP counter charges it to this exit (a
    controller module).
    """

    def __init__(self, readout: Readout) -> None:
        super().__init__()
        # not a submodule: shared, not copied or saved again
        object.__setattr__(self, "readout", readout)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, T, C)`` → ``(B, K)`` or ``(B, T, V)``, exactly as the readout."""
        ro = self.readout
        if ro.pool == "cls":
            x = x[:, 0]  # (B, C)
        return F.linear(ro.norm(x), ro.head.weight, ro.head.bias)

    def flops(self, tokens: int) -> float:
        """Analytic FLOPs of one application, the readout's."""
        return self.readout.flops(tokens)


class TunedExit(SharedExit):
    """The shared readout after a fitted affine translator ``h ↦ h + W h + b``.

    The translator starts at zero, so an unfitted tuned exit is the shared exit.
    """

    def __init__(self, readout: Readout) -> None:
        super().__init__(readout)
        d = readout.head.in_features
        self.translator = nn.Linear(d, d)
        nn.init.zeros_(self.translator.weight)
        nn.init.zeros_(self.translator.bias)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, T, C)`` → ``(B, K)`` or ``(B, T, V)``: translate, then the readout."""
        if self.readout.pool == "cls":
            x = x[:, :1]  # (B, 1, C) only the read position is translated
        return super().forward(x + self.translator(x))  # (B, K) or (B, T, V)

    def flops(self, tokens: int) -> float:
        """The translator's matmul on the positions read, plus the readout."""
        d = self.translator.in_features
        positions = 1 if self.readout.pool == "cls" else tokens
        return 2.0 * positions * d * d + self.readout.flops(tokens)


def exit_kind(heads: str, readout: Readout) -> str:
    """``copy``, ``tuned`` or ``shared``: ``heads`` with ``auto`` resolved (tuned: large heads)."""
    if heads != "auto":
        return heads
    return "tuned" if readout.head.weight.numel() > SHARED_HEAD_PARAMS else "copy"


def build_exit_heads(backbone: Backbone, kind: str) -> nn.ModuleList:
    """One exit head of ``kind`` (``copy``, ``tuned``, ``shared``) after each of blocks ``0 … L-2``.

    Copies start as the backbone's readout and stay trainable even when the backbone is frozen.
    """
    n_exits = backbone.n_blocks - 1
    if kind in ("shared", "tuned"):
        exit_cls = SharedExit if kind == "shared" else TunedExit
        heads: list[nn.Module] = [exit_cls(backbone.readout) for _ in range(n_exits)]
    else:
        heads = [copy.deepcopy(backbone.readout) for _ in range(n_exits)]
        for p in (p for head in heads for p in head.parameters()):
            p.requires_grad_(True)  # the copies stay trainable even when the backbone is frozen
    return nn.ModuleList(heads)


@torch.no_grad()
def exit_inputs(backbone: Backbone, inputs: Tensor) -> list[Tensor]:
    """Outputs of blocks ``0 … L-2`` for the whole batch (no grad), the inputs of the exit heads."""
    x = backbone.embed(inputs)  # (B, T, C)
    out = []
    for block in list(backbone.blocks)[:-1]:
        x = block(x)  # (B, T, C)
        out.append(x)
    return out


def train_exit_heads(backbone: Backbone, heads: nn.ModuleList, task: Task, recipe: TrainConfig, *, seed: int) -> None:
    """Train copied exit heads jointly on the frozen backbone: the summed task loss of every exit.

    Args:
        backbone: the dense model; frozen here, and run in eval mode (hidden states as at
            inference).
        heads: the exit heads after blocks ``0 … L-2``, trained in place.
        task: supplies the training split and the loss.
        recipe: steps, batch size and optimiser settings.
        seed: seeds the training and the batch order.
    """
    torch.manual_seed(seed)
    freeze(backbone)
    params = list(heads.parameters())
    for p in params:
        p.requires_grad_(True)
    device = next(backbone.parameters()).device
    modes = backbone.training, heads.training
    backbone.eval()  # hidden states as at inference (no dropout)
    heads.train()

    def epoch_batches(epoch: int) -> Iterator[Batch]:
        return task.batches("train", batch_size=recipe.batch_size, seed=1000 * seed + epoch, shuffle=True)

    def step_loss(batch: Batch) -> Tensor:
        hidden = exit_inputs(backbone, batch.inputs.to(device))  # L-1 × (B, T, C), no grad
        targets = batch.targets.to(device)
        losses = [task.metric.loss(head(h), targets) for head, h in zip(heads, hidden)]
        return torch.stack(losses).sum()

    fit_loop(params, step_loss, endless(epoch_batches), recipe)
    backbone.train(modes[0])
    heads.train(modes[1])


@torch.no_grad()
def fit_translators(
    backbone: Backbone, heads: nn.ModuleList, task: Task, *, samples: int, ridge: float, seed: int
) -> None:
    """Fit every tuned exit's translator by ridge least squares: block l's output → the last's.

    One pass over ``samples`` training samples accumulates, per exit, the Gram matrix of
    ``[h_l, 1]`` and its product with the target ``h_L − h_l`` in float64; the solve penalises ``W``
    (not the bias) by ``ridge`` times the mean diagonal of the Gram matrix. Classification readouts
    (``cls``) fit on the read position only.

    Args:
        backbone: the dense model (run in eval mode, its mode restored after).
        heads: the :class:`TunedExit` heads after blocks ``0 … L-2``, fitted in place.
        task: supplies the training split.
        samples: training samples the least squares reads.
        ridge: ridge strength relative to the mean diagonal of the Gram matrix.
        seed: seeds the sample order.
    """
    was_training = backbone.training
    backbone.eval()
    device = next(backbone.parameters()).device
    d = backbone.readout.head.in_features
    n_exits = len(heads)
    gram = torch.zeros(n_exits, d + 1, d + 1, dtype=torch.float64)  # (E, C+1, C+1)
    cross = torch.zeros(n_exits, d + 1, d, dtype=torch.float64)  # (E, C+1, C)
    cls = backbone.readout.pool == "cls"

    def rows(h: Tensor) -> Tensor:
        return (h[:, 0] if cls else h).reshape(-1, d)  # (N, C)

    seen = 0
    # 16: bounds L hiddens
    for batch in task.batches("train", batch_size=16, seed=1000 * seed, shuffle=True):
        x = batch.inputs[: samples - seen].to(device)
        seen += x.shape[0]
        hidden = exit_inputs(backbone, x)  # L-1 × (B, T, C)
        target = rows(backbone.blocks[-1](hidden[-1]))  # (N, C) the last block's output
        for e, h in enumerate(hidden):
            X = torch.cat([rows(h), torch.ones_like(target[:, :1])], dim=1)  # (N, C+1)
            gram[e] += (X.T @ X).double().cpu()
            cross[e] += (X.T @ (target - X[:, :d])).double().cpu()
        if seen >= samples:
            break
    for e, head in enumerate(heads):
        g = gram[e].clone()
        # ridge on W only
        g[:d, :d] += torch.eye(d, dtype=torch.float64) * ridge * g.diagonal()[:d].mean()
        coef = torch.linalg.solve(g, cross[e])  # (C+1, C)
        head.translator.weight.copy_(coef[:d].T.float())
        head.translator.bias.copy_(coef[d].float())
    backbone.train(was_training)
