"""`bench paper run glavas --quick` on toy tasks; its tables in Markdown, LaTeX (compiled), CSV."""

from __future__ import annotations

import csv
import shutil
import subprocess
from pathlib import Path

import pytest

from dynbench.cli import main

LATEX_DOC = (
    "\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n\\input{tables.tex}\n\\end{document}\n"
)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("paper")
    args = ["paper", "run", "glavas", "--quick", "--out", str(root / "R"), "--cache-dir", str(root / "cache")]
    assert main([*args, "--executor", "inline"]) == 0
    return root / "R"


def test_the_quick_run_holds_every_run_its_tables_need(results: Path, capsys):
    assert main(["paper", "run", "glavas", "--quick", "--out", str(results), "--executor", "inline"]) == 0
    assert "0 run(s) measured, 6 already in" in capsys.readouterr().out  # resumes like bench run


def test_markdown_has_every_claim_with_paper_value_ours_and_a_verdict(results: Path, capsys):
    assert main(["paper", "table", "glavas", str(results), "--format", "md"]) == 0
    md = capsys.readouterr().out
    assert "Numbers from the **quick** suite" in md and "text: `toy-text` for `smollm2`" in md
    for claim in ("skip-beats-exit", "per-token-control-is-hard", "oracle-23"):
        assert f"**{claim}**" in md
    assert "| 0.233 fraction of layers |" in md and "**not comparable** |" in md
    assert "**not measured** |" not in md  # the per-token controller study (token_skip) measures its claim
    assert "### T2:" in md and "| token_skip[controller=fixed] | 0.5 |" in md
    assert "### T1: Quality against executed layers" in md and "| layer_skip[pattern=uniform] | 0.5 |" in md
    assert "### T3:" in md and "| oracle | 1 |" in md


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed (.ci/run installs it)")
def test_latex_compiles_in_an_article_with_booktabs(results: Path, tmp_path: Path):
    assert (
        main(["paper", "table", "glavas", str(results), "--format", "latex", "--output", str(tmp_path / "tables.tex")])
        == 0
    )
    (tmp_path / "doc.tex").write_text(LATEX_DOC, encoding="utf-8")
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:]
    assert (tmp_path / "doc.pdf").stat().st_size > 1000
    tex = (tmp_path / "tables.tex").read_text(encoding="utf-8")
    assert "\\toprule" in tex and "\\bottomrule" in tex and "layer\\_skip" in tex


def test_csv_has_a_row_per_claim_point_and_table_cell(results: Path, tmp_path: Path):
    out = tmp_path / "deep" / "glavas.csv"  # a new folder is made
    assert main(["paper", "table", "glavas", str(results), "--format", "csv", "--output", str(out)]) == 0
    with out.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    claims = {r["id"]: r["verdict"] for r in rows if r["kind"] == "claim"}
    assert claims["oracle-23"] == "not comparable"
    assert claims["per-token-control-is-hard"] in ("reproduced", "not reproduced", "inconclusive")
    assert {r["method"] for r in rows if r["kind"] == "table"} >= {"early_exit[rule=depth]", "layer_skip", "oracle"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["paper", "table", "glavas", "/no/such/folder"], "Results folder /no/such/folder does not exist"),
        (["paper", "table", "galvas", "."], "Unknown paper 'galvas'. Did you mean: glavas?"),
        (["paper", "run", "modd", "--quick"], "Unknown paper 'modd'. Did you mean: mod?"),
    ],
)
def test_bad_input_exits_2(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_the_report_gets_a_papers_page_linked_from_the_index(results: Path, tmp_path: Path):
    assert main(["report", str(results), "--out", str(tmp_path / "P")]) == 0
    index = (tmp_path / "P" / "index.md").read_text(encoding="utf-8")
    assert (
        "## Papers" in index
        and "](papers/glavas.html) — quick suite; claims: " in index
        and "2 not comparable" in index.split("papers/glavas.html")[1].splitlines()[0]
    )
    page = (tmp_path / "P" / "papers" / "glavas.html").read_text(encoding="utf-8")
    assert "<table>" in page and "oracle-23" in page and "T1: Quality against executed layers" in page
    assert '<img src="../toy-text/quality_layers.png"' in page  # the task's plot, drawn by the same report
    assert (tmp_path / "P" / "toy-text" / "quality_layers.png").is_file()
    assert "## Papers" not in index.split("## toy-text")[1]  # the section comes before the tasks
