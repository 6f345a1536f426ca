"""The claims registry: every shipped paper parses and names only things that exist."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dynbench.cli import main
from dynbench.papers.registry import TAGS, PaperRegistryError, load_paper, load_papers, paper_files

PAPERS = load_papers()


def test_the_five_seed_papers_are_registered():
    assert set(PAPERS) == {"mod", "acm", "dht", "transformer_inverse", "glavas"}
    arxiv = {p.id: p.arxiv for p in PAPERS.values()}
    assert arxiv == {"mod": "2404.02258", "acm": "2312.10193", "dht": "2312.03038",
                     "transformer_inverse": "2501.16394", "glavas": "2410.20022"}  # fmt: skip


@pytest.mark.parametrize("paper_id", sorted(PAPERS))
def test_every_claim_has_a_value_or_shape_settings_and_a_tag(paper_id):
    paper = PAPERS[paper_id]
    assert paper.claims and paper.tables
    for claim in paper.claims:
        assert claim.paper_value is not None or claim.shape, claim.id
        assert claim.paper_setting and claim.our_setting and claim.tag in TAGS, claim.id
        assert claim.comparable or claim.not_comparable_because, claim.id
    assert {"quick", "full"} == set(paper.suites)
    for role, pair in paper.tasks.items():  # each suite runs every role's task
        assert all(any(t.label == pair[s] for t in paper.suites[s].tasks) for s in ("quick", "full")), role


def test_a_paper_without_public_tables_says_so():
    assert not any(t.regenerable for t in PAPERS["dht"].tables)
    assert all(c.tag == "A" for c in PAPERS["dht"].claims)  # abstract only: the arXiv entry is withdrawn


def test_the_headline_numbers_are_the_papers():
    values = {(p.id, c.id): c.paper_value for p in PAPERS.values() for c in p.claims}
    assert values[("glavas", "oracle-23")] == 0.233
    assert values[("transformer_inverse", "flops-42.7")] == -42.7
    assert values[("transformer_inverse", "memory-34.1")] == -34.1


def broken(tmp_path: Path, edit) -> Path:
    """A copy of glavas.yaml with ``edit`` applied to its parsed mapping."""
    source = next(p for p in paper_files() if p.stem == "glavas")
    data = yaml.safe_load(source.read_text(encoding="utf-8"))
    edit(data)
    path = tmp_path / "glavas.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["tables"][0]["columns"].append("flops_per_token"), "writes metric 'flops_per_token'"),
        (lambda d: d["claims"][0]["measure"].update(method="layerskip"), "Did you mean: layer_skip"),
        (lambda d: d["claims"][0].pop("shape"), "give paper_value (the printed number) or shape"),
        (lambda d: d["claims"][0].update(tag="X"), "tag"),
        (lambda d: d["claims"][2].pop("not_comparable_because"), "say why in not_comparable_because"),
        (lambda d: d["tables"][0]["methods"].append("tinv"), "which suites.quick does not run"),
        (lambda d: d["tasks"]["text"].update(full="shakespear"), "Did you mean: shakespeare"),
        (lambda d: d["claims"][0]["measure"].update(budget="half"), "budget 'half' must be a number"),
        (lambda d: d["tables"][0].update(hardware="jetson-xavier"), "Did you mean: jetson-agx-xavier"),
        (lambda d: d["claims"][0]["measure"].update(hardware="a100"), "which suites.quick does not run. Add it"),
    ],
)
def test_a_broken_paper_file_names_each_problem(tmp_path, edit, message):
    with pytest.raises(PaperRegistryError) as info:
        load_paper(broken(tmp_path, edit))
    assert message in str(info.value)


def test_bench_paper_ls_lists_papers_tags_and_claims(capsys):
    assert main(["paper", "ls"]) == 0
    out = capsys.readouterr().out
    for paper_id in PAPERS:
        assert f"\n{paper_id}  " in f"\n{out}"
    assert "claim oracle-23 [V]" in out and "paper: 0.233 fraction of layers" in out
    assert "claim savings-74 [A]" in out and "[the paper's table is not public: ours only]" in out
    assert "Evidence tags: [V] read in the paper or its official code" in out


def test_bench_paper_ls_of_an_unknown_paper_exits_2(capsys):
    assert main(["paper", "ls", "galvas"]) == 2
    assert "Unknown paper 'galvas'. Did you mean: glavas?" in capsys.readouterr().err
