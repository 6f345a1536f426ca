from __future__ import annotations

from pathlib import Path

import pytest

from dynbench.config import (
    ConfigError,
    MeasureConfig,
    PluginSpec,
    SuiteSpec,
    apply_overrides,
    build_dataclass,
    load_suite,
    parse_plugin_list,
    runspec_from_dict,
    runspec_to_dict,
)


def test_plugin_lists_with_bracket_options():
    specs = parse_plugin_list(["dense,layer_skip[pattern=uniform,min_layers=2]", "cpu[threads=1] early_exit"])
    assert [s.name for s in specs] == ["dense", "layer_skip", "cpu", "early_exit"]
    assert specs[1].options_dict() == {"min_layers": "2", "pattern": "uniform"}
    assert specs[1].label == "layer_skip[min_layers=2,pattern=uniform]"
    with pytest.raises(ConfigError, match="Unbalanced"):
        parse_plugin_list("layer_skip[pattern=uniform")
    with pytest.raises(ConfigError, match="has no '='"):
        parse_plugin_list("layer_skip[uniform]")


def test_build_dataclass_reports_every_problem_at_once():
    obj, errors = build_dataclass(
        MeasureConfig, {"min_iter": "3", "timing": "maybe", "eval_batch_size": "x"}, "measure"
    )
    assert obj is None
    assert len(errors) == 3
    assert any("Unknown option 'min_iter'" in e and "Did you mean: min_iters" in e for e in errors)
    assert any("measure.timing must be true or false" in e for e in errors)
    assert any("measure.eval_batch_size must be an integer" in e for e in errors)


def test_build_dataclass_coerces_strings_and_runs_validation():
    obj, errors = build_dataclass(MeasureConfig, {"min_time_s": "0.25", "flops": "false"}, "measure")
    assert errors == [] and obj.min_time_s == 0.25 and obj.flops is False
    obj, errors = build_dataclass(MeasureConfig, {"min_iters": "0"}, "measure")
    assert obj is None and "min_iters must be >= 1" in errors[0]


def test_suite_yaml_strict(tmp_path: Path):
    good = tmp_path / "suite.yaml"
    good.write_text(
        "name: s\nmethods: [dense, {name: layer_skip, pattern: uniform}]\ntasks: digits\nseeds: [0, 1]\n"
        "batch_sizes: [1, 8]\nmeasure: {min_time_s: 0.1}\n"
    )
    suite = load_suite(good)
    assert suite.methods[1] == PluginSpec.make("layer_skip", {"pattern": "uniform"})
    assert suite.seeds == (0, 1) and suite.measure.min_time_s == 0.1
    assert len(suite.runs()) == 4
    bad = tmp_path / "bad.yaml"
    bad.write_text("methodz: [dense]\nseeds: [zero]\nmeasure: {min_time: 1}\n")
    with pytest.raises(ConfigError) as err:
        load_suite(bad)
    text = str(err.value)
    assert "Unknown key 'methodz'" in text and "Did you mean: methods?" in text
    assert "tasks is missing" in text and "seeds[0] must be an integer" in text
    assert "Unknown option 'min_time'" in text


def test_overrides_and_runspec_round_trip():
    suite = SuiteSpec(methods=parse_plugin_list("dense"), tasks=parse_plugin_list("digits"))
    suite = apply_overrides(suite, ["measure.min_time_s=0.2", "seeds=0,1", "limit=10"])
    assert suite.measure.min_time_s == 0.2 and suite.seeds == (0, 1) and suite.limit == 10
    with pytest.raises(ConfigError, match="has no '='"):
        apply_overrides(suite, ["limit"])
    run = suite.runs()[0]
    assert runspec_from_dict(runspec_to_dict(run)) == run
