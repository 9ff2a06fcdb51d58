"""Pure search for the largest batch whose peak fits a budget, written over `peak(batch) -> bytes`.

Peak memory is max(c, a + b·B) in the batch size B, so two points in the affine part predict the
boundary; the prediction is then confirmed exactly (B fits, B + 1 does not). Interpolation inside the
bracket handles curves that are not quite affine, and bisection takes over if it stalls.
"""

from dataclasses import dataclass, field
from typing import Callable

SEARCH_LIMIT = 2**24  # batches beyond this are reported as "at least" the limit


@dataclass
class Search:
    max_batch: int                     # 0 when even the smallest batch does not fit
    peaks: dict[int, int] = field(default_factory=dict)  # every batch evaluated -> its peak bytes
    hit_limit: bool = False


def largest_fitting_batch(peak: Callable[[int], int], budget: float, limit: int = SEARCH_LIMIT,
                          peaks: dict[int, int] | None = None, smallest: int = 1) -> Search:
    """Largest B in [smallest, limit] with peak(B) <= budget, assuming peak grows with B.
    `peaks` caches earlier evaluations (it is shared between searches at different budgets)."""
    peaks = {} if peaks is None else peaks

    def fits(b: int) -> bool:
        if b not in peaks:
            peaks[b] = peak(b)
        return peaks[b] <= budget

    if not fits(smallest):
        return Search(0, peaks)
    lo, hi = smallest, None
    for b in sorted(b for b in peaks if b >= smallest):  # earlier evaluations narrow the bracket for free
        if fits(b):
            lo = max(lo, b)
        elif hi is None or b < hi:
            hi = b
    steps = 0
    while hi is None or hi - lo > 1:
        if hi is None and lo >= limit:
            return Search(limit, peaks, hit_limit=True)
        steps += 1
        guess = _next_guess(lo, hi, peaks, budget, limit, bisect=steps > 8)
        if fits(guess):
            lo = guess
        else:
            hi = guess
    return Search(lo, peaks)


def _next_guess(lo: int, hi: int | None, peaks: dict[int, int], budget: float, limit: int, bisect: bool) -> int:
    if hi is None:
        below = sorted(b for b in peaks if b < lo)
        slope = (peaks[lo] - peaks[below[-1]]) / (lo - below[-1]) if below else 0.0
        if slope > 0:
            guess = lo + int((budget - peaks[lo]) // slope)
        else:
            guess = lo * 64  # no slope yet (or the constant part of the curve): jump ahead
        return max(lo + 1, min(guess, limit, lo * 2**20))
    if bisect or peaks[hi] <= peaks[lo]:
        return (lo + hi) // 2
    guess = lo + int((budget - peaks[lo]) * (hi - lo) // (peaks[hi] - peaks[lo]))
    return max(lo + 1, min(guess, hi - 1))


def confirm_max_batch(predicted: int, fits: Callable[[int], bool], smallest: int = 1, limit: int = SEARCH_LIMIT,
                      good: int | None = None, bad: int | None = None) -> tuple[int, int]:
    """The largest batch for which `fits` (a real step) says yes, starting from a predicted boundary,
    and the number of calls to `fits`. `good` / `bad`: a batch already known to fit / not to fit.

    The prediction is tested where it matters: B must fit and B + 1 must not, two steps when it is
    right. When it is wrong, strides of 1, 2, 4, ... from B walk to the nearest batch on the other side
    (a few steps for a prediction off by a few), and bisection between the nearest known-good and
    known-bad batches closes the bracket: about 2·log2(error) steps. A prediction outside what is
    already known is bisected at once. Returns (0, steps) when not even `smallest` fits. `fits` is
    assumed monotone in the batch.
    """
    steps = 0

    def real(b: int) -> bool:
        nonlocal steps
        steps += 1
        return fits(b)

    lo = smallest - 1 if good is None else good  # the largest batch known to fit (smallest - 1: none)
    hi = limit + 1 if bad is None else bad       # the smallest batch known not to fit (limit + 1: none)
    if hi - lo <= 1:
        return (lo if lo >= smallest else 0), 0
    contradicted = (good is not None and predicted < good) or (bad is not None and predicted >= bad)
    stride = 0 if contradicted else 1            # 0: bisecting
    b = min(max(predicted, lo + 1), hi - 1) if stride else (lo + hi) // 2
    up = real(b)
    lo, hi = (b, hi) if up else (lo, b)
    while hi - lo > 1:
        if stride:  # walking away from the prediction until a step lands on the other side
            b = min(lo + stride, hi - 1) if up else max(hi - stride, lo + 1)
            stride *= 2
        else:
            b = (lo + hi) // 2
        ok = real(b)
        lo, hi = (b, hi) if ok else (lo, b)
        if ok != up:
            stride = 0
    return (lo if lo >= smallest else 0), steps


def affine_fit(peaks: dict[int, int]) -> tuple[float, float]:
    """(fixed_bytes, bytes_per_sample) through the two largest batches evaluated: the affine part."""
    if len(peaks) < 2:
        only = next(iter(peaks.values()), 0)
        return float(only), 0.0
    (b1, p1), (b2, p2) = sorted(peaks.items())[-2:]
    slope = (p2 - p1) / (b2 - b1)
    return p1 - slope * b1, slope
