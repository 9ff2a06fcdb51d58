"""A CPU whose clock is a function of the work: the Backend seam with deterministic timings.

`timed(fn)` runs `fn` for real and says it took a fixed overhead plus a cost per tensor element its
operators produced (counted by a dispatch mode), so a step's time is a function of the model and the batch,
not of the machine's load; `clock()` advances by those times alone. The budget is fixed, and the probes run on one
thread whatever the load (a thread waiting for a busy core makes every step wait). Two runs with the same
seed then measure, and advise, the same.
"""

from __future__ import annotations

import contextlib

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from advisor.devices.cpu import CpuBackend

OVERHEAD_SECONDS = 2e-3         # a launch, a Python step: paid at every timed call
SECONDS_PER_ELEMENT = 1e-7      # small models pass a step-time limit of 0.05 s at small batches


class ElementsProduced(TorchDispatchMode):
    """Counts the elements of every tensor the operators inside produce (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.elements = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.elements += sum(t.numel() for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor))
        return out


class ClockedCpu(CpuBackend):
    def __init__(self, budget_bytes: int = 1 << 30):
        super().__init__()
        self.budget_bytes = budget_bytes
        self.now = 0.0

    @property
    def measured_on(self) -> str:
        return "measured on a test clock (flops)"

    def clock(self) -> float:
        return self.now

    def timed(self, fn) -> float:
        with ElementsProduced() as work:
            fn()
        seconds = OVERHEAD_SECONDS + SECONDS_PER_ELEMENT * work.elements
        self.now += seconds
        return seconds

    def free_memory(self) -> tuple[int, str]:
        return self.budget_bytes, "a fixed test budget"

    @contextlib.contextmanager
    def probing_threads(self, adjustable: bool = True):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield None
        finally:
            torch.set_num_threads(threads)
