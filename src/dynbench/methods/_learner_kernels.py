"""ACM's gated learners as two Triton kernels: grouped matmuls with no host synchronisation.

The eager path (:meth:`LearnerStack.gated`) sorts tokens by their learner count k and runs learner i
as one matmul over the first ``n_i`` sorted rows; ``n_i`` must be on the host, so it reads the
counts once per block (a GPU stall per block). The paper's Triton kernel (Wójcik et al., AAAI 2025,
§ 4 and Fig. 9) instead lets each tile of sorted tokens find on the device how many learners it
needs. The same here, in two grouped GEMMs over the tokens sorted by k (descending):

1. ``hidden``: grid (row tiles, learner × hidden-column tiles); a program whose tile's largest k
   (its first row, the rows being sorted) does not reach its learner returns at once; otherwise
   ``act(z @ w_in[i]ᵀ + b_in[i])`` (GELU, or SwiGLU's ``silu(z @ w_glu[i]ᵀ) · (z @ w_in[i]ᵀ)``).
2. ``output``: grid (row tiles, output-column tiles); each program loops over the learners its
   tile needs (a loop bound read on the device) and accumulates ``h_i @ w_out[i]`` (+ ``b_out[i]``)
   for the rows whose k exceeds i, masking the others.

Work is skipped at tile granularity (a tile runs learner i when any of its rows needs it, the rest
masked), so the kernels never do more than one tile of extra rows per learner boundary; the FLOPs
counted for the op (:func:`learner_flops`) are the eager path's exactly: the rows that need each
learner. The kernels are wrapped as the custom op ``dynbench::acm_learners`` so ``FlopCounterMode``
and the host-sync counter see one op. On CPU tensors they run only under Triton's interpreter
(``TRITON_INTERPRET=1``, set before Triton is imported): how the tests check them against the eager
path where no GPU is.
"""

import functools
import os
from typing import Any, Optional  # custom_op reads the signature at runtime: no postponed annotations

import torch
from torch import Tensor

BLOCK_M = 32  # token rows per tile
BLOCK_N = 32  # output columns per tile (hidden units in kernel 1, model width in kernel 2)
BLOCK_K = 32  # reduction chunk (model width in kernel 1, a learner's hidden units in kernel 2)


