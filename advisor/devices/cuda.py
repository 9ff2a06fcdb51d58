"""A CUDA GPU as a device: NVML's free memory (so what other processes hold is respected), the caching
allocator's peak statistics, CUDA events for timing, NCCL for a data-parallel job.

NVML is opened lazily, per call. The GPU is matched to NVML by UUID (CUDA_VISIBLE_DEVICES renumbers
them); on a MIG slice, the slice's own memory is the budget.
"""

from __future__ import annotations

import contextlib
import gc
import os
from typing import Iterable, Iterator

import torch

from advisor.devices.base import Backend, Peak
from advisor.devices.cpu import CpuBackend
from advisor.errors import DeviceUnavailable
from advisor.hardware import nvml
from advisor.hardware.host import HOST_MEMORY_SOURCE, host_available_bytes
from advisor.units import Budget

KIND = "cuda"


class CudaBackend(Backend):
    confirms_with_real_steps = True  # the allocator rounds blocks and keeps workspaces the trace cannot see
    measures_context = True  # NVML's free memory before the first CUDA work less after it
    collective_backend = "nccl"

    def __init__(self, device: torch.device, note: str | None = None, nvml_index: nvml.DeviceId | None = None):
        super().__init__(device, note)
        self.nvml_index = (device.index or 0) if nvml_index is None else nvml_index  # NVML's number of this GPU

    @property
    def measured_on(self) -> str:
        return "measured on CUDA"

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)

    def timed(self, fn) -> float:
        """CUDA events around `fn()`, after synchronising."""
        self.synchronize()
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        end.synchronize()
        return begin.elapsed_time(end) / 1000.0

    def host_budget(self, limit_bytes: int | None) -> Budget:
        return Budget(host_available_bytes(), HOST_MEMORY_SOURCE)

    def free_memory(self) -> tuple[int, str]:
        """From NVML (cudaMemGetInfo without it), so that what other processes hold is respected."""
        try:
            memory = nvml.gpu_info(self.nvml_index).memory
        except nvml.NvmlUnavailable as exc:
            return torch.cuda.mem_get_info(self.device)[0], f"CUDA free memory (cudaMemGetInfo; NVML unavailable: {exc})"
        return memory.free_bytes, f"NVML free memory ({memory.api})"

    def reserved_now(self) -> int:
        """Bytes torch's caching allocator holds on the GPU now (0 before CUDA is initialised)."""
        return torch.cuda.memory_reserved(self.device) if torch.cuda.is_initialized() else 0

    @contextlib.contextmanager
    def measuring(self, resident: Iterable[torch.Tensor] = ()) -> Iterator[Peak]:
        """The cache is emptied and the allocator's peak statistics reset first, so max_memory_reserved is
        this work's own (the allocator knows the resident tensors)."""
        peak = Peak()
        self.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        yield peak
        self.synchronize()
        peak.reserved = torch.cuda.max_memory_reserved(self.device)
        peak.allocated = torch.cuda.max_memory_allocated(self.device)

    def release_memory(self) -> None:
        """Cycles collected, cached blocks handed back so that NVML and the next step see them free, and the
        peak reset so that the next measurement is that step's own."""
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)

    @contextlib.contextmanager
    def preserving_rng(self) -> Iterator[None]:
        with torch.random.fork_rng(devices=[self.device.index or 0]):
            yield

    def for_rank(self, local_rank: int) -> "CudaBackend":
        """The GPU of this rank's LOCAL_RANK after the one asked for."""
        if local_rank == 0:
            return self
        return open_device((self.device.index or 0) + local_rank, f"cuda:{(self.device.index or 0) + local_rank}")

    def process_group_options(self) -> dict:
        return {"device_id": self.device}

    def ddp_device_ids(self) -> list[int] | None:
        return [self.device.index]


def available() -> bool:
    return torch.cuda.is_available()


def open_device(index: int | None, asked: str, auto: bool = False) -> Backend:
    """GPU `index`, or a clear DeviceUnavailable (exit 3): no CUDA, no such GPU, NVML not answering for it.
    `auto`: where NVML does not answer, the CPU instead, with a note saying why."""
    if not torch.cuda.is_available():
        why = (f"this torch ({torch.__version__}) is built without CUDA" if torch.version.cuda is None
               else f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no usable GPU or driver")
        raise DeviceUnavailable(f"--device {asked}: CUDA is not available on this machine: {why}; use --device cpu")
    count = torch.cuda.device_count()
    i = int(index or 0)
    if i >= count:
        raise DeviceUnavailable(f"--device {asked}: no GPU {i}; this machine has {count}")
    try:
        found = nvml_index(i)
        nvml.gpu_info(found)  # the driver answers for this GPU: its free memory is the budget
    except nvml.NvmlUnavailable as exc:
        if auto:
            return CpuBackend(note=f"CUDA is visible but NVML is not ({exc}): measuring on the CPU")
        raise DeviceUnavailable(f"--device {asked}: {exc}") from exc
    return CudaBackend(torch.device("cuda", i), nvml_index=found)


def nvml_index(cuda_index: int) -> nvml.DeviceId:
    """NVML's number of torch's CUDA device `cuda_index` (see nvml.matching_device)."""
    uuid = str(getattr(torch.cuda.get_device_properties(cuda_index), "uuid", "") or "")
    return nvml.matching_device(cuda_index, uuid, os.environ.get("CUDA_VISIBLE_DEVICES", ""), nvml.device_uuids())


def rank_limit() -> tuple[int, str, str]:
    """One rank of a data-parallel job per GPU."""
    return torch.cuda.device_count(), "GPUs", "GPU"
