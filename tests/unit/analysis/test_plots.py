from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from dynbench.analysis.plots import scale_y


def test_quality_axis_turns_log_only_when_values_span_decades() -> None:
    ax = Figure().add_subplot()
    scale_y(ax, np.array([62.4, 98.9, 1176.0, 6.3e9]))  # SmolLM2 perplexities as layers are skipped
    assert ax.get_yscale() == "log"
    ax = Figure().add_subplot()
    scale_y(ax, np.array([0.66, 0.8585]))  # accuracies
    assert ax.get_yscale() == "linear"
    ax = Figure().add_subplot()
    scale_y(ax, np.array([0.0, 0.9]))  # a zero cannot go on a log axis
    assert ax.get_yscale() == "linear"
