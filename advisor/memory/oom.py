"""Out-of-memory during a probe: recognise it, then give the memory back.

A probe that grows the batch expects to run out of memory; that error is recovered, never
shown. Any other error (an illegal memory access, a device-side assert) is a real failure and
must not be mistaken for "too big", or the search would silently report a wrong limit.
"""

from __future__ import annotations

import gc

import torch

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
    if isinstance(exc, _OOM_TYPES):
        return True
    if not isinstance(exc, RuntimeError):
        return False
    message = str(exc).lower()
    return any(marker in message for marker in _OOM_MARKERS)


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
