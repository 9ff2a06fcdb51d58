"""What a GPU holds for a training step beyond the tensors a trace sees: labelled terms, each with its source.

Pure arithmetic on a hardware profile and a traced step; nothing here touches a device.

- allocator rounding: CUDA's caching allocator hands out blocks in multiples of 512 bytes
  (c10/cuda/CUDACachingAllocator.cpp, kMinBlockSize); the tracker keeps the step's peak with every
  allocation rounded so (exact for `max_memory_allocated`; the blocks the allocator caches on top, which
  `max_memory_reserved` also counts, are not modelled);
- cuBLAS workspace: one per stream, from the caching allocator: torch's default CUBLAS_WORKSPACE_CONFIG is
  `:4096:2:16:8` (8320 KiB), 32 MiB on compute capability 9.x (aten/src/ATen/cuda/CublasHandlePool.cpp,
  pytorch#89027); cuBLASLt shares it (pytorch#145130, on by default since pytorch#168175). A measured
  profile's `cublas_workspace_bytes` replaces the default;
- CUDA context: the profile's `context_overhead_bytes` (measured by `profile save`, else the datasheet
  profile's estimate), taken off the budget as before, and listed with the others;
- NCCL buffers (sharded training): the profile's `nccl_buffer_bytes` when measured or set, else an
  estimate: NCCL_BUFFSIZE (4 MiB, NCCL's documented default) for each of the two ring neighbours, both
  directions, on `nccl_channels` channels (the profile's, else 16).
"""

from __future__ import annotations

from dataclasses import dataclass

from advisor.hardware.profiles import compute_capability

MiB = 2**20
DEFAULT_WORKSPACE = (4096 * 2 + 16 * 8) * 1024  # ":4096:2:16:8": two 4096 KiB chunks and eight 16 KiB ones
HOPPER_WORKSPACE = 32 * MiB
NCCL_BUFFSIZE = 4 * MiB
DEFAULT_NCCL_CHANNELS = 16


@dataclass(frozen=True)
class Term:
    name: str
    bytes: int
    source: str

    def to_json(self) -> dict:
        return {"name": self.name, "bytes": self.bytes, "source": self.source}


def cublas_workspace(profile: dict) -> Term:
    measured = profile.get("cublas_workspace_bytes")
    if measured is not None:
        return Term("cublas_workspace", int(measured), f"profile {profile['name']} ({profile['source']})")
    capability = compute_capability(profile)
    if capability is not None and capability[0] == 9:
        return Term("cublas_workspace", HOPPER_WORKSPACE, "torch's default for compute capability 9.x (32 MiB; "
                    "cuBLASLt shares it), from the profile's compute capability")
    return Term("cublas_workspace", DEFAULT_WORKSPACE, "torch's default CUBLAS_WORKSPACE_CONFIG :4096:2:16:8 "
                f"(8320 KiB; cuBLASLt shares it){'' if capability else ', the profile states no compute capability'}")


def nccl_buffers(profile: dict, ranks: int) -> Term:
    measured = profile.get("nccl_buffer_bytes")
    if measured is not None:
        return Term("nccl_buffers", int(measured), f"profile {profile['name']} ({profile['source']})")
    channels = profile.get("nccl_channels") or DEFAULT_NCCL_CHANNELS
    return Term("nccl_buffers", 2 * 2 * channels * NCCL_BUFFSIZE,
                f"estimated for {ranks} ranks: NCCL_BUFFSIZE (4 MiB) x 2 ring neighbours x 2 directions x "
                f"{channels} channels ({'the profile' if profile.get('nccl_channels') else 'assumed'}); "
                "outside torch's allocator")


def device_terms(profile: dict, shard: int | None) -> list[Term]:
    """The fixed terms a GPU adds to a step's traced peak (the CUDA context is the budget's; see budget_terms)."""
    if profile.get("device_type") != "cuda":
        return []
    terms = [cublas_workspace(profile)]
    if shard and shard > 1:
        terms.append(nccl_buffers(profile, shard))
    return terms


def budget_terms(profile: dict) -> list[Term]:
    """How the profile's memory becomes the usable budget: total less the driver's reserve and the context."""
    where = f"profile {profile['name']} ({profile['source']})"
    return [Term("total_memory", int(profile["total_memory_bytes"]), where),
            Term("driver_reserved", -int(profile["reserved_memory_bytes"]), where),
            Term("cuda_context", -int(profile["context_overhead_bytes"]), where)]