def triton_problem(device: torch.device) -> str | None:
    """Why the Triton kernels cannot run on ``device`` here, or ``None`` when they can."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return "Triton is not installed (pip install triton; CUDA builds of torch bring it)"
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return (
            f"Triton kernels run on CUDA devices, not {device.type!r} (on a CPU only under its interpreter, "
            "TRITON_INTERPRET=1 set before the first import of Triton, for tests)"
        )
    return None


@functools.cache
def _kernels() -> tuple[Any, Any]:
    """The two kernels, compiled (or interpreted) on first use: Triton is imported only here."""
    import triton
    import triton.language as tl

    @triton.jit
    def hidden_kernel(
        z, k, w_in, b_in, w_glu, b_glu, h, M, C, B, N,
        HAS_B_IN: tl.constexpr, SWIGLU: tl.constexpr, HAS_B_GLU: tl.constexpr, IEEE: tl.constexpr,
        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    ):  # fmt: skip
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        col_tiles = tl.cdiv(B, BN)
        i = pid_n // col_tiles  # the learner
        rows = pid_m * BM + tl.arange(0, BM)
        cols = (pid_n % col_tiles) * BN + tl.arange(0, BN)  # hidden units of learner i
        k_max = tl.load(k + pid_m * BM)  # rows are sorted by k, descending: the tile's largest
        if k_max > i:
            acc = tl.zeros((BM, BN), dtype=tl.float32)
            gate = tl.zeros((BM, BN), dtype=tl.float32)
            for c0 in range(0, C, BK):
                red = c0 + tl.arange(0, BK)
                zt = tl.load(z + rows[:, None] * C + red[None, :], mask=(rows[:, None] < M) & (red[None, :] < C),
                             other=0.0)  # fmt: skip
                wmask = (cols[None, :] < B) & (red[:, None] < C)
                w = tl.load(w_in + i * B * C + cols[None, :] * C + red[:, None], mask=wmask, other=0.0)  # (BK, BN)
                acc = tl.dot(zt, w, acc, input_precision="ieee" if IEEE else "tf32")
                if SWIGLU:
                    g = tl.load(w_glu + i * B * C + cols[None, :] * C + red[:, None], mask=wmask, other=0.0)
                    gate = tl.dot(zt, g, gate, input_precision="ieee" if IEEE else "tf32")
            if HAS_B_IN:
                acc += tl.load(b_in + i * B + cols, mask=cols < B, other=0.0)[None, :].to(tl.float32)
            if SWIGLU:
                if HAS_B_GLU:
                    gate += tl.load(b_glu + i * B + cols, mask=cols < B, other=0.0)[None, :].to(tl.float32)
                out = gate * tl.sigmoid(gate) * acc
            else:
                out = 0.5 * acc * (1.0 + tl.math.erf(acc * 0.7071067811865476))  # exact GELU, as F.gelu
            tl.store(h + rows[:, None] * (N * B) + i * B + cols[None, :], out.to(h.dtype.element_ty),
                     mask=(rows[:, None] < M) & (cols[None, :] < B))  # fmt: skip

    @triton.jit
    def output_kernel(
        h, k, w_out, b_out, y, M, C, B,
        HAS_B_OUT: tl.constexpr, IEEE: tl.constexpr, N: tl.constexpr,
        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    ):  # fmt: skip
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        rows = pid_m * BM + tl.arange(0, BM)
        cols = pid_n * BN + tl.arange(0, BN)  # model-width columns
        ks = tl.load(k + rows, mask=rows < M, other=0)  # (BM,) each row's learner count
        k_max = tl.load(k + pid_m * BM)
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for i in range(0, N):
            if i < k_max:
                need = (rows < M) & (ks > i)  # (BM,) rows that run learner i
                for b0 in range(0, B, BK):
                    red = b0 + tl.arange(0, BK)
                    ht = tl.load(h + rows[:, None] * (N * B) + i * B + red[None, :],
                                 mask=need[:, None] & (red[None, :] < B), other=0.0)  # fmt: skip
                    w = tl.load(w_out + i * B * C + red[:, None] * C + cols[None, :],
                                mask=(red[:, None] < B) & (cols[None, :] < C), other=0.0)  # fmt: skip
                    acc = tl.dot(ht, w, acc, input_precision="ieee" if IEEE else "tf32")
                if HAS_B_OUT:
                    bias = tl.load(b_out + i * C + cols, mask=cols < C, other=0.0).to(tl.float32)  # (BN,)
                    acc += tl.where(need[:, None], bias[None, :], 0.0)
        tl.store(y + rows[:, None] * C + cols[None, :], acc.to(y.dtype.element_ty),
                 mask=(rows[:, None] < M) & (cols[None, :] < C))  # fmt: skip

    return hidden_kernel, output_kernel


@torch.library.custom_op("dynbench::acm_learners", mutates_args=())
def acm_learners(
    z: Tensor,
    k: Tensor,
    w_in: Tensor,
    b_in: Optional[Tensor],  # noqa: UP045
    w_glu: Optional[Tensor],  # noqa: UP045
    b_glu: Optional[Tensor],  # noqa: UP045
    w_out: Tensor,
    b_out: Optional[Tensor],  # noqa: UP045
) -> Tensor:
    """``Σ_{i < k_m} learner_i(z_m)`` for every row m of ``z`` sorted by ``k`` (descending).

    Args:
        z: ``(M, C)`` token inputs, rows sorted by ``k``, largest first.
        k: ``(M,)`` int, each row's learner count, descending.
        w_in: ``(N, b, C)`` each learner's input rows.
        b_in: ``(N, b)`` hidden biases, or ``None``.
        w_glu: ``(N, b, C)`` SwiGLU's silu-branch rows, or ``None`` (GELU learners).
        b_glu: ``(N, b)`` their biases, or ``None``.
        w_out: ``(N, b, C)`` each learner's output columns, transposed.
        b_out: ``(N, C)`` output biases (added where the learner runs), or ``None``.

    Returns:
        ``(M, C)`` in the rows' order.
    """
    hidden_kernel, output_kernel = _kernels()
    z, k = z.contiguous(), k.to(torch.int32).contiguous()
    M, C = z.shape
    N, B, _ = w_in.shape
    h = torch.empty(M, N * B, dtype=z.dtype, device=z.device)  # (M, N·b) rows past a learner's prefix: unused
    y = torch.empty(M, C, dtype=z.dtype, device=z.device)  # (M, C)
    if M == 0:
        return y
    ieee = z.dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32  # tf32 only when the target asks
    dummy = w_in  # a pointer for absent biases (never read: their flag is off)
    tiles = (M + BLOCK_M - 1) // BLOCK_M
    hidden_kernel[(tiles, N * ((B + BLOCK_N - 1) // BLOCK_N))](
        z, k, w_in.contiguous(), dummy if b_in is None else b_in.contiguous(),
        dummy if w_glu is None else w_glu.contiguous(), dummy if b_glu is None else b_glu.contiguous(),
        h, M, C, B, N, b_in is not None, w_glu is not None, b_glu is not None, ieee,
        BLOCK_M, BLOCK_N, BLOCK_K,
    )  # fmt: skip
    output_kernel[(tiles, (C + BLOCK_N - 1) // BLOCK_N)](
        h, k, w_out.contiguous(), dummy if b_out is None else b_out.contiguous(), y, M, C, B,
        b_out is not None, ieee, N, BLOCK_M, BLOCK_N, BLOCK_K,
    )  # fmt: skip
    return y


@acm_learners.register_fake
def _(z: Tensor, *weights: Any) -> Tensor:  # shapes only (meta, fake tensors): the output is z's shape
    return z.new_empty(z.shape)  # (M, C)


def learner_flops(z: Tensor, k: Tensor, w_in: Tensor, b_in: Any, w_glu: Any, *args: Any, **kwargs: Any) -> int:
    """FLOPs of :func:`acm_learners` as the eager path counts them.

    2·C·b per matmul per row that runs the learner (two matmuls, three for SwiGLU); activations
    and biases count 0, as there. Reads ``k`` (a host read: counting is not the timed pass).
    """
    n, b, C = w_in.shape
    rows = int(sum(int((k > i).sum()) for i in range(n)))
    return rows * 2 * C * b * (3 if w_glu is not None else 2)
