"""``--executor dask``: the suite as a task graph on a 2-worker LocalCluster gives inline's rows.

The cluster test runs the issue's command (light measurement settings, ``--limit``) in a child
``bench`` process with its own session, so a hang is killed with its workers after a timeout; the
other tests call the graph's tasks in this process, without a cluster.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dynbench.cache_dirs import model_cache_dir
from dynbench.cli import main
from dynbench.config import ConfigError, MeasureConfig, SuiteSpec, parse_plugin_list, runspec_to_dict
from dynbench.harness import dask_executor as dx
from dynbench.harness import dask_tasks as dt
from dynbench.harness.executors import SuiteOutcome
from dynbench.harness.planning import plan_suite
from dynbench.harness.store import ResultStore

pytestmark = pytest.mark.slow

SUITE = ["--methods", "dense,early_exit,layer_skip", "--tasks", "toy-vision,toy-text", "--seeds", "0,1"]
LIGHT = [
    "--limit", "16",
    "--batch-sizes", "1",
    "--set", "measure.min_time_s=0.01",
    "--set", "measure.min_iters=2",
    "--set", "measure.timing_inputs=2",
    "--set", "measure.memory=false",
]  # fmt: skip
CLUSTER_TIMEOUT_S = 600  # the whole dask run, 2 workers on a loaded 2-core machine: minutes at most

# Metrics that time calls or weigh memory: they differ from run to run, whatever the executor.
TIMED_UNITS = {"ms", "samples/s", "bytes"}
TIMED_METRICS = {"speedup_realized", "realization", "controller_share"}
PER_RUN_COLUMNS = ["started_at", "machine"]  # when it ran and on how many threads (dask workers: 1 each)


def read(results: Path, kind: str) -> pd.DataFrame:
    return pd.concat(pd.read_json(p, lines=True) for p in sorted((results / kind).glob("*.jsonl")))


def non_timing_rows(results: Path) -> pd.DataFrame:
    rows = read(results, "runs")
    keep = ~rows.unit.isin(TIMED_UNITS) & ~rows.metric.isin(TIMED_METRICS)
    rows = rows[keep].drop(columns=[c for c in PER_RUN_COLUMNS if c in rows])
    return rows.sort_values(["run_key", "metric", "budget", "batch_size"]).reset_index(drop=True)


def samples(results: Path) -> pd.DataFrame:
    return read(results, "samples").sort_values(["run_key", "budget", "sample_id"]).reset_index(drop=True)


def assert_same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Equal frames; floats up to float32 noise (dask workers run torch on 1 thread each)."""
    assert list(a.columns) == list(b.columns) and len(a) == len(b)
    for col in a.columns:
        x, y = a[col], b[col]
        if x.dtype.kind == "f":
            close = np.isclose(x, y, rtol=1e-4, atol=1e-5, equal_nan=True)
            assert close.all(), f"{col}: {x[~close].tolist()[:3]} vs {y[~close].tolist()[:3]}"
        else:
            assert x.equals(y), f"{col} differs"


