"""NVML behind a fake pynvml: memory v2/v1, error translation, lazy init, shutdown.

The fake borrows the real bindings' exception classes and `nvmlMemory_v2`, so a renamed or
missing class in nvidia-ml-py fails here rather than on a user's GPU machine.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import textwrap
import types
from dataclasses import dataclass, field

import pynvml as real
import pytest

from advisor.errors import EXIT_DEVICE_UNAVAILABLE, DeviceUnavailable
from advisor.hardware import nvml
from advisor.hardware.nvml import GpuInfo, GpuMemory, NvmlUnavailable

GiB = 1 << 30
MiB = 1 << 20


@dataclass
class FakeGpu:
    name: str | bytes = "NVIDIA H100 80GB HBM3"
    uuid: str | bytes = "GPU-0c4a2d6e-1111-2222-3333-444455556666"
    capability: tuple[int, int] = (9, 0)
    total: int = 80 * GiB
    reserved: int = 512 * MiB
    used: int = 3 * GiB  # v2 meaning: without the driver's reserved memory
    processes: list[tuple[int, int | None]] = field(default_factory=list)
    mig: list["FakeGpu | None"] | None = None  # MIG mode: its devices by slot (None: an empty slot)

    @property
    def free(self) -> int:
        return self.total - self.reserved - self.used


class FakeNvml:
    """The slice of pynvml that advisor.hardware.nvml uses, recording every call."""

    NVMLError = real.NVMLError
    NVMLLibraryMismatchError = real.NVMLLibraryMismatchError
    nvmlMemory_v2 = real.nvmlMemory_v2

    def __init__(self, gpus=None, *, driver="550.54.15", cuda=12040, v2_driver=True):
        self.gpus = [FakeGpu()] if gpus is None else gpus
        self.driver = driver
        self.cuda = cuda
        self.v2_driver = v2_driver
        self.fail: dict[str, BaseException] = {}
        self.calls: list[str] = []

    def __getattr__(self, name):
        # Every NVMLError_* class of the real bindings, by its real name.
        if name.startswith("NVMLError_"):
            return getattr(real, name)
        raise AttributeError(name)

    def _call(self, name):
        self.calls.append(name)
        if name in self.fail:
            raise self.fail[name]

    def nvmlInit(self):
        self._call("nvmlInit")

    def nvmlShutdown(self):
        self._call("nvmlShutdown")

    def nvmlDeviceGetCount(self):
        self._call("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index):
        self._call("nvmlDeviceGetHandleByIndex")
        if not 0 <= index < len(self.gpus):
            raise real.NVMLError_InvalidArgument()
        return ("handle", index)

    def _gpu(self, handle) -> FakeGpu:
        """A handle is ("handle", i) for GPU i, ("mig", i, j) for MIG device j of GPU i."""
        return self.gpus[handle[1]] if handle[0] == "handle" else self.gpus[handle[1]].mig[handle[2]]

    def nvmlDeviceGetMigMode(self, handle):
        self._call("nvmlDeviceGetMigMode")
        if self._gpu(handle).mig is None:
            raise real.NVMLError_NotSupported()
        return [1, 1]

    def nvmlDeviceGetMaxMigDeviceCount(self, handle):
        self._call("nvmlDeviceGetMaxMigDeviceCount")
        return len(self._gpu(handle).mig)

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle, index):
        self._call("nvmlDeviceGetMigDeviceHandleByIndex")
        if self._gpu(handle).mig[index] is None:
            raise real.NVMLError_NotFound()
        return ("mig", handle[1], index)

    def nvmlDeviceGetName(self, handle):
        self._call("nvmlDeviceGetName")
        return self._gpu(handle).name

    def nvmlDeviceGetUUID(self, handle):
        self._call("nvmlDeviceGetUUID")
        return self._gpu(handle).uuid

    def nvmlDeviceGetCudaComputeCapability(self, handle):
        self._call("nvmlDeviceGetCudaComputeCapability")
        return self._gpu(handle).capability

    def nvmlSystemGetDriverVersion(self):
        self._call("nvmlSystemGetDriverVersion")
        return self.driver

    def nvmlSystemGetCudaDriverVersion(self):
        self._call("nvmlSystemGetCudaDriverVersion")
        return self.cuda

    def nvmlSystemGetCudaDriverVersion_v2(self):
        self._call("nvmlSystemGetCudaDriverVersion_v2")
        return self.cuda

    def nvmlDeviceGetMemoryInfo(self, handle, version=None):
        gpu = self._gpu(handle)
        if version is None:
            self._call("nvmlDeviceGetMemoryInfo")
            # v1 counts the driver's reservation as used.
            return types.SimpleNamespace(total=gpu.total, free=gpu.free, used=gpu.used + gpu.reserved)
        self._call("nvmlDeviceGetMemoryInfo_v2")
        if not self.v2_driver:
            raise real.NVMLError_FunctionNotFound()
        assert version == real.nvmlMemory_v2
        return types.SimpleNamespace(
            version=version, total=gpu.total, reserved=gpu.reserved, free=gpu.free, used=gpu.used
        )

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        self._call("nvmlDeviceGetComputeRunningProcesses")
        return [types.SimpleNamespace(pid=p, usedGpuMemory=u) for p, u in self._gpu(handle).processes]

    def nvmlDeviceGetComputeRunningProcesses_v2(self, handle):
        self._call("nvmlDeviceGetComputeRunningProcesses_v2")
        return [types.SimpleNamespace(pid=p, usedGpuMemory=u) for p, u in self._gpu(handle).processes]


def module_without(fake: FakeNvml, *dropped: str, **replaced) -> types.SimpleNamespace:
    """Older bindings: the fake's functions as a module lacking some names."""
    names = {n for n in dir(real) if n.startswith("NVMLError")} | {
        n for n in dir(FakeNvml) if n.startswith("nvml") or n.startswith("NVML")
    }
    attrs = {n: getattr(fake, n) for n in names if n not in dropped}
    attrs.update(replaced)
    return types.SimpleNamespace(**attrs)


