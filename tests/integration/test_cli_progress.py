"""``bench run`` progress on a toy task: a line per run with an ETA, "N already done" on resume, the
report rewritten as runs finish, and a ``--limit`` run labelled apart in it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dynbench import api
from dynbench.cli import main
from dynbench.harness import eta as eta_mod

pytestmark = pytest.mark.slow

FAST = [
    "--set", "measure.min_time_s=0.02", "--set", "measure.min_iters=3", "--set", "measure.timing_inputs=4",
    "--set", "measure.memory_inputs=1", "--batch-sizes", "1,4", "--executor", "inline",
]  # fmt: skip


def test_progress_eta_resume_and_live_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(eta_mod, "PRIOR_FILE", tmp_path / "none.jsonl")  # estimates from this run only
    updates: list[tuple[bool, bool]] = []
    original = api.LiveReport.update

    def spy(self: api.LiveReport, *, final: bool = False) -> list[Path]:
        files = original(self, final=final)
        updates.append((final, (self.out_dir / "index.html").exists()))
        return files

    monkeypatch.setattr(api.LiveReport, "update", spy)
    res, rep = str(tmp_path / "res"), str(tmp_path / "rep")
    args = ["run", "--methods", "dense,early_exit,layer_skip", "--tasks", "toy-vision", "--limit", "16"]
    args += ["--cache-dir", str(tmp_path / "cache")]  # a cold cache: the backbone trains, the fits are made
    assert main([*args, "--out", res, "--report", rep, *FAST]) == 0
    out = capsys.readouterr().out
    assert "3 run(s): 3 to run" in out
    assert "(synthetic)" in out  # the summary labels generated data (the cell may wrap)
    assert re.search(r"✓ \[1/3\] toy-vision × dense .*backbone (trained|loaded)", out)
    assert re.search(r"✓ \[2/3\] toy-vision × early_exit .*· ETA \d", out)  # estimated from the runs so far
    assert re.search(r"fitting early_exit: step \d+/\d+", out)  # steps inside the fit
    assert updates[0] == (False, True)  # the report exists after the first run, before the suite ends
    assert updates[-1][0] is True and len(updates) >= 2

    assert main([*args, "--out", res, "--report", rep, *FAST]) == 0
    assert "3 run(s): 3 already done, 0 to run" in capsys.readouterr().out

    assert main(["run", "--methods", "dense", "--tasks", "toy-vision", "--limit", "8", "--out", res, *FAST]) == 0
    assert main(["report", res, "--out", rep]) == 0
    index = (Path(rep) / "index.md").read_text()
    assert "dense (quick, limit 8)" in index and "dense (quick, limit 16)" in index
    assert "Profile: quick" in index
    assert "**Synthetic data**" in index  # toy-vision's rows say synthetic_data
