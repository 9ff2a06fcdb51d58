"""Apple's GPU (Metal Performance Shaders) as a device.

Memory is unified with the host's, and Metal sets how much of it one process should use: the budget is
Metal's recommended working set (`torch.mps.recommended_max_memory`) less what the driver holds, plus what
torch's MPS allocator caches beyond live tensors (ours to reuse, as on CUDA). torch keeps no peak
statistics for MPS, so a step's peak is its exact tracked tensor bytes (the fake trace's own measure), and
no real steps confirm the traced boundary. There is one MPS device and no NCCL: a data-parallel job has
one rank.
"""

from __future__ import annotations

import contextlib
import gc
from typing import Iterator

import torch

from advisor.devices.base import Backend
from advisor.errors import DeviceUnavailable

KIND = "mps"
MPS_MEMORY_SOURCE = "Metal's recommended working set less what this process holds (torch.mps)"


class MpsBackend(Backend):
    def __init__(self, note: str | None = None):
        super().__init__(torch.device("mps"), note)

    @property
    def measured_on(self) -> str:
        return "measured on MPS"

    def synchronize(self) -> None:
        torch.mps.synchronize()

    def free_memory(self) -> tuple[int, str]:
        return max(0, torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory()), MPS_MEMORY_SOURCE

    def reserved_now(self) -> int:
        """What the driver holds for this process beyond live tensors (torch's cache): ours to reuse."""
        return max(0, torch.mps.driver_allocated_memory() - torch.mps.current_allocated_memory())

    def release_memory(self) -> None:
        gc.collect()
        torch.mps.empty_cache()

    @contextlib.contextmanager
    def preserving_rng(self) -> Iterator[None]:
        host, device = torch.get_rng_state(), torch.mps.get_rng_state()
        try:
            yield
        finally:
            torch.set_rng_state(host)
            torch.mps.set_rng_state(device)


def available() -> bool:
    return torch.backends.mps.is_available()


def open_device(index: int | None, asked: str, auto: bool = False) -> MpsBackend:
    if index:
        raise DeviceUnavailable(f"--device {asked}: there is one MPS device, mps (or mps:0)")
    if not torch.backends.mps.is_available():
        why = ("this torch is built without MPS" if not torch.backends.mps.is_built()
               else "this machine has no Metal GPU (or macOS is older than 12.3)")
        raise DeviceUnavailable(f"--device {asked}: MPS is not available: {why}; use --device cpu")
    return MpsBackend()


def rank_limit() -> tuple[int, str, str]:
    """One MPS device, and no NCCL: one rank."""
    return 1, "MPS devices", "MPS device"
