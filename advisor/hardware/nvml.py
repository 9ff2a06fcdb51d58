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


# NVML's number of a device: GPU i, or (i, j) for MIG device j of GPU i (a slice of the card, with
# memory of its own, that CUDA sees as one device).
DeviceId = int | tuple[int, int]


def describe(device: DeviceId | None) -> str:
    """"GPU 0" or "MIG device 1 of GPU 0", for messages and notes."""
    if device is None:
        return "a GPU"
    return f"MIG device {device[1]} of GPU {device[0]}" if isinstance(device, tuple) else f"GPU {device}"


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

    index: DeviceId
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


def _translate(nv: Any, exc: BaseException, index: DeviceId | None) -> NvmlUnavailable:
    """The one-line NvmlUnavailable that stands for an NVMLError."""
    if isinstance(exc, _error_classes(nv, "NVMLError_LibraryNotFound")):
        return NvmlUnavailable(_LIBRARY_NOT_FOUND)
    if isinstance(exc, _error_classes(nv, "NVMLError_DriverNotLoaded")):
        return NvmlUnavailable("NVIDIA driver not loaded")
    if isinstance(exc, _error_classes(nv, "NVMLError_GpuIsLost")):
        return NvmlUnavailable(f"{describe(index)} is lost (fell off the bus)")
    return NvmlUnavailable(f"NVML error: {exc}")


@contextmanager
def _translating(nv: Any, index: DeviceId | None) -> Iterator[None]:
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


def device_uuids() -> dict[DeviceId, str]:
    """Every GPU's UUID ("GPU-...") and, on GPUs in MIG mode, every MIG device's ("MIG-..."), by
    NVML's numbering: to match torch's numbering with NVML's."""
    with nvml_session() as nv:
        found: dict[DeviceId, str] = {}
        for i in range(int(nv.nvmlDeviceGetCount())):
            handle = nv.nvmlDeviceGetHandleByIndex(i)
            found[i] = _text(nv.nvmlDeviceGetUUID(handle))
            for j, mig in _mig_devices(nv, handle):
                found[(i, j)] = _text(nv.nvmlDeviceGetUUID(mig))
        return found


def matching_device(cuda_index: int, cuda_uuid: str, visible_devices: str, uuids: dict[DeviceId, str]) -> DeviceId:
    """NVML's number of CUDA device `cuda_index`, whose UUID CUDA gives as `cuda_uuid` ("" where torch
    does not say). The numberings differ under CUDA_VISIBLE_DEVICES (`visible_devices`) and
    CUDA_DEVICE_ORDER, so the device is matched by UUID among `uuids` (device_uuids()); a number in
    CUDA_VISIBLE_DEVICES is NVML's; otherwise the numbers are taken as equal. A MIG device matches its
    MIG UUID, so its budget is its slice's memory, not the whole card's."""
    visible = [v.strip() for v in visible_devices.split(",") if v.strip()]
    if not cuda_uuid and cuda_index < len(visible):
        if visible[cuda_index].isdigit():
            return int(visible[cuda_index])
        cuda_uuid = visible[cuda_index]
    if cuda_uuid:
        bare = _bare_uuid(cuda_uuid)
        for found, uuid in uuids.items():
            if _bare_uuid(uuid) == bare or (len(bare) < 36 and _bare_uuid(uuid).startswith(bare)):
                return found
    return cuda_index


def _bare_uuid(uuid: str) -> str:
    """NVML writes "GPU-8f3c..." and "MIG-...", torch the bare UUID; CUDA_VISIBLE_DEVICES takes a prefix of either."""
    uuid = uuid.strip().lower()
    return uuid[4:] if uuid.startswith(("gpu-", "mig-")) else uuid


def _mig_devices(nv: Any, handle: Any) -> Iterator[tuple[int, Any]]:
    """(j, handle) of each MIG device on a GPU in MIG mode; nothing for other GPUs, drivers and bindings."""
    unsupported = (AttributeError,) + _error_classes(nv, "NVMLError_NotSupported", "NVMLError_FunctionNotFound")
    try:
        if nv.nvmlDeviceGetMigMode(handle)[0] != 1:  # [current, pending]; 1: NVML_DEVICE_MIG_ENABLE
            return
        slots = int(nv.nvmlDeviceGetMaxMigDeviceCount(handle))
    except unsupported:
        return
    for j in range(slots):
        try:
            yield j, nv.nvmlDeviceGetMigDeviceHandleByIndex(handle, j)
        except _error_classes(nv, "NVMLError_NotFound", "NVMLError_InvalidArgument"):
            continue  # an empty slot


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


def gpu_info(index: DeviceId) -> GpuInfo:
    """Everything bsadvisor needs to know about a GPU or MIG device (NVML's numbering). A MIG device's
    memory and processes are its own; its compute capability is its GPU's."""
    gpu, mig = index if isinstance(index, tuple) else (index, None)
    with nvml_session() as nv, _translating(nv, index):
        count = int(nv.nvmlDeviceGetCount())
        missing = NvmlUnavailable(f"no {describe(index)}: this machine has {count} GPU{'s' * (count != 1)}")
        if not 0 <= gpu < count:
            raise missing
        try:
            parent = nv.nvmlDeviceGetHandleByIndex(gpu)
            handle = parent if mig is None else dict(_mig_devices(nv, parent))[mig]
        except (KeyError,) + _error_classes(nv, "NVMLError_InvalidArgument", "NVMLError_NotFound") as exc:
            raise missing from exc
        major, minor = nv.nvmlDeviceGetCudaComputeCapability(parent)
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
