"""Bad input to ``bench run`` and ``bench validate`` exits 2 before anything trains or is written.

Each case is one command line on the toy tasks. It must exit 2 with exactly one problem, stated on
one line that names it, with no traceback; no backbone may be trained (the cache stays empty) and
nothing may appear at ``--out``. A last group checks the guards that can only act while training:
NaN or infinite inputs and losses stop the run, and nothing NaN is cached.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch

from dynbench.cli import main
from dynbench.models.training import NonFiniteError, TrainConfig, fit_loop
from dynbench.tasks.base import TensorSplit, backbone_key, trained_backbone
from dynbench.tasks.data.speech_commands import SPEECH_COMMANDS
from dynbench.tasks.toy_vision import ToyVision, ToyVisionConfig
from dynbench.types import Batch

TOY = ["--methods", "dense", "--tasks", "toy-vision"]

# (id, arguments after the subcommand, a fragment of the one problem line). The base flags
# (`--out`, `--cache-dir`, a quick measurement) come first, so a case's own flags win.
CASES: list[tuple[str, list[str], str]] = [
    # data missing for a task (README: exit 2 before anything runs)
    ("imagenet-no-data", ["--methods", "dense", "--tasks", f"imagenet[weights={__file__}]"], "'imagenet' has no data"),
    ("speech-commands-no-data", ["--methods", "dense", "--tasks", "speech-commands"], "has no data"),
    # options against the backbone's shape
    ("min-layers-deeper", ["--methods", "layer_skip[min_layers=10]", "--tasks", "toy-vision"], "min_layers=10 exceeds"),
    ("min-layers-text", ["--methods", "layer_skip[min_layers=3]", "--tasks", "toy-text"], "min_layers=3 exceeds"),
    ("mod-routes-nothing", ["--methods", "mod[route_every=3]", "--tasks", "toy-vision"], "routes no block"),
    ("acm-width", ["--methods", "acm[n_learners=5]", "--tasks", "toy-text"], "n_learners dividing"),
    # timing settings: finite and positive
    ("min-time-nan", [*TOY, "--set", "measure.min_time_s=nan"], "measure.min_time_s must be"),
    ("max-time-nan", [*TOY, "--set", "measure.max_time_s=nan"], "measure.max_time_s must be"),
    ("max-time-inf", [*TOY, "--set", "measure.max_time_s=inf"], "measure.max_time_s must be"),
    ("min-time-negative", [*TOY, "--set", "measure.min_time_s=-1"], "measure.min_time_s must be"),
    ("min-time-above-max", [*TOY, "--set", "measure.min_time_s=30"], "measure.min_time_s must be in [0, 20]"),
    ("min-iters-zero", [*TOY, "--set", "measure.min_iters=0"], "measure.min_iters must be >= 1"),
    ("eval-batch-zero", [*TOY, "--set", "measure.eval_batch_size=0"], "measure.eval_batch_size must be >= 1"),
    ("measure-not-a-group", [*TOY, "--set", "measure=foo"], "sets a group of options"),
    ("measure-unknown-field", [*TOY, "--set", "measure.min_tme_s=1"], "Unknown option 'min_tme_s'"),
    ("override-unknown-key", [*TOY, "--set", "sedes=1"], "Unknown key 'sedes'"),
    ("override-without-equals", [*TOY, "--set", "measure.min_time_s"], "has no '='"),
    # budgets: in range, non-empty, honestly labelled
    ("budgets-empty", ["--methods", "layer_skip", "--tasks", "toy-vision", "--budgets", ""], "--budgets is empty"),
    ("budget-zero-depth", ["--methods", "layer_skip", "--tasks", "toy-vision", "--budgets", "0"], "would run 1 of"),
    ("budget-above-one", ["--methods", "layer_skip", "--tasks", "toy-vision", "--budgets", "1.5"], "out of range"),
    ("budget-nan", ["--methods", "layer_skip", "--tasks", "toy-vision", "--budgets", "nan"], "out of range"),
    ("budget-inf", ["--methods", "early_exit", "--tasks", "toy-vision", "--budgets", "inf"], "out of range"),
    ("budget-negative", ["--methods", "layer_skip", "--tasks", "toy-vision", "--budgets=-0.5"], "out of range"),
    (
        "budget-exit-depth",
        ["--methods", "early_exit[rule=depth]", "--tasks", "toy-text", "--budgets", "0.1"],
        "would run",
    ),
    ("budget-mod-untrained", ["--methods", "mod", "--tasks", "toy-vision", "--budgets", "0.3"], "no model for budget"),
    ("budget-dht-unfitted", ["--methods", "dht", "--tasks", "toy-vision", "--budgets", "0.5"], "no bandit table"),
    # seeds in range, lists non-empty
    ("seed-overflow", [*TOY, "--seeds", "99999999999999999999"], "out of range: seeds must lie in"),
    ("seed-negative", [*TOY, "--seeds=-1"], "out of range: seeds must lie in"),
    ("seeds-empty", [*TOY, "--seeds", ""], "--seeds is empty"),
    ("methods-empty", ["--methods", "", "--tasks", "toy-vision"], "methods is missing or empty"),
    ("tasks-empty", ["--methods", "dense", "--tasks", ""], "tasks is missing or empty"),
    ("limit-zero", [*TOY, "--limit", "0"], "--limit must be >= 1"),
    ("batch-size-zero", [*TOY, "--batch-sizes", "0"], "Batch sizes must be positive"),
    ("batch-sizes-empty", [*TOY, "--batch-sizes", ""], "Batch sizes must be positive"),
    # task sizes and recipes
    ("n-test-zero", ["--methods", "dense", "--tasks", "toy-vision[n_test=0]"], "n_test must be >= 1"),
    ("n-train-zero", ["--methods", "dense", "--tasks", "toy-text[n_train=0]"], "n_train must be >= 1"),
    ("seq-len-zero", ["--methods", "dense", "--tasks", "toy-text[seq_len=0]"], "seq_len must be >= 1"),
    ("train-steps-negative", ["--methods", "dense", "--tasks", "toy-vision[train.steps=-5]"], "steps must be >= 0"),
    ("train-steps-zero", ["--methods", "dense", "--tasks", "toy-vision[train.steps=0]"], "trains nothing"),
    ("train-batch-zero", ["--methods", "dense", "--tasks", "toy-vision[train.batch_size=0]"], "batch_size must be"),
    ("train-lr-nan", ["--methods", "dense", "--tasks", "toy-vision[train.lr=nan]"], "TrainConfig.lr must be"),
    ("train-lr-inf", ["--methods", "dense", "--tasks", "toy-vision[train.lr=inf]"], "TrainConfig.lr must be finite"),
    # NaN/Inf inputs refused before they are made
    ("noise-nan", ["--methods", "dense", "--tasks", "toy-vision[noise=nan;nan]"], "noise[0] must be"),
    ("noise-inf", ["--methods", "dense", "--tasks", "toy-vision[noise=0;inf]"], "noise[1] must be finite"),
    # names and option syntax
    ("unknown-method", ["--methods", "layer_skp", "--tasks", "toy-vision"], "Unknown method 'layer_skp'"),
    ("unknown-task", ["--methods", "dense", "--tasks", "toy-visoin"], "Unknown task 'toy-visoin'"),
    ("unknown-hardware", [*TOY, "--hardware", "tpu"], "Unknown hardware"),
    ("unknown-option", ["--methods", "layer_skip[min_layer=1]", "--tasks", "toy-vision"], "Unknown option"),
    ("option-without-value", ["--methods", "layer_skip[uniform]", "--tasks", "toy-vision"], "has no '='"),
    ("noise-one-value", ["--methods", "dense", "--tasks", "toy-vision[noise=1]"], "must have 2 items"),
]


def paths_case(tmp_path: Path, kind: str) -> tuple[list[str], str]:
    """Arguments naming an unusable folder, and the message fragment, for the folder cases."""
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    folder = tmp_path / "suite_dir"
    folder.mkdir()
    return {
        "out-is-file": (["--out", str(a_file)], "is a file, not a folder"),
        "out-under-file": (["--out", str(a_file / "res")], "which is a file"),
        "cache-is-file": (["--cache-dir", str(a_file)], "is a file, not a folder"),
        "config-is-folder": (["--config", str(folder)], "is a folder, not a file"),
        "config-missing": (["--config", str(tmp_path / "nope.yaml")], "does not exist"),
    }[kind]


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Empty cache and data roots, and an --out that does not exist yet."""
    dirs = {"out": tmp_path / "out", "cache": tmp_path / "cache", "data": tmp_path / "data"}
    monkeypatch.setenv("DYNBENCH_CACHE", str(dirs["cache"]))
    monkeypatch.setenv("DYNBENCH_DATA", str(dirs["data"]))
    return dirs