@pytest.fixture
def fake(monkeypatch):
    nv = FakeNvml()
    monkeypatch.setattr(nvml, "_load_pynvml", lambda: nv)
    return nv


def test_gpu_info_reads_v2_memory_with_the_drivers_reservation(fake):
    fake.gpus[0].processes = [(os.getpid(), 2 * GiB)]  # our own process is not "other"
    info = nvml.gpu_info(0)
    assert info == GpuInfo(
        index=0,
        name="NVIDIA H100 80GB HBM3",
        uuid="GPU-0c4a2d6e-1111-2222-3333-444455556666",
        driver_version="550.54.15",
        cuda_version="12.4",
        compute_capability=(9, 0),
        memory=GpuMemory(
            total_bytes=80 * GiB,
            free_bytes=80 * GiB - 512 * MiB - 3 * GiB,
            used_bytes=3 * GiB,
            reserved_bytes=512 * MiB,
            api="v2",
        ),
        other_processes_bytes=0,
    )
    assert "nvmlDeviceGetMemoryInfo" not in fake.calls  # v1 never needed
    assert fake.calls[0] == "nvmlInit" and fake.calls[-1] == "nvmlShutdown"
    assert fake.calls.count("nvmlInit") == fake.calls.count("nvmlShutdown") == 1


def test_v1_only_driver_falls_back_and_reports_reserved_as_used(fake):
    fake.v2_driver = False
    memory = nvml.gpu_info(0).memory
    assert memory == GpuMemory(80 * GiB, 80 * GiB - 512 * MiB - 3 * GiB, 3 * GiB + 512 * MiB, 0, "v1")
    assert fake.calls.index("nvmlDeviceGetMemoryInfo_v2") < fake.calls.index("nvmlDeviceGetMemoryInfo")


def test_old_bindings_without_v2_names_and_with_bytes(monkeypatch):
    fake = FakeNvml([FakeGpu(name=b"Tesla V100-SXM2-16GB", uuid=b"GPU-abc", capability=(7, 0))], cuda=11080)
    fake.driver = b"470.199.02"
    old = module_without(fake, "nvmlMemory_v2", "nvmlSystemGetCudaDriverVersion_v2")
    monkeypatch.setattr(nvml, "_load_pynvml", lambda: old)
    info = nvml.gpu_info(0)
    assert (info.name, info.uuid, info.driver_version) == ("Tesla V100-SXM2-16GB", "GPU-abc", "470.199.02")
    assert info.cuda_version == "11.8"
    assert info.compute_capability == (7, 0)
    assert info.memory.api == "v1" and info.memory.reserved_bytes == 0
    assert fake.calls.count("nvmlSystemGetCudaDriverVersion") == 1


