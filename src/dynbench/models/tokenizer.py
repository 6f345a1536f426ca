"""A Hugging Face ``tokenizers`` tokenizer rebuilt from GGUF metadata (no tokenizer.json needed).

GGUF files carry their tokenizer as metadata: ``tokenizer.ggml.model`` (``gpt2`` = byte-level BPE),
``tokenizer.ggml.tokens`` (the vocabulary in id order, byte-level encoded),
``tokenizer.ggml.merges`` (``"a b"`` pairs in rank order), ``tokenizer.ggml.token_type`` (1 =
normal, 3 = control …) and ``tokenizer.ggml.pre`` (which pre-tokenizer regex llama.cpp applies). We
rebuild the equivalent ``tokenizers`` pipeline:

- ``gpt2`` / ``default``: GPT-2's byte-level pre-tokenizer (its regex, no prefix space) and
  byte-level decoder;
- ``smollm`` (SmolLM/SmolLM2): the same preceded by splitting digits into single characters, as
  llama.cpp's ``smollm`` pre-tokenizer and the model's own ``tokenizer.json`` do.

Control tokens (``<|endoftext|>``, ``<|im_start|>`` …) become special added tokens, so they are
matched whole and never split. Other tokenizer families (SentencePiece ``llama``, other ``pre``
regexes) are refused with an error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# ``token_type`` values of llama.cpp (``llama_token_type``): the ones that must be matched whole.
SPECIAL_TYPES = frozenset({3, 4})  # 3 = control, 4 = user-defined
PRE_TOKENIZERS = ("default", "gpt2", "gpt-2", "smollm")


def bpe_tokenizer(
    tokens: Sequence[str], merges: Sequence[str], token_types: Sequence[int] | None = None, pre: str = "gpt2"
) -> Any:
    """A byte-level BPE ``tokenizers.Tokenizer`` from a GGUF-style vocabulary and merge list.

    Args:
        tokens: the vocabulary, id order (byte-level strings such as ``"Ġthe"``).
        merges: merge rules in rank order, each ``"left right"``.
        token_types: llama.cpp token types per id (3/4 become special tokens); ``None`` = all
            normal.
        pre: llama.cpp pre-tokenizer name, one of ``PRE_TOKENIZERS``.

    Returns:
        A ``tokenizers.Tokenizer``.

    Raises:
        ValueError: an unsupported pre-tokenizer, a malformed merge, or a vocabulary/type length
            mismatch.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    if pre not in PRE_TOKENIZERS:
        raise ValueError(
            f"GGUF pre-tokenizer {pre!r} is not supported; supported: {', '.join(PRE_TOKENIZERS)}. "
            "Add its pre-tokenizer rules to dynbench.models.tokenizer to use this model."
        )
    if token_types is not None and len(token_types) != len(tokens):
        raise ValueError(
            f"GGUF tokenizer has {len(tokens)} tokens but {len(token_types)} token types; the file is inconsistent."
        )
    pairs = []
    for rank, m in enumerate(merges):
        left, sep, right = m.partition(" ")
        if not sep or not left or not right:
            raise ValueError(f"GGUF merge #{rank} {m!r} is not two tokens separated by a space; the file is corrupt.")
        pairs.append((left, right))
    vocab = {tok: i for i, tok in enumerate(tokens)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre == "smollm":
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        tokenizer.pre_tokenizer = byte_level
    tokenizer.decoder = decoders.ByteLevel()
    special = [tok for tok, kind in zip(tokens, () if token_types is None else token_types) if kind in SPECIAL_TYPES]
    tokenizer.add_special_tokens([AddedToken(tok, special=True, normalized=False) for tok in special])
    return tokenizer


def tokenizer_from_gguf_metadata(meta: Mapping[str, Any]) -> Any:
    """A ``tokenizers.Tokenizer`` from the ``tokenizer.ggml.*`` entries of GGUF metadata.

    Args:
        meta: GGUF metadata as plain Python values (see
            :func:`dynbench.models.convert.gguf_metadata`).

    Raises:
        ValueError: the file has no tokenizer, or not a byte-level BPE one.
    """
    model = meta.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise ValueError(
            f"GGUF tokenizer model is {model!r}; only byte-level BPE ('gpt2', as in SmolLM2 and GPT-2) is "
            "supported. Use a model with a GPT-2-style tokenizer."
        )
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges"):
        if key not in meta:
            raise ValueError(f"GGUF metadata lacks {key!r}; the file carries no usable tokenizer.")
    return bpe_tokenizer(
        meta["tokenizer.ggml.tokens"],
        meta["tokenizer.ggml.merges"],
        meta.get("tokenizer.ggml.token_type"),
        pre=str(meta.get("tokenizer.ggml.pre", "gpt2")),
    )
