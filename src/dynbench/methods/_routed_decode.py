"""KV-cached decoding for a causal GPT whose *routed* blocks run only the tokens a predictor picks.

The Mixture-of-Depths decode path (:mod:`dynbench.methods.mixture_of_depths`): a token that skips a
routed block computes nothing there and writes no key or value into that block's cache, so later
tokens cannot attend to it there — exactly as in training, where skipped tokens are absent from the
routed block's attention. Plain blocks cache every token, as usual.

The caches of routed blocks are ragged: each sequence has its own fill ``length`` and its own
positions per slot. They are stored padded, ``(B, kv_heads, S + 1, head_dim)``, where the extra last
slot is a dump for padding writes and is never attended. A call processes the next ``n`` tokens of
every sequence (a prompt, or one new token):

- plain block: keys/values of all ``n`` tokens are appended (a slice write; causal mask only inside
  a prompt);
- routed block: the predictor decides per token; only the sequences with at least one routed token
  take part (rows gathered — a dynamic shape, one host sync per routed block), their routed tokens
  are gathered (padded to the largest count), attend over their own cache slots, and ``r · f`` is
  scattered back.

Numerically this is the full-sequence predictor-routed forward computed incrementally; a unit test
holds them equal.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dynbench.methods._token_gather import gather_tokens, padded_positions, scatter_add_tokens
from dynbench.models.block import Block, apply_rope, rope_tables


class BlockCache:
    """Keys, values and token positions of one block, per sequence.

    Attributes:
        k, v: ``(B, kv_heads, S + 1, head_dim)``; slot ``S`` is the padding dump.
        pos: ``(B, S + 1)`` position of the token in each slot.
        length: ``(B,)`` filled slots per sequence.
    """

    def __init__(self, block: Block, batch: int, slots: int, like: Tensor) -> None:
        cfg = block.cfg
        shape = (batch, cfg.kv_heads, slots + 1, cfg.head_dim)
        self.k = torch.zeros(shape, dtype=like.dtype, device=like.device)
        self.v = torch.zeros(shape, dtype=like.dtype, device=like.device)
        self.pos = torch.zeros(batch, slots + 1, dtype=torch.long, device=like.device)
        self.length = torch.zeros(batch, dtype=torch.long, device=like.device)
        self.filled = 0  # plain blocks only: every sequence has the same length, kept on the host
        self.dump = slots


class RoutedDecoder:
    """Incremental forward of a GPT with a KV cache; routed blocks run only predictor-chosen tokens.

    Args:
        net: a causal GPT-style backbone (``tok_embed``, optional learned ``pos_embed``, blocks,
            readout).
        routers: block index (as a string) → router ``Linear(d → 1)``; empty for a dense decoder.
        predictors: block index → predictor returning ``(B, n)`` logits; a logit > 0 routes the
            token.
        weight: router output → update factor (``r`` or ``sigmoid(r)``).
        batch_size: sequences decoded together.
        max_len: most tokens per sequence (prompt + generated).

    Attributes:
        executed: ``(B, L)`` tokens that ran each block so far, per sequence (for FLOP accounting).
    """

    def __init__(
        self,
        net: nn.Module,
        routers: Mapping[str, nn.Module],
        predictors: Mapping[str, nn.Module],
        weight: Callable[[Tensor], Tensor],
        batch_size: int,
        max_len: int,
    ) -> None:
        cfg = net.block_config
        if not cfg.causal or not hasattr(net, "tok_embed"):
            raise ValueError(
                f"KV-cached decoding needs a causal language model (a GPT backbone), got {type(net).__name__}."
            )
        if max_len > net.config.block_size:
            raise ValueError(f"max_len={max_len} exceeds the model's block_size={net.config.block_size}.")
        self.net, self.routers, self.predictors, self.weight = net, routers, predictors, weight
        self.batch_size, self.max_len = batch_size, max_len
        like = next(net.parameters())
        self.caches = [BlockCache(b, batch_size, max_len, like) for b in net.blocks]
        self.position = 0  # tokens consumed so far, the same for every sequence
        self.executed = torch.zeros(batch_size, len(net.blocks), dtype=torch.long)

    @torch.no_grad()
    def __call__(self, ids: Tensor) -> Tensor:
        """Feed the next ``n`` tokens of every sequence.

        Args:
            ids: ``(B, n)`` token ids (a prompt, or ``n = 1`` during generation).

        Returns:
            ``(B, n, V)`` next-token logits at each fed position.

        Raises:
            ValueError: wrong batch size, or past ``max_len``.
        """
        B, n = ids.shape
        if B != self.batch_size or self.position + n > self.max_len:
            raise ValueError(
                f"RoutedDecoder was built for batch {self.batch_size} and {self.max_len} tokens; got batch {B} "
                f"with {self.position} + {n} tokens. Build a decoder with a larger max_len."
            )
        net = self.net
        pos = torch.arange(self.position, self.position + n, device=ids.device)  # (n,)
        x = net.tok_embed(ids)  # (B, n, C)
        if net.pos_embed is not None:
            x = x + net.pos_embed(pos)  # (B, n, C) learned positions, as GPT.embed
        for i, block in enumerate(net.blocks):
            if str(i) in self.routers:
                x = self._routed(i, block, x, pos)
            else:
                x = self._plain(i, block, x, pos)
        self.position += n
        return net.readout(x)  # (B, n, V)

    def _plain(self, i: int, block: Block, x: Tensor, pos: Tensor) -> Tensor:
        """A block every token runs: append all keys/values, then the usual pre-norm update."""
        B, n, _ = x.shape
        cache = self.caches[i]
        a = self._attend_plain(block, cache, block.attn_norm(x), pos)  # (B, n, C)
        self.executed[:, i] += n
        h = x + a  # (B, n, C) — the same operation order as Block.forward
        return h + block.mlp(block.mlp_norm(h))

    def _routed(self, i: int, block: Block, x: Tensor, pos: Tensor) -> Tensor:
        """A routed block: only the predictor's chosen tokens run it and enter its cache."""
        B, n, _ = x.shape
        key = str(i)
        chosen = self.predictors[key](x) > 0  # (B, n) the causal routing decision
        idx, valid, _, _ = padded_positions(chosen)  # (B, m), (B, m)
        # sequences with a routed token (host sync)
        rows = valid.any(dim=1).nonzero().squeeze(1)  # (R,)
        if rows.numel() == 0:
            return x  # nothing routed: nothing computed, nothing cached
        every = rows.numel() == B
        xr = x if every else x.index_select(0, rows)  # (R, n, C)
        idx, valid = (idx, valid) if every else (idx[rows], valid[rows])  # (R, m)
        xs = gather_tokens(xr, idx)  # (R, m, C)
        cache = self.caches[i]
        a = self._attend(block, cache, block.attn_norm(xs), pos[idx], valid, None if every else rows)  # (R, m, C)
        d = a + block.mlp(block.mlp_norm(xs + a))  # (R, m, C) the block's delta, as Block.delta
        r = self.routers[key](xs).squeeze(-1)  # (R, m) router outputs of the routed tokens
        update = torch.where(valid[..., None], self.weight(r)[..., None] * d, torch.zeros_like(d))  # (R, m, C)
        self.executed[rows.cpu(), i] += valid.sum(dim=1).cpu()
        xr = scatter_add_tokens(xr, idx, update)  # (R, n, C)
        return xr if every else x.index_copy(0, rows, xr)

    def _attend_plain(self, block: Block, cache: BlockCache, h: Tensor, pos: Tensor) -> Tensor:
        """Append all new tokens (equal lengths: slice writes) and attend.

        ``h`` is ``(B, n, C)``, ``pos`` ``(n,)``.
        """
        q, k, v = self._qkv(block, h, pos)  # (B, H, n, hd), (B, hk, n, hd) × 2
        start, n = cache.filled, h.shape[1]
        cache.k[:, :, start : start + n] = k
        cache.v[:, :, start : start + n] = v
        cache.filled = start + n
        keys, values = cache.k[:, :, : start + n], cache.v[:, :, : start + n]  # (B, hk, S, hd)
        mask = None  # one new token sees every cached one
        if n > 1:  # a prompt: causal among the new tokens, all of the earlier ones
            mask = torch.ones(n, start + n, dtype=torch.bool, device=h.device).tril(diagonal=start)  # (n, S)
        return self._sdpa(block, q, keys, values, mask)

    @staticmethod
    def _qkv(block: Block, h: Tensor, ps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys and values of ``h`` ``(R, m, C)``, rotated to positions ``ps``.

        ``ps`` is ``(m,)`` or ``(R, m)``.
        """
        cfg, att = block.cfg, block.attn
        R, m, _ = h.shape
        H, hk, hd = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        q = att.q_proj(h).view(R, m, H, hd).transpose(1, 2)  # (R, H, m, hd)
        k = att.k_proj(h).view(R, m, hk, hd).transpose(1, 2)  # (R, hk, m, hd)
        v = att.v_proj(h).view(R, m, hk, hd).transpose(1, 2)  # (R, hk, m, hd)
        if cfg.rope:
            cos, sin = rope_tables(ps, hd, cfg.rope_theta, q.dtype)  # (m, hd/2) or (R, 1, m, hd/2)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        return q, k, v

    @staticmethod
    def _sdpa(block: Block, q: Tensor, keys: Tensor, values: Tensor, mask: Tensor | None) -> Tensor:
        """Attention of ``q`` ``(R, H, m, hd)`` over cached keys/values, then ``o_proj``.

        The cache holds ``(R, hk, S, hd)`` keys and values.
        """
        cfg = block.cfg
        R, H, m, hd = q.shape
        # grouped-query attention: each query head reads its group's k/v (a copy, 0 FLOPs)
        if cfg.kv_heads != H:
            keys = keys.repeat_interleave(cfg.group_size, dim=1)
            values = values.repeat_interleave(cfg.group_size, dim=1)
        y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)  # (R, H, m, hd)
        return block.attn.o_proj(y.transpose(1, 2).reshape(R, m, H * hd))  # (R, m, C)

    def _attend(
        self, block: Block, cache: BlockCache, h: Tensor, ps: Tensor, valid: Tensor, rows: Tensor | None
    ) -> Tensor:
        """Write a routed block's new tokens into its ragged ``cache``, attend over own slots.

        Args:
            block: whose attention weights to use.
            cache: that block's cache.
            h: ``(R, m, C)`` normalised inputs of the new tokens.
            ps: ``(R, m)`` their positions.
            valid: ``(R, m)`` True on real tokens; padding writes go to the dump slot.
            rows: ``(R,)`` batch rows taking part (``None``: all, in order).

        Returns:
            ``(R, m, C)`` attention output after the output projection.
        """
        R, m, _ = h.shape
        q, k, v = self._qkv(block, h, ps)  # (R, H, m, hd), (R, hk, m, hd) × 2
        length = cache.length if rows is None else cache.length[rows]  # (R,)
        offsets = torch.arange(m, device=h.device)  # (m,) valid tokens come first in each row
        # padding → the dump slot
        slots = torch.where(valid, length[:, None] + offsets, cache.dump)  # (R, m)
        row_idx = (torch.arange(R, device=h.device) if rows is None else rows)[:, None]  # (R, 1)
        cache.k[row_idx, :, slots] = k.transpose(1, 2)  # (R, m, hk, hd) into their slots
        cache.v[row_idx, :, slots] = v.transpose(1, 2)
        cache.pos[row_idx, slots] = ps
        new_length = length + valid.sum(dim=1)  # (R,)
        if rows is None:
            cache.length = new_length
        else:
            cache.length[rows] = new_length
        S = int(new_length.max())  # slots to attend over (one host sync)
        keys = cache.k[:, :, :S] if rows is None else cache.k[rows, :, :S]  # (R, hk, S, hd)
        values = cache.v[:, :, :S] if rows is None else cache.v[rows, :, :S]  # (R, hk, S, hd)
        kpos = cache.pos[:, :S] if rows is None else cache.pos[rows, :S]  # (R, S)
        filled = torch.arange(S, device=h.device)[None, :] < new_length[:, None]  # (R, S)
        # causal on positions
        allowed = filled[:, None, :] & (kpos[:, None, :] <= ps[:, :, None])  # (R, m, S)
        # padding queries look at slot 0 (always filled) so no mask row is empty; their outputs are
        # discarded
        allowed = allowed | ((~valid)[:, :, None] & (torch.arange(S, device=h.device) == 0))
        return self._sdpa(block, q, keys, values, allowed[:, None])
