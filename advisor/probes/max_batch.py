"""The largest batch that fits a budget, from traced steady-state steps (DESIGN: "Measuring memory").

Everywhere the fake-mode trace predicts the boundary. On CUDA, real steps then confirm it (the
predicted batch fits, one more does not) or correct it, against the budget less the CUDA context:
the first real step calibrates the trace, and bisection on real steps settles what is left.
"""

import math
import time
from dataclasses import dataclass, field, replace
from typing import Callable

from advisor.errors import BadInput
from advisor.memory.search import affine_fit, confirm_max_batch, largest_fitting_batch
from advisor.memory.trace import StepTracer
from advisor.probes.real_steps import RealSteps
from advisor.spec import ModelSpec
from advisor.units import Budget, format_bytes

MEASURED_ON_CUDA = ("measured on CUDA: max_memory_reserved of real steady-state steps; "
                    "predicted by the fake-mode trace")
CONFIRMED_ON_CPU = ("tracked: live tensor bytes of real steady-state CPU steps at the boundary; predicted by the "
                    "fake-mode trace corrected by real steps at the smallest batches")


@dataclass(frozen=True)
class MemoryResult:
    budget: Budget
    margin: float
    max_batch: int           # largest batch whose peak fits the budget, no margin
    safe_max_batch: int      # largest batch whose peak fits (budget − CUDA context)·(1 − margin)
    fixed_bytes: float       # a in peak = a + b·B (parameters, optimizer state, workspaces)
    bytes_per_sample: float  # b
    peaks: dict[int, int]    # every batch traced -> its peak bytes
    at_search_limit: bool
    method: str
    seconds: float
    # Real steps (CUDA): the trace's prediction they confirmed or corrected, how many ran, the CUDA
    # context they were charged, and each one's (max reserved, max allocated) bytes, None: out of memory.
    predicted_max_batch: int | None = None
    real_steps: int = 0
    context_bytes: int = 0
    measured: dict[int, tuple[int, int] | None] = field(default_factory=dict)

    def peak_at(self, batch: int) -> float:
        return self.peaks.get(batch, self.fixed_bytes + self.bytes_per_sample * batch)


def find_max_batch(spec: ModelSpec, budget: Budget, margin: float, seed: int = 0,
                   tracer: StepTracer | None = None, smallest: int = 1, real: RealSteps | None = None) -> MemoryResult:
    """The trace's largest batch; with `real` (a GPU), confirmed or corrected by real steps."""
    started = time.perf_counter()
    tracer = tracer or StepTracer(spec, fake=True, seed=seed, smallest=smallest)
    context = real.context_bytes if real else 0
    usable = budget.bytes - context  # what tensors (and the allocator's rounding) may use
    safe_usable = usable * (1 - margin)
    peaks: dict[int, int] = {}
    full = largest_fitting_batch(tracer.peak, usable, peaks=peaks, smallest=smallest)
    if full.max_batch == 0:
        need = peaks[smallest]
        less = f" less the CUDA context ({format_bytes(context)})" if context else ""
        raise BadInput(f"{spec.path}: nothing fits: a step at batch {smallest} needs {format_bytes(need)} "
                       f"({need} bytes) but the budget is {format_bytes(budget.bytes)} ({budget.source}){less}")
    safe = largest_fitting_batch(tracer.peak, safe_usable, peaks=peaks, smallest=smallest)
    fixed, per_sample = affine_fit(peaks)
    method = ("tracked: live tensor bytes of a steady-state step traced under FakeTensorMode" if tracer.fake
              else "tracked: live tensor bytes of real steady-state steps")
    result = MemoryResult(budget, margin, full.max_batch, max(safe.max_batch, 0), fixed, per_sample, peaks,
                          full.hit_limit, method, 0.0)
    if real is not None and not full.hit_limit:
        result = _confirm_on_device(result, tracer, real, usable, safe_usable, smallest)
    return replace(result, seconds=time.perf_counter() - started)


def _confirm_on_device(predicted: MemoryResult, tracer: StepTracer, real: RealSteps, usable: float,
                       safe_usable: float, smallest: int) -> MemoryResult:
    """Three real steps in the usual case. The first runs the batch the trace puts at the margin (the
    batch a user is told is safe; at most 95% of the room, so a trace a few percent low does not run
    out of memory there). Its peak calibrates the trace (× real / traced: the allocator's rounding grows
    with the step), which predicts the boundary B'. The step at B' is a second point, and the line
    through both (rounding and fixed workspaces apart) predicts B' again; real steps then confirm it
    (B' fits, B' + 1 does not) or walk and bisect where they disagree. Should the first step run out
    of memory (the card got busier), the calibrating step is taken where the trace puts 80%, then 50%
    of the room. The margin's batch is the calibrated trace's."""
    peaks = predicted.peaks

    def traced(batch: int) -> int:
        if batch not in peaks:
            peaks[batch] = tracer.peak(batch)
        return peaks[batch]

    def fits(batch: int) -> bool:
        reserved = real.peak(batch)
        return reserved is not None and reserved <= usable

    def calibrated(room: float) -> int:
        """The largest batch whose real peak, predicted from its traced peak, fits `room`."""
        to_real = calibration([(traced(b), p.reserved) for b, p in real.peaks.items() if p is not None])
        return largest_fitting_batch(lambda b: math.ceil(to_real(traced(b))), room, smallest=smallest).max_batch

    start = smallest
    for share in (min(1 - predicted.margin, 0.95), 0.8, 0.5):
        at = largest_fitting_batch(traced, usable * share, peaks=peaks, smallest=smallest).max_batch
        if at >= smallest and real.peak(at) is not None:
            start = max(calibrated(usable), smallest)
            if real.peak(start) is not None:  # a second point: the line through both predicts again
                start = max(calibrated(usable), smallest)
            break
    known = {b: fits(b) for b in real.peaks}  # the steps taken so far bound the search
    confirmed = confirm_max_batch(start, fits, smallest, good=max((b for b, ok in known.items() if ok), default=None),
                                  bad=min((b for b, ok in known.items() if not ok), default=None))[0]
    if confirmed == 0:
        raise BadInput(f"{real.spec.path}: nothing fits on {real.backend.device}: a real step at batch {smallest} "
                       f"{'runs out of memory' if real.peak(smallest) is None else 'exceeds the budget'} "
                       f"({predicted.budget.source}, less the CUDA context of {format_bytes(real.context_bytes)})")
    measured = {b: None if p is None else (p.reserved, p.allocated) for b, p in real.peaks.items()}
    return MemoryResult(predicted.budget, predicted.margin, confirmed, min(calibrated(safe_usable), confirmed),
                        predicted.fixed_bytes, predicted.bytes_per_sample, peaks, False,
                        MEASURED_ON_CUDA if real.backend.confirms_with_real_steps else CONFIRMED_ON_CPU, 0.0,
                        predicted_max_batch=predicted.max_batch, real_steps=len(real.peaks),
                        context_bytes=real.context_bytes, measured=measured)


def calibration(points: list[tuple[int, int]]) -> Callable[[float], float]:
    """Traced bytes -> real bytes, from real steps' (traced, real) peaks: the line through the smallest
    and the largest (the allocator rounds each block up, in proportion, and adds fixed workspaces; all
    the steps are near the boundary, where the peak is affine), or where that line would not rise, the
    ratio at the largest."""
    (t1, r1), (t2, r2) = min(points), max(points)
    if t2 > t1 and r2 > r1:
        slope = (r2 - r1) / (t2 - t1)
        return lambda t: r2 + slope * (t - t2)
    return lambda t: t * r2 / max(t2, 1)