def bench_in_child(*args: str) -> subprocess.CompletedProcess[str]:
    """``bench`` in its own session: on a timeout the whole group (cluster included) is killed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "dynbench.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=CLUSTER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"bench run --executor dask did not finish in {CLUSTER_TIMEOUT_S} s:\n{out[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")


def test_dask_gives_the_inline_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """The issue's command on a 2-worker LocalCluster, then inline; the same rows but timings.

    Both use the session's model cache (``$DYNBENCH_CACHE``, tests/conftest.py) to keep CI short:
    the graph trains the backbones no earlier test trained, inline reuses them. Trained apart (two
    cold caches, torch on 1 thread per worker against 2 inline), they agreed to 3e-7 (per-sample
    scores) and 5e-6 (exit confidences), FLOPs and correctness exactly (docs/architecture.md).
    """
    done = bench_in_child("run", "--out", str(tmp_path / "dask"), "--executor", "dask[workers=2]", *SUITE, *LIGHT)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "12 run(s) measured" in done.stdout
    assert not list((tmp_path / "dask").glob("claims/*.lock"))  # every claim released
    plans = plans_of("dense", "toy-vision,toy-text", seeds=(0, 1))
    assert all((model_cache_dir() / dt.backbone_file(p)).exists() for p in plans)

    assert main(["run", "--out", str(tmp_path / "inline"), "--executor", "inline", *SUITE, *LIGHT]) == 0
    dask_rows, inline_rows = non_timing_rows(tmp_path / "dask"), non_timing_rows(tmp_path / "inline")
    assert set(dask_rows.run_key) == set(inline_rows.run_key) and dask_rows.run_key.nunique() == 12
    assert {"quality", "flops_per_sample", "flops_ratio", "mean_layers"} <= set(dask_rows.metric)
    assert_same(dask_rows, inline_rows)
    assert_same(samples(tmp_path / "dask"), samples(tmp_path / "inline"))
    assert (read(tmp_path / "dask", "runs").metric == "latency_ms").any()  # timing ran too, on the workers

    capsys.readouterr()
    assert main(["run", "--out", str(tmp_path / "dask"), "--executor", "dask", *SUITE, *LIGHT]) == 0
    assert "0 run(s) measured, 12 already" in capsys.readouterr().out  # finished: no cluster is started


# --------------------------------------------------------------------------------------------------
# Without a cluster


def plans_of(methods: str, tasks: str, seeds: tuple[int, ...] = (0,), **measure: bool):
    suite = SuiteSpec(
        methods=parse_plugin_list(methods),
        tasks=parse_plugin_list(tasks),
        seeds=seeds,
        batch_sizes=(1,),
        limit=8,
        measure=MeasureConfig(timing=False, **measure),
    )
    return plan_suite(suite.runs())


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("dusk", "Unknown executor 'dusk'"),
        ("inline[threads=2]", "takes no options"),
        ("dask[wrokers=2]", "Did you mean: workers?"),
        ("dask[workers=0]", "workers must be"),
        ("dask[cache=nfs]", "must be one of ['auto', 'shared', 'ship']"),
        ("dask[address=tcp://127.0.0.1:8786,workers=2]", "applies to the local cluster only"),
    ],
)
def test_a_bad_executor_exits_2_before_anything_is_written(text: str, problem: str, tmp_path: Path, capsys):
    with pytest.raises(ConfigError, match="."):
        dx.parse_executor(text)
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--out", str(tmp_path / "r"), "--executor", text, "--methods", "dense", "--tasks", "toy-text"])
    assert exit_.value.code == 2 and problem in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_parse_executor_reads_the_dask_options():
    assert dx.parse_executor("inline") == ("inline", None)
    name, config = dx.parse_executor("dask[address=tcp://127.0.0.1:8786,cache=shared,connect_timeout_s=5]")
    assert name == "dask"
    assert config == dx.DaskConfig(address="tcp://127.0.0.1:8786", cache="shared", connect_timeout_s=5)
    assert dx.parse_executor("dask") == ("dask", dx.DaskConfig())


def test_an_unreachable_scheduler_exits_2_and_writes_nothing(tmp_path: Path, capsys):
    executor = "dask[address=tcp://127.0.0.1:9,connect_timeout_s=1]"
    args = ["--executor", executor, "--methods", "dense", "--tasks", "toy-text"]
    assert main(["run", "--out", str(tmp_path / "r"), *args]) == 2
    assert "Cannot reach the Dask scheduler at tcp://127.0.0.1:9" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


class FakeFuture:
    """What :class:`FakeClient` returns: the submitted function's name, its arguments and key."""

    def __init__(self, fn, args: tuple, key: str) -> None:
        self.name, self.args, self.key = fn.__name__, args, key


class FakeClient:
    """Records what :func:`submit_graph` submits."""

    def __init__(self) -> None:
        self.submitted: list[FakeFuture] = []

    def submit(self, fn, *args, key: str) -> FakeFuture:
        self.submitted.append(FakeFuture(fn, args, key))
        return self.submitted[-1]


