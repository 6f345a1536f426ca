"""Static graphs for layer folding: runs of blocks (and controller stages) prepared once, replayed.

Part of the Transformer^-1 reconstruction (Ji et al., "Transformer^-1: Input-Adaptive Computation
for Resource-Constrained Deployment", https://arxiv.org/abs/2501.16394;
:mod:`dynbench.methods.transformer_inverse`). The paper restricts depths to a few *fold points* and
precompiles the path to each; we prepare the blocks between two fold points (a *segment*) as one
static graph: ``torch.jit.trace`` on CPU, one captured CUDA graph per segment and batch shape on
CUDA. The controller's stages (predictor, policy step) are traced on CPU the same way. A prepared
graph fires no module hooks, so the caller runs each controller stage's call inside
:meth:`~dynbench.methods.base.DynamicModel.controller_span` (the harness's controller time sees it
that way); segments are backbone work and need none.

Kept apart from the plugin because none of it depends on the method's decisions: a segment is a run
of blocks, a stage is whatever the model's ``start_stage`` / ``step_stage`` compute. Graphs are used
only for no-grad inference with no Python dispatch mode active (see :func:`graphs_allowed`), so FLOP
counters always see the eager ops.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor, nn

__all__ = [
    "CudaGraphSegment",
    "GraphCache",
    "Segment",
    "Stage",
    "StagedModel",
    "counting",
    "graphs_allowed",
    "run_stage",
    "trace_segment",
]


class StagedModel(Protocol):
    """What :func:`run_stage` calls: the controller stages of a Transformer^-1 model.

    Implemented by :class:`dynbench.methods.transformer_inverse.TransformerInverseModel`.
    """

    def start_stage(self, inputs: Tensor, embedded: Tensor, first: Tensor) -> tuple[Tensor, Tensor]: ...

    def step_stage(
        self, x: Tensor, start: Tensor, h: Tensor, k: int, lam: float, probe: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]: ...


class GraphCache(dict):
    """Prepared segment graphs; a deep copy starts empty (graphs hold the original blocks)."""

    def __deepcopy__(self, memo: dict) -> GraphCache:
        return GraphCache()


class Segment(nn.Module):
    """Consecutive backbone blocks as one module, the unit that is traced or captured."""

    def __init__(self, blocks: Sequence[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, T, C) → (B, T, C)``."""
        for block in self.blocks:
            x = block(x)
        return x


class Stage(nn.Module):
    """A controller stage (:class:`StagedModel`) as a module, so it can be traced like a segment."""

    def __init__(self, model: nn.Module, name: str, *consts: float) -> None:
        super().__init__()
        self.model = model
        self.name = name
        self.consts = consts

    def forward(self, *args: Tensor) -> tuple[Tensor, ...]:
        """The arguments of each stage.

        ``start``: (inputs, embedded, first); ``step``: (x, start, h, probe);
        ``probe+step``: (x, start, h).
        """
        return run_stage(self.model, self.name, self.consts, args)  # type: ignore[arg-type]


def run_stage(model: StagedModel, name: str, consts: tuple, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """Call the model's stage ``name`` (``start``, or a step with constants ``(k, λ)``)."""
    if name == "start":
        return model.start_stage(*args)
    k, lam = consts
    x, start, h, *probe = args
    return model.step_stage(x, start, h, int(k), float(lam), *probe)


class CudaGraphSegment:
    """One captured CUDA graph of a segment for one input shape.

    A call copies the input in, replays the graph and copies the output out.
    """

    def __init__(self, segment: nn.Module, example: Tensor) -> None:
        self.static_in = example.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm-up on a side stream, as capture requires
                segment(self.static_in)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_out = segment(self.static_in)

    def __call__(self, x: Tensor) -> Tensor:
        """Run the captured segment on ``x`` (its shape must be the captured one)."""
        self.static_in.copy_(x)
        self.graph.replay()
        return self.static_out.clone()  # the next replay overwrites the static output


def trace_segment(segment: nn.Module, example: Tensor | tuple[Tensor, ...]) -> torch.jit.ScriptModule:
    """``torch.jit.trace`` a segment on one example; the batch size stays free.

    Tracing records shape reads, so the traced graph takes any batch size.

    Silenced warnings: the tracer flags the block's Python-level shape checks (head counts, causal
    flag), which are constants of a segment, and ``torch.jit`` is deprecated in favour of
    ``torch.compile`` (not tried here: it would recompile per batch size after compaction unless
    marked dynamic; tracing costs milliseconds per segment).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = example if isinstance(example, tuple) else (example,)
        return torch.jit.trace(segment, args, check_trace=False)


def counting() -> bool:
    """Whether a Python dispatch mode (FLOP counter, memory tracker) is on: it must see every op."""
    from torch.utils._python_dispatch import _get_current_dispatch_mode

    return _get_current_dispatch_mode() is not None


def graphs_allowed() -> bool:
    """Whether a prepared graph may replace eager execution now.

    Not while counting (a graph hides its ops from the dispatch mode), with grad enabled (graphs are
    for inference), or inside a trace (a stage's trace must record its segments' ops, not nest
    graphs).
    """
    return not (counting() or torch.is_grad_enabled() or torch.jit.is_tracing())
