"""The device as a backend: which device, how to time a step on it, how much memory it offers.

The probes call this and nothing else device-specific, so the same code measures on CPU and CUDA.
On CUDA, NVML (opened lazily, per call) says how much memory is free, so what other processes hold
is respected; torch's caching allocator says what a step used.
"""

import contextlib
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import torch

from advisor.errors import BadInput, DeviceUnavailable
from advisor.hardware import nvml
from advisor.memory.tracker import LiveStorageTracker

_DEVICE = re.compile(r"^(auto|cpu|cuda)(?::(\d+))?$")


@dataclass(frozen=True)
class Budget:
    bytes: int
    source: str  # how it was obtained, shown next to the figure


@dataclass
class Peak:
    """Peak memory of the work inside `Backend.measuring()`, filled in when it ends."""

    reserved: int = 0   # CUDA: max_memory_reserved (what the device gave the allocator); CPU: tracked bytes
    allocated: int = 0  # CUDA: max_memory_allocated (tensors); CPU: tracked bytes


class Backend:
    def __init__(self, device: torch.device, note: str | None = None, nvml_index: nvml.DeviceId | None = None):
        self.device = device
        self.note = note  # e.g. why `auto` chose the CPU
        self.nvml_index = (device.index or 0) if nvml_index is None else nvml_index  # NVML's number of this GPU

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def measured_on(self) -> str:
        if self.is_cuda:
            return "measured on CUDA"
        return "measured on CPU (the probing thread's CPU time)" if self.thread_clock else "measured on CPU"

    @property
    def thread_clock(self) -> bool:
        """On a CPU probed with one intra-op thread, steps are timed by that thread's CPU time: every operator
        runs on it, so its CPU time is the step's cost whatever else the machine runs, where wall time would
        also count the time another process held the core."""
        return not self.is_cuda and torch.get_num_threads() == 1

    def clock(self) -> float:
        """Seconds by the clock `timed` uses on the host (for budgets planned from its timings)."""
        return time.thread_time() if self.thread_clock else time.perf_counter()

    def synchronize(self) -> None:
        if self.is_cuda:
            torch.cuda.synchronize(self.device)

    def timed(self, fn) -> float:
        """Seconds `fn()` takes on the device: CUDA events after synchronising, or the wall clock."""
        if not self.is_cuda:
            start = self.clock()
            fn()
            return self.clock() - start
        self.synchronize()
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        end.synchronize()
        return begin.elapsed_time(end) / 1000.0

    def memory_budget(self, limit_bytes: int | None) -> Budget:
        """What the device offers a training process now, or the user's --memory when smaller.
        On CUDA: free memory plus what this process's allocator already caches (it is ours to reuse)."""
        free, source = self.free_memory()
        offered = free + self.reserved_now()
        if limit_bytes is not None and limit_bytes <= offered:
            return Budget(limit_bytes, "--memory")
        return Budget(offered, source)

    def free_memory(self) -> tuple[int, str]:
        """Bytes free on the device now, and how they were read: on CUDA from NVML (cudaMemGetInfo
        without it), so that what other processes hold is respected."""
        if not self.is_cuda:
            return host_available_bytes(), "host available memory (/proc/meminfo MemAvailable)"
        try:
            memory = nvml.gpu_info(self.nvml_index).memory
        except nvml.NvmlUnavailable as exc:
            return torch.cuda.mem_get_info(self.device)[0], f"CUDA free memory (cudaMemGetInfo; NVML unavailable: {exc})"
        return memory.free_bytes, f"NVML free memory ({memory.api})"

    def reserved_now(self) -> int:
        """Bytes torch's caching allocator holds on the GPU now (0 before CUDA is initialised)."""
        return torch.cuda.memory_reserved(self.device) if self.is_cuda and torch.cuda.is_initialized() else 0

    @contextlib.contextmanager
    def measuring(self, resident: Iterable[torch.Tensor] = ()) -> Iterator[Peak]:
        """The peak memory of the work inside. CUDA: the cache is emptied and the allocator's peak
        statistics reset first, so max_memory_reserved is this work's own. CPU: exact tracked tensor
        bytes, counting `resident` (the tensors already live: weights, optimizer state) as the floor."""
        peak = Peak()
        if self.is_cuda:
            self.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            yield peak
            self.synchronize()
            peak.reserved = torch.cuda.max_memory_reserved(self.device)
            peak.allocated = torch.cuda.max_memory_allocated(self.device)
            return
        tracker = LiveStorageTracker()
        tracker.track(resident)
        with tracker:
            yield peak
        peak.reserved = peak.allocated = tracker.peak_bytes


def resolve_device(name: str) -> Backend:
    """`auto` | `cpu` | `cuda` | `cuda:N` -> a Backend, or a clear error (exit 2 or 3)."""
    match = _DEVICE.match((name or "").strip().lower())
    if not match:
        raise BadInput(f"--device {name!r}: unknown device; expected auto, cpu, cuda or cuda:N")
    kind, index = match.group(1), match.group(2)
    if kind == "cpu":
        return Backend(torch.device("cpu"))
    if kind == "auto" and not torch.cuda.is_available():
        return Backend(torch.device("cpu"), note="no CUDA device found: measuring on the CPU")
    if not torch.cuda.is_available():
        why = (f"this torch ({torch.__version__}) is built without CUDA" if torch.version.cuda is None
               else f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no usable GPU or driver")
        raise DeviceUnavailable(f"--device {name}: CUDA is not available on this machine: {why}; use --device cpu")
    count = torch.cuda.device_count()
    i = int(index or 0)
    if i >= count:
        raise DeviceUnavailable(f"--device {name}: no GPU {i}; this machine has {count}")
    try:
        found = nvml_index(i)
        nvml.gpu_info(found)  # the driver answers for this GPU: its free memory is the budget
    except nvml.NvmlUnavailable as exc:
        if kind == "auto":
            return Backend(torch.device("cpu"), note=f"CUDA is visible but NVML is not ({exc}): measuring on the CPU")
        raise DeviceUnavailable(f"--device {name}: {exc}") from exc
    return Backend(torch.device("cuda", i), nvml_index=found)


def threads_beside_load(current: int, cores: int, load: float) -> int:
    """Intra-op threads for CPU probes on a machine already running `load` (the 1-minute load average)
    other work: a thread per core left free. Torch's threads wait for each other at every operator, so
    one of them descheduled by another process makes every step wait (on 2 cores with one busy, steps
    ran ~100x slower at 2 threads than at 1): timings then measure the other process, not the model."""
    free = cores - math.floor(load + 0.5)
    return max(1, min(current, free))


def resolve_rank_device(name: str, local_rank: int) -> Backend:
    """In a data-parallel job: the device asked for, and on CUDA the GPU of this rank's LOCAL_RANK after it."""
    backend = resolve_device(name)
    if not backend.is_cuda or local_rank == 0:
        return backend
    return resolve_device(f"cuda:{(backend.device.index or 0) + local_rank}")


def nvml_index(cuda_index: int) -> nvml.DeviceId:
    """NVML's number of torch's CUDA device `cuda_index` (see nvml.matching_device)."""
    uuid = str(getattr(torch.cuda.get_device_properties(cuda_index), "uuid", "") or "")
    return nvml.matching_device(cuda_index, uuid, os.environ.get("CUDA_VISIBLE_DEVICES", ""), nvml.device_uuids())


def host_available_bytes() -> int:
    """MemAvailable: what the kernel can give a new workload without swapping."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