def test_each_backbone_trains_once_and_each_fit_follows_it():
    plans = plans_of("dense,early_exit,layer_skip", "toy-vision,toy-text", seeds=(0, 1))
    setup = dt.WorkerSetup(cached=True, cache_dir=None, ship=False, threads=1, isolate="worker")
    client = FakeClient()
    runs = dx.submit_graph(client, plans, setup)
    kinds = [f.name for f in client.submitted]
    assert kinds.count("backbone_task") == 4 and kinds.count("run_task") == 12
    learners = [p for p in plans if p.method.learns()]
    assert kinds.count("fit_task") == len(learners) > 0
    assert len({f.key for f in client.submitted}) == len(client.submitted)
    for run, plan in runs.items():
        inputs = run.args[2:]
        assert [i.name for i in inputs] == ["backbone_task", "fit_task"][: 1 + plan.method.learns()]
        assert inputs[0].args[0]["seed"] == plan.spec.seed and inputs[0].args[0]["task"]["name"] == plan.task.name
        if plan.method.learns():
            assert inputs[1].args[3] is inputs[0]  # the fit follows the run's own backbone
    no_cache = FakeClient()
    dx.submit_graph(no_cache, plans, dt.WorkerSetup(False, None, False, None, "worker"))
    assert {f.name for f in no_cache.submitted} == {"run_task"}  # nothing cached: nothing to share


def test_shipped_files_spare_a_worker_without_the_cache_any_training(tmp_path: Path, monkeypatch):
    """cache=ship: a worker that never saw the other's disk gets the backbone and fit it needs."""
    (plan,) = plans_of("layer_skip", "toy-text")
    spec = runspec_to_dict(plan.spec)
    maker = dt.WorkerSetup(True, None, ship=True, threads=None, isolate="worker")  # the session's cache
    backbone = dt.backbone_task(spec, maker, plan.run_key)
    fit = dt.fit_task(spec, maker, plan.run_key, backbone)
    assert [rel for rel, _ in backbone.files] == [dt.backbone_file(plan)]
    assert [rel for rel, _ in fit.files] == [dt.fit_file(plan)]
    here = dt.run_task(spec, maker)

    import dynbench.tasks.base as tasks_base

    def no_training(*args, **kwargs):
        raise AssertionError("trained again although the backbone was shipped")

    monkeypatch.setattr(tasks_base, "train_backbone", no_training)
    monkeypatch.setattr(type(plan.method), "fit", no_training)
    other = dt.WorkerSetup(True, str(tmp_path / "b"), ship=True, threads=None, isolate="worker")
    there = dt.run_task(spec, other, backbone, fit)
    assert (tmp_path / "b" / dt.backbone_file(plan)).exists() and (tmp_path / "b" / dt.fit_file(plan)).exists()
    assert there.run_key == here.run_key and len(there.rows) == len(here.rows) > 0
    assert [s["score"] for s in there.samples] == [s["score"] for s in here.samples]


def test_a_run_measuring_memory_runs_in_a_fresh_process(tmp_path: Path):
    (plan,) = plans_of("dense", "toy-text", memory=True)
    setup = dt.WorkerSetup(True, None, ship=False, threads=None, isolate="auto")
    result = dt.run_task(runspec_to_dict(plan.spec), setup)
    assert result.run_key == plan.run_key
    assert "process_peak_bytes" in {r["metric"] for r in result.rows} and result.samples


def test_a_failure_travels_back_with_its_phase_and_becomes_a_failure_record(tmp_path: Path):
    (plan,) = plans_of("dense", "toy-text")
    setup = dt.WorkerSetup(True, str(tmp_path / "cache"), ship=False, threads=None, isolate="worker")
    spec = {**runspec_to_dict(plan.spec), "task": {"name": "toy-text", "options": {"no_such_option": 1}}}
    with pytest.raises(dt.TaskError) as caught:
        dt.backbone_task(spec, setup, plan.run_key)
    err = pickle.loads(pickle.dumps(caught.value))  # as it crosses to the client
    assert err.phase == "setup" and err.error.startswith("ConfigError") and "no_such_option" in err.detail

    class Done:  # a finished future
        def __init__(self, exc: BaseException) -> None:
            self.exc = exc

        def result(self):
            raise self.exc

    class KilledWorker(Exception):
        task = "dynbench-fit-xyz-1234"

    store = ResultStore(tmp_path / "results")
    for exc, phase in ((err, "setup"), (KilledWorker("all workers died"), "fit")):
        outcome = SuiteOutcome()
        claims = {plan.run_key: store.claim(plan.run_key)}
        graph = dx.Graph(client=None, store=store, outcome=outcome, claims=claims, progress=None)
        graph._finish(plan, Done(exc))
        assert list(outcome.failed) == [plan.run_key] and not outcome.done and not claims
        record = store.failure(plan.run_key)
        assert record["phase"] == phase and Path(record["log"]).exists()
        again = store.claim(plan.run_key)
        assert again is not None  # the claim was released
        again.release()
