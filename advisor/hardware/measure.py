"""Measure this machine's device into a hardware profile (`bsadvisor profile save`).

Every figure is measured here or read from the operating system or the driver; nothing is
looked up. On CUDA: NVML's name, memory (total, v2 reserved), driver and CUDA versions and
compute capability; the CUDA context overhead (NVML used memory before and after the first
CUDA work, less what the caching allocator holds); bf16 and fp32 matmul TFLOP/s and a
device-to-device copy bandwidth. Without CUDA: the CPU host, its memory, the Python + torch
process baseline, and the same matmul and copy figures on the CPU (about a second).

Bandwidths count bytes read plus bytes written (2 × size / time), like STREAM Copy, so they
compare with datasheet memory bandwidth.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from datetime import datetime, timezone
from typing import Any, Callable

from advisor.errors import ProbeFailed
from advisor.hardware.profiles import NAME_PATTERN, SCHEMA_VERSION, ProfileError, slugify, validate

CPU_MATMUL_N = 1024
CPU_COPY_BYTES = 256 * 1024**2
CUDA_MATMUL_N = 8192
CUDA_COPY_BYTES = 1024**3
REPEATS = 5


def measure_host_profile(name: str | None = None) -> dict:
    """A validated profile of this machine's device: CUDA device 0 if CUDA works, else the CPU.

    `name` defaults to the slug of the display name. Raises ProfileError for a bad name
    (before measuring anything) and ProbeFailed when a measurement cannot be trusted.
    """
    if name is not None and not NAME_PATTERN.match(name):
        raise ProfileError(
            f"profile name {name!r} must be a slug of lowercase letters, digits, '.', '_' or '-' "
            f"(at most 64), such as {slugify(name)!r}"
        )
    import torch

    profile = _measure_cuda(torch) if torch.cuda.is_available() else _measure_cpu(torch)
    profile["name"] = name or slugify(profile["display_name"])
    profile["measured_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    profile["host"] = platform.node() or None
    return validate(profile, "measured profile")


# --------------------------------------------------------------------------- timing

def _sig(value: float) -> float:
    """Four significant figures: what a timing can honestly claim."""
    return float(f"{value:.4g}")


def _wall_seconds(run: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    run()
    return time.perf_counter() - t0


def _cuda_seconds(torch: Any) -> Callable[[Callable[[], Any]], float]:
    """A timer of CUDA work with CUDA events, after a synchronize."""

    def timed(run: Callable[[], Any]) -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        run()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0

    return timed


def _median_seconds(run: Callable[[], Any], timer: Callable[[Callable[[], Any]], float], budget_s: float) -> float:
    """Median time of `run` over up to REPEATS runs after one warm-up, within about `budget_s`.

    A slow operation gets fewer repeats, not a longer wait: when the warm-up alone exceeds
    the budget, its own time is the answer.
    """
    start = time.perf_counter()
    warm = timer(run)
    times: list[float] = []
    while len(times) < REPEATS and time.perf_counter() - start < budget_s:
        times.append(timer(run))
    return statistics.median(times) if times else warm


def _timer(torch: Any, device: str) -> Callable[[Callable[[], Any]], float]:
    return _wall_seconds if device == "cpu" else _cuda_seconds(torch)


def _matmul_tflops(torch: Any, dtype: Any, n: int, device: str, budget_s: float) -> float | None:
    """TFLOP/s of an n×n by n×n torch.mm (2n³ flops); None where the dtype does not run."""
    try:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        out = torch.empty(n, n, device=device, dtype=dtype)
        seconds = _median_seconds(lambda: torch.mm(a, b, out=out), _timer(torch, device), budget_s)
    except (RuntimeError, TypeError, NotImplementedError):
        return None
    if not seconds > 0:
        return None
    return _sig(2 * n**3 / seconds / 1e12)


# --------------------------------------------------------------------------- the CPU

def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return " ".join(value.split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _meminfo_total() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _cgroup_limit() -> int | None:
    """The memory limit of this process's cgroup (v2, then v1), or None when unlimited."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path, encoding="ascii") as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:
            return int(text)
    return None


