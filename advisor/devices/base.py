"""The device as a backend: the one seam between the probes and a kind of device.

The probes ask a `Backend` how to time a step, how much memory the device offers, what a step's peak
was, how to give memory back after running out of it, and a few facts that differ by kind (does a step
hold the batch as `batch()` made it, do real steps confirm the traced boundary). They never ask which
kind of device it is. Each kind is one file beside this one (cpu.py, cuda.py, mps.py); a new kind (ROCm
with its own free-memory source, XPU) is one more, listed in advisor/devices/__init__.py.
"""

from __future__ import annotations

import contextlib
import gc
import time
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch

from advisor.memory.tracker import LiveStorageTracker
from advisor.units import Budget


@dataclass
class Peak:
    """Peak memory of the work inside `Backend.measuring()`, filled in when it ends."""

    reserved: int = 0   # what the device had to give (CUDA: max_memory_reserved); elsewhere tracked bytes
    allocated: int = 0  # tensors alone (CUDA: max_memory_allocated); elsewhere tracked bytes


class Backend:
    """What every probe may ask of a device. The defaults here suit a device whose memory is the tracked
    tensor bytes and whose clock is the host's; each kind overrides what differs."""

    #: the step holds the batch as batch() made it (views of one storage, slices of a dataset) rather than
    #: a compact copy on the device: the fake trace lays the batch out alike
    holds_batch_on_host = False
    #: the traced boundary is confirmed by real steps on the device (its allocator rounds and caches)
    confirms_with_real_steps = False
    #: this process's context on the device (driver state, kernels) is measured and charged to real steps
    measures_context = False
    #: torch.distributed's backend for a data-parallel job on this kind of device
    collective_backend = "gloo"

    def __init__(self, device: torch.device, note: str | None = None):
        self.device = device
        self.note = note  # e.g. why `auto` chose this device

    @property
    def measured_on(self) -> str:
        """How a timing was obtained, as the report says it."""
        return f"measured on {self.device.type.upper()}"

    def clock(self) -> float:
        """Seconds by the clock `timed` uses on the host (for budgets planned from its timings)."""
        return time.perf_counter()

    def synchronize(self) -> None:
        """Wait for the device's queued work (nothing to wait for on a synchronous device)."""

    def timed(self, fn) -> float:
        """Seconds `fn()` takes on the device."""
        self.synchronize()
        start = self.clock()
        fn()
        self.synchronize()
        return self.clock() - start

    def memory_budget(self, limit_bytes: int | None) -> Budget:
        """What the device offers a training process now, or the user's --memory when smaller: free memory
        plus what this process's allocator already caches (it is ours to reuse)."""
        free, source = self.free_memory()
        offered = free + self.reserved_now()
        if limit_bytes is not None and limit_bytes <= offered:
            return Budget(limit_bytes, "--memory")
        return Budget(offered, source)

    def host_budget(self, limit_bytes: int | None) -> Budget:
        """What the host can give a model built for real on it (the contract check's real steps)."""
        return self.memory_budget(limit_bytes)

    def free_memory(self) -> tuple[int, str]:
        """Bytes free on the device now, and how they were read."""
        raise NotImplementedError

    def reserved_now(self) -> int:
        """Bytes this process's allocator holds on the device now, beyond live tensors' needs."""
        return 0

    @contextlib.contextmanager
    def measuring(self, resident: Iterable[torch.Tensor] = ()) -> Iterator[Peak]:
        """The peak memory of the work inside: exact tracked tensor bytes, counting `resident` (the tensors
        already live: weights, optimizer state) as the floor."""
        peak = Peak()
        tracker = LiveStorageTracker()
        tracker.track(resident)
        with tracker:
            yield peak
        peak.reserved = peak.allocated = tracker.peak_bytes

    def release_memory(self) -> None:
        """After a step ran out of memory (call it outside the `except` block, whose traceback holds the
        failed step's tensors): collect the cycles that still hold tensors, so the next step starts from
        the same floor."""
        gc.collect()

    @contextlib.contextmanager
    def probing_threads(self, adjustable: bool = True) -> Iterator[str | None]:
        """The intra-op threads the probes run with, put back afterwards; yields a note when changed."""
        yield None

    @contextlib.contextmanager
    def preserving_rng(self) -> Iterator[None]:
        """The probes seed torch's generators: the caller's states (host's, and this device's) come back."""
        with torch.random.fork_rng(devices=[]):
            yield

    def for_rank(self, local_rank: int) -> "Backend":
        """The device of a data-parallel job's rank `local_rank` (one device serves every rank here)."""
        return self

    def process_group_options(self) -> dict:
        """Extra arguments for torch.distributed.init_process_group."""
        return {}

    def ddp_device_ids(self) -> list[int] | None:
        """DistributedDataParallel's device_ids for this device."""
        return None
