r"""dynbench as an lm-eval model: any dynbench text task × method × budget, scored by lm-eval.

lm-eval: EleutherAI's LM Evaluation Harness, https://github.com/EleutherAI/lm-evaluation-harness
(written against 0.4.13, ``pip install 'dynbench[lm-eval]'``). Registered as ``dynbench``::

    lm_eval --model dynbench --model_args task=shakespeare,method=layer_skip,budget=0.5 \
        --tasks dynbench_shakespeare_ppl,dynbench_shakespeare_cloze --limit 20 --output_path out/

The backbone and the fitted method are the ones ``bench run`` uses: the run is planned and validated
by :func:`dynbench.harness.planning.plan_run`, the dense backbone comes from the task's (trained,
cached) checkpoint for ``seed``, and the method is fitted (or loaded from the fit cache) by
:func:`~dynbench.harness.fit_cache.fitted_model`.

Model arguments (``--model_args k=v,…``; see :class:`LMEvalConfig`): ``task``, ``method``,
``budget``, ``seed``, ``max_length``, ``device``, ``threads``, ``cache_dir``, ``flops_json``,
``measured_flops``, plus plugin options with a prefix: ``task.seq_len=64``, ``task.train.steps=20``,
``method.pattern=uniform`` (lists with ``;``).

What a budget means is the method's own knob, passed unchanged to ``DynamicModel.forward``
(``bench ls methods``): ``dense`` ignores it (1.0); ``layer_skip`` runs ``round(budget · L)`` of the
L blocks, the same ones for every input; ``early_exit`` is the confidence threshold τ — an input
leaves after the first block whose exit head's confidence (max softmax probability, averaged over
the input's positions) exceeds τ, so 1.0 never exits. Each model input is one sample: a
rolling-perplexity window, a (context + choice) sequence, one generation step. No budget means the
method's full budget, which reproduces the dense backbone.

FLOPs: every forward pass's :class:`~dynbench.types.Trace` goes through ``Backbone.flops`` — the
analytic count of what executed (blocks, tokens, heads, readout, plus the controller: exit heads,
routers), 1 multiply-add = 2 FLOPs, matmuls and attention only, the convention of
:mod:`dynbench.harness.flops`. Only real tokens are counted: inputs are batched with others of the
same length, so nothing is padded. Generation has no KV cache, so every new token re-runs the (up to
``max_length``) window, and that is what is counted. ``measured_flops=true`` also counts each call
with ``FlopCounterMode`` as a cross-check.

Latency: every forward pass is timed with the hardware target's call timer, and the time per
lm-eval document, request and call sits beside the FLOPs (how it is shared out:
:mod:`dynbench.integrations.lm_eval_usage`). Totals per lm-eval task go into the results under
``config.dynbench`` (``--output_path`` saves them), to ``flops_json`` when given, and to lm-eval's
log as a table when the evaluation ends.

Text → tokens: tasks with ``encode``/``decode`` methods (``smollm2``'s BPE tokenizer) use them, the
``shakespeare`` task its fixed character vocabulary, and tiny synthetic tasks (``toy-text``, ≤ 26
tokens) the letters ``a``, ``b``, … for their token ids. The rolling prefix token (lm-eval's BOS/EOS
slot) is ``<|endoftext|>`` for BPE, a newline for characters, ``a`` for letters. ``max_length``
defaults to the task's ``seq_len`` (the context the backbone was trained and is scored with in
``bench run``), capped at the backbone's ``block_size``.

How lm-eval 0.4.13, which has no plugin discovery, finds ``--model dynbench`` and the shipped
tasks by name: :mod:`dynbench.integrations.lm_eval_registration`.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

try:
    import lm_eval.models  # noqa: F401 — lm-eval's own models first: get_model() fills only an empty registry
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
except ImportError as exc:  # pragma: no cover - exercised only without lm-eval
    raise ImportError(
        "dynbench's lm-eval integration needs lm-eval: `pip install 'dynbench[lm-eval]'` (lm-eval==0.4.13)."
    ) from exc

from dynbench.cache_dirs import model_cache_dir
from dynbench.config import ConfigError, PluginSpec, RunSpec, build_dataclass
from dynbench.harness.fit_cache import fitted_model
from dynbench.harness.flops import count_flops
from dynbench.harness.planning import plan_run
from dynbench.integrations.lm_eval_usage import FLOPS_DOC, Usage, UsageLedger, format_summary, request_task
from dynbench.tasks.base import Task
from dynbench.validation import check_range

# lm-eval configures only its own logger tree; logging under it makes `lm_eval` show our FLOPs line.
logger = logging.getLogger("lm_eval.dynbench")

PLUGIN_PREFIXES = ("task.", "method.")
"""Model-argument prefixes that carry options of the dynbench task and method plugins."""
IGNORED_ARGS = ("max_batch_size", "trust_remote_code")
"""Arguments lm-eval's CLI passes to every model that mean nothing here.

