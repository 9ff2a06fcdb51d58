"""Out-of-memory during a probe: the step is a measurement ("does not fit"), then the memory goes back.

Which errors mean out of memory is advisor/failures.py's to say; freeing it is the backend's
(`Backend.release_memory`), so that each kind of device frees what it caches.
"""

from __future__ import annotations

from typing import Callable, TypeVar

from advisor.devices.base import Backend
from advisor.errors import ProbeFailed, one_line
from advisor.failures import is_device_error, is_out_of_memory

T = TypeVar("T")


def try_step(step: Callable[[], T], backend: Backend, what: str,
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
    backend.release_memory()
    if restore is not None:
        restore()
    return None
