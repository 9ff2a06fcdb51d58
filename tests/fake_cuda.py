"""A CUDA device simulated on the CPU, plugged in where the real one is: the Backend seam (a CudaBackend whose
device calls are the CPU's).

Steps really run (on the CPU); the "allocator" is a LiveStorageTracker. Its reserved bytes are the
tracked bytes scaled by `ratio` (block rounding) plus a fixed `workspace` (cuBLAS), so the fake-mode
trace's prediction is right (ratio 1), high or low, by a known amount. An allocation that takes
the reserve past `capacity` raises torch.cuda.OutOfMemoryError mid-step, as the caching allocator
does. NVML's free memory is total - others - context (once CUDA work ran) - the reserve.
"""

from __future__ import annotations

import contextlib
import math
import time

import torch

from advisor.devices import Backend, Peak
from advisor.devices.cuda import CudaBackend
from advisor.memory.tracker import LiveStorageTracker

MiB = 1 << 20


class OomTracker(LiveStorageTracker):
    def __init__(self, reserved, capacity: int | None):
        super().__init__()
        self.reserved, self.capacity = reserved, capacity

    def _track(self, tensor):
        super()._track(tensor)
        if self.capacity is not None and self.reserved(self.current_bytes) > self.capacity:
            raise torch.cuda.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate {tensor.untyped_storage().nbytes()} bytes. GPU 0 has a "
                f"total capacity of {self.capacity} bytes")


class FakeCudaBackend(CudaBackend):
    def __init__(self, total=8 << 30, context=300 * MiB, others=0, ratio=1.0, workspace=0, capacity=None,
                 api="v2"):
        super().__init__(torch.device("cpu"))
        self.total, self.context, self.others = total, context, others
        self.ratio, self.workspace, self.api = ratio, workspace, api
        self.capacity = capacity  # reserve at which allocations fail; default: what the card has left
        self.touched = False      # the CUDA context exists once work ran
        self.cached = 0           # the allocator's reserve between steps
        self.steps = 0            # measured steps, the warm one included

    def synchronize(self) -> None:
        pass

    def release_memory(self) -> None:
        Backend.release_memory(self)

    preserving_rng = Backend.preserving_rng

    def timed(self, fn) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    def reserved(self, tracked: int) -> int:
        return math.ceil(tracked * self.ratio) + self.workspace

    def free_memory(self):
        used = self.others + (self.context if self.touched else 0) + self.cached
        return self.total - used, f"NVML free memory ({self.api})"

    def reserved_now(self) -> int:
        return self.cached

    @contextlib.contextmanager
    def measuring(self, resident=()):
        self.touched, self.cached = True, 0  # the cache emptied before the step
        self.steps += 1
        capacity = self.capacity if self.capacity is not None else self.total - self.others - self.context
        tracker = OomTracker(self.reserved, capacity)
        tracker.track(resident)
        peak = Peak()
        with tracker:
            yield peak
        peak.allocated, peak.reserved = tracker.peak_bytes, self.reserved(tracker.peak_bytes)
        self.cached = peak.reserved
