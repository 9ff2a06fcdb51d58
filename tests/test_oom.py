"""is_out_of_memory tells "too big" from real failures; each backend's release_memory frees the right things."""

from __future__ import annotations

import gc

import pytest
import torch

from advisor.devices.cpu import CpuBackend
from advisor.devices.cuda import CudaBackend
from advisor.devices.mps import MpsBackend
from advisor.failures import is_out_of_memory

CUDA_OOM = (
    "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.10 GiB "
    "of which 1.06 GiB is free. Of the allocated memory 76.52 GiB is allocated by PyTorch"
)


def test_cuda_out_of_memory_error_is_oom():
    assert is_out_of_memory(torch.cuda.OutOfMemoryError(CUDA_OOM))


def test_oom_type_counts_even_without_the_usual_words():
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("allocation failed"))


@pytest.mark.skipif(not hasattr(torch, "OutOfMemoryError"), reason="torch < 2.5 has only torch.cuda's name")
def test_torch_out_of_memory_error_and_subclasses_are_oom():
    class CustomOom(torch.OutOfMemoryError):
        pass

    assert is_out_of_memory(torch.OutOfMemoryError("MPS backend out of memory"))
    assert is_out_of_memory(CustomOom("x"))


@pytest.mark.parametrize(
    "message",
    [
        CUDA_OOM,
        "CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported",
        "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
        "cuDNN error: CUDNN_STATUS_ALLOC_FAILED",
        "[enforce fail at alloc_cpu.cpp:117] . DefaultCPUAllocator: can't allocate memory: "
        "you tried to allocate 4611686018427387904 bytes. Error code 12 (Cannot allocate memory)",
        "MPS backend out of memory (MPS allocated: 17.00 GB, other allocations: 1.00 GB)",
        "XPU out of memory. Tried to allocate 20.00 MiB",
    ],
)
def test_runtime_errors_that_mean_out_of_memory(message):
    assert is_out_of_memory(RuntimeError(message)) is True


@pytest.mark.parametrize(
    "message",
    [
        "CUDA error: an illegal memory access was encountered",
        "CUDA error: device-side assert triggered\nCompile with `TORCH_USE_CUDA_DSA`",
        "CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasSgemm(...)`",
        "mat1 and mat2 shapes cannot be multiplied (8x10 and 12x4)",
        "Expected all tensors to be on the same device",
        "",
    ],
)
def test_runtime_errors_that_are_real_failures(message):
    assert is_out_of_memory(RuntimeError(message)) is False


def test_accelerator_errors_other_than_oom_are_not_oom():
    accelerator_error = getattr(torch, "AcceleratorError", RuntimeError)
    assert is_out_of_memory(accelerator_error("CUDA error: an illegal memory access was encountered")) is False


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("out of memory"),  # the words alone are not enough outside RuntimeError
        KeyboardInterrupt(),
        TypeError("can't allocate memory"),
    ],
)
def test_other_exception_types_are_not_oom(exc):
    assert is_out_of_memory(exc) is False


def test_python_memory_error_is_oom():
    """Python's (or numpy's) MemoryError: batch() could not allocate that batch on the host, so the batch does
    not fit this machine (#14: a note, "does not fit", not bad input)."""
    assert is_out_of_memory(MemoryError("Unable to allocate 8.00 GiB for an array")) is True


def test_a_real_cpu_allocation_failure_is_oom():
    with pytest.raises(RuntimeError) as caught:
        torch.empty(1 << 62, dtype=torch.uint8)
    assert is_out_of_memory(caught.value) is True


@pytest.fixture
def recorded(monkeypatch):
    calls = []
    monkeypatch.setattr(gc, "collect", lambda *a: calls.append(("collect",)) or 0)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append(("empty_cache",)))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda d=None: calls.append(("reset_peak", d)))
    monkeypatch.setattr(torch.mps, "empty_cache", lambda: calls.append(("mps_empty_cache",)))
    return calls


def test_release_on_cuda_collects_empties_and_resets_the_peak(recorded):
    CudaBackend(torch.device("cuda", 1)).release_memory()
    assert recorded == [("collect",), ("empty_cache",), ("reset_peak", torch.device("cuda", 1))]


def test_release_on_mps_collects_and_empties_its_cache(recorded):
    MpsBackend().release_memory()
    assert recorded == [("collect",), ("mps_empty_cache",)]


def test_release_on_the_cpu_only_collects(recorded):
    CpuBackend().release_memory()
    assert recorded == [("collect",)]


def test_release_on_cpu_really_runs_without_cuda():
    # Unpatched: torch.cuda.reset_peak_memory_stats(cpu) raises ValueError, so a CUDA call would fail here.
    CpuBackend().release_memory()
