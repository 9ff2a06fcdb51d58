"""Exact tensor bytes of a step: a dispatch mode that follows every live storage.

Each operator's outputs are looked at once; a storage is counted when first seen and uncounted when
Python's weak reference to it dies. Views share their base's storage and are counted once. The same
code runs on real CPU tensors and on FakeTensorMode tensors, where nothing is really allocated.

Two things no operator's output shows are followed too: a storage resized in place
(`UntypedStorage.resize_`, which FSDP uses to free and re-allocate its gathered parameters, and which the
dispatcher never sees), and the outputs of fake kernels known to hold less than the real kernel
(advisor/memory/fake_kernels.py swaps those for outputs of the real size).

Beside the exact bytes, the tracker keeps the same sum with each allocation rounded up to `granule`
bytes (CUDA's caching allocator hands out multiples of 512 bytes), so a trace on the CPU can say what a
GPU's allocator would hold for the same tensors.
"""

import weakref
from typing import Iterable

import torch
from torch.utils._python_dispatch import TorchDispatchMode, is_traceable_wrapper_subclass
from torch.utils._pytree import tree_flatten

from advisor.memory.fake_kernels import as_real, stand_in, stands_in_for_value

CUDA_GRANULE = 512  # c10/cuda/CUDACachingAllocator.cpp: kMinBlockSize, every block is a multiple of it


def rounded(size: int, granule: int) -> int:
    """An allocation of `size` bytes as an allocator of `granule`-byte blocks holds it (0 holds nothing)."""
    return -(-size // granule) * granule if size > 0 else 0


class LiveStorageTracker(TorchDispatchMode):
    def __init__(self, granule: int = CUDA_GRANULE):
        super().__init__()
        self.granule = granule
        self._live: dict[int, tuple[weakref.ref, int]] = {}
        self.current_bytes = 0
        self.peak_bytes = 0
        self.current_rounded = 0
        self.peak_rounded = 0  # the peak of the same live storages, each rounded up to `granule` bytes
        self._saved_resize = None
        self.stand_ins = 0  # values a fake trace read from tensors that have none (.item()): see fake_kernels

    def track(self, tensors: Iterable[torch.Tensor]) -> None:
        """Count tensors made outside the mode (parameters, buffers, optimizer state) as live."""
        for tensor in tensors:
            self._track(tensor)

    def reset_peak(self) -> None:
        self.peak_bytes = self.current_bytes
        self.peak_rounded = self.current_rounded

    def _track(self, tensor: torch.Tensor) -> None:
        if is_traceable_wrapper_subclass(tensor):  # a DTensor (sharded parameters): what it wraps holds the bytes
            for name in tensor.__tensor_flatten__()[0]:
                inner = getattr(tensor, name)
                if isinstance(inner, torch.Tensor):  # DTensor also lists its device mesh
                    self._track(inner)
            return
        storage = tensor.untyped_storage()
        key = id(storage)
        if key in self._live:
            return
        size = storage.nbytes()
        self._live[key] = (weakref.ref(storage, lambda _, key=key: self._forget(key)), size)
        self._add(size)

    def _add(self, size: int, sign: int = 1) -> None:
        self.current_bytes += sign * size
        self.current_rounded += sign * rounded(size, self.granule)
        self.peak_bytes = max(self.peak_bytes, self.current_bytes)
        self.peak_rounded = max(self.peak_rounded, self.current_rounded)

    def _forget(self, key: int) -> None:
        entry = self._live.pop(key, None)
        if entry is not None:
            self._add(entry[1], -1)

    def _resized(self, storage: torch.UntypedStorage, size: int) -> None:
        """A storage resized in place: a tracked one changes its size; an untracked one is tracked from now."""
        key = id(storage)
        if key not in self._live:
            if size > 0:
                self._live[key] = (weakref.ref(storage, lambda _, key=key: self._forget(key)), size)
                self._add(size)
            return
        ref, old = self._live[key]
        self._live[key] = (ref, size)
        self._add(old, -1)
        self._add(size)

    def __enter__(self):
        # UntypedStorage.resize_ is a method of the storage, not an operator: the dispatcher never sees it
        # (torch's own MemTracker patches it the same way).
        original = self._saved_resize = torch.UntypedStorage.resize_
        tracker = self

        def resize_(storage, size):
            result = original(storage, size)
            tracker._resized(storage, int(size))
            return result

        torch.UntypedStorage.resize_ = resize_
        return super().__enter__()

    def __exit__(self, *exc):
        torch.UntypedStorage.resize_ = self._saved_resize
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if stands_in_for_value(func, args):
            self.stand_ins += 1
            return stand_in(args[0])
        out = as_real(func, args, kwargs or {}, func(*args, **(kwargs or {})))
        for leaf in tree_flatten(out)[0]:
            if isinstance(leaf, torch.Tensor):
                self._track(leaf)
        return out
