"""McCandlish et al. (2018), appendix A: the simple noise scale from two batch sizes. Pure maths.

At fixed weights, k micro-batch gradients gᵢ of b examples give, with B = k·b,
s̄ = mean ‖gᵢ‖² and S = ‖mean gᵢ‖², whose expectations are |G|² + tr Σ / b and |G|² + tr Σ / B.
Solving the pair gives unbiased estimates of |G|² and tr Σ; B_simple = tr Σ / |G|² is taken as a
ratio of averages over weight snapshots (an average of ratios is biased by the noisy denominator).
"""

import math
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Snapshot:
    """One weight snapshot's unbiased estimates."""

    grad_sq_norm: float  # |G|²
    trace_sigma: float   # tr Σ, the per-example gradient covariance's trace


@dataclass(frozen=True)
class NoiseScale:
    b_simple: float            # inf when |G|² is not resolved: noise dominates at this batch
    ci95: tuple[float, float]  # the upper end may be inf for the same reason
    grad_sq_norm: float
    trace_sigma: float
    snapshots: int

    @property
    def resolved(self) -> bool:
        return math.isfinite(self.b_simple) and math.isfinite(self.ci95[1])

    @property
    def no_signal(self) -> bool:
        """Every gradient was zero: there is neither a gradient nor noise to measure (not "noise dominated")."""
        return self.grad_sq_norm == 0 and self.trace_sigma == 0


def two_batch_estimates(mean_small_sq_norm: float, big_sq_norm: float, small: int, big: int) -> Snapshot:
    """Unbiased |G|² and tr Σ from s̄ (micro-batches of `small`) and S (their mean, `big` examples)."""
    if not 0 < small < big:
        raise ValueError(f"need 0 < small < big, got small={small}, big={big}")
    grad_sq = (big * big_sq_norm - small * mean_small_sq_norm) / (big - small)
    trace = (mean_small_sq_norm - big_sq_norm) / (1 / small - 1 / big)
    return Snapshot(grad_sq, trace)


def ratio_of_means(snapshots: list[Snapshot]) -> float:
    grad_sq = sum(s.grad_sq_norm for s in snapshots) / len(snapshots)
    trace = sum(s.trace_sigma for s in snapshots) / len(snapshots)
    if grad_sq == 0 and trace == 0:
        return math.nan  # no signal at all: nothing to divide
    return trace / grad_sq if grad_sq > 0 else math.inf


def noise_scale(snapshots: list[Snapshot], resamples: int = 2000, seed: int = 0) -> NoiseScale:
    """B_simple with a 95% percentile-bootstrap interval over snapshots."""
    if not snapshots:
        raise ValueError("no snapshots")
    rng = random.Random(seed)
    n = len(snapshots)
    boot = sorted(ratio_of_means([snapshots[rng.randrange(n)] for _ in range(n)]) for _ in range(resamples))
    lo, hi = boot[int(0.025 * (resamples - 1))], boot[int(math.ceil(0.975 * (resamples - 1)))]
    return NoiseScale(
        b_simple=ratio_of_means(snapshots),
        ci95=(lo, hi),
        grad_sq_norm=sum(s.grad_sq_norm for s in snapshots) / n,
        trace_sigma=sum(s.trace_sigma for s in snapshots) / n,
        snapshots=n,
    )


def series_trend(points: list[tuple[int, NoiseScale]]) -> float | None:
    """How B_simple moves along training: the least-squares slope of log B_simple against log step over
    the resolved points past step 0 (0.5: it doubles when the steps quadruple). None with fewer than two."""
    xy = [(math.log(step), math.log(s.b_simple)) for step, s in points if step > 0 and s.resolved and s.b_simple > 0]
    if len(xy) < 2:
        return None
    mx, my = sum(x for x, _ in xy) / len(xy), sum(y for _, y in xy) / len(xy)
    sxx = sum((x - mx) ** 2 for x, _ in xy)
    return sum((x - mx) * (y - my) for x, y in xy) / sxx if sxx > 0 else None