No batch-size search, no remote code.
"""


@dataclass(frozen=True)
class LMEvalConfig:
    """The ``dynbench`` model's arguments (``--model_args``)."""

    task: str = "shakespeare"  # dynbench text task whose dense backbone is evaluated (toy-text, shakespeare, smollm2)
    method: str = "dense"  # dynbench method wrapping it (dense, early_exit, layer_skip)
    budget: float | None = None  # the method's compute knob; None = its full budget (dense outputs)
    seed: int = 0  # backbone training and method fitting seed, as `bench run --seeds`
    batch_size: int = 1  # inputs per forward pass (lm-eval's --batch_size; equal-length inputs only, no padding)
    max_length: int | None = None  # tokens per forward pass; None = the task's seq_len, capped at block_size
    device: str = "cpu"  # cpu, cuda or cuda:N (lm-eval's --device; its CLI passes cuda:0 unless told otherwise)
    threads: int = 0  # torch intra-op threads on the CPU; 0 keeps torch's default
    cache_dir: str = ""  # backbone and method-fit cache; "" = $DYNBENCH_CACHE or ~/.cache/dynbench, as bench run
    flops_json: str = ""  # also write the FLOPs summary to this JSON file ("" = only results + log)
    measured_flops: bool = False  # cross-check every forward with FlopCounterMode (slower)

    def __post_init__(self) -> None:
        check_range("batch_size", self.batch_size, 1, advice="Use e.g. --batch_size 16.")
        if self.max_length is not None:
            check_range("max_length", self.max_length, 2, advice="Give at least 2 tokens, or leave it out.")
        check_range("threads", self.threads, 0, advice="Use 0 for torch's default.")


@dataclass(frozen=True)
class TextCodec:
    """How one task's backbone reads text.

    Attributes:
        name: tokenizer name, recorded with lm-eval's request caches.
        encode: text → token ids (no BOS).
        decode: token ids → text.
        prefix_id: the token an input starts with when there is no context (lm-eval's BOS/EOS slot).
        eos_id: a token that ends generation, or ``None``.
    """

    name: str
    encode: Callable[[str], list[int]]
    decode: Callable[[list[int]], str]
    prefix_id: int
    eos_id: int | None = None


def text_codec(task: Task, vocab_size: int) -> TextCodec:
    """The codec of ``task`` (see the module docstring for the rules).

    Raises:
        ValueError: the task has no way to read text.
    """
    from dynbench.tasks.shakespeare import VOCAB, Shakespeare

    encode, decode = getattr(task, "encode", None), getattr(task, "decode", None)
    if callable(encode) and callable(decode):  # a BPE tokenizer: encode(text) -> (1, T) ids
        tokenizer = getattr(task, "tokenizer", None)
        eos = None if tokenizer is None else tokenizer.token_to_id("<|endoftext|>")
        return TextCodec(f"{task.name}-bpe", lambda s: encode(s)[0].tolist(), decode, 0 if eos is None else eos, eos)
    if isinstance(task, Shakespeare):
        newline = VOCAB.CHARS.index("\n") + 1  # ids start at 1: 0 is <unk>
        return TextCodec("dynbench-char97", lambda s: VOCAB.encode(s).tolist(), VOCAB.decode, newline)
    if vocab_size <= 26:  # synthetic token ids shown as letters: a = 0, b = 1, ...
        return TextCodec(f"letters{vocab_size}", lambda s: _letters(s, vocab_size), _unletters, 0)
    raise ValueError(
        f"Task '{task.name}' has no text codec: give it encode(text) -> (1, T) ids and decode(ids) -> text methods, "
        "or evaluate a text task such as shakespeare or smollm2."
    )


def _letters(text: str, vocab_size: int) -> list[int]:
    ids = [ord(c) - ord("a") for c in text]
    if any(not 0 <= i < vocab_size for i in ids):
        raise ValueError(f"Text {text[:40]!r} has characters outside the {vocab_size} letters a..; use those only.")
    return ids


def _unletters(ids: list[int]) -> str:
    return "".join(chr(ord("a") + int(i)) for i in ids)


Item = tuple[list[int], list[int], str]
"""One scoring request in tokens: (context ids, continuation ids, lm-eval task name)."""


