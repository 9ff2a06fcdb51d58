"""NVML, opened lazily: what the driver says about a GPU's memory and identity.

`pynvml` (the official nvidia-ml-py bindings) is imported and NVML initialised only inside
`nvml_session()`, never at import, so that importing bsadvisor costs nothing and works on
machines without a driver. Every NVML failure leaves this module as `NvmlUnavailable`
(exit code 3) with a one-line message; no `NVMLError` reaches the user.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Iterator

from advisor.errors import DeviceUnavailable

_LIBRARY_NOT_FOUND = "NVML library not found: is the NVIDIA driver installed?"


class NvmlUnavailable(DeviceUnavailable):
    """NVML could not answer: no library, no driver, a lost GPU, or no such GPU (exit 3)."""


@dataclass(frozen=True)
class GpuMemory:
    """Device memory as the driver reports it, in bytes.

    `reserved_bytes` is what the driver keeps for itself (v2 memory info only; 0 from v1,
    where it is hidden inside `used_bytes`). `api` says which call answered: "v2" or "v1".
    """

    total_bytes: int
    free_bytes: int
    used_bytes: int
    reserved_bytes: int
    api: str


@dataclass(frozen=True)
class GpuInfo:
    """One GPU: identity, driver, memory, and what other processes hold on it.

    `other_processes_bytes` is None where the driver will not say (no permission, WDDM,
    unsupported); inside a container, NVML reports host pids, so this process may be counted.
    """

    index: int
    name: str
    uuid: str
    driver_version: str
    cuda_version: str
    compute_capability: tuple[int, int]
    memory: GpuMemory
    other_processes_bytes: int | None


def _load_pynvml() -> ModuleType:
    """Import the bindings here, not at module import: tests replace this function."""
    import pynvml

    return pynvml


def _error_classes(nv: Any, *names: str) -> tuple[type[BaseException], ...]:
    """The named NVMLError subclasses these bindings have (older bindings lack some)."""
    found = (getattr(nv, name, None) for name in names)
    return tuple(c for c in found if isinstance(c, type) and issubclass(c, BaseException))


def _text(value: Any) -> str:
    """Old bindings return bytes for names and versions; new ones return str."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _translate(nv: Any, exc: BaseException, index: int | None) -> NvmlUnavailable:
    """The one-line NvmlUnavailable that stands for an NVMLError."""
    if isinstance(exc, _error_classes(nv, "NVMLError_LibraryNotFound")):
        return NvmlUnavailable(_LIBRARY_NOT_FOUND)
    if isinstance(exc, _error_classes(nv, "NVMLError_DriverNotLoaded")):
        return NvmlUnavailable("NVIDIA driver not loaded")
    if isinstance(exc, _error_classes(nv, "NVMLError_GpuIsLost")):
        which = f"GPU {index}" if index is not None else "a GPU"
        return NvmlUnavailable(f"{which} is lost (fell off the bus)")
    return NvmlUnavailable(f"NVML error: {exc}")


@contextmanager
def _translating(nv: Any, index: int | None) -> Iterator[None]:
    """Turn any NVMLError raised inside into NvmlUnavailable (chained, for --debug)."""
    try:
        yield
    except nv.NVMLError as exc:
        raise _translate(nv, exc, index) from exc


@contextmanager
def nvml_session() -> Iterator[Any]:
    """Initialise NVML, yield the pynvml module, and always shut NVML down again.

    Sessions nest (NVML counts its initialisations). Errors of the shutdown itself are
    ignored: there is nothing left to do about them, and they must not hide the real one.
    """
    try:
        nv = _load_pynvml()
    except ImportError as exc:
        raise NvmlUnavailable(_LIBRARY_NOT_FOUND) from exc
    with _translating(nv, None):
        nv.nvmlInit()
    try:
        with _translating(nv, None):
            yield nv
    finally:
        try:
            nv.nvmlShutdown()
        except nv.NVMLError:
            pass