def bench(cmd: str, dirs: dict[str, Path], args: list[str]) -> int:
    """``bench <cmd>`` in this process with quick measurement settings; the exit code."""
    base = ["--out", str(dirs["out"]), "--cache-dir", str(dirs["cache"]), "--limit", "8"]
    quick = ["--set", "measure.timing=false", "--set", "measure.memory=false", "--batch-sizes", "1"]
    extra = ["--executor", "inline"] if cmd == "run" else []
    try:
        return main([cmd, *base, *quick, *extra, *args])
    except SystemExit as exc:  # argparse's own errors
        return int(exc.code or 0)


def assert_refused(code: int, err: str, fragment: str, dirs: dict[str, Path]) -> None:
    """Exit 2, one problem on one line naming ``fragment``, nothing trained or written."""
    assert code == 2, err
    assert "Traceback" not in err
    counted = re.search(r"Invalid configuration \((\d+) problem\(s\)\)", err)
    assert counted is not None and counted.group(1) == "1", err
    lines = err.splitlines()
    line = lines[next(i for i, ln in enumerate(lines) if counted.group(0) in ln) + 1]  # the problem's first line
    assert line.startswith("  - ") and fragment in line, err
    assert not dirs["out"].exists()
    assert not (dirs["cache"] / "backbones").exists()


