"""A run is claimed before it is computed: a live claim keeps every other sweep off it, a claim left
by a dead process is taken over, and claims are released however the run ends."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

from dynbench.config import PluginSpec, RunSpec
from dynbench.harness.executors import RunFailure, SuiteOutcome, _run_claimed, run_plans
from dynbench.harness.planning import plan_suite
from dynbench.harness.store import ResultStore

HOLDER = """
import sys, time
from pathlib import Path
from dynbench.harness.store import ResultStore
claim = ResultStore(Path(sys.argv[1])).claim(sys.argv[2])
print("held" if claim else "refused", flush=True)
time.sleep(120)
"""


def hold_in_child(root: Path, key: str) -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(root), key], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "held"
    return child


def test_a_live_claim_is_respected_and_taken_over_once_its_process_dies(tmp_path: Path):
    store = ResultStore(tmp_path)
    child = hold_in_child(tmp_path, "run-a")
    try:
        assert store.claim("run-a") is None
        assert store.claim_holder("run-a").startswith(f"pid {child.pid} on host {socket.gethostname()} since ")
        outcome = SuiteOutcome()
        ran: list[str] = []
        _run_claimed(fake_plan("run-a"), store, False, outcome, lambda p, cb: ran.append(p.run_key), None)
        assert ran == [] and list(outcome.elsewhere) == ["run-a"] and f"pid {child.pid}" in outcome.elsewhere["run-a"]
    finally:
        child.send_signal(signal.SIGKILL)  # no cleanup runs in the child: the lock file stays
        child.wait()
        child.stdout.close()
    assert store.claim_path("run-a").exists()
    claim = store.claim("run-a")
    assert claim is not None and claim.took_over is not None and f"pid {child.pid}" in claim.took_over
    assert json.loads(store.claim_path("run-a").read_text())["pid"] == os.getpid()
    claim.release()
    assert not store.claim_path("run-a").exists()


def test_a_suite_leaves_a_run_held_elsewhere_to_its_holder(tmp_path: Path):
    """Listed twice or not, the run is neither computed nor an error: it is left to its holder."""
    (plan,) = plan_suite([RunSpec(task=PluginSpec("toy-text"), method=PluginSpec("dense"))])
    child = hold_in_child(tmp_path, plan.run_key)
    try:
        outcome = run_plans([plan, plan], store=ResultStore(tmp_path), cache_dir=None)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    assert list(outcome.elsewhere) == [plan.run_key] and not (outcome.done or outcome.failed or outcome.skipped)


def test_a_stale_claim_file_from_a_dead_pid_is_taken_over(tmp_path: Path):
    store = ResultStore(tmp_path)
    path = store.claim_path("run-b")
    path.parent.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = {"pid": int(dead.stdout), "host": socket.gethostname(), "time": "2026-01-01T00:00:00+00:00"}
    path.write_text(json.dumps(stale))
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / ".run-b.jsonl.12345.tmp").write_text("half a file from the killed writer")
    claim = store.claim("run-b")
    assert claim is not None and claim.took_over == f"pid {stale['pid']} on host {stale['host']} since {stale['time']}"
    assert not list(tmp_path.rglob("*.tmp"))  # the run's leftovers go once it is ours
    claim.release()


def fake_plan(key: str) -> SimpleNamespace:
    spec = SimpleNamespace(task=SimpleNamespace(label="t"), method=SimpleNamespace(label="m"), seed=0)
    spec.hardware = SimpleNamespace(label="cpu")
    return SimpleNamespace(run_key=key, title=key, spec=spec)


def test_claims_are_released_after_success_and_after_failure(tmp_path: Path):
    store = ResultStore(tmp_path)
    outcome = SuiteOutcome()

    def fail(plan, cb):
        raise RunFailure("timing", "ValueError: no", "Traceback …")

    _run_claimed(fake_plan("ok"), store, False, outcome, lambda p, cb: None, None)
    _run_claimed(fake_plan("bad"), store, False, outcome, fail, None)
    assert outcome.done == ["ok"] and list(outcome.failed) == ["bad"]
    assert not list((tmp_path / "claims").iterdir())
    assert store.failure("bad")["phase"] == "timing"


def test_concurrent_sweeps_into_one_folder_compute_each_run_once(tmp_path: Path):
    """Four sweeps over the same ten runs, at once: every run is computed exactly once."""
    store_root = tmp_path / "results"
    keys = [f"run-{i}" for i in range(10)]
    computed: list[str] = []
    lock = threading.Lock()

    def compute(plan, cb):
        with lock:
            computed.append(plan.run_key)
        time.sleep(0.02)
        path = ResultStore(store_root).rows_path(plan.run_key)
        path.parent.mkdir(parents=True, exist_ok=True)
        row = {"run_key": plan.run_key, "task": "t", "method": "m", "metric": "quality", "value": 1.0}
        path.write_text(json.dumps(row) + "\n")  # finished: a readable rows file (ResultStore.has)

    def sweep() -> None:
        store, outcome = ResultStore(store_root), SuiteOutcome()  # each sweep its own store, as processes
        for key in keys:
            _run_claimed(fake_plan(key), store, False, outcome, compute, None)

    threads = [threading.Thread(target=sweep) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(computed) == keys
