"""The device as a backend: which device, how to time a step on it, how much memory it offers.

The probes call this and nothing else device-specific, so the same code measures on CPU and CUDA.
"""

import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from advisor.errors import BadInput, DeviceUnavailable

_DEVICE = re.compile(r"^(auto|cpu|cuda)(?::(\d+))?$")


@dataclass(frozen=True)
class Budget:
    bytes: int
    source: str  # how it was obtained, shown next to the figure


class Backend:
    def __init__(self, device: torch.device, note: str | None = None):
        self.device = device
        self.note = note  # e.g. why `auto` chose the CPU

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def measured_on(self) -> str:
        return "measured on CUDA" if self.is_cuda else "measured on CPU"

    def synchronize(self) -> None:
        if self.is_cuda:
            torch.cuda.synchronize(self.device)

    def timed(self, fn) -> float:
        """Seconds `fn()` takes on the device: CUDA events after synchronising, or the wall clock."""
        if not self.is_cuda:
            start = time.perf_counter()
            fn()
            return time.perf_counter() - start
        self.synchronize()
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        end.synchronize()
        return begin.elapsed_time(end) / 1000.0

    def memory_budget(self, limit_bytes: int | None) -> Budget:
        """What the device offers a training process now, or the user's --memory when smaller."""
        if self.is_cuda:
            offered, source = torch.cuda.mem_get_info(self.device)[0], "CUDA free memory (cudaMemGetInfo)"
        else:
            offered, source = host_available_bytes(), "host available memory (/proc/meminfo MemAvailable)"
        if limit_bytes is not None and limit_bytes <= offered:
            return Budget(limit_bytes, "--memory")
        return Budget(offered, source)


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
    return Backend(torch.device("cuda", i))


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
