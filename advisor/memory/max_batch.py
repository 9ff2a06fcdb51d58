"""The largest batch that fits a budget, from traced steady-state steps (DESIGN: "Measuring memory")."""

import time
from dataclasses import dataclass

from advisor.device import Budget
from advisor.errors import BadInput
from advisor.memory.search import affine_fit, largest_fitting_batch
from advisor.memory.trace import StepTracer
from advisor.spec import ModelSpec
from advisor.units import format_bytes


@dataclass(frozen=True)
class MemoryResult:
    budget: Budget
    margin: float
    max_batch: int           # largest batch whose peak fits the budget, no margin
    safe_max_batch: int      # largest batch whose peak fits budget·(1 − margin)
    fixed_bytes: float       # a in peak = a + b·B (parameters, optimizer state, workspaces)
    bytes_per_sample: float  # b
    peaks: dict[int, int]    # every batch traced -> its peak bytes
    at_search_limit: bool
    method: str
    seconds: float

    def peak_at(self, batch: int) -> float:
        return self.peaks.get(batch, self.fixed_bytes + self.bytes_per_sample * batch)


def find_max_batch(spec: ModelSpec, budget: Budget, margin: float, seed: int = 0,
                   tracer: StepTracer | None = None, smallest: int = 1) -> MemoryResult:
    started = time.perf_counter()
    tracer = tracer or StepTracer(spec, fake=True, seed=seed, smallest=smallest)
    peaks: dict[int, int] = {}
    full = largest_fitting_batch(tracer.peak, budget.bytes, peaks=peaks, smallest=smallest)
    if full.max_batch == 0:
        need = peaks[smallest]
        raise BadInput(f"{spec.path}: nothing fits: a step at batch {smallest} needs {format_bytes(need)} "
                       f"({need} bytes) but the budget is {format_bytes(budget.bytes)} ({budget.source})")
    safe = largest_fitting_batch(tracer.peak, budget.bytes * (1 - margin), peaks=peaks, smallest=smallest)
    fixed, per_sample = affine_fit(peaks)
    method = ("tracked: live tensor bytes of a steady-state step traced under FakeTensorMode" if tracer.fake
              else "tracked: live tensor bytes of real steady-state steps")
    return MemoryResult(budget, margin, full.max_batch, max(safe.max_batch, 0), fixed, per_sample, dict(peaks),
                        full.hit_limit, method, time.perf_counter() - started)