@register_model("dynbench")
class DynbenchLM(LM):
    """A dynbench dynamic model behind lm-eval's ``LM`` interface; see the module docstring.

    Args:
        model_args: :class:`LMEvalConfig` fields plus ``task.*`` / ``method.*`` plugin options, as
            lm-eval passes them (values may be strings).

    Raises:
        ConfigError: unknown or invalid arguments, an unknown task or method, a budget out of range
            (all at once).
        ValueError: the task is not a text task.
    """

    def __init__(self, **model_args: Any) -> None:
        super().__init__()
        plugin_opts: dict[str, dict[str, Any]] = {p: {} for p in PLUGIN_PREFIXES}
        own = {}
        for key, value in model_args.items():
            prefix = next((p for p in PLUGIN_PREFIXES if key.startswith(p)), None)
            if prefix is not None:
                plugin_opts[prefix][key[len(prefix) :]] = value
            elif key not in IGNORED_ARGS and value is not None:
                own[key] = value
        cfg, errors = build_dataclass(LMEvalConfig, own, "dynbench lm-eval model")
        if errors:
            raise ConfigError(errors)
        self.config: LMEvalConfig = cfg
        spec = RunSpec(
            task=PluginSpec.make(cfg.task, plugin_opts["task."]),
            method=PluginSpec.make(cfg.method, plugin_opts["method."]),
            seed=cfg.seed,
            hardware=hardware_spec(cfg.device, cfg.threads),
            budgets=None if cfg.budget is None else (cfg.budget,),
        )
        problems: list[str] = []
        plan = plan_run(spec, problems)
        if plan is None:
            raise ConfigError(problems)
        if plan.task.modality != "text":
            raise ValueError(f"Task '{cfg.task}' is a {plan.task.modality} task; lm-eval needs a text task.")
        self.plan = plan
        self.budget = plan.budgets[0] if cfg.budget is not None else float(plan.method.full_budget)
        plan.hardware.setup()
        cache = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else model_cache_dir()
        backbone = plan.task.backbone(cfg.seed, cache_dir=cache)
        self.model = fitted_model(plan, backbone, cache).to(plan.hardware.device)
        self.backbone = self.model.backbone.eval()
        self._device = plan.hardware.device
        block_size = int(self.backbone.config.block_size)
        wanted = cfg.max_length or int(getattr(plan.task.config, "seq_len", block_size))
        self.max_length = min(wanted, block_size)
        self.codec = text_codec(plan.task, int(self.backbone.config.vocab_size))
        self.ledger = UsageLedger(plan.hardware.timer(), cfg.measured_flops)
        self._dense: dict[int, float] = {}
        self.warm_up()

    @torch.inference_mode()
    def warm_up(self) -> None:
        """One untimed pass of ``max_length`` prefix tokens: one-time costs stay out of the latency.

        The first call pays for the allocator, kernel selection and thread pools (on a GPU, the
        CUDA context's libraries); no request should.
        """
        x = torch.full((1, self.max_length), self.codec.prefix_id, dtype=torch.long, device=self._device)  # (1, T)
        self.model(x, budget=self.budget)
        self.plan.hardware.synchronize()

    @property
    def usage(self) -> dict[str, Usage]:
        """lm-eval task → compute and time spent on its requests so far."""
        return self.ledger.usage

    # ------------------------------------------------------------------ lm-eval's request types

    @property
    def tokenizer_name(self) -> str:
        """The codec's name: part of lm-eval's request-cache key."""
        return self.codec.name

    def tok_encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no BOS)."""
        return self.codec.encode(text)

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Context and continuation ids, tokenized together.

        The split is where the whole text's tokens split. Whitespace at the end of the context moves
        to the continuation (lm-eval's convention: word-initial tokens carry their space); an empty
        context becomes the prefix token.
        """
        stripped = context.rstrip()
        if not stripped:
            return [self.codec.prefix_id], self.tok_encode(context + continuation)
        continuation = context[len(stripped) :] + continuation
        whole, ctx = self.tok_encode(stripped + continuation), self.tok_encode(stripped)
        return ctx, whole[len(ctx) :]

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """``(log p(continuation | context), is_greedy)`` for each ``(context, cont)`` request.

        ``is_greedy``: whether greedy decoding yields the continuation.
        """
        self.ledger.count_requests(requests)
        items = [(*self.encode_pair(*r.args), request_task(r)) for r in requests]
        return self.score(items)

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of each whole string, every token scored once.

        The string is scored in windows of ``max_length`` tokens. Windows come from lm-eval's
        ``get_rolling_token_windows`` (context_len=1: each window predicts up to ``max_length`` new
        tokens with the tokens before them as context) made disjoint.
        """
        self.ledger.count_requests(requests)
        items: list[Item] = []
        owner: list[int] = []
        for i, r in enumerate(requests):
            ids = self.tok_encode(r.args[0])
            windows = get_rolling_token_windows(ids, self.codec.prefix_id, self.max_length, 1)
            for ctx, cont in map(make_disjoint_window, windows):
                items.append((ctx, cont, request_task(r)))
                owner.append(i)
        totals = [0.0] * len(requests)
        for i, (ll, _) in zip(owner, self.score(items)):
            totals[i] += ll
        return totals

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Greedy continuations, cut before the first stop string or after ``max_gen_toks`` tokens.

        The stop strings are the request's ``until``.

        Raises:
            ValueError: sampling was asked for (``do_sample=True`` or ``temperature > 0``).
        """
        self.ledger.count_requests(requests)
        out = [""] * len(requests)
        groups: dict[tuple, list[tuple[int, list[int], str]]] = defaultdict(list)
        for i, r in enumerate(requests):
            context, kwargs = r.args
            stops, max_new = generation_options(kwargs)
            ids = self.tok_encode(context) or [self.codec.prefix_id]
            groups[(len(ids), stops, max_new)].append((i, ids, request_task(r)))
        for (_, stops, max_new), members in groups.items():  # same length: the batch steps in lockstep
            for j in range(0, len(members), self.config.batch_size):
                chunk = members[j : j + self.config.batch_size]
                texts = self.generate([m[1] for m in chunk], [m[2] for m in chunk], stops, max_new)
                for (i, _, _), text in zip(chunk, texts):
                    out[i] = text
        return out

    # ---------------------------------------------------------- scoring and generation in tokens

    def score(self, items: Sequence[Item]) -> list[tuple[float, bool]]:
        """``(sum of log-probs, is_greedy)`` of each item's continuation.

        Inputs of equal length run as one batch. The input is
        ``(context + continuation)[-(max_length + 1):-1]``: the continuation keeps all its tokens
        and the context is cut from the left to fit.

        Raises:
            ValueError: a continuation longer than ``max_length`` tokens, or an item without context
                tokens.
        """
        results: list[tuple[float, bool]] = [(0.0, True)] * len(items)  # empty continuations: log 1
        by_length: dict[int, list[int]] = defaultdict(list)
        for k, (ctx, cont, _) in enumerate(items):
            if not ctx:
                raise ValueError("Every scored continuation needs a context token; use the prefix token for none.")
            if len(cont) > self.max_length:
                raise ValueError(
                    f"A continuation of {len(cont)} tokens does not fit max_length={self.max_length}; "
                    "raise max_length (up to the backbone's block_size) or shorten the continuation."
                )
            if cont:
                by_length[min(self.max_length, len(ctx) + len(cont) - 1)].append(k)
        for length, ks in sorted(by_length.items(), reverse=True):
            for j in range(0, len(ks), self.config.batch_size):
                batch = ks[j : j + self.config.batch_size]
                rows = [(items[k][0] + items[k][1])[-(length + 1) : -1] for k in batch]
                logits = self.forward(rows, [items[k][2] for k in batch])  # (B, T, V)
                for row, k in enumerate(batch):
                    cont = torch.tensor(items[k][1], device=logits.device)  # (n,)
                    lp = torch.log_softmax(logits[row, -len(cont) :], dim=-1)  # (n, V) positions predicting cont
                    ll = float(lp.gather(-1, cont[:, None]).sum())
                    results[k] = (ll, bool((lp.argmax(dim=-1) == cont).all()))
                    self.usage[items[k][2]].tokens_scored += len(cont)
        return results

    def generate(self, prompts: list[list[int]], names: list[str], stops: tuple[str, ...], max_new: int) -> list[str]:
        """Greedy decoding of equal-length prompts in lockstep; finished ones leave the batch."""
        seqs = [list(p) for p in prompts]
        start = len(prompts[0])
        texts = [""] * len(seqs)
        active = list(range(len(seqs)))
        for _ in range(max_new):
            if not active:
                break
            logits = self.forward([seqs[a][-self.max_length :] for a in active], [names[a] for a in active])
            still = []
            for a, token in zip(active, logits[:, -1].argmax(dim=-1).tolist()):
                self.usage[names[a]].tokens_generated += 1
                if token == self.codec.eos_id:
                    continue
                seqs[a].append(token)
                text = self.codec.decode(seqs[a][start:])
                cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
                texts[a] = text if cut < 0 else text[:cut]
                if cut < 0:
                    still.append(a)
            active = still
        return texts

    @torch.inference_mode()
    def forward(self, rows: list[list[int]], names: list[str]) -> Tensor:
        """Run equal-length token rows at the budget; ``(B, T, V)`` float32 logits.

        The logits are on the model's device. The pass is timed, and each row's executed and dense
        FLOPs, tokens and blocks are recorded under its lm-eval task name.
        """
        x = torch.tensor(rows, dtype=torch.long, device=self._device)  # (B, T)
        T = x.shape[1]

        def call() -> Any:
            return self.model(x, budget=self.budget)

        measured: list[float] = []

        def run() -> Any:
            if not self.config.measured_flops:
                return call()
            counted = count_flops(call, self.model, self.model.controller_modules())
            measured.append(counted.total)
            return counted.output

        out = self.ledger.timed(run, names)
        trace = out.trace.to_cpu()
        if T not in self._dense:
            self._dense[T] = self.backbone.dense_flops((T,))
        flops = self.backbone.flops(trace, (T,))  # (B,) analytic executed FLOPs per row
        self.ledger.add_forward(names, T, trace, flops, self._dense[T], measured[0] if measured else None)
        return out.logits.float()  # (B, T, V); callers normalise only the positions they read

    # ------------------------------------------------------------------ reporting

    def flops_summary(self) -> dict[str, Any]:
        """FLOPs, tokens, blocks and latency of everything run so far: totals and per lm-eval task.

        The result is JSON-able.
        """
        spec = self.plan.spec
        return {
            "task": spec.task.label,
            "method": spec.method.label,
            "budget": self.budget,
            "budget_meaning": self.plan.method.budget_doc,
            "seed": spec.seed,
            "hardware": self.plan.hardware.label,
            "max_length": self.max_length,
            "batch_size": self.config.batch_size,
            "tokenizer": self.codec.name,
            "flops": FLOPS_DOC,
            "latency": self.ledger.latency_doc(self.config.batch_size),
            **self.ledger.summary(),
        }

    def get_model_info(self) -> dict[str, Any]:
        """What lm-eval adds to ``results["config"]``: the FLOPs and latency summary (``dynbench``).

        lm-eval calls this once, after every request has run, so the summary is also logged as a
        table and written to ``flops_json`` here.
        """
        summary = self.flops_summary()
        logger.info("%s", format_summary(summary))
        if self.config.flops_json:
            path = Path(self.config.flops_json).expanduser()
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(summary, indent=2) + "\n")
        return {"dynbench": summary}


