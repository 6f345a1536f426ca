"""The usage example at the top of :mod:`dynbench.api` runs, as written, and prints what it says."""

from __future__ import annotations

import doctest

import pytest

import dynbench.api


@pytest.mark.slow
def test_the_api_module_example_runs():
    result = doctest.testmod(dynbench.api, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted >= 8, "the example lost its statements"
    assert result.failed == 0, "the example at the top of dynbench/api.py no longer runs as written"