@pytest.mark.parametrize("cmd", ["run", "validate"])
@pytest.mark.parametrize(("case", "args", "fragment"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_before_anything(cmd, case, args, fragment, isolated, capsys):
    if case == "speech-commands-no-data" and SPEECH_COMMANDS.status(None).present:
        pytest.skip("a system copy of Speech Commands is installed here")
    code = bench(cmd, isolated, args)
    assert_refused(code, capsys.readouterr().err, fragment, isolated)


@pytest.mark.parametrize(
    "kind", ["out-is-file", "out-under-file", "cache-is-file", "config-is-folder", "config-missing"]
)
def test_unusable_folders_and_files_exit_2(kind, isolated, tmp_path, capsys):
    args, fragment = paths_case(tmp_path, kind)
    code = bench("run", isolated, [*TOY, *args])
    assert_refused(code, capsys.readouterr().err, fragment, isolated)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/sys is Linux's")
def test_a_folder_that_refuses_writes_exits_2(isolated, capsys):
    code = bench("run", isolated, [*TOY, "--cache-dir", "/sys/dynbench-cache"])
    assert_refused(code, capsys.readouterr().err, "is not writable", isolated)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_exits_2(isolated, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    code = bench("validate", isolated, [*TOY, "--out", str(locked / "res")])
    assert_refused(code, capsys.readouterr().err, "is not writable", isolated)


def test_a_full_disk_exits_2(isolated, capsys, monkeypatch):
    import shutil

    from dynbench.harness import preflight

    usage = shutil.disk_usage(isolated["out"].parent)
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda path: usage._replace(free=1000))
    code = bench("run", isolated, TOY)
    assert_refused(code, capsys.readouterr().err, "Not enough free space", isolated)


def test_every_problem_of_the_suite_is_listed_at_once(isolated, capsys):
    tasks = f"toy-vision,toy-text[n_test=0],imagenet[weights={__file__}]"
    code = bench("validate", isolated, ["--methods", "layer_skip[min_layers=10]", "--tasks", tasks, "--seeds=-1"])
    err = capsys.readouterr().err
    assert code == 2 and "Invalid configuration (4 problem(s))" in err, err
    for fragment in ("seeds must lie in", "min_layers=10 exceeds the backbone's 2", "n_test must be", "no data"):
        assert fragment in err, err
    assert not isolated["out"].exists()


# --------------------------------------------------------------------------------------------------
# Guards that act while training


class NaNToyVision(ToyVision):
    """Toy vision whose training images hold a NaN: what a broken data file would give."""

    def load_split(self, split):  # type: ignore[override]
        data = super().load_split(split)
        inputs = data.inputs.clone()
        inputs[0, 0, 0, 0] = float("nan")
        return TensorSplit(inputs, data.targets)


def test_nan_inputs_stop_training_and_nothing_is_cached(tmp_path):
    task = NaNToyVision(ToyVisionConfig(train=TrainConfig(steps=20, batch_size=512, warmup_steps=1)))
    with pytest.raises(NonFiniteError, match=r"step 1 of 20: the loss is nan; the batch's inputs hold 1 NaN/Inf"):
        trained_backbone(task, 0, cache_dir=tmp_path)
    assert not (tmp_path / "backbones").exists()


def test_a_diverging_loss_stops_before_the_update_and_names_the_learning_rate():
    w = torch.nn.Parameter(torch.ones(1))
    batches = iter([Batch(torch.ones(1, 1), torch.zeros(1), torch.zeros(1))] * 3)
    scales = iter([1.0, float("inf"), 1.0])  # the second step's loss overflows

    def step_loss(batch: Batch) -> torch.Tensor:
        return (w * batch.inputs).sum() * next(scales)

    cfg = TrainConfig(steps=3, lr=0.1, warmup_steps=0)
    with pytest.raises(NonFiniteError, match=r"step 2 of 3: the loss is inf; the inputs are finite.*lr=0.1"):
        fit_loop([w], step_loss, batches, cfg)
    assert torch.isfinite(w).all()


def test_a_cached_nan_backbone_is_trained_again(tmp_path):
    task = ToyVision(ToyVisionConfig(train=TrainConfig(steps=3, batch_size=32, warmup_steps=1)))
    path = tmp_path / "backbones" / f"{backbone_key(task, 0)}.pt"
    path.parent.mkdir()
    broken = task.build_backbone().state_dict()
    next(iter(broken.values())).fill_(float("nan"))
    torch.save(broken, path)
    model = trained_backbone(task, 0, cache_dir=tmp_path)
    assert all(torch.isfinite(t).all() for t in model.state_dict().values())
    saved = torch.load(path, weights_only=True)
    assert all(torch.isfinite(t).all() for t in saved.values())


# --------------------------------------------------------------------------------------------------
# Where export and report write: checked before work; a failed write is one line and leaves nothing


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A results folder of one small run (toy-vision, dense, 8 samples, no timing)."""
    root = tmp_path_factory.mktemp("results")
    dirs = {"out": root / "res", "cache": root / "cache"}
    assert bench("run", dirs, TOY) == 0
    return dirs["out"]


def assert_one_line_exit_2(code: int, err: str, fragment: str) -> None:
    """Exit 2 with one ``error:`` line naming ``fragment``, no traceback."""
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], err
    assert "Traceback" not in err


def out_case(tmp_path: Path, kind: str) -> tuple[list[str], str]:
    """The ``--out`` arguments of an unusable-output case, and the message fragment."""
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    return {
        "export-out-is-a-folder": (["--out", str(tmp_path)], "is a folder, not a file"),
        "export-out-under-a-file": (["--out", str(a_file / "rows.csv")], "which is a file"),
        "export-unwritable": (["--out", "/sys/dynbench-rows.csv"], "its folder /sys is not writable"),
        "export-unknown-extension": (["--out", str(tmp_path / "rows.xlsx")], "cannot tell the format"),
        "export-no-extension": (["--out", str(tmp_path / "rows")], "a name without an extension"),
        "export-format-mismatch": (["--out", str(tmp_path / "rows.csv"), "--format", "parquet"], "disagrees with"),
        "report-out-is-a-file": (["--out", str(a_file)], "is a file, not a folder"),
        "report-out-under-a-file": (["--out", str(a_file / "rep")], "which is a file"),
        "report-unwritable": (["--out", "/sys/dynbench-report"], "is not writable"),
    }[kind]


OUT_CASES = [
    "export-out-is-a-folder", "export-out-under-a-file", "export-unwritable", "export-unknown-extension",
    "export-no-extension", "export-format-mismatch", "report-out-is-a-file", "report-out-under-a-file",
    "report-unwritable",
]  # fmt: skip


@pytest.mark.parametrize("kind", OUT_CASES)
def test_an_unusable_out_exits_2_before_reading_anything(kind, results, tmp_path, capsys, monkeypatch):
    from dynbench.harness.store import ResultStore

    if "unwritable" in kind and not sys.platform.startswith("linux"):
        pytest.skip("/sys is Linux's")
    args, fragment = out_case(tmp_path, kind)
    before = sorted(tmp_path.rglob("*"))
    monkeypatch.setattr(ResultStore, "rows", lambda self: pytest.fail("the results were read before --out was checked"))
    code = main([kind.split("-")[0], str(results), *args])
    assert_one_line_exit_2(code, capsys.readouterr().err, fragment)
    assert sorted(tmp_path.rglob("*")) == before


def test_export_infers_the_format_from_the_extension(results, tmp_path, capsys):
    import pandas as pd

    assert main(["export", str(results), "--out", str(tmp_path / "rows.csv")]) == 0
    assert main(["export", str(results), "--out", str(tmp_path / "rows.pq")]) == 0
    assert main(["export", str(results), "--out", str(tmp_path / "rows.tsv"), "--format", "csv"]) == 0
    csv, pq = pd.read_csv(tmp_path / "rows.csv"), pd.read_parquet(tmp_path / "rows.pq")
    assert len(csv) == len(pq) > 0 and list(csv.columns) == list(pq.columns)
    assert (tmp_path / "rows.tsv").read_text() == (tmp_path / "rows.csv").read_text()


def disk_full(*args, **kwargs):
    raise OSError(28, "No space left on device")


def test_a_full_disk_during_export_is_one_line_and_leaves_no_file(results, tmp_path, capsys, monkeypatch):
    import pandas as pd

    def half_then_full(self, path, **kwargs):
        Path(path).write_text("run_key,met")
        disk_full()

    monkeypatch.setattr(pd.DataFrame, "to_csv", half_then_full)
    code = main(["export", str(results), "--out", str(tmp_path / "out" / "rows.csv")])
    assert_one_line_exit_2(code, capsys.readouterr().err, "No space left on device")
    assert list((tmp_path / "out").iterdir()) == []  # no half file, no .tmp


def test_a_full_disk_during_report_keeps_the_earlier_report_and_leaves_no_temporary_file(
    results, tmp_path, capsys, monkeypatch
):
    from dynbench.analysis import report

    out = tmp_path / "rep"
    assert main(["report", str(results), "--out", str(out)]) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    real = report.markdown_to_html

    def full_at_the_index(*args, **kwargs):  # the plots and tables are written; the index fails
        real(*args, **kwargs)
        disk_full()

    monkeypatch.setattr(report, "markdown_to_html", full_at_the_index)
    code = main(["report", str(results), "--out", str(out)])
    assert_one_line_exit_2(code, capsys.readouterr().err, f"Could not write --out {out}: No space left on device")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # the earlier report, whole


def test_run_checks_its_report_folder_before_training(isolated, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    code = bench("run", isolated, [*TOY, "--report", str(a_file / "reports")])
    assert_refused(code, capsys.readouterr().err, "--report", isolated)


def test_a_truncated_rows_file_is_rerun(isolated, results, capsys):
    shutil.copytree(results.parent / "cache", isolated["cache"])  # the backbone is trained already
    assert bench("run", isolated, TOY) == 0
    (rows,) = (isolated["out"] / "runs").glob("*.jsonl")
    whole = rows.read_text()
    rows.write_text(whole[: len(whole) // 2])  # damaged after the run: a copy cut short
    capsys.readouterr()
    assert bench("run", isolated, TOY) == 0
    assert "1 run(s) measured, 0 already in" in capsys.readouterr().out
    assert rows.read_text().count("\n") == whole.count("\n")


def test_a_damaged_cached_backbone_is_a_warning_and_the_run_succeeds(isolated, capsys, caplog):
    import logging

    short = ["--methods", "dense", "--tasks", "toy-vision[train.steps=3]"]  # a backbone of seconds
    assert bench("run", isolated, short) == 0
    (checkpoint,) = (isolated["cache"] / "backbones").glob("*.pt")
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])
    with caplog.at_level(logging.WARNING):
        assert bench("run", isolated, [*short, "--force"]) == 0
    assert (checkpoint.parent / f"{checkpoint.name}.corrupt").exists() and checkpoint.exists()
    assert any(str(checkpoint) in r.getMessage() and "training it again" in r.getMessage() for r in caplog.records)
    assert "Traceback" not in capsys.readouterr().err


def test_data_prepare_into_an_unusable_data_cache_exits_2_before_work(isolated, tmp_path, capsys, monkeypatch):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    monkeypatch.setenv("DYNBENCH_DATA", str(a_file / "data"))
    folder = tmp_path / "images"
    folder.mkdir()
    code = main(["data", "prepare", "imagenet", "--path", str(folder)])
    assert_one_line_exit_2(code, capsys.readouterr().err, "The data cache")
    assert a_file.read_text() == "x"


def test_a_full_disk_at_the_runs_last_report_is_one_line_saying_the_results_are_kept(results, tmp_path, monkeypatch):
    from dynbench import api
    from dynbench.analysis import report

    monkeypatch.setattr(report, "markdown_to_html", disk_full)
    live = api.LiveReport(results, tmp_path / "rep")
    assert live.update() == []  # mid-suite: logged, the suite goes on
    with pytest.raises(ValueError, match=r"No space left on device.*results are kept in .*`bench report") as info:
        live.update(final=True)
    assert "\n" not in str(info.value)
    assert [p.name for p in (tmp_path / "rep").iterdir()] == []  # no temporary folder left
