"""Out-of-memory during a probe: recognise it, then give the memory back.

A probe that grows the batch expects to run out of memory; that error is recovered, never
shown. Any other error (an illegal memory access, a device-side assert) is a real failure and
must not be mistaken for "too big", or the search would silently report a wrong limit.
"""

from __future__ import annotations

import gc
from typing import Callable, TypeVar

import torch

from advisor.errors import ProbeFailed, one_line

T = TypeVar("T")

# torch.OutOfMemoryError (recent torch) is torch.cuda.OutOfMemoryError under another name;
# both are looked up so that any torch >= 2.1 works.
_OOM_TYPES = tuple({t for t in (getattr(torch, "OutOfMemoryError", None), torch.cuda.OutOfMemoryError) if t})

# Allocation failures that reach Python only as a plain RuntimeError: the caching allocator
# on older paths ("CUDA out of memory", "CUDA error: out of memory"), MPS and XPU, cuBLAS and
# cuDNN failing to allocate their workspace, and the CPU allocator.
_OOM_MARKERS = (
    "out of memory",
    "cublas_status_alloc_failed",
    "cudnn_status_alloc_failed",
    "can't allocate memory",
)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` means "this batch does not fit" rather than a real failure."""
    if isinstance(exc, _OOM_TYPES) or isinstance(exc, MemoryError):  # MemoryError: Python's, numpy's
        return True
    if not isinstance(exc, RuntimeError):
        return False
    message = one_line(exc, None).lower()  # one_line: a user's __str__ may raise
    return any(marker in message for marker in _OOM_MARKERS)


# Errors of the device itself (not of the user's Python): a sticky CUDA error, a failed library call.
# torch.AcceleratorError (torch >= 2.8) carries them; older torch raises a RuntimeError with these words.
_DEVICE_MARKERS = ("cuda error", "cublas_status", "cudnn_status", "cusolver_status", "cufft_", "nccl error",
                   "device-side assert")


def is_device_error(exc: BaseException) -> bool:
    """Whether `exc` is a device failure other than out-of-memory: not retried, reported (exit 4)."""
    if is_out_of_memory(exc):
        return False
    accelerator_error = getattr(torch, "AcceleratorError", None)
    if accelerator_error is not None and isinstance(exc, accelerator_error):
        return True
    return isinstance(exc, RuntimeError) and any(m in one_line(exc, None).lower() for m in _DEVICE_MARKERS)


def try_step(step: Callable[[], T], device: torch.device | str, what: str,
             restore: Callable[[], None] | None = None) -> T | None:
    """`step()`'s value, or None when it ran out of memory.

    The one place a probe's step meets out-of-memory: the memory is freed once the `except`
    block (and with it the traceback holding the failed step's tensors) is left, then `restore()`
    puts the model and optimizer back, so the next step starts where this one did. Any other
    device error is a ProbeFailed naming `what` (a sticky CUDA error would fail every retry).
    """
    try:
        return step()
    except Exception as exc:
        if is_device_error(exc):
            raise ProbeFailed(f"{what}: {type(exc).__name__}: {one_line(exc)}") from None
        if not is_out_of_memory(exc):
            raise
    free_device_memory(device)
    if restore is not None:
        restore()
    return None


def free_device_memory(device: torch.device | str) -> None:
    """Return what a failed probe held, so the next probe starts from the same floor.

    Call it after leaving the `except` block: the exception's traceback keeps the failed
    step's tensors alive. gc.collect() breaks reference cycles that still hold tensors;
    empty_cache() hands cached blocks back so NVML and the next step see them free; the peak
    is reset so the next measurement is that step's own.
    """
    device = torch.device(device)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
