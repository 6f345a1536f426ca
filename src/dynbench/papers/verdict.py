"""The one rule that turns a paper's claim and our measurement into a verdict, never by hand.

A claim predicts a region of values for our measurement (:func:`region`):

| expectation | region | e.g. |
|---|---|---|
| ``near`` v ± t | [v − t, v + t] | the oracle matches with 23.3% ± 10 points of layers |
| ``at_least`` v / ``at_most`` v | [v, ∞) / (−∞, v] | sampling ≥ 1.5× faster; FLOPs ≤ −42.7% |
| ``between`` low, high | [low, high] | 2–3 learners per token |
| ``positive`` / ``negative`` | (0, ∞) / (−∞, 0) | A better than B at equal FLOPs (Δ > 0) |
| ``tie`` ± t | [−t, t] | a controller does no better than its fixed-input control |

Our measurement is a 95% interval [low, high] (over seeds with several, else over samples or timed
calls — the interval the rows or the paired comparison carry). Then, in this order:

1. **not comparable** — the registry says the settings differ in what the claim is about (a 135 M
   model against the paper's 1.3 B, CPU against TPU); decided before any number is read, with the
   reason printed beside it;
2. **not measured** — the runs do not hold the measurement (a missing study, a budget not run);
3. **inconclusive** — no interval (one number alone is not evidence), or the interval reaches both
   into the region and out of it;
4. **reproduced** — the whole interval lies inside the region;
5. **not reproduced** — the whole interval lies outside it.

A claim measured at several points (``paired`` over every budget: "better at every budget") is
reproduced when every point is, not reproduced when any point is, inconclusive otherwise
(:func:`combine`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Literal

from dynbench.papers.registry import Expectation

PaperVerdict = Literal["reproduced", "not reproduced", "inconclusive", "not comparable", "not measured"]
VERDICTS: tuple[PaperVerdict, ...] = ("reproduced", "not reproduced", "inconclusive", "not comparable", "not measured")


def region(expect: Expectation) -> tuple[float, float, bool]:
    """``(low, high, open)``: the values the claim predicts; ``open`` = the ends are excluded."""
    kind = expect.kind
    if kind == "near":
        return expect.value - expect.tolerance, expect.value + expect.tolerance, False
    if kind == "at_least":
        return expect.value, math.inf, False
    if kind == "at_most":
        return -math.inf, expect.value, False
    if kind == "between":
        return expect.low, expect.high, False
    if kind == "positive":
        return 0.0, math.inf, True
    if kind == "negative":
        return -math.inf, 0.0, True
    if kind == "tie":
        return -expect.tolerance, expect.tolerance, False
    raise ValueError(f"Unknown expectation kind {kind!r}. Use one of near, at_least, at_most, between, positive, "
                     "negative, tie.")  # fmt: skip


def _inside(x: float, lo: float, hi: float, open_: bool) -> bool:
    return lo < x < hi if open_ else lo <= x <= hi


def judge(
    expect: Expectation, low: float | None, high: float | None, *, comparable: bool = True, measured: bool = True
) -> PaperVerdict:
    """The verdict of one interval ``[low, high]`` against the claim's region (module docstring)."""
    if not comparable:
        return "not comparable"
    if not measured:
        return "not measured"
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return "inconclusive"
    lo, hi, open_ = region(expect)
    if _inside(low, lo, hi, open_) and _inside(high, lo, hi, open_):
        return "reproduced"
    below = high < lo or (open_ and high <= lo)
    above = low > hi or (open_ and low >= hi)
    return "not reproduced" if below or above else "inconclusive"


def combine(verdicts: Iterable[PaperVerdict]) -> PaperVerdict:
    """One verdict for a claim measured at several points ("at every budget")."""
    seen = list(verdicts)
    if not seen:
        return "not measured"
    for first in ("not comparable", "not reproduced"):
        if first in seen:
            return first  # type: ignore[return-value]
    if all(v == "reproduced" for v in seen):
        return "reproduced"
    if all(v == "not measured" for v in seen):
        return "not measured"
    return "inconclusive"