def device_count() -> int:
    """How many GPUs NVML sees (raises NvmlUnavailable where there is no NVML)."""
    with nvml_session() as nv:
        return int(nv.nvmlDeviceGetCount())


def gpu_uuids() -> list[str]:
    """Every GPU's UUID ("GPU-..."), in NVML's order: to match torch's numbering with NVML's."""
    with nvml_session() as nv:
        return [_text(nv.nvmlDeviceGetUUID(nv.nvmlDeviceGetHandleByIndex(i))) for i in range(int(nv.nvmlDeviceGetCount()))]


def memory_info(handle: Any) -> GpuMemory:
    """Memory of one device handle (inside a session), v2 where the driver has it.

    v2 separates the driver's reserved memory from `used`; v1 counts it as used, so `free`
    is the same in both. Old drivers lack the v2 function (FunctionNotFound / NotSupported),
    old bindings lack `nvmlMemory_v2` or the `version` argument (AttributeError / TypeError).
    """
    nv = _load_pynvml()
    fallback = (TypeError, AttributeError) + _error_classes(
        nv, "NVMLError_FunctionNotFound", "NVMLError_NotSupported", "NVMLError_ArgumentVersionMismatch"
    )
    try:
        m = nv.nvmlDeviceGetMemoryInfo(handle, version=nv.nvmlMemory_v2)
    except fallback:
        m = nv.nvmlDeviceGetMemoryInfo(handle)
        return GpuMemory(int(m.total), int(m.free), int(m.used), 0, "v1")
    return GpuMemory(int(m.total), int(m.free), int(m.used), int(m.reserved), "v2")


def _cuda_version(nv: Any) -> str:
    """The driver's CUDA version as "major.minor" (12040 -> "12.4")."""
    missing = (AttributeError,) + _error_classes(nv, "NVMLError_FunctionNotFound")
    try:
        version = int(nv.nvmlSystemGetCudaDriverVersion_v2())
    except missing:
        version = int(nv.nvmlSystemGetCudaDriverVersion())
    return f"{version // 1000}.{version % 1000 // 10}"


def _other_processes_bytes(nv: Any, handle: Any) -> int | None:
    """Bytes that other compute processes hold on the device; None where the driver won't say.

    The unversioned call raises NVMLLibraryMismatchError (not an NVMLError) when the driver
    lacks the newest struct version, hence the older `_v2` call next.
    """
    refused = (AttributeError,) + _error_classes(
        nv,
        "NVMLLibraryMismatchError",
        "NVMLError_FunctionNotFound",
        "NVMLError_NotSupported",
        "NVMLError_NoPermission",
    )
    for name in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetComputeRunningProcesses_v2"):
        try:
            processes = getattr(nv, name)(handle)
        except refused:
            continue
        used = [p.usedGpuMemory for p in processes if p.pid != os.getpid()]
        if any(u is None for u in used):
            return None
        return sum(int(u) for u in used)
    return None


def gpu_info(index: int) -> GpuInfo:
    """Everything bsadvisor needs to know about GPU `index` (NVML's numbering)."""
    with nvml_session() as nv, _translating(nv, index):
        count = int(nv.nvmlDeviceGetCount())
        if not 0 <= index < count:
            raise NvmlUnavailable(f"no GPU {index}: this machine has {count}")
        try:
            handle = nv.nvmlDeviceGetHandleByIndex(index)
        except _error_classes(nv, "NVMLError_InvalidArgument", "NVMLError_NotFound") as exc:
            raise NvmlUnavailable(f"no GPU {index}: this machine has {count}") from exc
        major, minor = nv.nvmlDeviceGetCudaComputeCapability(handle)
        return GpuInfo(
            index=index,
            name=_text(nv.nvmlDeviceGetName(handle)),
            uuid=_text(nv.nvmlDeviceGetUUID(handle)),
            driver_version=_text(nv.nvmlSystemGetDriverVersion()),
            cuda_version=_cuda_version(nv),
            compute_capability=(int(major), int(minor)),
            memory=memory_info(handle),
            other_processes_bytes=_other_processes_bytes(nv, handle),
        )
