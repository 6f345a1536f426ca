"""No fit reads the evaluation split: every method fits under the harness's seal, and a fit that
peeks fails.

Every registered method × every toy task is fitted through
:func:`dynbench.harness.fit_cache.fitted_model`, which seals the task's evaluation split
(:meth:`Task.sealed`); a method defined here (never registered) that reads the evaluation split in
its fit must fail with :class:`EvalSplitAccessError`. The seal's own behaviour is unit-tested at the
end: what it blocks, what it leaves readable, and that it lifts.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch

from dynbench.config import PluginSpec, RunSpec
from dynbench.harness.execution import eval_batches
from dynbench.harness.fit_cache import fitted_eval, fitted_model
from dynbench.harness.planning import RunPlan, plan_suite
from dynbench.methods.base import METHODS, DynamicModel, Method
from dynbench.models.backbone import Backbone
from dynbench.tasks.base import TASKS, EvalSplitAccessError, Split, Task, TensorSplit
from dynbench.types import Budget

TOY_TASKS = ("toy-vision", "toy-text")
SELECTING = ("acm", "dht", "layer_skip", "transformer_inverse")
"""Methods whose fit ranks, calibrates or selects on data: they must read the validation split."""
SHORT: dict[str, dict[str, str]] = {
    "acm": {"distill_steps": "4", "gate_steps": "4", "finetune_steps": "4"},
    "dht": {"steps": "4", "refine_per_arm": "1"},
    "early_exit": {"steps": "4"},
    "mod": {"steps": "4"},
    "transformer_inverse": {"exit_steps": "4", "rollout_episodes": "256", "ppo.iterations": "2"},
}
"""Recipes cut short for the sealed fits: which splits a fit reads does not depend on how many steps
it takes, and the default recipes are fitted by the contract tests of ``test_methods.py`` (the full
defaults here cost ~10 CPU minutes more)."""


def plan_for(method: str, task: str, options: dict[str, str] | None = None, **run: object) -> RunPlan:
    """A validated plan of ``method[options]`` on ``task`` (default task options: the toy fixture's
    backbone fits)."""
    spec = RunSpec(task=PluginSpec(task), method=PluginSpec.make(method, options), **run)  # type: ignore[arg-type]
    return plan_suite([spec])[0]


def record_reads(task: Task) -> list[str]:
    """Record each split the task is asked to read (via :meth:`Task.check_readable`), in order."""
    reads: list[str] = []
    check = task.check_readable

    def recording(split: str, *, via: str = "") -> None:
        reads.append(split)
        check(split, via=via)

    task.check_readable = recording  # type: ignore[method-assign]
    return reads


@pytest.mark.parametrize("task_name", TOY_TASKS)
@pytest.mark.parametrize("method_name", METHODS.names())
def test_every_method_fits_with_the_evaluation_split_sealed(toy, method_name: str, task_name: str) -> None:
    """The harness's fit completes under the seal, reads only train and validation data, and lifts
    the seal."""
    _, backbone = toy(task_name)
    plan = plan_for(method_name, task_name, SHORT.get(method_name))
    task = plan.task
    reads = record_reads(task)
    model = fitted_model(plan, copy.deepcopy(backbone), cache_dir=None)
    assert isinstance(model, DynamicModel) and not model.training
    assert task.eval_split not in reads
    assert set(reads) <= {"train", task.validation_split}
    if plan.method.learns():
        assert reads, f"{method_name} learns but read no data"
    if method_name in SELECTING:
        assert task.validation_split in reads, f"{method_name} ranks, calibrates or selects but never read validation"
    # The seal is gone once the fit is done: the harness reads the evaluation split next.
    assert task.n_samples(task.eval_split) == 128 and not task.__dict__["_seals"]


class Peeker(Method):
    """A method whose fit reads the evaluation split, as a selection on evaluation numbers would.

    Not registered.
    """

    name = "peeker"

    def __init__(self, read: Callable[[Task], object]) -> None:
        super().__init__()
        self.read = read

    def wrap(self, backbone: Backbone) -> DynamicModel:
        """The dense model: what it wraps does not matter here."""
        return METHODS.get("dense")().wrap(backbone)

    def budgets(self, n_blocks: int) -> Sequence[Budget]:
        """The full budget only."""
        return (1.0,)

    def fit(self, model: DynamicModel, task: Task, *, seed: int) -> None:
        """Read ``task.validation_split`` (allowed), then the evaluation split (not allowed)."""
        next(task.batches(task.validation_split, batch_size=4))
        self.read(task)


EVAL_READS: dict[str, Callable[[Task], object]] = {
    "batches": lambda task: next(task.batches(task.eval_split, batch_size=4, shuffle=True)),
    "split": lambda task: task.split(task.eval_split).targets,
    "n_samples": lambda task: task.n_samples(task.eval_split),
    "load_split": lambda task: task.load_split(task.eval_split),
}


@pytest.mark.parametrize("read", sorted(EVAL_READS))
def test_a_fit_that_reads_the_evaluation_split_fails_and_caches_nothing(toy, tmp_path: Path, read: str) -> None:
    _, backbone = toy("toy-vision")
    plan = dataclasses.replace(plan_for("dense", "toy-vision"), method=Peeker(EVAL_READS[read]))
    plan.task.split(plan.task.eval_split)  # loaded before the fit: the task's in-memory copy is no way around
    with pytest.raises(EvalSplitAccessError) as info:
        fitted_model(plan, copy.deepcopy(backbone), cache_dir=tmp_path)
    message = str(info.value)
    assert message.startswith("the fit of method 'peeker' read the evaluation split 'test' of task 'toy-vision'")
    assert f"(ToyVision.{read}('test'))" in message  # what read it
    assert "fits may read 'train' and 'val' only" in message and "fit_eval" in message
    assert not list(tmp_path.rglob("*.pt"))  # the failed fit left no cache entry
    assert plan.task.n_samples("test") == 128  # and the seal lifted with the exception


def test_an_upper_bound_sees_the_evaluation_batches_through_fit_eval_only(toy) -> None:
    """The oracle's fit_eval gets exactly the measured batches, outside the seal; its fit is sealed
    as any other."""
    _, backbone = toy("toy-vision")
    plan = plan_for("oracle", "toy-vision", limit=32)
    model = fitted_model(plan, copy.deepcopy(backbone), cache_dir=None)
    batches = eval_batches(plan)
    assert len(list(batches)) == len(batches) and not batches.streaming  # the harness read and kept the split
    reads = record_reads(plan.task)
    fitted_eval(plan, model, batches, cache_dir=None)
    assert model.solved_budgets.numel() > 0  # solved on the evaluation samples
    assert plan.task.eval_split not in reads  # the batches came from the harness, not from the task
    assert set(reads) <= {"train", plan.task.validation_split}  # its ranked candidates: layer_skip's ranking


# ---- the seal itself


@pytest.fixture
def task() -> Task:
    return TASKS.get("toy-vision")()


@pytest.mark.parametrize("read", sorted(EVAL_READS))
def test_the_seal_blocks_every_reader_of_the_sealed_split(task: Task, read: str) -> None:
    with task.sealed(task.eval_split, reader="unit test"):
        with pytest.raises(EvalSplitAccessError, match=r"unit test read the evaluation split 'test' of task"):
            EVAL_READS[read](task)


def test_other_splits_stay_readable_and_unchanged_under_the_seal(task: Task) -> None:
    before = task.split("val").inputs.clone()
    with task.sealed() as sealed:  # the default seals the evaluation split
        assert sealed is task
        assert task.n_samples("train") == 512 and task.n_samples("val") == 128
        assert torch.equal(task.split("val").inputs, before)
        assert len(next(task.batches("train", batch_size=8, shuffle=True))) == 8
        with pytest.raises(EvalSplitAccessError):
            task.batches("test", batch_size=8)


def test_the_seal_lifts_on_exit_and_on_an_exception(task: Task) -> None:
    with task.sealed("test"):
        pass
    assert task.n_samples("test") == 128
    with pytest.raises(KeyError, match="inside"):
        with task.sealed("test"):
            raise KeyError("inside")
    assert len(task.split("test")) == 128 and not task.__dict__["_seals"]


def test_seals_nest_and_a_sealed_validation_split_is_named_as_such(task: Task) -> None:
    with task.sealed("test", reader="outer"):
        with task.sealed("val", reader="inner"):
            with pytest.raises(EvalSplitAccessError, match=r"inner read the sealed split 'val'.*may read 'train' only"):
                task.n_samples("val")
            with pytest.raises(EvalSplitAccessError, match="outer read the evaluation split"):
                task.n_samples("test")
        assert task.n_samples("val") == 128
        with task.sealed("test", reader="again"):
            pass
        with pytest.raises(EvalSplitAccessError, match="outer"):  # the inner seal of the same split lifted alone
            task.n_samples("test")
    assert task.n_samples("test") == 128


def test_an_unknown_split_is_a_clear_error(task: Task) -> None:
    with pytest.raises(ValueError, match=r"has no split 'minival'; its splits are train, val, test"):
        task.batches("minival", batch_size=4)
    with pytest.raises(ValueError, match=r"has no split 'holdout'"):
        with task.sealed("holdout"):  # type: ignore[arg-type]
            pass


def test_task_specific_readers_are_sealed_too() -> None:
    """Streamed and task-specific paths check the seal before touching any data (none is needed
    here)."""
    spoken = TASKS.get("spoken-digits")()
    commands = TASKS.get("speech-commands")()
    imagenet = TASKS.get("imagenet")()
    cases = [
        (spoken, lambda: spoken.split_rows(None, "test")),  # type: ignore[arg-type]
        (commands, lambda: commands.split_files(None, "test")),  # type: ignore[arg-type]
        (imagenet, lambda: imagenet.lazy_split("val")),
        (imagenet, lambda: imagenet.batches("val", batch_size=2)),
    ]
    for t, read in cases:
        expected = rf"a fit read the evaluation split '{t.eval_split}' of task '{t.name}'"
        with t.sealed(reader="a fit"), pytest.raises(EvalSplitAccessError, match=expected):
            read()
    with imagenet.sealed(), pytest.raises(EvalSplitAccessError, match="fits may read 'train' and 'minival' only"):
        imagenet.n_samples("val")


def test_a_subclass_s_own_readers_are_checked_and_its_splits_must_be_distinct() -> None:
    class Streamed(Task):
        modality = "vision"

        def build_backbone(self) -> Backbone:
            raise NotImplementedError

        def load_split(self, split: Split) -> TensorSplit:
            return TensorSplit(torch.zeros(3, 1), torch.zeros(3))

        def n_samples(self, split: Split) -> int:  # overrides, as a streamed task does
            return 3

    streamed = Streamed()
    with streamed.sealed("test"):
        with pytest.raises(EvalSplitAccessError):
            streamed.n_samples("test")
        assert streamed.n_samples("val") == 3
    with pytest.raises(TypeError, match="must be three different splits"):

        class NoValidation(Task):  # noqa: F841 — defining it is the test
            eval_split = "val"
