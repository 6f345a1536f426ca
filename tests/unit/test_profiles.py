"""Profiles: quick fills in the plugins' quick options the user left unset; rows and keys say which.

The quick profile is the plugins' own declaration (``quick_options``, ``quick_budgets``,
``quick_eval_samples``) and :data:`dynbench.config.QUICK_MEASURE`; nothing the user sets is
overridden, and a quick run never shares a key with a full one.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dynbench.cli import build_parser
from dynbench.cli.suite_args import suite_from_args
from dynbench.config import (
    QUICK_MEASURE,
    ConfigError,
    MeasureConfig,
    SuiteSpec,
    apply_overrides,
    load_suite,
    parse_plugin_list,
    runspec_from_dict,
    runspec_to_dict,
)
from dynbench.harness.planning import RunPlan, plan_suite, profile_options
from dynbench.methods.base import METHODS, thin_budgets
from dynbench.tasks.base import TASKS


def plans(methods: str, tasks: str = "digits", **suite: object) -> list[RunPlan]:
    spec = SuiteSpec(methods=parse_plugin_list(methods), tasks=parse_plugin_list(tasks), **suite)  # type: ignore[arg-type]
    return plan_suite(spec.runs())


def test_quick_applies_the_plugins_quick_options_and_budgets():
    quick, full = plans("early_exit")[0], plans("early_exit", profile="full")[0]
    ee, digits = METHODS.get("early_exit"), TASKS.get("digits")
    assert quick.method.config.steps == ee.quick_options["steps"] != full.method.config.steps
    assert quick.task.config.train.steps == digits.quick_options["train.steps"] != full.task.config.train.steps
    assert len(full.budgets) == 8 and quick.budgets == thin_budgets(full.budgets, ee.quick_budgets)
    assert quick.budgets == (1.0, 0.99, 0.8, 0.4)


def test_quick_never_overrides_what_the_user_set():
    (plan,) = plans("early_exit[steps=7]", "digits[train.steps=33]", budgets=(1.0, 0.9, 0.5, 0.3, 0.2))
    assert plan.method.config.steps == 7  # the user's, not quick's 150
    assert plan.task.config.train.steps == 33
    assert plan.budgets == (1.0, 0.9, 0.5, 0.3, 0.2)  # --budgets is never thinned
    assert plan.spec.method.label == "early_exit[steps=7]"  # labels name the user's options only


def test_an_option_covers_the_dotted_options_under_and_above_it():
    cls = TASKS.get("digits")
    assert profile_options(cls, {"train": {"steps": 5}}, "quick") == {"train": {"steps": 5}}
    assert profile_options(cls, {"train.lr": 0.1}, "quick") == {"train.steps": 500, "train.lr": 0.1}
    assert profile_options(cls, {"train.lr": 0.1}, "full") == {"train.lr": 0.1}


def test_quick_measures_lighter_unless_the_user_set_the_field(tmp_path: Path):
    suite = SuiteSpec(methods=parse_plugin_list("dense"), tasks=parse_plugin_list("digits"))
    measure = suite.runs()[0].measure
    assert {k: getattr(measure, k) for k in QUICK_MEASURE} == dict(QUICK_MEASURE)
    mine = apply_overrides(suite, ["measure.min_time_s=1.5"]).runs()[0].measure
    assert mine.min_time_s == 1.5 and mine.min_iters == QUICK_MEASURE["min_iters"]
    full = SuiteSpec(methods=suite.methods, tasks=suite.tasks, profile="full").runs()[0].measure
    assert full == MeasureConfig()


def test_the_quick_eval_sample_is_the_tasks_and_limit_caps_it(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(TASKS.get("digits"), "quick_eval_samples", 100)
    (quick,) = plans("dense")
    assert quick.spec.eval_samples == 100 and quick.spec.eval_limit == 100
    (both,) = plans("dense", limit=40)
    assert both.spec.eval_limit == 40
    (full,) = plans("dense", profile="full")
    assert full.spec.eval_samples is None and full.spec.eval_limit is None
    assert runspec_from_dict(runspec_to_dict(quick.spec)) == quick.spec  # the worker re-plans the same run


def test_run_keys_carry_the_profile_and_full_keys_keep_their_form():
    quick, full = plans("layer_skip")[0], plans("layer_skip", profile="full")[0]
    assert "__quick__" in quick.run_key and "quick" not in full.run_key
    assert quick.run_key != full.run_key
    assert "profile" not in full.spec.identity()  # a full key is what it was before profiles existed
    assert quick.spec.identity()["profile"] == "quick"


def test_profile_from_yaml_and_the_cli(tmp_path: Path):
    path = tmp_path / "suite.yaml"
    path.write_text("methods: [dense]\ntasks: [digits]\nprofile: full\n")
    assert load_suite(path).profile == "full"
    path.write_text("methods: [dense]\ntasks: [digits]\nprofile: quik\n")
    with pytest.raises(ConfigError, match="Did you mean: quick"):
        load_suite(path)
    parser = build_parser()
    assert suite_from_args(parser.parse_args(["run"]))[0].profile == "quick"  # the default
    args = parser.parse_args(["run", "--config", str(tmp_path / "f.yaml"), "--profile", "quick"])
    (tmp_path / "f.yaml").write_text("methods: [dense]\ntasks: [digits]\nprofile: full\n")
    assert suite_from_args(args)[0].profile == "quick"  # the flag wins over the file
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "--profile", "fast"])


def test_thin_budgets_keeps_the_ends_evenly():
    assert thin_budgets((1.0, 0.999, 0.99, 0.95, 0.9, 0.8, 0.6, 0.4), 4) == (1.0, 0.99, 0.8, 0.4)
    assert thin_budgets((1.0, 0.5), 4) == (1.0, 0.5)
    assert thin_budgets((1.0, 0.5, 0.25), None) == (1.0, 0.5, 0.25)
    assert thin_budgets((1.0, 0.5, 0.25), 1) == (1.0,)
