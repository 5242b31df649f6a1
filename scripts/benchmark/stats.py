"""The statistics of ``--compare``: a figure's verdict from the ratios of its ABBA pairs.

Each pair (a run of the current tree and a run of the other commit, back to back) gives one
ratio, current / other; the verdict is about the median of the distribution those ratios come
from. Its interval is the sign test's: between two order statistics of the ratios, ranks k and
n + 1 - k, which cover the median with probability 1 - 2 P(Binomial(n, 1/2) < k) whatever the
distribution, as long as the pairs are independent. That is exact at any n, where a bootstrap
is not: at 3 pairs a bootstrap's nominal 90% interval is the range of the three ratios, which
covers the median only 75% of the time, and the machine's noise (one slow run in a pair, now
and then: a heavy tail) is what makes a normal or t interval's assumption wrong. k is the
largest that keeps 90%; below 5 pairs none does, and the interval is the whole range with the
coverage it has (75% at 3 pairs, 87.5% at 4). Under 3 pairs there is no verdict.

The interval excludes 1: "faster" or "slower" (for a figure where lower is better, a ratio
below 1 is faster); else "no change beyond noise"."""

from __future__ import annotations

import math
from dataclasses import dataclass

LEVEL = 0.90  # the coverage sought
LEAST = 0.75  # no verdict from an interval that covers less (fewer than 3 pairs)

FASTER, SLOWER, SAME, TOO_FEW = "faster", "slower", "no change beyond noise", "too few pairs"


def coverage(n: int, k: int) -> float:
    """P(the k-th smallest of n <= the median <= the k-th largest), for any continuous law."""
    return 1 - 2 * sum(math.comb(n, i) for i in range(k)) / 2**n


def interval(ratios: list[float]) -> tuple[float, float, float]:
    """(low, high, coverage): the sign-test interval of the ratios' median."""
    xs = sorted(ratios)
    n = len(xs)
    k = 1
    while k + 1 <= n + 1 - (k + 1) and coverage(n, k + 1) >= LEVEL:
        k += 1
    return xs[k - 1], xs[n - k], coverage(n, k)


def median(xs: list[float]) -> float:
    s = sorted(xs)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


@dataclass
class Verdict:
    pairs: int
    median: float | None
    low: float | None
    high: float | None
    coverage: float | None
    verdict: str


def judge(ratios: list[float], *, lower_is_better: bool = False) -> Verdict:
    """The verdict on one figure from its pair ratios (current / other)."""
    n = len(ratios)
    if n == 0:
        return Verdict(0, None, None, None, None, TOO_FEW)
    if coverage(n, 1) < LEAST:
        return Verdict(n, median(ratios), None, None, None, TOO_FEW)
    low, high, cov = interval(ratios)
    if low > 1:
        verdict = SLOWER if lower_is_better else FASTER
    elif high < 1:
        verdict = FASTER if lower_is_better else SLOWER
    else:
        verdict = SAME
    return Verdict(n, median(ratios), low, high, cov, verdict)


def pair_ratios(current: list[float | None], other: list[float | None]) -> list[float]:
    """current[i] / other[i] for each pair where both runs measured the figure."""
    return [c / o for c, o in zip(current, other, strict=True) if c is not None and o]
