"""A failed run leaves a trace: a failure record the report lists, a log with the traceback, no
temporary files, and it is not done, so the next sweep retries it."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynbench.api import RunOptions, run_suite, write_report
from dynbench.config import MeasureConfig, PluginSpec, SuiteSpec
from dynbench.harness.store import ResultStore
from dynbench.methods.base import METHODS
from dynbench.methods.layer_skip import LayerSkip

TASK = PluginSpec("toy-text", (("train.steps", "5"),))
MEASURE = MeasureConfig(timing=False, memory=False)


class FitSwitch:
    """Whether the test plugin's fit raises."""

    fail = True


class BrokenFit(LayerSkip):
    """layer_skip whose fit raises while ``FitSwitch.fail`` is set."""

    def fit(self, model, task, *, seed):  # type: ignore[override]
        """Raise like a real fit that hits a bug, or fit as layer_skip does."""
        if FitSwitch.fail:
            raise RuntimeError("fit exploded on purpose\nsecond line that the terminal must not show")
        super().fit(model, task, seed=seed)


@pytest.fixture
def broken_fit(monkeypatch: pytest.MonkeyPatch):
    """Register ``broken_fit`` for this test only."""
    METHODS.names()  # discover the real plugins before the registry is copied
    monkeypatch.setattr(METHODS, "_items", dict(METHODS._items))
    METHODS.register("broken_fit")(BrokenFit)
    monkeypatch.setattr(FitSwitch, "fail", True)
    yield


def suite(methods: str = "dense,broken_fit") -> SuiteSpec:
    return SuiteSpec(
        methods=tuple(PluginSpec(m) for m in methods.split(",")),
        tasks=(TASK,),
        batch_sizes=(1,),
        limit=16,
        measure=MEASURE,
    )


def test_failing_fit_leaves_a_record_the_report_lists_and_a_rerun_retries(broken_fit, tmp_path: Path):
    options = RunOptions(out=tmp_path / "results", cache_dir=tmp_path / "cache")
    outcome = run_suite(suite(), options)
    assert len(outcome.done) == 1 and len(outcome.failed) == 1
    (key, message), store = next(iter(outcome.failed.items())), ResultStore(options.out)
    assert "\n" not in message and "second line" not in message
    assert "RuntimeError: fit exploded on purpose" in message and "[fit;" in message
    assert str(store.log_path(key)) in message
    assert not store.has(key)

    (record,) = store.failures()
    assert record["run_key"] == key and record["phase"] == "fit" and record["attempts"] == 1
    assert record["error"] == "RuntimeError: fit exploded on purpose" and record["method"] == "broken_fit"
    log = Path(record["log"]).read_text()
    assert "Traceback (most recent call last)" in log and "second line that the terminal must not show" in log
    assert not list(options.out.rglob("*.tmp")) and not list(options.out.rglob("*.lock"))  # claims released

    write_report(options.out, tmp_path / "report")
    index = (tmp_path / "report" / "index.md").read_text()
    assert "## Failed runs" in index and "RuntimeError: fit exploded on purpose" in index and record["log"] in index
    assert "<h2>Failed runs</h2>" in (tmp_path / "report" / "index.html").read_text()

    again = run_suite(suite(), options)  # still broken: retried, not skipped
    assert list(again.failed) == [key] and len(again.skipped) == 1
    assert store.failure(key)["attempts"] == 2

    FitSwitch.fail = False  # the bug is fixed: the rerun measures it and forgets the failure
    fixed = run_suite(suite(), options)
    assert fixed.done == [key] and not fixed.failed
    assert store.has(key) and store.failures() == []
    assert not store.failure_path(key).exists() and not store.log_path(key).exists()
    write_report(options.out, tmp_path / "report")
    assert "Failed runs" not in (tmp_path / "report" / "index.md").read_text()


def test_subprocess_failure_is_one_line_with_the_traceback_in_the_log(tmp_path: Path):
    """The worker's traceback goes to the log, its one-line cause to the terminal; a failed store
    leaves neither temporary nor partial files."""
    out = tmp_path / "results"
    out.mkdir()
    (out / "runs").write_text("not a folder")  # the rows cannot be written: the run fails in `store`
    outcome = run_suite(suite("dense"), RunOptions(out=out, cache_dir=tmp_path / "cache", executor="subprocess"))
    ((key, message),) = outcome.failed.items()
    assert "\n" not in message and "[store;" in message and "Error" in message
    store = ResultStore(out)
    (record,) = store.failures()
    assert record["phase"] == "store"
    log = Path(record["log"]).read_text()
    assert "Traceback (most recent call last)" in log and "harness/store.py" in log
    assert not list(out.rglob("*.tmp")) and not store.samples_path(key).exists()


def test_a_failed_write_removes_its_temporary_file(tmp_path: Path):
    store = ResultStore(tmp_path)

    def samples_then_full_disk():
        yield {"run_key": "r", "sample_id": 0}
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        store.write("r", [], samples_then_full_disk())  # type: ignore[arg-type]  # a list is iterated the same
    assert not list(tmp_path.rglob("*.tmp")) and not store.samples_path("r").exists()


def test_a_failed_torch_save_removes_its_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import torch

    from dynbench.models import training

    def full_disk(obj, path):
        Path(path).write_bytes(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space"):
        training.atomic_torch_save({"w": 1}, tmp_path / "m.pt")
    assert list(tmp_path.iterdir()) == []
