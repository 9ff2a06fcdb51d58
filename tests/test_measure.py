"""Measuring this machine into a profile (the CPU branch; the CUDA branch needs a GPU)."""

from __future__ import annotations

import time

import pytest
import torch

from advisor.hardware.measure import measure_host_profile
from advisor.hardware.profiles import NAME_PATTERN, ProfileError, load, save, usable_bytes, validate

NO_CUDA = not torch.cuda.is_available()


@pytest.fixture(scope="module")
def measured():
    start = time.perf_counter()
    profile = measure_host_profile(None)
    return profile, time.perf_counter() - start


def test_measurement_is_quick(measured):
    _, seconds = measured
    assert seconds < 5.0


def test_measured_profile_validates(measured):
    profile, _ = measured
    assert validate(profile, "measured") is profile
    assert profile["source"] == "measured"
    assert NAME_PATTERN.match(profile["name"])
    assert profile["host"] is None or isinstance(profile["host"], str)
    assert usable_bytes(profile) > 0


def test_measured_figures_are_positive(measured):
    profile, _ = measured
    assert profile["fp32_tflops"] > 0
    assert profile["matmul_fp32_tflops_measured"] == profile["fp32_tflops"]
    assert profile["copy_bandwidth_gb_per_s"] > 0
    assert profile["memory_bandwidth_gb_per_s"] == profile["copy_bandwidth_gb_per_s"]
    assert profile["total_memory_bytes"] > 0
    assert profile["context_overhead_bytes"] > 0
    assert profile["bf16_tflops"] is None or profile["bf16_tflops"] > 0


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA: the CPU branch is not taken")
def test_cpu_host_profile(measured):
    profile, _ = measured
    assert profile["device_type"] == "cpu"
    assert profile["reserved_memory_bytes"] == 0
    assert "cores" in profile["display_name"]
    assert "CPU host measured by bsadvisor" in profile["notes"]
    # the process baseline (Python + torch) is tens to hundreds of MiB, far below the total
    assert 10 * 1024**2 < profile["context_overhead_bytes"] < profile["total_memory_bytes"] // 2


def test_measured_profile_saves_and_loads_back(measured, tmp_path):
    profile, _ = measured
    path = save(profile, directory=tmp_path)
    assert path.name == f"{profile['name']}.json"
    assert load(str(path)) == profile


def test_bad_name_fails_before_measuring():
    start = time.perf_counter()
    with pytest.raises(ProfileError) as info:
        measure_host_profile("My Laptop")
    assert info.value.exit_code == 2
    assert "my-laptop" in str(info.value)
    assert time.perf_counter() - start < 0.5


@pytest.mark.skipif(not NO_CUDA, reason="CPU measurement only")
def test_given_name_is_used(monkeypatch):
    from advisor.hardware import measure

    monkeypatch.setattr(measure, "CPU_COPY_BYTES", 1024**2)
    monkeypatch.setattr(measure, "CPU_MATMUL_N", 64)
    profile = measure_host_profile("ci-runner")
    assert profile["name"] == "ci-runner"
    validate(profile, "measured")


# --------------------------------------------------------------------------- the CUDA branch, faked

MiB = 1024**2


class _FakeEvent:
    def __init__(self, enable_timing=False):
        self.at = None

    def record(self):
        self.at = time.perf_counter()

    def synchronize(self):
        pass

    def elapsed_time(self, other):
        return (other.at - self.at) * 1000.0


def _on_cpu(fn):
    def call(*args, **kwargs):
        kwargs.pop("device", None)
        return fn(*args, **kwargs)

    return call


@pytest.fixture
def fake_gpu(monkeypatch):
    """CUDA device 0 is NVML GPU 1 (as under CUDA_VISIBLE_DEVICES=1); tensors really live on the CPU."""
    import sys
    from types import SimpleNamespace

    from advisor.hardware import measure, nvml

    state = {"initialised": False, "allocated_reads": 0}

    def memory_allocated(index=0):  # 16 KiB for the first tensor; then the cuBLAS workspace stays behind
        state["allocated_reads"] += 1
        return 16 * 1024 + (32 * MiB if state["allocated_reads"] > 1 else 0)

    def init():
        state["initialised"] = True

    cuda = SimpleNamespace(
        is_available=lambda: True, is_initialized=lambda: state["initialised"], init=init,
        set_device=lambda index: None, synchronize=lambda: None, empty_cache=lambda: None,
        memory_reserved=lambda index=0: 2 * MiB, memory_allocated=memory_allocated, is_bf16_supported=lambda: True, Event=_FakeEvent,
        get_device_properties=lambda index: SimpleNamespace(uuid="abcd-1234"),
    )
    fake_torch = SimpleNamespace(
        __version__="fake", cuda=cuda,
        backends=SimpleNamespace(cuda=SimpleNamespace(matmul=SimpleNamespace(allow_tf32=False))),
        ones=_on_cpu(torch.ones), randn=_on_cpu(torch.randn), empty=_on_cpu(torch.empty),
        zeros_like=torch.zeros_like, mm=torch.mm,
        float32=torch.float32, bfloat16=torch.bfloat16, uint8=torch.uint8,
    )

    def gpu_info(index):
        used = 1 * MiB + (600 * MiB if state["initialised"] and index == 1 else 0)
        total = 81559 * MiB
        return nvml.GpuInfo(
            index=index, name="NVIDIA H100 80GB HBM3", uuid=["GPU-other", "GPU-abcd-1234"][index],
            driver_version="550.90.07", cuda_version="12.4", compute_capability=(9, 0),
            memory=nvml.GpuMemory(total, total - used - 551 * MiB, used, 551 * MiB, "v2"),
            other_processes_bytes=0,
        )

    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    monkeypatch.setattr(nvml, "device_uuids", lambda: {0: "GPU-other", 1: "GPU-abcd-1234"})
    monkeypatch.setattr(nvml, "gpu_info", gpu_info)
    monkeypatch.setattr(measure, "CUDA_MATMUL_N", 128)
    monkeypatch.setattr(measure, "CUDA_COPY_BYTES", 4 * MiB)
    return state


def test_cuda_branch_with_a_fake_gpu(fake_gpu):
    profile = measure_host_profile(None)
    assert profile["device_type"] == "cuda" and profile["source"] == "measured"
    assert profile["name"] == "nvidia-h100-80gb-hbm3"
    assert profile["total_memory_bytes"] == 81559 * MiB
    assert profile["reserved_memory_bytes"] == 551 * MiB
    assert profile["context_overhead_bytes"] == 600 * MiB - 2 * MiB  # NVML delta less the allocator's reserve
    assert profile["compute_capability"] == "9.0"
    assert profile["cublas_workspace_bytes"] == 32 * MiB  # what the first matmul left allocated
    assert profile["driver_version"] == "550.90.07" and profile["cuda_version"] == "12.4"
    assert profile["fp32_tflops"] > 0 and profile["bf16_tflops"] > 0 and profile["copy_bandwidth_gb_per_s"] > 0
    assert "NVML GPU 1" in profile["notes"]


def test_cuda_already_initialised_is_refused(fake_gpu):
    from advisor.errors import ProbeFailed

    fake_gpu["initialised"] = True
    with pytest.raises(ProbeFailed, match="fresh"):
        measure_host_profile("x")
