"""A failed run's one-line cause names the problem, not the header of a list of problems."""

from __future__ import annotations

from dynbench.config import ConfigError
from dynbench.harness.executors import ERROR_CHARS, one_line


def test_a_config_error_shows_its_first_problem_and_how_many_more():
    exc = ConfigError(["Method 'layer_skip': min_layers=10 exceeds the backbone's 2 blocks.", "n_test must be >= 1"])
    assert str(exc).splitlines()[0] == "Invalid configuration (2 problem(s)):"  # what the old line showed
    assert one_line(exc) == "ConfigError: Method 'layer_skip': min_layers=10 exceeds the backbone's 2 blocks. (+1 more)"
    assert one_line(ConfigError(["only one"])) == "ConfigError: only one"


def test_a_header_line_is_replaced_by_the_first_listed_problem():
    exc = RuntimeError("3 problems:\n  - the loss is nan at step 4\n  - lr too high\n  * inputs hold Inf")
    assert one_line(exc) == "RuntimeError: the loss is nan at step 4 (+2 more)"


def test_other_messages_keep_their_first_line():
    assert one_line(ValueError("first line\nsecond line")) == "ValueError: first line"
    assert one_line(ValueError("ends with a colon:")) == "ValueError: ends with a colon:"  # no list follows
    assert one_line(KeyError()) == "KeyError"


def test_a_long_problem_is_cut_but_the_count_stays():
    text = one_line(ConfigError(["x" * 1000, "second", "third"]))
    assert len(text) == ERROR_CHARS and text.endswith("x… (+2 more)")
    assert len(one_line(ValueError("y" * 1000))) == ERROR_CHARS