def test_bindings_whose_memory_call_takes_no_version_fall_back(monkeypatch):
    fake = FakeNvml()

    def v1_only(handle):  # the signature of nvidia-ml-py 11.x
        return fake.nvmlDeviceGetMemoryInfo(handle)

    old = module_without(fake, nvmlDeviceGetMemoryInfo=v1_only)
    monkeypatch.setattr(nvml, "_load_pynvml", lambda: old)
    assert nvml.gpu_info(0).memory.api == "v1"


@pytest.mark.parametrize(
    ("raw", "text"), [(12040, "12.4"), (11080, "11.8"), (12090, "12.9"), (13000, "13.0"), (10020, "10.2")]
)
def test_cuda_version_is_major_dot_minor(fake, raw, text):
    fake.cuda = raw
    assert nvml.gpu_info(0).cuda_version == text


def test_library_not_found(fake):
    fake.fail["nvmlInit"] = real.NVMLError_LibraryNotFound()
    with pytest.raises(NvmlUnavailable) as caught:
        nvml.device_uuids()
    assert str(caught.value) == "NVML library not found: is the NVIDIA driver installed?"
    assert isinstance(caught.value, DeviceUnavailable)
    assert caught.value.exit_code == EXIT_DEVICE_UNAVAILABLE == 3
    assert "nvmlShutdown" not in fake.calls  # init failed: nothing to shut down


def test_bindings_not_installed_is_library_not_found(monkeypatch):
    def missing():
        raise ModuleNotFoundError("No module named 'pynvml'")

    monkeypatch.setattr(nvml, "_load_pynvml", missing)
    with pytest.raises(NvmlUnavailable, match=r"^NVML library not found: is the NVIDIA driver installed\?$"):
        nvml.gpu_info(0)


def test_driver_not_loaded(fake):
    fake.fail["nvmlInit"] = real.NVMLError_DriverNotLoaded()
    with pytest.raises(NvmlUnavailable) as caught:
        nvml.gpu_info(0)
    assert str(caught.value) == "NVIDIA driver not loaded"


def test_gpu_lost_names_the_gpu_and_still_shuts_down(fake):
    fake.gpus = [FakeGpu(), FakeGpu()]
    fake.fail["nvmlDeviceGetMemoryInfo_v2"] = real.NVMLError_GpuIsLost()
    with pytest.raises(NvmlUnavailable) as caught:
        nvml.gpu_info(1)
    assert str(caught.value) == "GPU 1 is lost (fell off the bus)"
    assert isinstance(caught.value.__cause__, real.NVMLError_GpuIsLost)
    assert fake.calls[-1] == "nvmlShutdown"


@pytest.mark.parametrize("index", [2, 7, -1])
def test_bad_index(fake, index):
    fake.gpus = [FakeGpu(), FakeGpu()]
    with pytest.raises(NvmlUnavailable) as caught:
        nvml.gpu_info(index)
    assert str(caught.value) == f"no GPU {index}: this machine has 2 GPUs"
    assert "nvmlDeviceGetHandleByIndex" not in fake.calls  # checked before NVML sees it (-1 is a C uint)
    assert fake.calls[-1] == "nvmlShutdown"


def test_index_refused_by_the_driver_is_a_bad_index(fake):
    fake.fail["nvmlDeviceGetHandleByIndex"] = real.NVMLError_InvalidArgument()
    with pytest.raises(NvmlUnavailable, match=r"^no GPU 0: this machine has 1 GPU$"):
        nvml.gpu_info(0)


def test_any_other_nvml_error(fake):
    fake.fail["nvmlDeviceGetName"] = real.NVMLError_Unknown()
    with pytest.raises(NvmlUnavailable) as caught:
        nvml.gpu_info(0)
    assert str(caught.value) == "NVML error: Unknown Error"
    assert fake.calls[-1] == "nvmlShutdown"


def test_busy_card_counts_other_processes_only(fake):
    me = os.getpid()
    fake.gpus[0].processes = [(me, 5 * GiB), (me + 1, 3 * GiB), (me + 2, 512 * MiB)]
    assert nvml.gpu_info(0).other_processes_bytes == 3 * GiB + 512 * MiB


