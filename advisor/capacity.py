"""The CI capacity check: does batch N fit on a profiled device? No GPU needed.

The peak of a steady-state step is traced under FakeTensorMode on the CPU (nothing like the batch is
allocated) and compared with what the profile says tensors can use: total memory less the driver's
reserve and the CUDA context, less the margin.
"""

import math
import time
from dataclasses import dataclass

from advisor.device import Budget
from advisor.hardware.profiles import usable_bytes
from advisor.memory.search import largest_fitting_batch
from advisor.memory.trace import StepTracer
from advisor.spec import ModelSpec, check_contract


def profile_budget(profile: dict) -> Budget:
    return Budget(usable_bytes(profile), f"profile {profile['name']} ({profile['source']}): "
                                         "total - reserved - context overhead")


@dataclass(frozen=True)
class CapacityCheck:
    profile: str
    batch_size: int
    peak_bytes: int
    usable_bytes: int
    budget_bytes: int    # usable · (1 − margin), rounded down: bytes are whole (a peak fits it or not alike)
    margin: float
    max_batch: int       # largest batch whose peak fits budget_bytes
    min_max_batch: int | None
    seconds: float

    @property
    def fits(self) -> bool:
        return self.peak_bytes <= self.budget_bytes

    @property
    def passed(self) -> bool:
        return self.fits and (self.min_max_batch is None or self.max_batch >= self.min_max_batch)

    @property
    def headroom_bytes(self) -> int:
        return self.budget_bytes - self.peak_bytes


def check_capacity(spec: ModelSpec, profile: dict, batch_size: int, margin: float,
                   min_max_batch: int | None = None, seed: int = 0) -> CapacityCheck:
    started = time.perf_counter()
    smallest = check_contract(spec)
    tracer = StepTracer(spec, fake=True, seed=seed, smallest=smallest, batch_on_host=False)  # a GPU's copy
    usable = profile_budget(profile).bytes
    budget = math.floor(usable * (1 - margin))
    peaks: dict[int, int] = {}
    search = largest_fitting_batch(tracer.peak, budget, peaks=peaks, smallest=smallest)
    peak = peaks[batch_size] if batch_size in peaks else tracer.peak(batch_size)
    return CapacityCheck(profile["name"], batch_size, peak, usable, budget, margin, search.max_batch,
                         min_max_batch, time.perf_counter() - started)