def _rss_bytes() -> tuple[int, str]:
    """This process's resident memory now, and how it was read."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"), "current RSS from /proc/self/statm"
    except (OSError, ValueError, IndexError, AttributeError):
        pass
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024), "peak RSS from getrusage (no /proc)"


def _copy_gb_per_s(torch: Any, nbytes: int, device: str, budget_s: float) -> float:
    try:
        src = torch.ones(nbytes, dtype=torch.uint8, device=device)  # touches every page
        dst = torch.zeros_like(src)
        seconds = _median_seconds(lambda: dst.copy_(src), _timer(torch, device), budget_s)
    except RuntimeError as exc:  # out of memory included
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ProbeFailed(f"the copy of {nbytes} bytes on {device} failed: {first}") from exc
    finally:
        src = dst = None
    if not seconds > 0:
        raise ProbeFailed(f"the copy of {nbytes} bytes on {device} took no measurable time")
    return _sig(2 * nbytes / seconds / 1e9)


def _measure_cpu(torch: Any) -> dict:
    cores = _cpu_count()
    model = _cpu_model()
    total = _meminfo_total()
    if not total:
        raise ProbeFailed("cannot read this machine's memory size (no /proc/meminfo, no sysconf)")
    limit = _cgroup_limit()
    memory_note = "total_memory_bytes is MemTotal from /proc/meminfo"
    if limit is not None and limit < total:
        total = limit
        memory_note = "total_memory_bytes is this cgroup's memory limit (lower than MemTotal)"
    rss, rss_how = _rss_bytes()  # before the measurements allocate anything
    fp32 = _matmul_tflops(torch, torch.float32, CPU_MATMUL_N, "cpu", budget_s=0.6)
    if fp32 is None:
        raise ProbeFailed("a float32 matmul failed on the CPU: cannot measure this machine")
    bf16 = _matmul_tflops(torch, torch.bfloat16, CPU_MATMUL_N, "cpu", budget_s=0.6)
    copy = _copy_gb_per_s(torch, CPU_COPY_BYTES, "cpu", budget_s=0.6)
    threads = torch.get_num_threads()
    notes = (
        f"CPU host measured by bsadvisor with torch {torch.__version__} on {threads} thread(s). "
        f"{memory_note}. reserved_memory_bytes is 0 (no driver reserve on a CPU). "
        f"context_overhead_bytes is the Python + torch process baseline ({rss_how}, before measuring). "
        f"fp32_tflops/bf16_tflops are torch.mm of {CPU_MATMUL_N}x{CPU_MATMUL_N} (median of up to {REPEATS} "
        f"after a warm-up), not a datasheet peak{'' if bf16 is not None else '; bf16 matmul did not run'}. "
        f"memory_bandwidth_gb_per_s is the measured copy_ of a {CPU_COPY_BYTES // 1024**2} MiB tensor, "
        f"counting bytes read plus written."
    )
    return {
        "schema_version": SCHEMA_VERSION,
        "display_name": f"{model} ({cores} cores)",
        "source": "measured",
        "device_type": "cpu",
        "total_memory_bytes": int(total),
        "reserved_memory_bytes": 0,
        "context_overhead_bytes": int(rss),
        "bf16_tflops": bf16,
        "fp32_tflops": fp32,
        "memory_bandwidth_gb_per_s": copy,
        "copy_bandwidth_gb_per_s": copy,
        "matmul_fp32_tflops_measured": fp32,
        "matmul_bf16_tflops_measured": bf16,
        "notes": notes,
    }


# --------------------------------------------------------------------------- CUDA

def _measure_cuda(torch: Any) -> dict:
    from advisor.hardware import nvml  # lazy: NVML only where CUDA is

    if torch.cuda.is_initialized():
        raise ProbeFailed("CUDA is already initialised in this process: measure the profile in a fresh one")
    before = {d: nvml.gpu_info(d) for d in nvml.device_uuids()}  # before any CUDA context
    if not before:
        raise ProbeFailed("CUDA is available but NVML sees no GPU: cannot measure the device")
    torch.cuda.init()
    torch.cuda.set_device(0)
    x = torch.ones(64, 64, device="cuda")
    torch.cuda.synchronize()
    allocated = torch.cuda.memory_allocated(0)
    (x @ x).sum().item()  # a context, a cuBLAS handle and its workspace
    torch.cuda.synchronize()
    # the outputs are gone; what stays allocated is the cuBLAS workspace, cached for this handle and stream
    workspace = torch.cuda.memory_allocated(0) - allocated
    uuid = str(getattr(torch.cuda.get_device_properties(0), "uuid", "") or "")
    index = nvml.matching_device(0, uuid, os.environ.get("CUDA_VISIBLE_DEVICES", ""),
                                 {d: info.uuid for d, info in before.items()})
    if index not in before:
        raise ProbeFailed(f"NVML has no {nvml.describe(index)} to match CUDA device 0: cannot measure the device")
    after = nvml.gpu_info(index)
    context = after.memory.used_bytes - before[index].memory.used_bytes - torch.cuda.memory_reserved(0)
    del x
    torch.cuda.empty_cache()

    bf16 = _matmul_tflops(torch, torch.bfloat16, CUDA_MATMUL_N, "cuda", 2.0) if torch.cuda.is_bf16_supported() else None
    fp32 = _matmul_tflops(torch, torch.float32, CUDA_MATMUL_N, "cuda", 2.0)
    if fp32 is None:
        raise ProbeFailed("a float32 matmul failed on the GPU: cannot measure this device")
    copy = _copy_gb_per_s(torch, CUDA_COPY_BYTES, "cuda", 2.0)
    torch.cuda.empty_cache()
    tf32 = "on" if torch.backends.cuda.matmul.allow_tf32 else "off"
    reserved_how = ("NVML v2 reserved" if after.memory.api == "v2"
                    else "0: this driver has no NVML v2 memory info, so its reserve is counted as used")
    return {
        "schema_version": SCHEMA_VERSION,
        "display_name": after.name,
        "source": "measured",
        "device_type": "cuda",
        "total_memory_bytes": after.memory.total_bytes,
        "reserved_memory_bytes": after.memory.reserved_bytes,
        "context_overhead_bytes": max(int(context), 0),
        "bf16_tflops": bf16,
        "fp32_tflops": fp32,
        "memory_bandwidth_gb_per_s": copy,
        "copy_bandwidth_gb_per_s": copy,
        "matmul_bf16_tflops_measured": bf16,
        "matmul_fp32_tflops_measured": fp32,
        "compute_capability": "{}.{}".format(*after.compute_capability),
        "cublas_workspace_bytes": max(int(workspace), 0),
        "driver_version": after.driver_version,
        "cuda_version": after.cuda_version,
        "notes": (
            f"CUDA device measured by bsadvisor with torch {torch.__version__} (NVML {nvml.describe(index)}, {after.uuid}). "
            f"reserved_memory_bytes: {reserved_how}. context_overhead_bytes is NVML used memory after the "
            f"first CUDA work less before, less torch.cuda.memory_reserved(); other processes starting or "
            f"freeing memory meanwhile would distort it. cublas_workspace_bytes is what a first matmul left allocated "
            f"in torch's caching allocator once its outputs were freed (the workspace cuBLAS and cuBLASLt share). "
            f"TFLOP/s are torch.mm of {CUDA_MATMUL_N}x{CUDA_MATMUL_N} "
            f"(median of up to {REPEATS} after a warm-up; fp32 with TF32 {tf32}), not datasheet peaks. "
            f"memory_bandwidth_gb_per_s is the measured device-to-device copy of "
            f"{CUDA_COPY_BYTES // 1024**3} GiB, counting bytes read plus written."
        ),
    }