def test_other_processes_unknown_when_a_process_hides_its_usage(fake):
    fake.gpus[0].processes = [(os.getpid() + 1, GiB), (os.getpid() + 2, None)]  # WDDM: not available
    assert nvml.gpu_info(0).other_processes_bytes is None


@pytest.mark.parametrize("error", [real.NVMLError_NoPermission(), real.NVMLError_NotSupported()])
def test_other_processes_unknown_when_the_driver_refuses(fake, error):
    fake.fail["nvmlDeviceGetComputeRunningProcesses"] = error
    fake.fail["nvmlDeviceGetComputeRunningProcesses_v2"] = error
    info = nvml.gpu_info(0)
    assert info.other_processes_bytes is None
    assert info.memory.api == "v2"  # the rest still answered


def test_other_processes_fall_back_to_v2_on_a_library_mismatch(fake):
    fake.gpus[0].processes = [(os.getpid() + 1, 7 * MiB)]
    fake.fail["nvmlDeviceGetComputeRunningProcesses"] = real.NVMLLibraryMismatchError("v3 missing")
    assert nvml.gpu_info(0).other_processes_bytes == 7 * MiB
    assert "nvmlDeviceGetComputeRunningProcesses_v2" in fake.calls


def test_device_uuids_open_and_close_one_session(fake):
    fake.gpus = [FakeGpu(uuid="GPU-a"), FakeGpu(uuid="GPU-b"), FakeGpu(uuid="GPU-c")]
    assert nvml.device_uuids() == {0: "GPU-a", 1: "GPU-b", 2: "GPU-c"}
    assert fake.calls.count("nvmlInit") == fake.calls.count("nvmlShutdown") == 1
    assert fake.calls[0] == "nvmlInit" and fake.calls[-1] == "nvmlShutdown"


# ----------------------------------------------------------------------------- MIG

