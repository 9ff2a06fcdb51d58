"""Which failures of a step mean "this batch does not fit" and which mean a broken device.

A probe that grows the batch expects to run out of memory; that error is recovered, never
shown. Any other error (an illegal memory access, a device-side assert) is a real failure and
must not be mistaken for "too big", or the search would silently report a wrong limit.
Recovering (freeing the memory, restoring the state) is the device's: advisor/devices/recovery.py.
"""

from __future__ import annotations

import torch

from advisor.errors import one_line

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


_MISSING_DEVICE_MARKERS = ("not compiled with cuda", "not linked with support for", "no cuda gpus are available",
                           "found no nvidia driver", "mps backend is not available", "not compiled with mps",
                           "from the 'cuda' backend", "from the 'mps' backend", "from the 'xpu' backend")


def is_missing_device(exc: BaseException) -> bool:
    """Whether `exc` says the code asked for a device this torch or this machine does not have (`.cuda()`)."""
    return isinstance(exc, (RuntimeError, AssertionError, NotImplementedError)) and \
        any(m in one_line(exc, None).lower() for m in _MISSING_DEVICE_MARKERS)


def is_device_error(exc: BaseException) -> bool:
    """Whether `exc` is a device failure other than out-of-memory: not retried, reported (exit 4)."""
    if is_out_of_memory(exc):
        return False
    accelerator_error = getattr(torch, "AcceleratorError", None)
    if accelerator_error is not None and isinstance(exc, accelerator_error):
        return True
    return isinstance(exc, RuntimeError) and any(m in one_line(exc, None).lower() for m in _DEVICE_MARKERS)