def hardware_spec(device: str, threads: int) -> PluginSpec:
    """lm-eval's device string → a dynbench hardware target.

    ``cuda``/``cuda:N`` fall back to the CPU, with a warning, when torch sees no GPU: lm-eval's CLI
    asks for ``cuda:0`` whenever ``--device`` is left out, and its ``hf`` model falls back the same
    way.

    Raises:
        ValueError: not ``cpu``, ``cuda`` or ``cuda:N``.
    """
    name = device.strip()
    if (name == "cuda" or name.startswith("cuda:")) and not torch.cuda.is_available():
        logger.warning("Device %r asked for, but torch sees no CUDA GPU; running on the CPU.", name)
        name = "cpu"
    if name == "cpu":
        return PluginSpec.make("cpu", {"threads": threads} if threads else None)
    if name == "cuda" or name.startswith("cuda:"):
        return PluginSpec.make("cuda", {"index": name.partition(":")[2] or "0"})
    raise ValueError(f"dynbench lm-eval model: device {device!r} is not supported. Use cpu, cuda or cuda:N.")


def generation_options(kwargs: Any) -> tuple[tuple[str, ...], int]:
    """``(stop strings, max new tokens)`` from lm-eval's generation kwargs.

    Defaults: no stop string, 256 tokens.

    Raises:
        ValueError: sampling was asked for; dynbench decodes greedily.
    """
    kwargs = dict(kwargs or {})
    if kwargs.get("do_sample") or float(kwargs.get("temperature") or 0.0) > 0:
        raise ValueError(
            f"dynbench generates greedily, but the task asks for sampling ({kwargs}). "
            "Set do_sample=False and temperature=0 (e.g. --gen_kwargs do_sample=False,temperature=0)."
        )
    until = kwargs.get("until") or ()
    stops = (until,) if isinstance(until, str) else tuple(until)
    return tuple(s for s in stops if s), int(kwargs.get("max_gen_toks", 256))