def mig_slice(j: int, total: int) -> FakeGpu:
    return FakeGpu(name="NVIDIA H100 80GB HBM3 MIG 1g.10gb", uuid=f"MIG-{j}0000000-aaaa-bbbb-cccc-dddddddddddd",
                   capability=(0, 0), total=total, reserved=0, used=total // 4)


@pytest.fixture
def mig(fake):
    """GPU 0 split into MIG devices in slots 0 and 2 (slot 1 empty); GPU 1 whole."""
    fake.gpus = [FakeGpu(mig=[mig_slice(0, 10 * GiB), None, mig_slice(2, 20 * GiB)]),
                 FakeGpu(uuid="GPU-8f3cdead-beef-2222-3333-777788889999")]
    return fake


def test_device_uuids_list_mig_devices_after_their_gpu(mig):
    assert nvml.device_uuids() == {
        0: "GPU-0c4a2d6e-1111-2222-3333-444455556666",
        (0, 0): "MIG-00000000-aaaa-bbbb-cccc-dddddddddddd",
        (0, 2): "MIG-20000000-aaaa-bbbb-cccc-dddddddddddd",
        1: "GPU-8f3cdead-beef-2222-3333-777788889999",
    }


def test_a_mig_devices_memory_is_its_own_and_its_capability_its_gpus(mig):
    info = nvml.gpu_info((0, 2))
    assert info.index == (0, 2) and info.name.endswith("MIG 1g.10gb") and info.uuid.startswith("MIG-2")
    assert info.memory.total_bytes == 20 * GiB and info.memory.free_bytes == 15 * GiB
    assert info.compute_capability == (9, 0)


@pytest.mark.parametrize(("device", "message"), [((0, 1), "no MIG device 1 of GPU 0: this machine has 2 GPUs"),
                                                 ((1, 0), "no MIG device 0 of GPU 1: this machine has 2 GPUs"),
                                                 ((4, 0), "no MIG device 0 of GPU 4: this machine has 2 GPUs")])
def test_a_missing_mig_device_is_named(mig, device, message):
    with pytest.raises(NvmlUnavailable) as caught:
        nvml.gpu_info(device)
    assert str(caught.value) == message


def test_a_lost_mig_device_is_named(mig):
    mig.fail["nvmlDeviceGetMemoryInfo_v2"] = real.NVMLError_GpuIsLost()
    with pytest.raises(NvmlUnavailable, match=r"^MIG device 0 of GPU 0 is lost \(fell off the bus\)$"):
        nvml.gpu_info((0, 0))


def test_bindings_without_mig_calls_see_whole_gpus(mig, monkeypatch):
    old = module_without(mig, "nvmlDeviceGetMigMode", "nvmlDeviceGetMaxMigDeviceCount",
                         "nvmlDeviceGetMigDeviceHandleByIndex")
    monkeypatch.setattr(nvml, "_load_pynvml", lambda: old)
    assert list(nvml.device_uuids()) == [0, 1]


UUID = "0c4a2d6e-1111-2222-3333-444455556666"
UUIDS = {0: "GPU-" + UUID, (0, 0): "MIG-00000000-aaaa-bbbb-cccc-dddddddddddd",
         (0, 2): "MIG-20000000-aaaa-bbbb-cccc-dddddddddddd", 1: "GPU-8f3cdead-beef-2222-3333-777788889999"}


@pytest.mark.parametrize(("cuda_index", "cuda_uuid", "visible", "expected"), [
    (0, UUID, "", 0),                                          # torch's bare UUID
    (0, "8f3cdead-beef-2222-3333-777788889999", "", 1),
    (0, "20000000-aaaa-bbbb-cccc-dddddddddddd", "", (0, 2)),   # a MIG device's own UUID
    (0, "", "MIG-20000000-aaaa-bbbb-cccc-dddddddddddd", (0, 2)),
    (0, "", "MIG-0000", (0, 0)),                               # a prefix, as CUDA accepts
    (0, "", "1,0", 1),                                         # a number is NVML's
    (1, "", "1,0", 0),
    (0, "", "GPU-8f3c", 1),
    (2, "", "", 2),                                            # nothing to go by: the same number
    (0, "ffffffff-0000-0000-0000-000000000000", "", 0),        # no such UUID: the same number
])
def test_matching_device(cuda_index, cuda_uuid, visible, expected):
    assert nvml.matching_device(cuda_index, cuda_uuid, visible, UUIDS) == expected


def test_session_shuts_down_when_the_body_raises(fake):
    with pytest.raises(ZeroDivisionError):
        with nvml.nvml_session() as nv:
            assert nv is fake
            1 / 0
    assert fake.calls == ["nvmlInit", "nvmlShutdown"]


def test_session_translates_nvml_errors_of_the_body_and_shuts_down(fake):
    with pytest.raises(NvmlUnavailable, match=r"^NVIDIA driver not loaded$"):
        with nvml.nvml_session():
            raise real.NVMLError_DriverNotLoaded()
    assert fake.calls == ["nvmlInit", "nvmlShutdown"]


def test_a_failing_shutdown_does_not_hide_the_real_error(fake):
    fake.fail["nvmlShutdown"] = real.NVMLError_Uninitialized()
    fake.fail["nvmlDeviceGetUUID"] = real.NVMLError_GpuIsLost()
    with pytest.raises(NvmlUnavailable, match=r"^GPU 0 is lost \(fell off the bus\)$"):
        nvml.gpu_info(0)
    assert fake.calls[-1] == "nvmlShutdown"


def test_memory_info_inside_a_session(fake):
    with nvml.nvml_session() as nv:
        memory = nvml.memory_info(nv.nvmlDeviceGetHandleByIndex(0))
    assert memory == GpuMemory(80 * GiB, 80 * GiB - 512 * MiB - 3 * GiB, 3 * GiB, 512 * MiB, "v2")


def test_import_neither_imports_pynvml_nor_initialises_nvml():
    code = textwrap.dedent(
        """
        import sys, types
        import advisor.hardware.nvml
        assert "pynvml" not in sys.modules, "pynvml imported at import"
        del sys.modules["advisor.hardware.nvml"]
        calls = []
        fake = types.ModuleType("pynvml")
        fake.nvmlInit = lambda: calls.append("nvmlInit")
        sys.modules["pynvml"] = fake
        import advisor.hardware.nvml
        assert calls == [], calls
        print("lazy")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "lazy"


def _nvml_library_present() -> bool:
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False
    return True


@pytest.mark.skipif(_nvml_library_present(), reason="this machine has an NVML library")
def test_real_bindings_without_a_driver_say_library_not_found():
    with pytest.raises(NvmlUnavailable) as caught:
        nvml.device_uuids()
    assert str(caught.value) == "NVML library not found: is the NVIDIA driver installed?"
