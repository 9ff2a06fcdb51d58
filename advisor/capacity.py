"""The CI capacity check: does batch N fit on a profiled device? No GPU needed.

The peak of a steady-state step is traced on the CPU with the model built under FakeTensorMode, as the
profiled GPU runs it (advisor/memory/profiled.py), plus the CUDA terms a trace cannot see, and compared
with what the profile says tensors can use: total memory less the driver's reserve and the CUDA context,
less the margin.
"""

import math
import time
from dataclasses import dataclass, field

from advisor.hardware.profiles import profile_budget
from advisor.memory.cuda_overheads import Term
from advisor.memory.profiled import trace_for_profile
from advisor.memory.search import largest_fitting_batch
from advisor.memory.trace import release_trace_caches
from advisor.results import SCHEMA_VERSION
from advisor.spec import ModelSpec


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
    terms: list[Term] = field(default_factory=list)         # what peak_bytes is made of, each with its source
    budget_terms: list[Term] = field(default_factory=list)  # how usable_bytes follows from the profile
    shard: int | None = None
    zero_stage: int = 3  # with shard: what the N GPUs shard (3: parameters too; 2: gradients too; 1: optimizer state)
    shard_wrap: str = "layers"  # with shard: FSDP's units (memory/shard.py WRAPS)
    method: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return self.peak_bytes <= self.budget_bytes

    @property
    def passed(self) -> bool:
        return self.fits and (self.min_max_batch is None or self.max_batch >= self.min_max_batch)

    @property
    def headroom_bytes(self) -> int:
        return self.budget_bytes - self.peak_bytes

    def to_dict(self) -> dict:
        """The JSON document `bsadvisor check --json` prints."""
        return {
            "schema_version": SCHEMA_VERSION, "fits": self.fits, "passed": self.passed,
            "batch_size": self.batch_size, "peak_bytes": self.peak_bytes, "budget_bytes": self.budget_bytes,
            "usable_bytes": self.usable_bytes, "margin": self.margin, "headroom_bytes": self.headroom_bytes,
            "max_batch": self.max_batch, "min_max_batch": self.min_max_batch, "profile": self.profile,
            "method": f"{self.method}; plus the CUDA terms listed; budget from the profile",
            "traced_peak_bytes": next((t.bytes for t in self.terms if t.name == "traced_step"), None),
            "terms": [t.to_json() for t in self.terms],
            "budget_terms": [t.to_json() for t in self.budget_terms],
            "shard": self.shard,
            "zero_stage": self.zero_stage if self.shard else None,
            "shard_wrap": self.shard_wrap if self.shard and self.zero_stage != 1 else None,
            "notes": self.notes,
            "seconds": self.seconds,
        }


def check_capacity(spec: ModelSpec, profile: dict, batch_size: int, margin: float,
                   min_max_batch: int | None = None, seed: int = 0, shard: int | None = None,
                   zero_stage: int = 3, attention: str | None = None, shard_wrap: str = "layers") -> CapacityCheck:
    started = time.perf_counter()
    try:
        step = trace_for_profile(spec, profile, seed=seed, shard=shard, zero_stage=zero_stage, attention=attention,
                                 shard_wrap=shard_wrap)
        usable = profile_budget(profile).bytes
        budget = math.floor(usable * (1 - margin))
        peaks: dict[int, int] = {}
        search = largest_fitting_batch(step.peak, budget, peaks=peaks, smallest=step.smallest)
        peak = peaks[batch_size] if batch_size in peaks else step.peak(batch_size)
        return CapacityCheck(profile["name"], batch_size, peak, usable, budget, margin, search.max_batch,
                             min_max_batch, time.perf_counter() - started, terms=step.terms(batch_size),
                             budget_terms=step.budget_terms(), shard=shard, zero_stage=zero_stage, shard_wrap=shard_wrap,
                             method=step.method,
                             notes=[*spec.notes, *step.notes])
    finally:
        release_trace_caches()
