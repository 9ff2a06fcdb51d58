"""The CPU as a device: the host's available memory, exact tracked tensor bytes, the host's clocks.

On a CPU already busy with other work (the load average, or the cores busy now), the probes run with a
thread per free core: torch's threads wait for each other at every operator, so one descheduled thread
makes every step wait.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from typing import Iterator

import torch

from advisor.devices.base import Backend
from advisor.hardware.host import HOST_MEMORY_SOURCE, busy_cores, host_available_bytes

KIND = "cpu"


class CpuBackend(Backend):
    holds_batch_on_host = True  # the step holds batch()'s own tensors: no copy to a device

    def __init__(self, note: str | None = None):
        super().__init__(torch.device("cpu"), note)

    @property
    def measured_on(self) -> str:
        return "measured on CPU (the probing thread's CPU time)" if self.thread_clock else "measured on CPU"

    @property
    def thread_clock(self) -> bool:
        """Probed with one intra-op thread, steps are timed by that thread's CPU time: every operator runs on
        it, so its CPU time is the step's cost whatever else the machine runs, where wall time would also
        count the time another process held the core."""
        return torch.get_num_threads() == 1

    def clock(self) -> float:
        return time.thread_time() if self.thread_clock else time.perf_counter()

    def free_memory(self) -> tuple[int, str]:
        return host_available_bytes(), HOST_MEMORY_SOURCE

    @contextlib.contextmanager
    def probing_threads(self, adjustable: bool = True) -> Iterator[str | None]:
        """On a CPU already busy with other work, fewer intra-op threads (see threads_beside_load); put back
        afterwards. Not `adjustable` (a distributed job's ranks keep the launcher's): as they are."""
        current = torch.get_num_threads()
        if not adjustable or not hasattr(os, "getloadavg"):
            yield None
            return
        load = other_load()
        threads = threads_beside_load(current, os.cpu_count() or 1, load)
        if threads == current:
            yield None
            return
        torch.set_num_threads(threads)
        try:
            yield (f"the machine is busy (load {load:.1f} on {os.cpu_count()} cores): probing with {threads} CPU "
                   f"thread{'s' if threads > 1 else ''} instead of {current}, so that timings are the model's")
        finally:
            torch.set_num_threads(current)


_BUSY_FOR = 5.0                                # seconds a measurement of the busy cores is used again
_busy: tuple[float, float | None] = (-math.inf, None)  # (when, cores): the last measurement


def other_load() -> float:
    """Other work on the machine, in cores: the larger of the 1-minute load average (which lags) and the
    cores busy now (which a pause in a bursty job hides), measured at most every few seconds (it takes
    a tenth of one)."""
    global _busy
    if time.monotonic() - _busy[0] > _BUSY_FOR:
        _busy = (time.monotonic(), busy_cores(0.1))
    now = _busy[1]
    return max(os.getloadavg()[0], now if now is not None else 0.0)


def threads_beside_load(current: int, cores: int, load: float) -> int:
    """Intra-op threads for CPU probes on a machine already running `load` cores' worth of other work
    (`other_load`): a thread per core left free. Torch's threads wait for each other at every operator, so
    one of them descheduled by another process makes every step wait (on 2 cores with one busy, steps
    ran ~100x slower at 2 threads than at 1): timings then measure the other process, not the model."""
    free = cores - math.floor(load + 0.5)
    return max(1, min(current, free))


def available() -> bool:
    return True


def open_device(index: int | None, asked: str, auto: bool = False) -> CpuBackend:
    return CpuBackend()


def rank_limit() -> tuple[int, str, str]:
    """At most one rank of a data-parallel job per core."""
    return os.cpu_count() or 1, "CPU cores", "CPU core"
